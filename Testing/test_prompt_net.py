"""The prompt network: its input encoding (clicks at the right voxels, from patient coordinates),
new structures in the click session (the changed box, undo/redo, rebase), its training samples,
and the train-prompt / eval clicks --choose commands end to end."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from crossdomainseg.bundle import load_bundle, make_random_bundle, update_bundle
from crossdomainseg.errors import BundleError, InputError
from crossdomainseg.interactive import CropInputs, InteractiveSession
from crossdomainseg.interactive.prompt_net import PROMPT_SPEC, PromptRefiner, to_net_index
from crossdomainseg.interactive.refiner import click_refiner
from crossdomainseg.networks import build_network

LABELS = {"background": 0, "organ": 1}


class _Recorder(torch.nn.Module):
    """Stand-in network: records its input and answers "object" where the image channel is bright
    (a threshold, so the session's handling of the answer can be checked exactly)."""

    def forward(self, x):
        self.seen = x.clone()
        return torch.where(x[:, 0:1] > 0.5, 10.0, -10.0)


def _refiner(size=(16, 16, 16), spacing=(2.0, 2.0, 2.0)):
    recorder = _Recorder()
    return recorder, PromptRefiner(recorder, size=size, spacing=spacing, device="cpu")


def test_propose_rescales_the_crop_and_puts_the_clicks_on_the_network_grid():
    recorder, refiner = _refiner()
    shape = (8, 32, 16)  # 4 x 1 x 2 mm voxels: 32 mm each way, 16^3 on the 2 mm network grid
    image = np.zeros(shape, np.float32)
    image[:, :16] = 1.0
    current = np.zeros(shape, bool)
    current[4:, :, :] = True
    click, negative = (4, 8, 8), (6, 28, 12)
    prob = refiner.propose(CropInputs(image, image, image, current, [click], [negative], click, True,
                                      (4.0, 1.0, 2.0)))
    assert prob.shape == shape
    seen = recorder.seen[0]
    assert seen.shape == (5, 16, 16, 16) and not seen[4].any()  # no box: the box channel is empty
    assert torch.allclose(seen[1, :, 0, 0], torch.tensor([0.0] * 7 + [0.25, 0.75] + [1.0] * 7), atol=0.01)  # the mask
    for channel, point in ((2, click), (3, negative)):
        peak = tuple(int(round(v)) for v in to_net_index(point, shape, (16, 16, 16)))
        assert seen[channel][peak] == pytest.approx(1.0)
        assert int(seen[channel].argmax()) == int(np.ravel_multi_index(peak, (16, 16, 16)))
    assert seen[2].sum() > 0 and seen[2][:, 14:].sum() == 0  # no positive bump at the negative click
    assert (prob[:, :14] > 0.99).all() and (prob[:, 18:] < 0.01).all()


def _blob_case(direction=None):
    """A 40^3 volume of 2 mm voxels (the stand-in's grid: no rescaling) with a bright ball and an
    'organ' label elsewhere."""
    image = np.zeros((40, 40, 40), np.float32)
    grids = np.ogrid[:40, :40, :40]
    ball = ((grids[0] - 12) ** 2 + (grids[1] - 20) ** 2 + (grids[2] - 22) ** 2) <= 25
    image[ball] = 1.0
    label = np.zeros(image.shape, np.int16)
    label[30:36, 5:15, 5:15] = 1
    sitk_image = sitk.GetImageFromArray(image)
    sitk_image.SetSpacing((2.0, 2.0, 2.0))
    sitk_image.SetOrigin((-10.0, 25.0, 3.0))
    if direction is not None:
        sitk_image.SetDirection(direction)
    return sitk_image, image, label, ball


def test_a_new_structure_from_one_click_in_patient_coordinates():
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # a rotated grid: LPS is not the index
    sitk_image, image, label, ball = _blob_case(direction)
    recorder, refiner = _refiner()
    session = InteractiveSession(sitk_image, label, image_features=image, refiner=refiner)
    point = sitk_image.TransformIndexToPhysicalPoint((22, 20, 12))  # (x, y, z) index of the ball's centre
    value, result = session.new_structure(point)
    assert value == 2 and session.label_values == [1, 2]
    new = session.label == 2
    assert np.array_equal(new, ball)  # the stand-in's answer: the bright ball, all of it, nothing else
    assert (session.label == 1).sum() == 600  # the organ is untouched
    assert result.changed == ball.sum()
    inside = np.zeros(image.shape, bool)
    inside[result.box.slices] = True
    assert inside[ball].all() and result.box.shape == (11, 11, 11)  # the changed box is tight
    # the network saw the click at the ball's centre (the crop of 32 mm around it)
    seen = recorder.seen[0, 2]
    assert seen.max() == pytest.approx(1.0)
    peak = np.unravel_index(int(seen.argmax()), seen.shape)
    assert recorder.seen[0, 0][peak] > 0.5  # inside the ball
    # the new label is an ordinary label now: a negative click takes part of it back
    session.add_click(sitk_image.TransformIndexToPhysicalPoint((22, 20, 16)), False, 2)
    assert 0 < (session.label == 2).sum() < ball.sum()


def test_new_structure_undo_redo_and_rebase():
    sitk_image, image, label, ball = _blob_case()
    _, refiner = _refiner()
    session = InteractiveSession(sitk_image, label, image_features=image, refiner=refiner)
    before = session.label.copy()
    point = sitk_image.TransformIndexToPhysicalPoint((22, 20, 12))
    value, _ = session.new_structure(point)
    after = session.label.copy()
    assert session.undo().changed == ball.sum()
    assert np.array_equal(session.label, before) and session.label_values == [1] and session.clicks == []
    with pytest.raises(InputError, match="not one of this segmentation's labels"):
        session.add_click(point, True, value)  # undone: the structure is gone
    session.redo()
    assert np.array_equal(session.label, after) and session.label_values == [1, 2]
    # a new automatic result: the new structure is replayed on it
    session.rebase(sitk_image, label, image_features=image)
    assert np.array_equal(session.label, after) and session.label_values == [1, 2]
    assert session.undo() is not None and session.label_values == [1]
    # a used value, or a click on a locked voxel, is refused before anything changes
    with pytest.raises(InputError, match="already in use"):
        session.new_structure(point, value=1)
    lock = np.zeros(image.shape, bool)
    lock[12, 20, 22] = True
    session.set_locked(lock)
    with pytest.raises(InputError, match="locked"):
        session.new_structure(point)
    assert session.label_values == [1] and np.array_equal(session.label, before)


def test_training_samples_click_on_the_right_side_of_the_object():
    from crossdomainseg.interactive import train_prompt

    rng = np.random.default_rng(0)
    label = np.zeros((40, 44, 48), np.int16)
    label[8:30, 10:30, 10:26] = 1
    label[8:30, 10:30, 26:40] = 2
    label[14:20, 14:20, 14:20] = 3
    image = (label * 0.3 + rng.normal(0, 0.02, label.shape)).astype(np.float32)
    case = train_prompt.PromptCase(image, label, {"kind": "percentile", "lower": 1, "upper": 99})
    empty = boxes = 0
    for _ in range(30):
        x, y = train_prompt.make_prompt_sample(case, rng, size=(24, 24, 24))
        assert x.shape == (5, 24, 24, 24) and y.shape == (2, 24, 24, 24)
        for channel, want in ((2, 1.0), (3, 0.0)):
            for peak in np.argwhere(x[channel] == 1.0):
                assert y[0][tuple(peak)] == want
        boxed = x[4].any()
        # every sample has a click in its crop, or starts from a box alone
        assert (x[2] == 1.0).any() or (x[3] == 1.0).any() or boxed
        if boxed:  # the box hugs the object: the object lies in it, give or take BOX_JITTER voxels
            boxes += 1
            if not (x[2] == 1.0).any():  # the box alone starts a new structure: empty mask
                assert not x[1].any()
            grown = ndimage.binary_dilation(x[4] > 0, np.ones((3, 3, 3)), iterations=train_prompt.BOX_JITTER)
            assert y[0][~grown].sum() == 0 and y[0][x[4] > 0].mean() > 0.3
        empty += not x[1].any()
    assert 0 < empty < 30  # some samples start from an empty mask (a new structure), most from a draft
    assert 0 < boxes < empty  # some of those from a box


def test_prompt_network_round_trip_and_front_end_choice(tmp_path):
    make_random_bundle(tmp_path / "b", labels=LABELS)
    with pytest.raises(BundleError, match="no prompt network"):
        PromptRefiner.from_bundle(load_bundle(tmp_path / "b"))
    network = build_network(PROMPT_SPEC)
    update_bundle(tmp_path / "b", networks={"prompt": network},
                  metadata={"prompt": {"size": [32, 32, 32], "spacing": [2.5, 2.5, 2.5]},
                            "click_refiner": {"name": "prompt"}})
    refiner = click_refiner(load_bundle(tmp_path / "b"), "cpu")
    assert isinstance(refiner, PromptRefiner) and refiner.crop_mm == (80.0, 80.0, 80.0)
    x = torch.randn(1, 5, 32, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(refiner.network(x), network.eval()(x))


def test_train_prompt_and_eval_clicks_commands(tmp_path):
    from crossdomainseg.cli import main
    from crossdomainseg.data import make_task

    data = make_task("phantom-ct-mr", 3, 0, tmp_path / "task")
    bundle = tmp_path / "bundle"
    make_random_bundle(bundle, labels={"background": 0, "liver": 1, "kidneys": 2, "spleen": 3, "lesion": 4},
                       spacing=4.0)
    assert main(["train-prompt", "--bundle", str(bundle), "--data", str(data), "--steps", "2",
                 "--threads", "1", "--batch", "1"]) == 0
    meta = load_bundle(bundle).metadata
    assert meta["prompt"]["training"]["steps"] == 2 and "models/prompt.pt" in meta["weights"]
    assert main(["train-prompt", "--bundle", str(bundle), "--data", str(data), "--steps", "1", "--fine-tune",
                 "--threads", "1", "--batch", "2"]) == 0
    training = load_bundle(bundle).metadata["prompt"]["training"]
    assert training["fine_tuned"] and training["fine_tuned_from"]["steps"] == 2
    # --choose clicks on the SOURCE validation split only: target labels are unreadable here
    for path in (data / "target" / "labels").iterdir():
        path.write_text("a target label: never to be read by a choice")
    out = tmp_path / "clicks.json"
    assert main(["eval", "clicks", "--bundle", str(bundle), "--data", str(data), "--max-clicks", "2",
                 "--methods", "prompt,sphere", "--threads", "1", "--device", "cpu", "--out", str(out),
                 "--choose"]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"prompt", "sphere"}
    assert all(o.startswith("source_") for r in results.values() for o in r["curves"])
    chosen = load_bundle(bundle).metadata["click_refiner"]
    assert chosen["split"] == "source val" and chosen["name"] in ("prompt", "sphere")
    assert click_refiner(load_bundle(bundle)).name == chosen["name"]


class _Everything(torch.nn.Module):
    """Stand-in network that calls every voxel of the crop the object."""

    def forward(self, x):
        return torch.full_like(x[:, :1], 10.0)


def test_fine_tuning_rounds_apply_the_network_as_the_session_does():
    from crossdomainseg.interactive import train_prompt

    truth = np.zeros((30, 30, 30), bool)
    truth[13:17, 13:17, 13:17] = True  # smaller than the crop
    current = np.zeros_like(truth)
    clicks = train_prompt.network_rounds(truth, np.zeros(truth.shape, np.float32), current, _Everything(), 2,
                                         size=(8, 8, 8))
    # first click: positive at the cube's centre, the whole 8^3 crop around it joins the object;
    # second: negative in what it wrongly took, and the network still says "object": only the
    # clicked voxel leaves
    assert [p for _, p in clicks] == [True, False]
    first = clicks[0][0]
    expected = np.zeros_like(truth)
    expected[tuple(slice(c - 4, c + 4) for c in first)] = True
    expected[clicks[1][0]] = False
    assert np.array_equal(current, expected)
    rng = np.random.default_rng(3)
    case = train_prompt.PromptCase(truth.astype(np.float32), truth.astype(np.int16),
                                   {"kind": "percentile", "lower": 1, "upper": 99})
    for _ in range(10):
        x, y = train_prompt.make_prompt_sample(case, rng, size=(16, 16, 16), network=_Everything())
        for channel, want in ((2, 1.0), (3, 0.0)):
            for peak in np.argwhere(x[channel] == 1.0):
                assert y[0][tuple(peak)] == want


@pytest.mark.parametrize("inside, outside", [(1.0, 0.3), (0.2, 0.7)])
def test_the_shipped_prompt_network_outlines_a_new_structure_from_one_click(inside, outside):
    """The brain bundle's trained network, on a structure it never saw (an ellipsoid, bright on
    dark or dark on bright, 3 x 1 x 1 mm voxels): one click at its centre outlines it (Dice about
    0.7-0.8 when written)."""
    from crossdomainseg.evaluation.robot import dice
    from crossdomainseg.resources import shipped_bundles

    refiner = PromptRefiner.from_bundle(load_bundle(shipped_bundles()["brain-t1-t2"]), "cpu")
    grids = np.ogrid[:60, :80, :80]
    blob = ((grids[0] - 30) / 3.0) ** 2 + ((grids[1] - 40) / 12.0) ** 2 + ((grids[2] - 38) / 10.0) ** 2 <= 1
    array = (np.where(blob, inside, outside)
             + np.random.default_rng(0).normal(0, 0.03, blob.shape)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 3.0))
    session = InteractiveSession(image, np.zeros(blob.shape, np.int16), image_features=array, refiner=refiner,
                                 label_values=[1])
    value, result = session.new_structure(image.TransformIndexToPhysicalPoint((38, 40, 30)))
    assert value == 2 and dice(blob, session.label == 2) > 0.5
    assert result.box.contains((30, 40, 38)) and not (session.label == 1).any()


def test_a_new_structure_from_a_box_in_patient_coordinates():
    """The box reaches the network as its own channel, on the network grid; the structure is what
    the network answers within the box (and BOX_MARGIN_MM around it); the box goes with later clicks
    on the structure; undo, redo and rebase handle it like a click."""
    from crossdomainseg.interactive.encoding import BOX_MARGIN_MM

    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    sitk_image, image, label, ball = _blob_case(direction)
    image[12, 20, 22:40] = 1.0  # a bright rod from the ball out past the box
    sitk_image = sitk.GetImageFromArray(image)
    sitk_image.SetSpacing((2.0, 2.0, 2.0))
    sitk_image.SetOrigin((-10.0, 25.0, 3.0))
    sitk_image.SetDirection(direction)
    recorder, refiner = _refiner(size=(24, 24, 24))
    session = InteractiveSession(sitk_image, label, image_features=image, refiner=refiner)
    before = session.label.copy()
    # opposite corners, the far one first: (x, y, z) indices 27, 25, 17 and 17, 15, 7
    corners = [sitk_image.TransformIndexToPhysicalPoint(i) for i in ((27, 25, 17), (17, 15, 7))]
    value, result = session.new_structure_from_box(*corners)
    reach = 28 + int(np.ceil(BOX_MARGIN_MM / 2.0))  # the box ends at x index 27; 3 voxels more
    expected = ball.copy()
    expected[12, 20, 22:reach] = True
    assert value == 2 and np.array_equal(session.label == 2, expected)
    assert result.changed == expected.sum() and session.clicks == []
    box_seen = recorder.seen[0, 4].numpy()
    assert box_seen.sum() == 11 ** 3 and box_seen.max() == 1.0  # the box's voxels, nothing else
    inside = np.argwhere(box_seen)
    assert recorder.seen[0, 0].numpy()[tuple(inside.mean(0).round().astype(int))] == 1.0  # centred on the ball
    # a later click on the structure carries the box
    session.add_click(sitk_image.TransformIndexToPhysicalPoint((22, 20, 16)), False, 2)
    assert recorder.seen[0, 4].sum() > 0 and recorder.seen[0, 3].max() == pytest.approx(1.0)
    after_click = session.label.copy()
    session.undo()
    assert np.array_equal(session.label == 2, expected)
    assert session.undo() is not None and session.label_values == [1] and np.array_equal(session.label, before)
    session.redo()
    session.redo()
    assert np.array_equal(session.label, after_click) and session.label_values == [1, 2]
    session.rebase(sitk_image, label, image_features=image)
    assert np.array_equal(session.label, after_click) and session.label_values == [1, 2]


def test_a_box_is_refused_clearly_where_it_cannot_work():
    sitk_image, image, label, ball = _blob_case()
    corners = [sitk_image.TransformIndexToPhysicalPoint(i) for i in ((27, 25, 17), (17, 15, 7))]
    recorder = _Recorder()
    clicks_only = PromptRefiner(recorder, size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), device="cpu", in_channels=4)
    assert not clicks_only.accepts_box
    for refiner in (clicks_only, None):  # a network without the box channel; the sphere
        session = InteractiveSession(sitk_image, label, image_features=image, refiner=refiner)
        with pytest.raises(InputError, match="cannot start a structure from a box"):
            session.new_structure_from_box(*corners)
        assert session.label_values == [1]
    session = InteractiveSession(sitk_image, label, image_features=image, refiner=clicks_only)
    value, _ = session.new_structure(sitk_image.TransformIndexToPhysicalPoint((22, 20, 12)))
    assert recorder.seen.shape[1] == 4 and np.array_equal(session.label == value, ball)
    _, refiner = _refiner()
    session = InteractiveSession(sitk_image, label, image_features=image, refiner=refiner)
    with pytest.raises(InputError, match="outside the image"):
        session.new_structure_from_box(corners[0], (500.0, 0.0, 0.0))
    empty = [sitk_image.TransformIndexToPhysicalPoint(i) for i in ((5, 5, 30), (10, 10, 35))]
    with pytest.raises(InputError, match="Nothing in that box"):
        session.new_structure_from_box(*empty)
    assert session.label_values == [1] and np.array_equal(session.label, label)


