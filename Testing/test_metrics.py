import math

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg import metrics


def _ball(shape, center, radius):
    grid = np.indices(shape)
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, center))
    return dist2 <= radius**2


def test_dice_known_overlap_and_per_label():
    a = np.zeros((4, 10, 10), np.uint8)
    b = np.zeros_like(a)
    a[:, :5, :] = 1  # 200 voxels
    b[:, :4, :] = 1  # 160 voxels, all inside a
    a[:, 8:, :] = 2
    assert metrics.dice_per_label(a, b) == pytest.approx({1: 2 * 160 / 360, 2: 0.0})
    assert metrics.dice(a, b) == pytest.approx((2 * 160 / 360) / 2)
    assert metrics.dice(a, b, labels=[1]) == pytest.approx(2 * 160 / 360)


def test_dice_empty_masks_are_explicit():
    empty = np.zeros((3, 3, 3), bool)
    full = np.ones((3, 3, 3), bool)
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.dice(empty, full) == 0.0


def test_hd95_and_assd_use_physical_spacing():
    # Two slabs 3 voxels apart along x; x spacing 2 mm -> every surface distance is 6 mm
    # from the facing planes; a spacing mix-up (z or y) would give 3 mm or 9 mm.
    a = np.zeros((20, 20, 30), np.uint8)
    b = np.zeros_like(a)
    a[:, :, 5:10] = 1
    b[:, :, 8:13] = 1
    spacing_xyz = (2.0, 1.0, 3.0)
    shift_mm = 3 * 2.0
    h = metrics.hd95(a, b, spacing_xyz)
    s = metrics.assd(a, b, spacing_xyz)
    assert h == pytest.approx(shift_mm, rel=0.05)
    assert 0 < s <= shift_mm + 1e-6
    # Same through SimpleITK images: the image's own spacing is used.
    img_a, img_b = sitk.GetImageFromArray(a), sitk.GetImageFromArray(b)
    for img in (img_a, img_b):
        img.SetSpacing(spacing_xyz)
    assert metrics.hd95(img_a, img_b) == pytest.approx(h)


def test_surface_distance_of_identical_masks_is_zero_and_empty_is_worst_case():
    a = _ball((16, 16, 16), (8, 8, 8), 5)
    assert metrics.hd95(a, a, (1, 1, 1)) == 0.0
    assert metrics.assd(a, a, (1, 1, 1)) == 0.0
    empty = np.zeros_like(a)
    assert metrics.hd95(empty, empty, (1, 1, 1)) == 0.0
    worst = math.sqrt(3 * 16**2) * 1.0
    assert metrics.hd95(a, empty, (1, 1, 1)) == pytest.approx(worst)
    assert metrics.assd(empty, a, (1, 1, 1)) == pytest.approx(worst)


def test_surface_distance_on_single_slice_2d():
    a = np.zeros((1, 30, 30), bool)
    b = np.zeros_like(a)
    a[0, 10:20, 10:20] = True
    b[0, 10:20, 12:22] = True
    # Squeezing the singleton slice keeps only the true in-plane boundary: 2 px * 0.5 mm.
    assert metrics.hd95(a, b, (0.5, 0.5, 5.0)) == pytest.approx(1.0)


def test_auroc_rank_based_with_ties():
    assert metrics.auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert metrics.auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert metrics.auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # One positive ranked between two negatives.
    assert metrics.auroc([0.1, 0.5, 0.9], [0, 1, 0]) == 0.5
    assert math.isnan(metrics.auroc([0.1, 0.2], [1, 1]))


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)
    pos = rng.random(200) < 0.3
    p, n = scores[pos], scores[~pos]
    pairwise = ((p[:, None] > n[None, :]).sum() + 0.5 * (p[:, None] == n[None, :]).sum()) / (p.size * n.size)
    assert metrics.auroc(scores, pos) == pytest.approx(pairwise)


def test_ece_perfect_and_overconfident():
    conf = np.full(100, 0.75)
    correct = np.r_[np.ones(75), np.zeros(25)]
    assert metrics.ece(conf, correct) == pytest.approx(0.0)
    assert metrics.ece(np.ones(10), np.r_[np.ones(5), np.zeros(5)]) == pytest.approx(0.5)
    probs = np.stack([np.full((2, 2), 0.9), np.full((2, 2), 0.1)])  # always predicts class 0
    ref = np.array([[0, 1], [1, 1]])
    assert metrics.ece_from_probabilities(probs, ref) == pytest.approx(abs(0.25 - 0.9))


def test_spearman_sign_and_constant():
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))
