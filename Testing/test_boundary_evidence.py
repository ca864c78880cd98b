"""What the image says about a label's boundary (interactive/boundary_evidence.py), the boundary shift
click refiner's tools."""

import numpy as np
import pytest

from crossdomainseg.interactive.boundary_evidence import fit_mask, signed_distance
from crossdomainseg.curriculum.params import CurriculumParams
from crossdomainseg.errors import InputError

SPACING = (3.0, 3.0, 3.0)


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def _scene(seed=0):
    """A bright ball (truth, label 1) beside a dark one (label 2) in noise, with labels that
    miss a 1-voxel band of the bright ball's rim and overshoot the dark ball's by one voxel."""
    rng = np.random.default_rng(seed)
    shape = (40, 40, 40)
    bright, dark = _ball(shape, (20, 12, 20), 8), _ball(shape, (20, 30, 20), 6)
    image = 0.5 + 0.4 * bright - 0.4 * dark + rng.normal(0, 0.08, shape)
    truth = np.where(bright, 1, np.where(dark, 2, 0))
    draft = np.where(_ball(shape, (20, 12, 20), 7), 1, np.where(_ball(shape, (20, 30, 20), 7) & ~bright, 2, 0))
    return image.astype(np.float32), truth, draft


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_fit_moves_band_errors_onto_the_image_edges_within_the_rim():
    image, truth, draft = _scene()
    for value in (1, 2):
        mask = draft == value
        fitted, rim = fit_mask(image, mask, SPACING, rim_mm=6.0, prior_mm=4.0)
        before, after = _dice(mask, truth == value), _dice(fitted, truth == value)
        assert after > before + 0.04, (value, before, after)
        assert np.array_equal(rim, np.abs(signed_distance(mask, SPACING)) <= 6.0)
        assert not ((fitted != mask) & ~rim).any()  # only the rim changes


def test_fit_gives_up_without_evidence_and_keeps_the_boundary_on_a_featureless_image():
    image, _, draft = _scene()
    assert fit_mask(image, _ball(draft.shape, (20, 20, 20), 2), SPACING, 6.0, 4.0) is None  # no core
    flat = np.full(image.shape, 0.5, np.float32)
    fitted, _ = fit_mask(flat, draft == 1, SPACING, 6.0, 4.0)
    assert np.array_equal(fitted, draft == 1)


def test_signed_distance_is_negative_inside():
    mask = _ball((21, 21, 21), (10, 10, 10), 5)
    d = signed_distance(mask, SPACING)
    assert d[10, 10, 10] < -12 and d[0, 0, 0] > 20 and abs(d[10, 10, 15]) <= 3


def test_bundles_name_their_curriculum_defaults():
    """for_bundle: the bundle's `curriculum_params` under the caller's overrides; the retired
    pseudo-label fitting parameters are unknown now."""
    from pathlib import Path

    from crossdomainseg.bundle import read_metadata

    params = CurriculumParams.for_bundle({"curriculum_params": {"tau_u0": 0.2, "alpha": 0.01}}, {"alpha": 0.02})
    assert params.tau_u0 == 0.2 and params.alpha == 0.02
    for retired in ("fit", "pseudo_label_fit_mm", "pseudo_label_inside", "pseudo_label_deep"):
        with pytest.raises(InputError, match="Unknown curriculum parameters"):
            CurriculumParams.for_bundle({"curriculum_params": {retired: 1}})
    bundles = Path(__file__).resolve().parents[1] / "Resources" / "bundles"
    shipped = CurriculumParams.for_bundle(read_metadata(bundles / "phantom-ct-mr"))
    # teacher, student and reference read the raw MR as its segmenter does (segmenter_input); the
    # per-class thresholds are the bundle's own setting (off by default)
    assert shipped.student_input == shipped.reference_input == "image"
    assert shipped.class_adaptive_threshold and not CurriculumParams().class_adaptive_threshold