def test_a_click_network_widened_to_the_box_channel_answers_as_before(tmp_path):
    from crossdomainseg.interactive.prompt_net import encode, widen_to_box_channel

    torch.manual_seed(0)
    narrow = build_network({**PROMPT_SPEC, "in_channels": 4}).eval()
    wide = widen_to_box_channel(narrow)
    x = torch.randn(1, 5, 16, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(wide(x), narrow(x[:, :4]), atol=1e-5)
    # a bundle whose network has no box channel still loads and clicks (4 channels)
    make_random_bundle(tmp_path / "b", labels=LABELS)
    update_bundle(tmp_path / "b", networks={"prompt": narrow},
                  metadata={"prompt": {"size": [16, 16, 16], "spacing": [2.0, 2.0, 2.0]}})
    refiner = PromptRefiner.from_bundle(load_bundle(tmp_path / "b"), "cpu")
    assert refiner.in_channels == 4 and not refiner.accepts_box
    # encode pads a crop smaller than the network's input, the box channel too
    small = encode(np.ones((10, 12, 16)), np.zeros((10, 12, 16)), [(5, 6, 8)], [], (16, 16, 16),
                   ((2, 3, 4), (8, 20, 9)))
    assert small.shape == (5, 16, 16, 16) and small[4].sum() == 6 * 9 * 5 and not small[4, 10:].any()

