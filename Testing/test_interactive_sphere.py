"""The sphere click method: a ball whose radius is the click's distance (mm) to the clicked label's
boundary, capped, so a click in the middle of a thin error does not overshoot the true boundary."""

import numpy as np
import SimpleITK as sitk

from crossdomainseg.evaluation.baselines import FixedBallRefiner
from crossdomainseg.interactive import InteractiveSession
from crossdomainseg.interactive.simulate import next_click
from crossdomainseg.interactive.sphere import SphereRefiner

SHAPE = (24, 28, 32)  # z, y, x


def _image(shape=SHAPE, spacing_zyx=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(np.zeros(shape, np.float32))
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    image.SetOrigin((-10.0, 4.0, 30.0))
    return image


def _robot_click(session, truth, label=1):
    """The robot user's click (middle of the largest error) on `label`, in patient space."""
    click = next_click(truth, session.label == label, session.spacing)
    point = session.image.TransformIndexToPhysicalPoint(tuple(int(i) for i in reversed(click.index)))
    return click, point


def _distances_mm(index, spacing, shape=SHAPE):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grids, index, spacing)))


def test_a_positive_click_in_a_thin_missed_band_stays_inside_it():
    """The draft stops 5 voxels (1 mm) short of the truth along x: the robot clicks in the middle
    of the missed band and the ball fills the band near the click without crossing the true
    boundary, where a fixed 5 mm ball overshoots it."""
    draft = np.zeros(SHAPE, np.int16)
    draft[..., :12] = 1
    truth = np.zeros(SHAPE, bool)
    truth[..., :17] = True  # missed: x = 12..16
    for refiner, overshoots in ((SphereRefiner(), False), (FixedBallRefiner(radius_mm=5.0), True)):
        session = InteractiveSession(_image(), draft, refiner=refiner)
        click, point = _robot_click(session, truth)
        assert click.positive and click.index[2] == 14
        added = (session.add_click(point, True, 1).label == 1) & (draft == 0)
        assert added[click.index] and added[..., 12].any() and added[..., 16].any()
        assert (added & ~truth).any() == overshoots


def test_a_negative_click_removes_only_up_to_its_distance_to_the_label_boundary():
    """A 5-voxel false-positive band: the negative click in its middle removes voxels closer to
    it than the nearest voxel outside the label (3 mm), so none of the true label."""
    draft = np.zeros(SHAPE, np.int16)
    draft[..., :18] = 1
    truth = np.zeros(SHAPE, bool)
    truth[..., :13] = True  # false positive: x = 13..17
    session = InteractiveSession(_image(), draft, refiner=SphereRefiner(radius_mm=8.0))
    click, point = _robot_click(session, truth)
    assert not click.positive and click.index[2] == 15
    removed = (draft == 1) & (session.add_click(point, False, 1).label != 1)
    distance = _distances_mm(click.index, session.spacing)
    assert removed[click.index] and removed[..., 13].any() and removed[..., 17].any()
    assert (distance[removed] < 3.0).all() and not (removed & truth).any()
    # the fixed ball of the same cap takes the true label's voxels
    fixed = InteractiveSession(_image(), draft, refiner=FixedBallRefiner(radius_mm=8.0))
    assert ((fixed.add_click(point, False, 1).label != 1) & truth).any()


def test_anisotropic_spacing_is_measured_in_mm():
    """5 mm slices: the draft misses one slice (z = 3). Its nearest label voxel is one slice, 5 mm,
    away, so the ball reaches 4 voxels (4 mm) in plane but no other slice; in voxel units it would
    add only the voxel clicked, and a fixed 5 mm ball also takes the slice beyond the truth."""
    spacing = (5.0, 1.0, 1.0)
    draft = np.zeros(SHAPE, np.int16)
    draft[:3] = 1
    truth = np.zeros(SHAPE, bool)
    truth[:4] = True
    session = InteractiveSession(_image(spacing_zyx=spacing), draft, refiner=SphereRefiner(radius_mm=5.0))
    click = (3, 14, 16)
    point = session.image.TransformIndexToPhysicalPoint(tuple(reversed(click)))
    added = (session.add_click(point, True, 1).label == 1) & (draft == 0)
    assert added[3, 14, 20] and not added[3, 14, 21] and added[3, 18, 16]
    assert not (added & ~truth).any()
    fixed = InteractiveSession(_image(spacing_zyx=spacing), draft, refiner=FixedBallRefiner(radius_mm=5.0))
    assert ((fixed.add_click(point, True, 1).label == 1) & ~truth).any()


def test_the_radius_stays_between_the_floor_and_the_cap():
    """No label voxel within the cap (an empty mask, a new structure): a ball of the cap radius;
    a click beside the label (1 mm from it): a ball of the floor radius."""
    session = InteractiveSession(_image(), np.zeros(SHAPE, np.int16), refiner=SphereRefiner(radius_mm=6.0),
                                 label_values=[1])
    click = (12, 14, 16)
    point = session.image.TransformIndexToPhysicalPoint(tuple(reversed(click)))
    added = session.add_click(point, True, 1).label == 1
    distance = _distances_mm(click, session.spacing)
    assert (added == (distance < 6.0)).all()
    draft = np.zeros(SHAPE, np.int16)
    draft[..., :16] = 1
    session = InteractiveSession(_image(), draft, refiner=SphereRefiner(radius_mm=6.0, floor_mm=2.5))
    added = (session.add_click(point, True, 1).label == 1) & (draft == 0)
    assert (added == ((distance < 2.5) & (draft == 0))).all() and added.sum() > 1


def test_locks_and_undo_hold_through_the_session():
    draft = np.zeros(SHAPE, np.int16)
    draft[..., :10] = 1
    truth = np.zeros(SHAPE, bool)
    truth[..., :19] = True  # a wide missed band: the ball reaches the cap
    session = InteractiveSession(_image(), draft)  # the session's default method is the sphere
    assert isinstance(session.refiner, SphereRefiner)
    click, point = _robot_click(session, truth)
    hand = np.zeros(SHAPE, bool)
    hand[click.index[0], click.index[1], click.index[2] + 2] = True  # confirmed background by hand
    session.paint(hand, 0)
    before = session.label.copy()
    result = session.add_click(point, True, 1)
    assert result.changed > 0 and (result.label[hand] == 0).all()
    assert result.label[click.index[0], click.index[1], click.index[2] + 1] == 1
    session.undo()
    assert np.array_equal(session.label, before) and session.clicks == []
    session.redo()
    assert np.array_equal(session.label, result.label)
