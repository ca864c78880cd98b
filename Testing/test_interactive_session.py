"""The click session: patient-space clicks, locality, locked voxels, undo/redo, replay."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from crossdomainseg.errors import InputError
from crossdomainseg.interactive import InteractiveSession
from crossdomainseg.interactive.boundary_evidence import otsu_threshold
from crossdomainseg.evaluation.baselines import RegionGrowingRefiner
from crossdomainseg.interactive.boundary_shift import BoundaryShiftRefiner, LocalOtsuRefiner, SmallObjectRefiner
from crossdomainseg.interactive.sphere import SphereRefiner
from crossdomainseg.interactive.encoding import Box, click_maps, crop_box

SHAPE = (40, 48, 56)  # z, y, x


def _ball(center, radius, shape=SHAPE):
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((a - c) ** 2 for a, c in zip(g, center)) <= radius**2


def _image(array, spacing=(1.0, 1.2, 1.5), origin=(-20.0, 10.0, 5.0), direction=None):
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _point(image, zyx):
    return image.TransformIndexToPhysicalPoint(tuple(int(i) for i in reversed(zyx)))


@pytest.fixture
def case():
    truth = _ball((20, 24, 28), 10).astype(np.int16)
    rng = np.random.default_rng(0)
    image = _image(truth * 100.0 + rng.normal(0, 5, SHAPE))
    pred = _ball((20, 24, 28), 7).astype(np.int16)
    return image, truth, pred


def test_click_maps_peak_at_clicks_and_ignore_outside():
    maps = click_maps((10, 10, 10), [(2, 3, 4)], [(7, 7, 7), (50, 0, 0)])
    assert maps.shape == (2, 10, 10, 10)
    assert maps[0, 2, 3, 4] == pytest.approx(1.0) and maps[1, 7, 7, 7] == pytest.approx(1.0)
    assert maps[0, 9, 9, 9] == 0.0 and maps[1, 0, 0, 0] == 0.0


def test_crop_box_stays_inside_the_volume():
    box = crop_box((1, 50, 20), (16, 16, 16), (30, 52, 8))
    assert box.start == (0, 36, 0) and box.stop == (16, 52, 8)


def test_positive_click_adds_only_near_the_click_and_reports_the_box(case):
    image, truth, pred = case
    session = InteractiveSession(image, pred, refiner=SphereRefiner(radius_mm=4, crop_mm=(24.0, 19.2, 16.0)))
    before = session.label.copy()
    click = (20, 24, 36)  # inside the truth, outside the prediction
    result = session.add_click(_point(image, click), True, 1)
    changed = result.label != before
    assert result.changed == int(changed.sum()) > 0
    assert result.label[click] == 1
    inside = np.zeros(SHAPE, bool)
    inside[result.box.slices] = True
    assert not (changed & ~inside).any()
    assert (result.label[changed] == 1).all()
    assert all(b - a <= 16 for a, b in zip(result.box.start, result.box.stop))


def test_negative_click_removes_only_its_label(case):
    image, truth, _ = case
    pred = truth.copy()
    pred[_ball((20, 24, 16), 4)] = 2  # a second label next to the first
    pred[_ball((20, 24, 38), 3) & (truth == 0)] = 1  # a false-positive bump
    session = InteractiveSession(image, pred, refiner=SphereRefiner(radius_mm=8))
    result = session.add_click(_point(image, (20, 24, 39)), False, 1)
    assert result.changed > 0
    assert (result.label == 2).sum() == (pred == 2).sum()
    assert ((pred == 1) & (result.label != 1) | (result.label == pred)).all()
    assert not ((pred != 1) & (result.label != pred)).any()


def test_locked_voxels_are_never_changed_by_a_click(case):
    image, truth, pred = case
    session = InteractiveSession(image, pred, refiner=SphereRefiner(radius_mm=12))
    hand = _ball((20, 24, 34), 3) & (pred == 0)
    session.paint(hand, 0)  # the user confirms these voxels as background
    session.add_click(_point(image, (20, 24, 31)), True, 1)
    assert (session.label[hand] == 0).all()
    assert (session.label[_ball((20, 24, 31), 2) & ~hand] == 1).all()
    # a click right on a locked voxel changes nothing
    assert session.add_click(_point(image, (20, 24, 34)), True, 1).changed == 0


def test_undo_redo_restore_exact_states(case):
    image, truth, pred = case
    session = InteractiveSession(image, pred, refiner=SphereRefiner(radius_mm=4))
    states = [session.label.copy()]
    for zyx, positive in (((20, 24, 36), True), ((20, 15, 28), True), ((20, 24, 22), False)):
        session.add_click(_point(image, zyx), positive, 1)
        states.append(session.label.copy())
    assert len(session.clicks) == 3
    for expected in reversed(states[:-1]):
        session.undo()
        assert np.array_equal(session.label, expected)
    assert session.undo() is None and session.clicks == []
    session.redo()
    session.redo()
    assert np.array_equal(session.label, states[2]) and len(session.clicks) == 2
    session.add_click(_point(image, (20, 24, 36)), False, 1)  # a new click drops the redo branch
    assert session.redo() is None


def test_bad_clicks_raise_input_errors(case):
    image, _, pred = case
    session = InteractiveSession(image, pred)
    with pytest.raises(InputError, match="outside"):
        session.add_click((1e4, 0, 0), True, 1)
    with pytest.raises(InputError, match="not one of"):
        session.add_click(_point(image, (20, 24, 28)), True, 7)
    with pytest.raises(InputError, match="grid"):
        InteractiveSession(image, pred[:-1])


def test_clicks_replay_in_patient_space_on_another_grid(case):
    image, truth, pred = case
    session = InteractiveSession(image, pred, refiner=SphereRefiner(radius_mm=4))
    click_zyx = (20, 24, 37)
    point = _point(image, click_zyx)
    session.add_click(point, True, 1)
    session.paint(_ball((20, 24, 12), 2), 1)
    # another grid: coarser, shifted, with flipped axes (a different displayed volume)
    other = sitk.Resample(image, [30, 30, 32], sitk.Transform(), sitk.sitkLinear,
                          (36.0, 67.0, 4.0), (2.0, 2.0, 2.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    label_other = sitk.Resample(_image(pred), other, sitk.Transform(), sitk.sitkNearestNeighbor)
    session.rebase(other, label_other)
    assert len(session.clicks) == 1 and session.clicks[0].point == tuple(point)
    new_index = session.index_of(point)
    assert session.label[new_index] == 1
    painted_point = _point(image, (20, 24, 12))
    assert session.label[session.index_of(painted_point)] == 1
    assert session.locked[session.index_of(painted_point)]


def test_region_growing_follows_the_image(case):
    image, truth, pred = case
    session = InteractiveSession(image, pred, refiner=RegionGrowingRefiner())
    session.add_click(_point(image, (20, 24, 36)), True, 1)
    added = (session.label == 1) & (pred == 0)
    assert added.sum() > 100
    assert (truth[added] == 1).mean() > 0.95  # it stops at the object's edge


def test_otsu_threshold_splits_two_populations():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(10, 1, 3000), rng.normal(30, 1, 500)])
    assert 14 < otsu_threshold(values) < 26


def _lesion_in_organ(rng):
    """A small bright lesion (radius 3 voxels, partial-volume blurred) inside a dark organ, the
    organ labelled 1 and the lesion not labelled at all (label 2 empty), as on MR drafts."""
    organ = _ball((20, 24, 28), 14)
    lesion = _ball((20, 24, 28), 3)
    from scipy import ndimage

    image = ndimage.gaussian_filter(organ * 200.0 + lesion * 1300.0 + 600.0 * ~organ, 0.7)
    return _image(image + rng.normal(0, 30, SHAPE)), organ.astype(np.int16), lesion


def test_local_otsu_takes_a_small_bright_lesion_in_one_click():
    image, pred, lesion = _lesion_in_organ(np.random.default_rng(2))
    session = InteractiveSession(image, pred, refiner=LocalOtsuRefiner(), label_values=[1, 2])
    session.add_click(_point(image, (20, 24, 28)), True, 2)
    got = session.label == 2
    assert 2 * (got & lesion).sum() / (got.sum() + lesion.sum()) > 0.75  # its blurred rim is split at mid-contrast
    # region growing with its fixed tolerance takes only the lesion's core from the same click
    grown = InteractiveSession(image, pred, refiner=RegionGrowingRefiner(), label_values=[1, 2])
    grown.add_click(_point(image, (20, 24, 28)), True, 2)
    assert (grown.label == 2).sum() < 0.5 * lesion.sum()


def test_local_otsu_keeps_a_leak_near_the_click():
    """Clicked tissue that runs on to the crop's edge (a large structure of like intensity)
    is taken only within guard_mm of the click."""
    rng = np.random.default_rng(3)
    bright = np.zeros(SHAPE, bool)
    bright[:, :, 20:] = True  # a slab that fills half the volume
    image = _image(bright * 500.0 + rng.normal(0, 20, SHAPE))
    pred = np.zeros(SHAPE, np.int16)
    refiner = LocalOtsuRefiner(crop_mm=(40.0, 48.0, 56.0), window_mm=10.0, max_radius_mm=20.0, guard_mm=6.0)
    session = InteractiveSession(image, pred, refiner=refiner, label_values=[1])
    session.add_click(_point(image, (20, 24, 25)), True, 1)  # 5 mm from the slab's face
    added = np.argwhere(session.label == 1)
    assert len(added) > 200
    mm = (added - (20, 24, 25)) * np.asarray(session.spacing)
    assert np.sqrt((mm**2).sum(axis=1)).max() <= 6.0 + 1e-6
    assert bright[session.label == 1].all()


def test_local_otsu_adds_only_a_small_ball_where_the_click_looks_like_the_surroundings():
    """A positive click on tissue that the split puts with the label's surroundings, not with the
    label's own voxels (e.g. a lesion's dim rim), adds only a ball of small_mm."""
    image, pred, lesion = _lesion_in_organ(np.random.default_rng(4))
    label = pred.copy()
    label[lesion] = 2  # the lesion is labelled; the click lands in the organ beside it
    refiner = LocalOtsuRefiner(small_mm=3.0)
    session = InteractiveSession(image, label, refiner=refiner, label_values=[1, 2])
    click = (20, 24, 33)
    session.add_click(_point(image, click), True, 2)
    added = np.argwhere((session.label == 2) & ~lesion)
    assert len(added) > 0
    mm = (added - click) * np.asarray(session.spacing)
    assert np.sqrt((mm**2).sum(axis=1)).max() <= 3.0 + 1e-6


def test_positive_click_takes_voxels_from_another_label(case):
    image, truth, _ = case
    pred = truth.copy()  # the lesion below is labelled as the organ around it
    lesion = _ball((20, 24, 28), 3)
    session = InteractiveSession(image, pred, refiner=SphereRefiner(radius_mm=5.0), label_values=[1, 2])
    result = session.add_click(_point(image, (20, 24, 28)), True, 2)
    assert (result.label[lesion] == 2).mean() > 0.9
    assert ((result.label == 2) <= (pred == 1)).all()  # only the organ's voxels moved
    session.add_click(_point(image, (20, 24, 28)), False, 2)
    assert session.label[20, 24, 28] == 0  # negative: back to background, not to the organ


def test_a_click_does_not_take_back_what_an_opposite_click_said(case):
    """A negative click's ball reaches an earlier positive click: voxels nearer (mm) to that
    positive click keep the label, the others leave it."""
    image, truth, pred = case
    session = InteractiveSession(image, pred, refiner=SphereRefiner(radius_mm=12))
    spacing = np.asarray(session.spacing)
    positive, negative = (20, 24, 34), (20, 24, 40)
    session.add_click(_point(image, positive), True, 1)
    assert session.label[positive] == 1
    session.add_click(_point(image, negative), False, 1)
    grid = np.indices(SHAPE).reshape(3, -1).T
    d_pos = np.linalg.norm((grid - positive) * spacing, axis=1).reshape(SHAPE)
    d_neg = np.linalg.norm((grid - negative) * spacing, axis=1).reshape(SHAPE)
    ball = _ball(negative, 12) & (pred == 1)
    assert (session.label[ball & (d_pos < d_neg)] == 1).all()
    assert (session.label[ball & (d_neg < d_pos) & (d_neg <= 11)] == 0).all()
    assert session.label[negative] == 0


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_boundary_shift_takes_a_rim_band_off_along_the_rim_near_the_click():
    """An automatic result 3 mm too wide all round; a negative click in the middle of the band
    removes the band along the rim near the click, nothing far from it, nothing inside."""
    truth = _ball((20, 24, 28), 10)
    image = _image(truth * 100.0, spacing=(1.0, 1.0, 1.0))
    wide = _ball((20, 24, 28), 13)
    # smooth_voxels 0: the smoothing takes the ball's rasterisation corners (32 voxels here)
    refiner = BoundaryShiftRefiner(crop_mm=(40.0, 48.0, 56.0), inner_mm=6.0, outer_mm=12.0, refit_mm=12.0,
                                   smooth_voxels=0.0)
    session = InteractiveSession(image, wide.astype(np.int16), refiner=refiner)
    click = (20, 24, 28 + 12)  # the middle of the band (2 mm deep)
    session.add_click(_point(image, click), False, 1)
    got = session.label == 1
    removed = wide & ~got
    assert not (removed & truth).any()  # the true object keeps every voxel
    assert removed.sum() > 100  # the band, not the clicked voxel alone
    mm = (np.argwhere(removed) - click) * np.asarray(session.spacing)
    assert np.sqrt((mm**2).sum(axis=1)).max() <= 12.0 + 1e-6
    assert _dice(truth, got) > _dice(truth, wide) + 0.01


def test_boundary_shift_grows_a_too_narrow_result_towards_the_click(case):
    image, truth, pred = case  # pred: radius 7 for a radius-10 object
    truth = truth.astype(bool)
    # fine_voxels 0: the band is 2 mm deep at the click and the object small, which would make
    # the click a fine one (test below)
    session = InteractiveSession(image, pred, refiner=BoundaryShiftRefiner(fine_voxels=0))
    session.add_click(_point(image, (20, 24, 28 + 9)), True, 1)
    got = session.label == 1
    assert got.sum() > pred.sum() + 200
    assert _dice(truth, got) > _dice(truth, pred.astype(bool)) + 0.05


def test_boundary_shift_fine_click_on_a_small_label_changes_only_near_it():
    """A lesion-sized label one voxel short all round: the boundary shift grows the rim along a
    stretch around a click on the one-voxel band; as a fine click (within fine_depth_mm of the
    boundary, label under fine_voxels) it changes only voxels within the small object refiner's
    fine radius."""
    truth = _ball((20, 24, 28), 8)
    image = _image(truth * 100.0 + np.random.default_rng(4).normal(0, 5, SHAPE), spacing=(1.0, 1.0, 1.0))
    pred = _ball((20, 24, 28), 7).astype(np.int16)
    click = (20, 24, 28 + 8)
    reach = {}
    for fine_voxels in (4000, 0):
        session = InteractiveSession(image, pred, refiner=BoundaryShiftRefiner(fine_voxels=fine_voxels))
        session.add_click(_point(image, click), True, 1)
        new = np.argwhere((session.label == 1) & (pred == 0))
        assert len(new)
        reach[fine_voxels] = np.sqrt(((new - click) ** 2).sum(axis=1)).max()
    assert reach[4000] <= 2.5 + 1e-6 and reach[0] > 3.0


def test_small_object_negative_click_only_trims_a_part_a_positive_click_vouches_for():
    """A labelled lesion with a positive click at one end: a negative click at the other end
    whose region is the whole lesion takes only voxels near it; with no vouched-part rule
    (share 1) it takes every voxel nearer to it than to the positive click, half the lesion."""
    rng = np.random.default_rng(11)
    organ, lesion = _ball((20, 24, 28), 16), _ball((20, 24, 28), 6)
    image = _image(organ * 200.0 + lesion * 1100.0 + 600.0 * ~organ + rng.normal(0, 20, SHAPE),
                   spacing=(1.0, 1.0, 1.0))
    label = organ.astype(np.int16)
    label[lesion] = 2
    kept = {}
    for share in (0.5, 1.0):
        session = InteractiveSession(image, label, refiner=SmallObjectRefiner(vouched_share=share),
                                     label_values=[1, 2])
        session.add_click(_point(image, (20, 24, 28 - 4)), True, 2)
        session.add_click(_point(image, (20, 24, 28 + 4)), False, 2)
        kept[share] = (session.label[lesion] == 2).mean()
    assert kept[0.5] > 0.9 and kept[1.0] < 0.6


def test_small_object_fine_click_on_a_tiny_label_changes_the_voxel_clicked_alone():
    """A lesion of 123 voxels, under tiny_voxels (200 here; shipped 100, where one voxel is worth
    more than 0.01 of Dice): a click on its edge changes that voxel only; with tiny_voxels 0 its
    neighbours too."""
    image, pred, lesion = _lesion_in_organ(np.random.default_rng(9))
    label = pred.copy()
    label[lesion] = 2
    click = (20, 24, 31)
    removed = {}
    for tiny in (200, 0):
        session = InteractiveSession(image, label, refiner=SmallObjectRefiner(tiny_voxels=tiny),
                                     label_values=[1, 2])
        session.add_click(_point(image, click), False, 2)
        removed[tiny] = int((lesion & (session.label != 2)).sum())
        assert session.label[click] != 2
    assert lesion.sum() < 200 and removed[200] == 1 and removed[0] > 1


def test_boundary_shift_hands_a_small_label_to_the_small_object_refiner():
    """A lesion not yet labelled (fewer voxels than min_voxels): the click's bright tissue."""
    image, pred, lesion = _lesion_in_organ(np.random.default_rng(2))
    session = InteractiveSession(image, pred, refiner=BoundaryShiftRefiner(), label_values=[1, 2])
    session.add_click(_point(image, (20, 24, 28)), True, 2)
    assert _dice(lesion, session.label == 2) > 0.75


