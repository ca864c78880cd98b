"""Target-appearance replay (curriculum/appearance.py): the class models fitted from the teacher,
per-class histogram matching of source crops and the target's slice geometry (the trainer's
appearance loss: test_curriculum.py)."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from crossdomainseg.curriculum import appearance


def _two_class_crop(rng):
    y = np.zeros((12, 12, 12), np.int64)
    y[3:9, 3:9, 3:9] = 1
    x = np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.03, y.shape)
    return np.clip(x, 0, 1).astype(np.float32), y


def test_render_inverts_a_two_class_contrast_keeping_texture_order_and_labels():
    rng = np.random.default_rng(0)
    x, y = _two_class_crop(rng)
    y_before = y.copy()
    source_q = appearance.class_quantiles(x, y, 2)
    # target: the foreground class dark, the background bright (an inverted contrast)
    target_q = np.stack([np.quantile(rng.normal(0.75, 0.05, 5000), appearance.LEVELS),
                         np.quantile(rng.normal(0.15, 0.02, 5000), appearance.LEVELS)]).astype(np.float32)
    out = appearance.render(x, y, source_q, appearance.TargetAppearance(target_q, ["confident"] * 2), None, rng, "rank")
    assert np.array_equal(y, y_before) and out.shape == x.shape and out.dtype == np.float32
    fg, bg = out[y == 1], out[y == 0]
    assert abs(np.median(fg) - 0.15) < 0.03 and abs(np.median(bg) - 0.75) < 0.05
    assert fg.max() < bg.min()  # the contrast is inverted
    # the source texture's order within a class survives (up to the small rank jitter)
    order = np.argsort(x[y == 1])
    assert np.corrcoef(np.argsort(order), np.argsort(np.argsort(fg)))[0, 1] > 0.99
    # a class with no target model keeps its source intensities
    partial = appearance.TargetAppearance(np.stack([target_q[0], np.full_like(target_q[1], np.nan)]),
                                          ["confident", "none"])
    kept = appearance.render(x, y, source_q, partial, None, rng, "rank")
    assert np.array_equal(kept[y == 1], x[y == 1]) and np.median(kept[y == 0]) > 0.6


def test_tied_source_values_spread_over_the_target_distribution():
    rng = np.random.default_rng(1)
    x = np.concatenate([np.zeros(600), rng.uniform(0, 1, 400)]).astype(np.float32)  # 60% clipped at 0
    y = np.zeros(x.shape, np.int64)
    target = np.quantile(rng.uniform(0.2, 0.6, 5000), appearance.LEVELS)[None].astype(np.float32)
    out = appearance.render(x, y, appearance.class_quantiles(x, y, 1),
                            appearance.TargetAppearance(target, ["confident"]), None, rng, "rank")
    tied = out[:600]
    assert tied.std() > 0.05 and tied.max() < 0.5  # spread over the lower ranks, not piled on one value


def _image(size, spacing, direction):
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def test_slice_geometry_of_a_tilted_coronal_image_lands_on_the_y_axis():
    # coronal slices tilted by 8 and 10 degrees: the slice normal is nearest physical y (LPS),
    # array axis 1 of a (z, y, x) working grid
    rotation = (Rotation.from_euler("z", 10, degrees=True) * Rotation.from_euler("x", -82, degrees=True)).as_matrix()
    assert np.abs(rotation[:, 2]).argmax() == 1
    coronal = _image((40, 40, 8), (1.0, 1.0, 5.0), tuple(rotation.ravel()))
    assert appearance.slice_geometry(coronal, (1.5, 2.0, 3.0)) == (1, pytest.approx(2.5))
    axial = _image((40, 40, 8), (1.0, 1.0, 4.5), tuple(np.eye(3).ravel()))
    assert appearance.slice_geometry(axial, (1.5, 2.0, 3.0)) == (0, pytest.approx(1.5))
    sagittal_thick_first = _image((8, 40, 40), (6.0, 1.0, 1.0), tuple(np.eye(3).ravel()))
    assert appearance.slice_geometry(sagittal_thick_first, (2.0, 2.0, 2.0)) == (2, pytest.approx(3.0))
    assert appearance.slice_geometry(_image((40, 40, 40), (1.0, 1.0, 1.2), tuple(np.eye(3).ravel())), (1, 1, 1)) is None
    assert appearance.slice_geometry(_image((40, 40, 8), (1.0, 1.0, 5.0), tuple(np.eye(3).ravel())), (6, 6, 6)) is None
    assert appearance.slice_geometry(_image((40, 40, 1), (1.0, 1.0, 5.0), tuple(np.eye(3).ravel())), (1, 1, 1)) is None


def test_render_blurs_along_the_target_slice_axis_only():
    rng = np.random.default_rng(2)
    x = np.zeros((24, 24, 24), np.float32)
    x[:, ::2, :] = 1.0  # stripes along array axis 1
    x[:, :, ::2] += 1.0  # and along axis 2
    x /= 2
    y = np.zeros(x.shape, np.int64)
    identity = appearance.TargetAppearance(appearance.LEVELS[None].astype(np.float32), ["confident"])
    q = appearance.LEVELS[None].astype(np.float32)
    out = appearance.render(x, y, q, identity, (1, 3.0), rng, "rank")
    assert np.abs(np.diff(out, axis=1)).mean() < 0.2 * np.abs(np.diff(x, axis=1)).mean()
    assert np.abs(np.diff(out, axis=2)).mean() > 0.5 * np.abs(np.diff(x, axis=2)).mean()


def _source_quantiles(medians):
    return np.stack([np.full(len(appearance.LEVELS), m, np.float32) for m in medians])


def test_fit_ignores_unconfident_voxels_and_borrows_for_a_class_the_teacher_is_not_sure_of():
    rng = np.random.default_rng(3)
    n = 4000
    x = np.concatenate([rng.normal(0.8, 0.02, n), rng.normal(0.1, 0.02, n), rng.normal(0.5, 0.02, n),
                        rng.normal(0.3, 0.02, n)])
    probs = np.zeros((5, 4 * n), np.float32)
    probs[1, :n], probs[0, :n] = 0.95, 0.05  # label 1, confident, bright
    probs[1, n:2 * n], probs[0, n:2 * n] = 0.6, 0.4  # label 1 too, unsure, dark
    probs[2, 2 * n:3 * n], probs[0, 2 * n:3 * n] = 0.7, 0.3  # label 2: never confident
    probs[0, 3 * n:] = 1.0
    shares = np.array([0, 0.4, 0.2, 0.2, 0.2])
    # in the source, label 2 looks like label 1, label 3 like background; label 4 is absent
    source_q = _source_quantiles([0.3, 0.6, 0.62, 0.28, np.nan])
    fitted = appearance.fit([(x[:, None], probs[:, :, None])], shares, source_q, confidence=0.9)
    assert fitted.origin == ["confident", "confident", "like 1", "like 0", "none"]
    medians = fitted.medians()
    assert medians[1] == pytest.approx(0.8, abs=0.01)  # the unsure dark voxels are left out
    assert medians[2] == medians[1] and medians[4] is None and np.isnan(fitted.quantiles[4]).all()


def test_fit_needs_confident_voxels_covering_a_share_of_the_expected_label():
    rng = np.random.default_rng(6)
    x = rng.normal(0.5, 0.02, 100_000)
    probs = np.zeros((3, len(x)), np.float32)
    probs[0] = 1.0
    probs[:, :20_000] = [[0.0], [1.0], [0.0]]  # label 1: 20000 confident voxels
    probs[:, 20_000:20_300] = [[0.0], [0.0], [1.0]]  # label 2: 300, under 5% of the 10150 expected
    source_q = _source_quantiles([0.1, 0.5, 0.55])
    fitted = appearance.fit([(x, probs)], np.array([0, 0.5, 0.5]), source_q)
    assert fitted.origin == ["confident", "confident", "like 1"]
    assert appearance.fit([(x, probs)], np.array([0, 0.9, 0.1]), source_q).origin[2] == "confident"


def test_fit_keeps_a_labels_main_mode_but_all_of_background():
    rng = np.random.default_rng(4)
    # 12% of the confident voxels of label 1 are dark outliers (the teacher's confident errors);
    # background is air and bright fat at once
    label = np.concatenate([rng.normal(0.7, 0.03, 8800), rng.normal(0.05, 0.02, 1200)])
    background = np.concatenate([rng.normal(0.02, 0.01, 5000), rng.normal(0.9, 0.03, 5000)])
    x = np.concatenate([label, background])
    probs = np.zeros((2, len(x)), np.float32)
    probs[1, :len(label)], probs[0, len(label):] = 1.0, 1.0
    fitted = appearance.fit([(x, probs)], np.array([0, 1.0]), _source_quantiles([0.1, 0.5]))
    assert fitted.quantiles[1][1] > 0.6  # the 1st percentile is tissue, not the outliers
    assert fitted.quantiles[0][10] < 0.1 and fitted.quantiles[0][90] > 0.8  # both background modes


def test_flat_texture_drops_the_source_order_within_a_label_and_keeps_its_fine_texture():
    rng = np.random.default_rng(5)
    y = np.zeros((10, 10, 30), np.int64)
    y[:, :, 5:25] = 1
    ramp = np.linspace(0.3, 0.9, 30)[None, None, :]  # source intensity rising across label 1
    x = (np.where(y == 1, ramp, 0.1) + rng.normal(0, 0.01, y.shape)).astype(np.float32)
    source_q = appearance.class_quantiles(x, y, 2)
    target = appearance.TargetAppearance(np.stack([np.linspace(0.6, 0.7, 101), np.linspace(0.1, 0.5, 101)]).astype(np.float32),
                                         ["confident"] * 2)
    inner = (slice(None), slice(None), slice(8, 22))
    position = np.broadcast_to(np.arange(30)[None, None, :], y.shape)[inner].ravel()
    ranked = appearance.render(x, y, source_q, target, None, rng, "rank")[inner].ravel()
    flat = appearance.render(x, y, source_q, target, None, rng, "flat")[inner].ravel()
    assert np.corrcoef(ranked, position)[0, 1] > 0.9  # "rank" keeps the source's order
    assert abs(np.corrcoef(flat, position)[0, 1]) < 0.3 and abs(np.median(flat) - 0.3) < 0.05
    # the source's fine texture (here its noise) is kept, scaled
    clean = np.where(y == 1, ramp, 0.1).astype(np.float32)
    flat_clean = appearance.render(clean, y, source_q, target, None, rng, "flat")[inner].ravel()
    assert flat.std() > 3 * flat_clean.std()
