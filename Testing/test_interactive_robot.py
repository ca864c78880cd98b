"""The simulated user and the click metrics."""

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg.interactive import InteractiveSession
from crossdomainseg.interactive.sphere import SphereRefiner
from crossdomainseg.evaluation.robot import noc, robot_on_label
from crossdomainseg.interactive.simulate import next_click, training_clicks

SHAPE = (32, 32, 32)


def _ball(center, radius):
    g = np.ogrid[tuple(slice(0, n) for n in SHAPE)]
    return sum((a - c) ** 2 for a, c in zip(g, center)) <= radius**2


def test_first_click_goes_to_the_object_interior():
    truth = _ball((16, 14, 18), 6)
    click = next_click(truth, np.zeros_like(truth))
    assert click.positive and click.index == (16, 14, 18)


def test_click_goes_to_the_largest_error_region():
    truth = _ball((16, 16, 16), 8)
    pred = truth.copy()
    pred[_ball((16, 16, 16), 3)] = False  # small hole: false negative
    fp = _ball((5, 5, 26), 4) & ~truth  # larger false-positive blob
    pred |= fp
    click = next_click(truth, pred)
    assert not click.positive and fp[click.index]
    assert click.size == int(fp.sum())


def test_a_sliver_one_voxel_thick_is_clicked_in_its_middle():
    # a draft one voxel short along a face of the object (a boundary sliver, as drafts on brain
    # leave them): every voxel of the error lies at the same depth, and the user clicks its middle,
    # not its first voxel in memory order at a corner
    truth = np.zeros(SHAPE, bool)
    truth[8:20, 6:26, 4:28] = True
    pred = truth.copy()
    pred[8, 6:26, 4:28] = False
    for spacing in ((1.0, 1.0, 1.0), (1.5, 1.5, 1.5), (5.0, 1.0, 1.0)):
        click = next_click(truth, pred, spacing)
        assert click.positive and click.index[0] == 8
        assert abs(click.index[1] - 15.5) <= 1 and abs(click.index[2] - 15.5) <= 1, (spacing, click.index)
    clicks, _ = training_clicks(truth, pred, 1, (1.5, 1.5, 1.5))
    assert abs(clicks[0].index[1] - 15.5) <= 1 and abs(clicks[0].index[2] - 15.5) <= 1


def test_training_clicks_fix_earlier_regions():
    truth = _ball((16, 16, 16), 8)
    pred = truth & ~_ball((16, 16, 22), 4)
    pred |= _ball((16, 16, 4), 3) & ~truth
    clicks, current = training_clicks(truth, pred, 2)
    assert len(clicks) == 2
    assert clicks[0].positive != clicks[1].positive
    # before the last click, the first click's region is already corrected
    first = clicks[0]
    assert (current[first.region][first.mask] == first.positive).all()


def test_training_clicks_are_next_clicks_on_the_corrected_label():
    # training_clicks finds the error components once; it must click where next_click would
    # after each correction, ties and all, and stop when nothing is left to correct
    rng = np.random.default_rng(0)
    for _ in range(30):
        truth, pred = rng.random((2, 8, 14, 14)) < 0.35
        clicks, current = training_clicks(truth, pred, 12, (3.0, 2.0, 2.0))
        expected, now = [], pred.copy()
        for i in range(12):
            click = next_click(truth, now, (3.0, 2.0, 2.0))
            if click is None:
                break
            expected.append((click.index, click.positive, click.size))
            if i < 11:
                now[click.region][click.mask] = click.positive
        assert [(c.index, c.positive, c.size) for c in clicks] == expected
        assert np.array_equal(current, now)
    everything_right = training_clicks(truth, truth, 5)
    assert everything_right[0] == [] and np.array_equal(everything_right[1], truth)


def test_noc_counts_clicks_and_caps():
    assert noc([0.5, 0.8, 0.91, 0.95], 0.9) == (2, True)
    assert noc([0.95], 0.9) == (0, True)
    assert noc([0.5] * 25, 0.9, cap=20) == (20, False)


def test_robot_session_with_sphere_clicks_improves_dice():
    truth = _ball((16, 16, 16), 9).astype(np.int16)
    pred = _ball((16, 16, 16), 6).astype(np.int16)
    image = sitk.GetImageFromArray(truth.astype(np.float32) * 50)
    session = InteractiveSession(image, pred, refiner=SphereRefiner(radius_mm=3))
    curve, latencies, other_drop = robot_on_label(session, truth, 1, max_clicks=5)
    assert len(curve) == 6 and len(latencies) == 5 and other_drop == 0.0
    assert curve[-1] > curve[0] + 0.05
    assert all(b >= a - 1e-9 for a, b in zip(curve, curve[1:]))
    assert len(session.clicks) == 5


def test_robot_does_not_click_where_it_cannot_add():
    truth = _ball((16, 16, 16), 8)
    other_label = _ball((16, 16, 16), 8) & ~_ball((16, 16, 16), 5)  # most of the miss is another label
    pred = _ball((16, 16, 16), 5)
    small_gap = _ball((16, 16, 24), 2) & truth & ~pred
    addable = ~other_label | small_gap
    click = next_click(truth, pred, addable=addable)
    assert click.positive and small_gap[click.index]


def test_summary_reports_the_worst_drop_and_how_many_clicks_lowered_dice():
    from crossdomainseg.evaluation.clicks import summarise

    curves = [[0.5, 0.6, 0.595, 0.7], [0.2, 0.1, 0.3, 0.28]]
    summary = summarise(curves, [0.01] * 6, ["a/liver", "b/spleen"])
    assert summary["max_dice_drop"] == pytest.approx(0.1)
    assert summary["max_dice_drop_where"] == {"object": "b/spleen", "click": 1}
    assert summary["clicks_dropping_over_0.01"] == 2 and summary["clicks_scored"] == 6