def test_small_object_splits_a_lesion_at_half_contrast_where_otsu_leaks():
    """A bright lesion touching a large mid-bright structure: Otsu's split of the window puts
    both on one side and takes the structure near the click too; the split halfway between the
    click and its surroundings takes the lesion alone."""
    rng = np.random.default_rng(7)
    lesion = _ball((20, 24, 28), 3)
    slab = np.zeros(SHAPE, bool)
    slab[:, :, 31:] = True  # touches the lesion's rim
    array = np.where(lesion, 1500.0, np.where(slab, 800.0, 200.0)) + rng.normal(0, 30, SHAPE)
    image = _image(array)
    got = {}
    for refiner in (SmallObjectRefiner(), LocalOtsuRefiner()):
        session = InteractiveSession(image, np.zeros(SHAPE, np.int16), refiner=refiner, label_values=[1])
        session.add_click(_point(image, (20, 24, 28)), True, 1)
        got[refiner.name] = session.label == 1
    assert _dice(lesion, got["small_object"]) > 0.85
    assert _dice(lesion, got["local_otsu"]) < 0.6 and (got["local_otsu"] & slab).sum() > 100


def test_small_object_takes_off_a_stray_island_unless_a_positive_click_vouches_for_it():
    """A stray blob across an organ's edge: local Otsu would take off only the click's side of
    the edge; the negative click takes the whole island, unless a positive click is in it."""
    organ = _ball((20, 24, 28), 10)
    image = _image(np.where(organ, 200.0, 600.0) + np.random.default_rng(8).normal(0, 20, SHAPE))
    stray = _ball((20, 24, 38), 3)  # straddles the organ's rim at x = 38
    label = organ.astype(np.int16)
    label[stray] = 2
    click = _point(image, (20, 24, 37))  # the organ's side
    for vouched in (False, True):
        session = InteractiveSession(image, label, refiner=SmallObjectRefiner(), label_values=[1, 2])
        if vouched:
            session.add_click(_point(image, (20, 24, 39)), True, 2)
        session.add_click(click, False, 2)
        left = (session.label[stray] == 2).sum()
        assert (left > 0) if vouched else (left == 0)


