"""Training checkpoints are read with torch.load(weights_only=True): a pickle planted where a
trainer resumes from does not run, and is refused with a message; real checkpoints round-trip."""

import builtins
import io
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from crossdomainseg.bundle import make_random_bundle
from crossdomainseg.curriculum.params import CurriculumParams
from crossdomainseg.curriculum.process import _Run
from crossdomainseg.curriculum.trainer import CurriculumTrainer, prepare
from crossdomainseg.errors import InputError
from crossdomainseg.training.loops import Checkpoint, load_checkpoint


class _Payload:
    """Unpickling this calls open(marker, "w"): the file appears if the pickle is executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _plant(path, marker):
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "network": _Payload(marker)}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def test_hostile_checkpoint_of_the_curriculum_trainer_does_not_run(tmp_path):
    workdir = tmp_path / "trainer"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({}))
    marker = tmp_path / "pwned"
    _plant(workdir / "checkpoint.pt", marker)
    with pytest.raises(InputError, match="not a checkpoint this program wrote"):
        _Run(workdir).load_checkpoint()
    assert not marker.exists()


def test_hostile_checkpoint_of_train_source_and_translator_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = Checkpoint(tmp_path / "ckpt", "source")
    _plant(checkpoint.file, marker)
    with pytest.raises(InputError, match="delete it to start training afresh"):
        checkpoint.load()
    assert not marker.exists()
    # a damaged file (not a torch archive) gets the same clear refusal, not a traceback
    checkpoint.file.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="not a checkpoint this program wrote"):
        checkpoint.load()


def test_curriculum_checkpoint_holds_only_plain_data_and_resumes(tmp_path):
    bundle = make_random_bundle(tmp_path / "b", spacing=4.0, roi=16, seed=3)
    rng = np.random.default_rng(0)
    array = rng.normal(0, 0.3, size=(16, 16, 16)).astype(np.float32)
    array[4:12, 4:12, 4:12] += 3
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((4.0, 4.0, 4.0))
    label = sitk.GetImageFromArray((array > 1.5).astype(np.uint8))
    label.CopyInformation(image)
    params = CurriculumParams(epochs=0, steps_per_epoch=1, supervised_batch=1, tau_u0=1.0, tau_ts0=1.0)
    target = [prepare(bundle, image, "t0")]
    accepted = [prepare(bundle, image, "a0", label=label)]
    trainer = CurriculumTrainer(bundle, params, target, accepted)
    trainer.run_epoch()
    path = tmp_path / "checkpoint.pt"
    torch.save(trainer.state_dict(), path)
    state = load_checkpoint(path)
    resumed = CurriculumTrainer(bundle, params, target, accepted)
    resumed.load_state_dict(state)
    assert resumed.epoch == trainer.epoch == 1 and resumed.history == trainer.history
    assert resumed.rng.getstate() == trainer.rng.getstate()
    student = trainer.student.state_dict()
    assert all(torch.equal(student[k], v) for k, v in resumed.student.state_dict().items())
