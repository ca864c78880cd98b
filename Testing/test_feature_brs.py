"""The f-BRS click refiner (interactive/feature_brs.py): the bundle's own segmenter, refined at a
click by a per-channel scale and bias of its last features. A tiny segmenter trained here in
seconds calls bright balls label 1 and misses a dimmer ball; clicks must correct it, beyond the
clicked voxel, inside the session's rules (one label, locks, undo)."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from crossdomainseg.bundle import load_bundle, make_random_bundle, save_bundle, update_bundle
from crossdomainseg.errors import BundleError, InputError
from crossdomainseg.evaluation.cli import CHOOSABLE, METHODS, build_refiners
from crossdomainseg.interactive import CropInputs, InteractiveSession
from crossdomainseg.interactive.feature_brs import FeatureBRSRefiner, split_unet
from crossdomainseg.interactive.refiner import click_refiner
from crossdomainseg.networks import build_network

LABELS = {"background": 0, "ball": 1, "block": 2}
SIZE = 24  # voxels per axis, 2 mm: the bundle's patch, so the click's crop is the whole volume
BRIGHT, DIM, BACKGROUND, DARK = 1.0, 0.6, 0.5, 0.0


def _ball(shape, centre, radius):
    z, y, x = np.ogrid[tuple(slice(0, n) for n in shape)]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def _volume(rng, balls, block=None):
    """(image, label): mid-grey background, balls of label 1 at their intensities, a dark block of
    label 2, a little noise."""
    shape = (SIZE,) * 3
    image = np.full(shape, BACKGROUND, np.float32)
    label = np.zeros(shape, np.int16)
    for centre, radius, value in balls:
        inside = _ball(shape, centre, radius)
        image[inside], label[inside] = value, 1
    if block is not None:
        image[block], label[block] = DARK, 2
    return image + rng.normal(0, 0.02, shape).astype(np.float32), label


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle whose segmenter learnt bright balls (label 1) and dark blocks (label 2) on 24^3
    crops; it never saw a ball as dim as DIM."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = build_network({"kind": "segmenter", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                         "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1})
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(120):
        images, labels = [], []
        for _ in range(2):
            balls = [(tuple(rng.integers(5, SIZE - 5, 3)), int(rng.integers(3, 6)), float(rng.uniform(0.9, 1.1)))
                     for _ in range(2)]
            corner = rng.integers(0, SIZE - 6, 3)
            image, label = _volume(rng, balls, tuple(slice(c, c + 5) for c in corner))
            images.append(image[None])
            labels.append(label)
        logits = net(torch.from_numpy(np.stack(images)))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(np.stack(labels)).long())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    base = make_random_bundle(tmp_path_factory.mktemp("b") / "random", labels=LABELS, spacing=2.0,
                              roi=SIZE, with_generator=False)
    metadata = {k: v for k, v in base.metadata.items() if k not in ("networks", "weights", "metadata_sha256")}
    return save_bundle(base.path.parent / "trained", metadata, {"segmenter": net.eval()})


def _case():
    """A bright ball (left), a dim ball (right, the network misses it) and a dark block, as an
    image on a 2 mm grid, with the reference label array."""
    rng = np.random.default_rng(1)
    image, label = _volume(rng, [((12, 12, 5), 4, BRIGHT), ((12, 12, 17), 4, DIM)],
                           (slice(2, 6), slice(2, 6), slice(9, 15)))
    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing((2.0, 2.0, 2.0))
    return itk, label


def _session(bundle, refiner, draft, image=None):
    image = _case()[0] if image is None else image
    features = sitk.GetArrayFromImage(image)
    return InteractiveSession(image, draft, None, features, None, refiner, [1, 2])


def _point(image, index):
    return image.TransformIndexToPhysicalPoint([int(i) for i in reversed(index)])


@pytest.fixture(scope="module")
def refiner(bundle):
    return FeatureBRSRefiner.from_bundle(bundle, "cpu")


def test_the_network_misses_the_dim_ball_and_a_positive_click_there_brings_it_in(bundle, refiner):
    image, truth = _case()
    array = sitk.GetArrayFromImage(image)
    dim = _ball(array.shape, (12, 12, 17), 4)
    bright = _ball(array.shape, (12, 12, 5), 4)
    centre = (12, 12, 17)
    # without a click the segmenter's answer is its draft: the bright ball, not the dim one
    inputs = CropInputs(array, array, np.zeros_like(array), bright.copy(), [], [], centre, True, (2.0,) * 3, 1)
    plain = refiner.propose(inputs)
    assert (plain[bright] >= 0.5).mean() > 0.9 and (plain[dim] >= 0.5).mean() < 0.1
    clicked = CropInputs(array, array, np.zeros_like(array), bright.copy(), [centre], [], centre, True,
                         (2.0,) * 3, 1)
    proposal = refiner.propose(clicked) >= 0.5
    assert proposal[centre] and proposal[dim].sum() > 40  # the ball grows far beyond the clicked voxel
    assert proposal[truth == 0].mean() < 0.05  # not the background
    # through the session: the dim ball joins label 1, the block keeps label 2
    draft = truth.copy()
    draft[dim] = 0
    session = _session(bundle, refiner, draft)
    block = draft == 2
    before = session.label.copy()
    result = session.add_click(_point(image, centre), True, 1)
    grown = (result.label == 1) & (before != 1)
    assert grown.sum() > 40 and (grown & dim).sum() >= 0.9 * grown.sum()
    assert (result.label[block] == 2).all()


def test_a_negative_click_takes_the_label_off_beyond_the_clicked_voxel(bundle, refiner):
    image, truth = _case()
    session = _session(bundle, refiner, truth)
    bright = _ball(truth.shape, (12, 12, 5), 4)
    result = session.add_click(_point(image, (12, 12, 5)), False, 1)
    removed = (truth == 1) & (result.label == 0)
    assert removed.sum() > 0.6 * bright.sum() and not (removed & ~bright).any()
    assert ((result.label == 2) == (truth == 2)).all()  # a negative click never touches another label


def test_a_scan_stored_in_another_axis_order_gets_the_same_answer(bundle, refiner):
    """The crop goes onto the segmenter's grid by its direction, as the engine resamples a scan:
    the same anatomy with permuted array axes is corrected the same way, voxel for voxel."""
    image, truth = _case()
    draft = truth.copy()
    draft[_ball(truth.shape, (12, 12, 17), 4)] = 0
    answers = []
    for order in ((0, 1, 2), (2, 0, 1)):
        stored = sitk.PermuteAxes(image, order)
        label = sitk.PermuteAxes(sitk.GetImageFromArray(draft), order)
        session = _session(bundle, refiner, sitk.GetArrayFromImage(label), stored)
        session.add_click(stored.TransformIndexToPhysicalPoint(
            stored.TransformPhysicalPointToIndex(_point(image, (12, 12, 17)))), True, 1)
        back = sitk.PermuteAxes(session.label_image(), [order.index(a) for a in range(3)])
        answers.append(sitk.GetArrayFromImage(back))
    assert (answers[0] != draft).sum() > 40
    assert (answers[0] != answers[1]).sum() <= 0.02 * (answers[0] != draft).sum()


def test_locks_hold_and_undo_redo_restore_exactly(bundle, refiner):
    image, truth = _case()
    draft = np.where(truth == 2, 2, 0).astype(np.int16)
    draft[_ball(truth.shape, (12, 12, 5), 4)] = 1
    session = _session(bundle, refiner, draft)
    dim = _ball(truth.shape, (12, 12, 17), 4)
    locked = dim & (np.arange(SIZE)[None, None, :] >= 19)  # the dim ball's right cap, painted background
    session.paint(locked, 0)
    before = session.label.copy()
    session.add_click(_point(image, (12, 12, 16)), True, 1)
    assert (session.label[locked] == 0).all()  # locked voxels never change
    assert ((session.label == 1) & dim & ~locked).sum() > 40
    after = session.label.copy()
    session.undo()
    assert (session.label == before).all()
    session.redo()
    assert (session.label == after).all()


def test_it_is_a_method_bundles_may_name_and_eval_clicks_compares(bundle, tmp_path):
    assert "brs" in METHODS and "brs" in CHOOSABLE
    assert isinstance(build_refiners(bundle, ["brs"], "cpu")["brs"], FeatureBRSRefiner)
    named = update_bundle(save_bundle(tmp_path / "named", bundle.metadata, {"segmenter": bundle.network("segmenter")}).path,
                          metadata={"click_refiner": {"name": "brs"}})
    assert isinstance(click_refiner(named, "cpu"), FeatureBRSRefiner)


def test_a_label_the_segmenter_has_not_and_a_segmenter_it_cannot_split_are_refused(bundle, refiner):
    zeros = np.zeros((SIZE,) * 3, np.float32)
    with pytest.raises(InputError, match="no label 3"):
        refiner.propose(CropInputs(zeros, zeros, zeros, zeros.astype(bool), [(1, 1, 1)], [], (1, 1, 1), True,
                                   (2.0,) * 3, 3))
    with pytest.raises(BundleError, match="not a UNet"):
        split_unet(torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3)))


def test_a_bundle_without_a_segmenter_gets_a_clear_error(bundle):
    class NoSegmenter:
        path = bundle.path

        @staticmethod
        def has_network(name):
            return False

    with pytest.raises(BundleError, match="has no segmenter"):
        FeatureBRSRefiner.from_bundle(NoSegmenter(), "cpu")