def test_small_object_click_on_the_boundary_changes_only_voxels_near_it():
    """A negative click on a rim voxel of a labelled lesion says that voxel is wrong, not the
    lesion: the change stays within fine_radius_mm. Without the limit (fine_mm 0) the lesion,
    a small island no positive click vouched for, goes whole."""
    image, pred, lesion = _lesion_in_organ(np.random.default_rng(9))
    label = pred.copy()
    label[lesion] = 2
    click = (20, 24, 31)  # the lesion's outermost voxel along x
    kept = {}
    for fine_mm in (2.0, 0.0):
        session = InteractiveSession(image, label, refiner=SmallObjectRefiner(fine_mm=fine_mm),
                                     label_values=[1, 2])
        session.add_click(_point(image, click), False, 2)
        removed = np.argwhere(lesion & (session.label != 2))
        mm = np.sqrt((((removed - click) * np.asarray(session.spacing)) ** 2).sum(axis=1))
        kept[fine_mm] = (session.label[lesion] == 2).mean()
        if fine_mm:
            assert session.label[click] != 2 and mm.max() <= 2.5 + 1e-6
    assert kept[2.0] > 0.8 and kept[0.0] < 0.5


def test_boundary_shift_keeps_voxels_whose_intensity_says_they_belong():
    """A move past the true edge (factor 3 on a 3 mm band) would cut the bright object; the
    intensity veto keeps its voxels, and without the veto they go."""
    truth = _ball((20, 24, 28), 10)
    image = _image(truth * 100.0 + np.random.default_rng(5).normal(0, 5, SHAPE), spacing=(1.0, 1.0, 1.0))
    wide = _ball((20, 24, 28), 13).astype(np.int16)
    click = _point(image, (20, 24, 28 + 12))
    cut = {}
    for evidence in (2.0, np.inf):
        refiner = BoundaryShiftRefiner(crop_mm=(40.0, 48.0, 56.0), factor=3.0, evidence=evidence,
                                       rim_mm=0.0)  # the veto alone, no refit
        session = InteractiveSession(image, wide, refiner=refiner)
        session.add_click(click, False, 1)
        cut[evidence] = (truth & (session.label == 0)).sum()
        assert ((wide == 1) & ~truth & (session.label == 0)).sum() > 100  # the band goes either way
    assert cut[2.0] <= 2 and cut[np.inf] > 100


