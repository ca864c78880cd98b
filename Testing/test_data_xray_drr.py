"""xray-drr: 2D geometry, projected labels, Beer-Lambert DRRs and the DRR -> X-ray domain gap."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage, stats

from crossdomainseg.data import generate_case
from crossdomainseg.data.render_xray import DEPTH_STEP_MM, MU_WATER, drr, project_labels
from crossdomainseg.data.thorax import Tissue

TASK = "xray-drr"


def arr(image):
    return sitk.GetArrayFromImage(image)[0]


@pytest.fixture(scope="module")
def cases():
    return generate_case(TASK, 3, "source"), generate_case(TASK, 3, "target", with_paired=True)


def test_single_slice_geometry(cases):
    for case in cases:
        for image in (case.image, case.label):
            assert image.GetSize() == (128, 128, 1)
            assert np.allclose(image.GetSpacing()[:2], (2.8, 2.8))
            assert np.allclose(image.GetDirection(), np.eye(3).ravel())
            assert np.allclose(image.GetOrigin(), case.image.GetOrigin())
    _, target = cases
    assert target.paired_source.GetSize() == target.image.GetSize()


def test_projected_labels(cases):
    for case in cases:
        label = arr(case.label)
        assert set(np.unique(label)) == {0, 1, 2}
        lungs, heart = label == 1, label == 2
        assert 0.15 < lungs.mean() < 0.5 and 0.03 < heart.mean() < 0.2
        rows, cols = np.nonzero(lungs)
        # Lungs on both sides of the midline, above the heart's centre (head at row 0).
        assert cols.min() < 64 < cols.max()
        assert rows.mean() < np.nonzero(heart)[0].mean()
        # The heart leans to the patient's left (+x, right half of the image).
        assert np.nonzero(heart)[1].mean() > 64


def test_heart_wins_where_it_overlaps_a_lung():
    tissue = np.zeros((4, 3, 5), np.uint8)  # (z, y, x); rays run along y
    tissue[1, 0, 1] = Tissue.LUNG
    tissue[1, 2, 1] = Tissue.HEART
    tissue[2, 1, 3] = Tissue.LUNG
    label = project_labels(tissue)
    assert label[::-1][1, 1] == 2 and label[::-1][2, 3] == 1 and label.sum() == 3


def test_drr_is_beer_lambert_line_integral():
    hu = np.full((2, 10, 2), -1000.0, np.float32)
    hu[:, 5:, :] = 0.0  # 5 samples of water along each ray
    assert np.allclose(drr(hu), 5 * DEPTH_STEP_MM * MU_WATER, rtol=1e-5)


def test_source_drr_brightness_follows_attenuation(cases):
    source, _ = cases
    image, label = arr(source.image), arr(source.label)
    assert image.dtype == np.float32
    # Air paths (lungs) attenuate less than heart and mediastinum; outside the body almost nothing.
    assert image[label == 1].mean() < image[label == 2].mean()
    assert image[:, :3].max() < 0.05 * image[label == 2].mean()


def test_target_physics_differs_from_drr(cases):
    _, target = cases
    image, paired, label = arr(target.image), arr(target.paired_source), arr(target.label)
    assert image.dtype == np.int16 and 0 <= image.min() and image.max() <= 4095
    # Collimator shutters or the burned-in marker saturate pixels; the DRR has none.
    assert (image == 4095).sum() > 20
    assert (paired >= paired.max() * 0.999).sum() < 20
    # The same subject's DRR and radiograph are far from a monotone remap of each other.
    rho = stats.spearmanr(paired.ravel(), image.ravel()).statistic
    assert rho < 0.9
    # Per-label statistics differ between domains: lung/heart contrast (relative to spread).
    def contrast(a):
        return (a[label == 2].mean() - a[label == 1].mean()) / a[label > 0].std()
    assert abs(contrast(paired) - contrast(image.astype(float))) > 0.1


@pytest.mark.parametrize("seed", [0, 2])
def test_target_is_noisier_than_its_drr(seed):
    """Quantum noise: fine-scale variation inside the lungs, relative to the heart/lung contrast."""
    case = generate_case(TASK, seed, "target", with_paired=True)
    label = arr(case.label)
    lung = ndimage.binary_erosion(label == 1, iterations=3)

    def roughness(x):
        x = x.astype(float)
        fine = x - ndimage.gaussian_filter(x, 1.5)
        return fine[lung].std() / abs(x[label == 2].mean() - x[lung].mean())

    assert roughness(arr(case.image)) > 1.5 * roughness(arr(case.paired_source))


def test_determinism_and_variability():
    a, b, c = (generate_case(TASK, s, "target", with_paired=True) for s in (5, 5, 6))
    for attr in ("image", "label", "paired_source"):
        assert np.array_equal(arr(getattr(a, attr)), arr(getattr(b, attr)))
        assert not np.array_equal(arr(getattr(a, attr)), arr(getattr(c, attr)))
    hearts = [(arr(generate_case(TASK, s, "source").label) == 2).sum() for s in range(4)]
    assert np.std(hearts) / np.mean(hearts) > 0.05
