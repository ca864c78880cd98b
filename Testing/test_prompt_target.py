"""The prompt network learning the target modality: pseudo-labels keep only confident voxels, the
simulated user never picks or clicks an unknown voxel and the loss skips them, target images are
shown unchanged (no synthesis, no painted lesion), and train-prompt --target-share refuses a task
folder without target training images before any work."""

import json

import numpy as np
import pytest
import torch

from crossdomainseg.bundle import load_bundle, make_random_bundle
from crossdomainseg.errors import InputError
from crossdomainseg.interactive import prompt_cases, train_prompt
from crossdomainseg.interactive.target_cases import CONFIDENCE, UNKNOWN, pseudo_label


def _target_case(seed=0):
    """A pseudo-labelled target case: two touching boxes, each wrapped in a thick unknown shell
    (where drafts and clicks would otherwise fall), and an unknown blob of its own."""
    label = np.zeros((36, 40, 44), np.int16)
    label[6:30, 6:34, 6:38] = UNKNOWN
    label[10:26, 10:30, 10:22] = 1
    label[10:26, 10:30, 22:34] = 2
    label[2:6, 2:8, 2:8] = UNKNOWN
    image = np.random.default_rng(seed).integers(1, 1000, label.shape).astype(np.float32)
    return train_prompt.PromptCase(image, label, None, synthesize=False)


def test_pseudo_labels_keep_only_confident_voxels():
    probabilities = np.array([[0.95, 0.05, 0.0], [0.5, 0.45, 0.05], [0.02, CONFIDENCE, 0.08], [0.1, 0.1, 0.8]],
                             np.float32)
    assert pseudo_label(probabilities).tolist() == [0, UNKNOWN, 1, UNKNOWN]


def test_target_samples_never_pick_or_click_unknown_voxels():
    case = _target_case()
    assert case.values == [1, 2]
    rng = np.random.default_rng(0)
    for _ in range(60):
        x, y = train_prompt.make_prompt_sample(case, rng, size=(24, 24, 24), channels=4)
        truth, known = y[0], y[1] > 0
        assert x.shape == (4, 24, 24, 24)
        assert not truth[~known].any()  # never part of the object
        assert (~known).any()  # the shell lies in every crop: the check above was not vacuous
        for channel in (2, 3):  # click peaks: never on an unknown voxel
            for peak in np.argwhere(x[channel] == 1.0):
                assert known[tuple(peak)]


def test_the_loss_skips_unknown_voxels():
    logits = torch.randn(2, 1, 6, 6, 6)
    truth = (torch.rand(2, 1, 6, 6, 6) > 0.5).float()
    everywhere = torch.cat([truth, torch.ones_like(truth)], 1)
    from monai.losses import DiceCELoss

    assert torch.allclose(train_prompt.known_dice_ce(logits, everywhere), DiceCELoss(sigmoid=True)(logits, truth),
                          atol=1e-5)
    known = torch.zeros_like(truth)
    known[..., :3] = 1
    flipped = torch.where(known > 0, truth, 1 - truth)  # differs only where unknown
    assert torch.allclose(train_prompt.known_dice_ce(logits, torch.cat([truth, known], 1)),
                          train_prompt.known_dice_ce(logits, torch.cat([flipped, known], 1)))


def test_target_samples_carry_no_synthesis(monkeypatch):
    def no_synthesis(*args, **kwargs):
        raise AssertionError("a target image was synthesised")

    monkeypatch.setattr(prompt_cases, "synthesize", no_synthesis)
    case = _target_case(1)
    values = set(np.unique(case.image).tolist()) | {0.0}  # the image's own values, or padding
    rng = np.random.default_rng(1)
    for _ in range(60):
        x, _ = train_prompt.make_prompt_sample(case, rng, size=(24, 24, 24), channels=4)
        assert set(np.unique(x[0]).tolist()) <= values  # no synthetic contrast, no painted lesion


def test_target_share_refuses_a_task_without_target_training_images(tmp_path):
    task = tmp_path / "task"
    task.mkdir()
    splits = {"train": [], "val": [], "test": []}
    (task / "task.json").write_text(json.dumps({"task": "t", "labels": {"background": 0, "organ": 1},
                                                "domain_splits": {"source": splits, "target": splits}}))
    with pytest.raises(InputError, match="no target training images"):  # before the bundle is even read
        train_prompt.train_and_ship_prompt(tmp_path / "no-bundle", task, 1.0, steps=1, target_share=0.5)


def test_train_prompt_with_target_share_end_to_end(tmp_path, monkeypatch, capsys):
    from crossdomainseg.cli import main
    from crossdomainseg.data import make_task
    from crossdomainseg.interactive import target_cases

    data = make_task("phantom-ct-mr", 3, 0, tmp_path / "task")
    for path in (data / "target" / "labels").iterdir():  # target labels are never read
        path.write_text("a target label: never to be read")
    bundle = tmp_path / "bundle"
    make_random_bundle(bundle, labels={"background": 0, "liver": 1, "kidneys": 2, "spleen": 3, "lesion": 4},
                       spacing=4.0)
    assert main(["train-prompt", "--bundle", str(bundle), "--data", str(data), "--steps", "1", "--threads", "1",
                 "--batch", "1", "--clicks-only"]) == 0
    command = ["train-prompt", "--bundle", str(bundle), "--data", str(data), "--steps", "2", "--threads", "1",
               "--batch", "2", "--fine-tune", "--clicks-only", "--target-share", "0.5"]
    assert main(command) != 0  # an untrained segmenter: refused, saying why
    assert "confident (probability >= 0.9) on no structure" in capsys.readouterr().err
    monkeypatch.setattr(target_cases, "CONFIDENCE", 0.0)  # every voxel of its argmax kept
    assert main(command) == 0
    loaded = load_bundle(bundle)
    training = loaded.metadata["prompt"]["training"]
    assert training["target_share"] == 0.5 and "pseudo-labels" in training["data"]
    assert loaded.network_spec("prompt")["in_channels"] == 4  # --clicks-only kept the network's inputs