def test_boundary_shift_moves_less_where_the_move_would_leave_no_core():
    """A thick slab on a small bright organ, clicked 5.4 mm deep: a move of 1.5 times that would
    leave fewer than MIN_HISTOGRAM_VOXELS of the organ deeper than it, so no core for the veto,
    and the rim would go all round (coreless_factor 1.5, as before the rule). At 1.35 times the
    depth a core is left, the veto keeps the organ, and the slab still goes."""
    truth = _ball((20, 24, 28), 13)
    slab = _ball((20, 24, 28 + 13), 8) & ~truth
    image = _image(truth * 100.0 + np.random.default_rng(6).normal(0, 5, SHAPE), spacing=(1.0, 1.0, 1.0))
    pred = (truth | slab).astype(np.int16)
    cut = {}
    for coreless_factor in (1.35, 1.5):
        refiner = BoundaryShiftRefiner(crop_mm=(40.0, 48.0, 56.0), coreless_factor=coreless_factor)
        session = InteractiveSession(image, pred, refiner=refiner)
        session.add_click(_point(image, (18, 24, 43)), False, 1)
        cut[coreless_factor] = int((truth & (session.label == 0)).sum())
        assert (slab & (session.label == 1)).sum() <= 0.02 * slab.sum()
    assert cut[1.35] <= 20 and cut[1.5] > 500


