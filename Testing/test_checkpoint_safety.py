"""Training checkpoints are read with torch.load(weights_only=True): a pickle planted where a
trainer resumes from does not run, and is refused with a message (the curriculum trainer's real
checkpoint round-trips: test_curriculum)."""

import builtins
import io
import json

import pytest
import torch

from crossdomainseg.curriculum.process import _Run
from crossdomainseg.errors import InputError
from crossdomainseg.training.loops import Checkpoint


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
