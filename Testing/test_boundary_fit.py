"""Fitting label boundaries to the image (boundary_fit), the post-processing step boundary_fit's core."""

import numpy as np
import pytest

from crossdomainseg.boundary_fit import fit_labels, majority, signed_distance
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


def test_fit_moves_band_errors_onto_the_image_edges():
    image, truth, draft = _scene()
    fitted = fit_labels(image, draft, SPACING, rim_mm=6.0, prior_mm=4.0)
    for value in (1, 2):
        before, after = _dice(draft == value, truth == value), _dice(fitted == value, truth == value)
        assert after > before + 0.04, (value, before, after)
    # only voxels within the rim of some label change, and labels never trade voxels (only via background)
    rims = np.zeros(draft.shape, bool)
    for value in (1, 2):
        rims |= np.abs(signed_distance(draft == value, SPACING)) <= 6.0
    assert not ((fitted != draft) & ~rims).any()
    assert not ((fitted > 0) & (draft > 0) & (fitted != draft)).any()


def test_deep_fit_takes_off_a_swallowed_slab_thicker_than_the_rim():
    """A dark ball whose label also holds a 15 mm slab of the bright tissue beside it (as the
    network's kidneys hold the fat around them): the rim fit alone leaves the slab's inside,
    whose intensity is also in the label's core; the deep fit takes the slab off whole and leaves
    the ball."""
    rng = np.random.default_rng(0)
    shape = (40, 40, 48)
    organ = _ball(shape, (20, 20, 16), 8)
    slab = np.zeros(shape, bool)
    slab[10:31, 10:31, 24:29] = True  # 5 voxels: 15 mm
    image = (0.3 + 0.4 * (~organ) + rng.normal(0, 0.05, shape)).astype(np.float32)
    draft = (organ | slab).astype(np.uint8)
    plain = fit_labels(image, draft, SPACING, 6.0, 4.0)
    deep = fit_labels(image, draft, SPACING, 6.0, 4.0, deep=True)
    assert (plain.astype(bool) & slab & ~organ).sum() > 0.1 * slab.sum()
    assert (deep.astype(bool) & slab & ~organ).sum() < 0.02 * slab.sum()
    assert _dice(deep == 1, organ) > 0.95
    fitted = fit_labels(image, organ.astype(np.uint8), SPACING, 6.0, 4.0, deep=True)
    assert _dice(fitted == 1, organ) > 0.97  # nothing swallowed: the deep fit keeps the organ


def test_fit_keeps_small_labels_and_featureless_images():
    image, truth, draft = _scene()
    small = np.zeros_like(draft)
    small[_ball(draft.shape, (20, 20, 20), 3)] = 4  # 123 voxels: too few for a histogram
    assert np.array_equal(fitted := fit_labels(image, small, SPACING, 6.0, 4.0), small)
    flat = np.full(image.shape, 0.5, np.float32)  # no evidence: the prior keeps the boundary
    fitted = fit_labels(flat, draft, SPACING, 6.0, 4.0)
    assert np.array_equal(fitted, draft)


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
    assert shipped.student_input == "image" and shipped.tau_u0 > CurriculumParams().tau_u0


def test_majority_evens_out_speckle():
    truth = _ball((30, 30, 30), (15, 15, 15), 9).astype(np.uint8)
    rng = np.random.default_rng(3)
    speckled = np.where(rng.random(truth.shape) < 0.05, 1 - truth, truth).astype(np.uint8)
    assert (majority(speckled) != truth).mean() < 0.2 * (speckled != truth).mean()