def test_boundary_shift_refits_the_moved_boundary_to_the_image():
    """A move that falls short (factor 0.5 on a 3 mm band) leaves most of the band; the refit
    takes the rest off near the click, where the image shows the object's edge."""
    truth = _ball((20, 24, 28), 10)
    image = _image(truth * 100.0 + np.random.default_rng(6).normal(0, 5, SHAPE), spacing=(1.0, 1.0, 1.0))
    wide = _ball((20, 24, 28), 13).astype(np.int16)
    click = _point(image, (20, 24, 28 + 12))
    band_removed = {}
    for rim_mm in (0.0, 3.0):
        refiner = BoundaryShiftRefiner(crop_mm=(40.0, 48.0, 56.0), factor=0.5, rim_mm=rim_mm,
                                       smooth_voxels=0.0)  # as in the band test above
        session = InteractiveSession(image, wide, refiner=refiner)
        session.add_click(click, False, 1)
        assert not (truth & (session.label == 0)).any()
        band_removed[rim_mm] = ((wide == 1) & ~truth & (session.label == 0)).sum()
    assert band_removed[3.0] > 2 * band_removed[0.0]


def test_boundary_shift_smooths_its_refit_of_a_noisy_image():
    """On a noisy image (contrast 100, noise SD 45) the voxel-by-voxel refit leaves a ragged rim;
    smoothed over a voxel, the label is nearer the object and its errors fewer pieces."""
    truth = _ball((20, 24, 28), 10)
    image = _image(truth * 100.0 + np.random.default_rng(0).normal(0, 45, SHAPE), spacing=(1.0, 1.0, 1.0))
    wide = _ball((20, 24, 28), 13).astype(np.int16)
    got = {}
    for smooth_voxels in (0.0, 1.0):
        refiner = BoundaryShiftRefiner(crop_mm=(40.0, 48.0, 56.0), smooth_voxels=smooth_voxels)
        session = InteractiveSession(image, wide, refiner=refiner)
        session.add_click(_point(image, (20, 24, 28 + 12)), False, 1)
        got[smooth_voxels] = session.label == 1
    assert _dice(truth, got[1.0]) > _dice(truth, got[0.0]) + 0.03
    pieces = {k: ndimage.label(v ^ truth)[1] for k, v in got.items()}
    assert pieces[1.0] < pieces[0.0] / 2


