"""The prompt network on 2D tasks (single-slice images, as xray-drr): a 2D network trained and
loaded from a 2D bundle, its training samples, a click on a 2D image changing only the returned
box, and the robot user's clicks at the deepest point of a 2D error region."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from crossdomainseg.bundle import load_bundle, make_random_bundle
from crossdomainseg.errors import InputError
from crossdomainseg.interactive import CropInputs, InteractiveSession
from crossdomainseg.interactive.prompt_net import PromptRefiner, prompt_grid

XRAY_LABELS = {"background": 0, "lungs": 1, "heart": 2}


class _Bright2D(torch.nn.Module):
    """Stand-in 2D network: refuses anything but (B, C, H, W), records its input and answers
    "object" where the image channel is bright."""

    def forward(self, x):
        assert x.ndim == 4, f"a 2D network got a {x.ndim - 2}D input"
        self.seen = x.clone()
        return torch.where(x[:, 0:1] > 0.5, 10.0, -10.0)


def _xray_like(spacing=2.8):
    """A 1 x 64 x 64 single-slice image (as 2D images are stored) with two bright discs and a
    draft label covering the first one only."""
    grids = np.ogrid[:64, :64]
    first = (grids[0] - 20) ** 2 + (grids[1] - 20) ** 2 <= 36
    second = (grids[0] - 44) ** 2 + (grids[1] - 44) ** 2 <= 49
    image = np.zeros((1, 64, 64), np.float32)
    image[0][first | second] = 1.0
    label = np.zeros(image.shape, np.int16)
    label[0][first] = 1
    sitk_image = sitk.GetImageFromArray(image)
    sitk_image.SetSpacing((spacing, spacing, spacing))
    sitk_image.SetOrigin((-30.0, 12.0, 5.0))
    return sitk_image, image, label, second


def test_a_click_on_a_2d_image_changes_only_the_returned_box():
    sitk_image, image, label, second = _xray_like()
    network = _Bright2D()
    refiner = PromptRefiner(network, *prompt_grid(2), device="cpu")
    assert refiner.crop_mm == (0.0, 96.0, 96.0)  # one slice thick, 48 pixels at 2 mm in plane
    session = InteractiveSession(sitk_image, label, image_features=image, refiner=refiner)
    before = session.label.copy()
    point = sitk_image.TransformIndexToPhysicalPoint((44, 44, 0))  # the second disc's centre
    value, result = session.new_structure(point)
    assert network.seen.shape == (1, 5, 48, 48)  # the 2D network saw the plane, rescaled to its grid
    changed = session.label != before
    assert np.array_equal(changed[0], second) and (session.label[changed] == value).all()
    assert result.changed == second.sum()
    outside = np.ones(changed.shape, bool)
    outside[result.box.slices] = False
    assert not changed[outside].any() and result.box.shape[0] == 1
    assert result.box.shape[1:] == (15, 15)  # tight around the disc of radius 7
    # a negative click takes part of it back, again only inside its box
    now = session.label.copy()
    result = session.add_click(sitk_image.TransformIndexToPhysicalPoint((44, 50, 0)), False, value)
    changed = session.label != now
    outside = np.ones(changed.shape, bool)
    outside[result.box.slices] = False
    assert 0 < changed.sum() < second.sum() and not changed[outside].any()
    assert np.array_equal(session.label == 1, before == 1)  # the draft's label is untouched


def test_a_2d_prompt_network_refuses_a_crop_of_several_slices():
    refiner = PromptRefiner(_Bright2D(), *prompt_grid(2), device="cpu")
    zeros = np.zeros((3, 16, 16), np.float32)
    with pytest.raises(InputError, match="2D"):
        refiner.propose(CropInputs(zeros, zeros, zeros, zeros > 0, [(1, 8, 8)], [], (1, 8, 8), True,
                                   (2.0, 2.0, 2.0)))


def test_the_robot_clicks_at_the_deepest_point_of_a_2d_region():
    from crossdomainseg.interactive.simulate import next_click, training_clicks

    truth = np.zeros((1, 40, 60), bool)
    truth[0, 5:35, 10:50] = True  # a 30 x 40 rectangle: its deepest pixels are in its middle
    click = next_click(truth, np.zeros_like(truth), (2.8, 2.8, 2.8))
    assert click.positive and click.index[0] == 0
    assert 18 <= click.index[1] <= 21 and 18 <= click.index[2] <= 41
    clicks, _ = training_clicks(truth, np.zeros_like(truth), 1, (2.8, 2.8, 2.8))
    assert clicks[0].index == click.index
    # in 3D the slab's depth counts: every pixel of a one-slice object in a volume lies one slice
    # deep but the rim's, and that tie goes to the middle of the tied pixels
    volume = np.zeros((5, 40, 60), bool)
    volume[2] = truth[0]
    assert next_click(volume, np.zeros_like(volume), (2.8, 2.8, 2.8)).index == (2, 19, 29)


def test_2d_training_samples_click_on_the_right_side_of_the_object():
    from crossdomainseg.interactive import train_prompt

    rng = np.random.default_rng(0)
    label = np.zeros((80, 90), np.int16)
    label[10:60, 10:40] = 1
    label[10:60, 40:70] = 2
    label[20:30, 20:30] = 3
    image = (label * 0.3 + rng.normal(0, 0.02, label.shape)).astype(np.float32)
    case = train_prompt.PromptCase(image, label, {"kind": "percentile", "lower": 1, "upper": 99})
    empty = 0
    for _ in range(30):
        x, y = train_prompt.make_prompt_sample(case, rng)
        assert x.shape == (5, 48, 48) and y.shape == (2, 48, 48)
        for channel, want in ((2, 1.0), (3, 0.0)):
            for peak in np.argwhere(x[channel] == 1.0):
                assert y[0][tuple(peak)] == want
        assert (x[2] == 1.0).any() or (x[3] == 1.0).any() or x[4].any()
        empty += not x[1].any()
    assert 0 < empty < 30


def test_a_2d_prompt_network_trains_ships_and_clicks(tmp_path):
    from crossdomainseg.cli import main
    from crossdomainseg.data import make_task

    data = make_task("xray-drr", 4, 0, tmp_path / "task")
    bundle = tmp_path / "bundle"
    make_random_bundle(bundle, spatial_dims=2, labels=XRAY_LABELS, spacing=2.8)
    assert main(["train-prompt", "--bundle", str(bundle), "--data", str(data), "--steps", "3",
                 "--threads", "1", "--batch", "2"]) == 0
    loaded = load_bundle(bundle)
    assert loaded.network_spec("prompt")["spatial_dims"] == 2
    assert loaded.metadata["prompt"]["size"] == [48, 48] and loaded.metadata["prompt"]["spacing"] == [2.0, 2.0]
    first = {k: v.clone() for k, v in loaded.network("prompt").state_dict().items()}
    assert main(["train-prompt", "--bundle", str(bundle), "--data", str(data), "--steps", "2", "--fine-tune",
                 "--threads", "1", "--batch", "2"]) == 0
    tuned = load_bundle(bundle)
    assert tuned.metadata["prompt"]["training"]["fine_tuned_from"]["steps"] == 3
    assert any(not torch.equal(first[k], v) for k, v in tuned.network("prompt").state_dict().items())
    refiner = PromptRefiner.from_bundle(tuned)
    assert refiner.spatial_dims == 2 and refiner.accepts_box
    out = tmp_path / "clicks.json"
    assert main(["eval", "clicks", "--bundle", str(bundle), "--data", str(data), "--max-clicks", "2",
                 "--methods", "prompt", "--threads", "1", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["prompt"]
    assert result["objects"] >= 1 and result["clicks_timed"] >= 1