def test_small_object_positive_click_beside_a_lesion_adds_lesion_tissue_not_the_organ_around():
    """A positive click on the voxel over a labelled lesion's top slice (3 mm slices; partial
    volume, between lesion and liver): the click's neighbourhood is mostly liver, so a blob
    split between it and the darker tissue nearby takes the liver. Beside the label, the blob is
    split between the label's own intensity and its surroundings: the click's voxel, no liver."""
    rng = np.random.default_rng(11)
    lesion = _ball((20, 24, 24), 3)
    liver = np.zeros(SHAPE, bool)
    liver[:, :, :28] = True
    top = (17 - 1, 24, 24)  # the voxel over the lesion's top slice (z = 17)
    array = np.where(lesion, 1800.0, np.where(liver, 700.0, 200.0)) + rng.normal(0, 20, SHAPE)
    array[top] = 1200.0
    image = _image(array, spacing=(1.8, 1.8, 3.0))
    label = lesion.astype(np.int16)
    session = InteractiveSession(image, label, refiner=SmallObjectRefiner(), label_values=[1])
    session.add_click(_point(image, top), True, 1)
    added = (session.label == 1) & ~lesion
    assert added[top] and added.sum() <= 3


def test_clicks_do_not_depend_on_float32_noise_in_the_spacing():
    """The same case with its spacing stored in double (1.8 mm) and in float32 (1.7999999523 mm,
    as NIfTI headers hold it) gets the same robot clicks and the same labels: distances on such
    grids tie at the refiner's thresholds, which the noise would break one way or the other."""
    from crossdomainseg.evaluation.robot import robot_on_label

    shape = (24, 48, 48)
    rng = np.random.default_rng(25)  # a case whose first click lands on a tie (many do not)
    c = rng.integers(10, 14), rng.integers(20, 28), rng.integers(20, 28)
    truth = _ball(c, rng.integers(7, 10), shape) | _ball((c[0], c[1], c[2] + 9), rng.integers(4, 7), shape)
    pred = (_ball((c[0], c[1] + rng.integers(-2, 3), c[2] + 3), rng.integers(8, 11), shape)
            & ~_ball((c[0], c[1] - 4, c[2] - 8), 4, shape))
    array = truth * 100.0 + rng.normal(0, 20, shape)
    curves, labels = [], []
    for xy in (1.8, float(np.float32(1.8))):
        image = _image(array, spacing=(xy, xy, 3.0))
        session = InteractiveSession(image, pred.astype(np.int16), refiner=BoundaryShiftRefiner())
        curve, _, _ = robot_on_label(session, truth.astype(np.int16), 1, 6)
        curves.append(curve)
        labels.append(session.label.copy())
    assert curves[0] == curves[1] and np.array_equal(labels[0], labels[1])
    assert curves[0][-1] > curves[0][0]
