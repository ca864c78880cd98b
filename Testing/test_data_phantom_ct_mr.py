"""phantom-ct-mr: geometry, label integrity, determinism and the CT -> MR domain gap."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage, stats

from crossdomainseg.data import generate_case
from crossdomainseg.errors import InputError

TASK = "phantom-ct-mr"
ORGANS = {"liver": 1, "kidneys": 2, "spleen": 3, "lesion": 4}


def arr(image):
    return sitk.GetArrayFromImage(image)


@pytest.fixture(scope="module")
def subject():
    """Subject 11 rendered in both domains (same anatomy): CT grid and oblique MR grid."""
    return generate_case(TASK, 11, "source"), generate_case(TASK, 11, "target", with_paired=True)


def same_grid(a, b):
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


def rotation_degrees(direction):
    d = np.array(direction).reshape(3, 3)
    if np.linalg.det(d) < 0:  # a stored left-right flip
        d = d @ np.diag([-1.0, 1.0, 1.0])
    return np.degrees(np.arccos(np.clip((np.trace(d) - 1) / 2, -1, 1)))


def test_ct_grid_is_axial_hu(subject):
    ct, _ = subject
    assert ct.image.GetSpacing() == (1.5, 1.5, 2.5)
    assert np.allclose(ct.image.GetDirection(), np.eye(3).ravel())
    assert same_grid(ct.image, ct.label)
    assert np.prod(ct.image.GetSize()) < 1.5e6
    a, label = arr(ct.image), arr(ct.label)
    assert a.dtype == np.int16 and label.dtype == np.uint8
    assert np.median(a[:, :3, :3]) < -900  # air around the body
    assert 40 < a[label == 1].mean() < 80  # liver HU
    assert a[label == 4].mean() < a[label == 1].mean() - 20  # hypodense lesion


def test_mr_grid_is_oblique_coarser_and_shared(subject):
    _, mr = subject
    assert mr.image.GetSpacing() == (1.8, 1.8, 3.0)
    direction = np.array(mr.image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-6)
    assert 9.9 < rotation_degrees(direction) < 25.1
    assert same_grid(mr.image, mr.label) and same_grid(mr.image, mr.paired_source)
    assert np.prod(mr.image.GetSize()) < 1.5e6
    assert arr(mr.image).min() >= 0  # magnitude image


def test_directions_vary_and_include_flips():
    grids = [generate_case(TASK, seed, "target").image.GetDirection() for seed in range(6)]
    assert len({np.round(g, 3).tobytes() for g in map(np.array, grids)}) == 6
    assert any(np.linalg.det(np.array(g).reshape(3, 3)) < 0 for g in grids)


def _physical_stats(label, value):
    """Volume (ml) and LPS centroid (mm) of one label, from the image's own geometry."""
    idx = np.argwhere(arr(label) == value)[:, ::-1].astype(float)  # (x, y, z) indices
    direction = np.array(label.GetDirection()).reshape(3, 3)
    points = np.asarray(label.GetOrigin()) + (idx * label.GetSpacing()) @ direction.T
    return len(idx) * np.prod(label.GetSpacing()) / 1000, points.mean(axis=0)


def test_same_subject_agrees_in_patient_space_across_grids(subject):
    ct, mr = subject
    for value in (1, 2, 3):
        v_ct, c_ct = _physical_stats(ct.label, value)
        v_mr, c_mr = _physical_stats(mr.label, value)
        assert abs(v_ct - v_mr) / v_ct < 0.1
        assert np.linalg.norm(c_ct - c_mr) < 3.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("domain", ["source", "target"])
def test_label_integrity(seed, domain):
    case = generate_case(TASK, seed, domain)
    label = arr(case.label)
    assert set(np.unique(label)) == {0, 1, 2, 3, 4}
    lesion = label == 4
    assert ndimage.label(lesion)[1] == 1
    # Surrounded by liver: its one-voxel shell is liver only.
    shell = ndimage.binary_dilation(lesion) & ~lesion
    assert np.all(label[shell] == 1)
    diameter = 2 * (lesion.sum() * np.prod(case.label.GetSpacing()) * 3 / (4 * np.pi)) ** (1 / 3)
    assert 7 <= diameter <= 22
    for value in (1, 3):  # liver and spleen: one solid organ (boundary voxels aside)
        components = np.bincount(ndimage.label(label == value)[0].ravel())[1:]
        assert components.max() > 0.99 * components.sum()
    assert lesion.sum() < 0.05 * (label == 1).sum()


def test_anatomy_varies_between_subjects():
    volumes = np.array([[(arr(generate_case(TASK, s, "source").label) == v).sum() for v in (1, 2, 3, 4)]
                        for s in range(4)])
    spread = volumes.std(axis=0) / volumes.mean(axis=0)
    assert np.all(spread > 0.05)


def test_determinism_by_seed():
    a, b, c = (generate_case(TASK, s, "target", with_paired=True) for s in (5, 5, 6))
    for attr in ("image", "label", "paired_source"):
        assert np.array_equal(arr(getattr(a, attr)), arr(getattr(b, attr)))
    assert a.image.GetDirection() == b.image.GetDirection()
    assert not np.array_equal(arr(a.label), arr(c.label)) or a.image.GetDirection() != c.image.GetDirection()
    assert a.image.GetDirection() != c.image.GetDirection()


def test_domain_gap_reorders_label_intensities(subject):
    """Same subject, same grid: per-label means in MR are not ordered as in CT (non-monotone)."""
    _, mr = subject
    label = arr(mr.label)
    ct_means = [arr(mr.paired_source)[label == v].mean() for v in ORGANS.values()]
    mr_means = [arr(mr.image)[label == v].mean() for v in ORGANS.values()]
    assert stats.spearmanr(ct_means, mr_means).statistic < 0.5
    # Lesion: darkest organ in CT, brightest in MR.
    assert np.argmin(ct_means) == 3 and np.argmax(mr_means) == 3
    # Voxelwise inside the body, MR is far from a monotone function of CT.
    body = arr(mr.paired_source) > -500
    rho = stats.spearmanr(arr(mr.paired_source)[body][::7], arr(mr.image)[body][::7]).statistic
    assert rho < 0.5


def test_mr_has_bias_field_and_noise():
    case = generate_case(TASK, 3, "target")
    image, label = arr(case.image).astype(float), arr(case.label)
    liver = image[label == 1]
    assert liver.std() / liver.mean() > 0.08  # texture + noise + bias, not a flat value
    background = image[:3][arr(case.label)[:3] == 0]
    assert background.mean() > 0  # Rician floor: no exact zeros on average


def test_size_override_for_benchmarks():
    case = generate_case(TASK, 0, "target", size=(128, 128, 128))
    assert case.image.GetSize() == (128, 128, 128)
    assert np.allclose(case.image.GetSpacing(), (200 / 128, 160 / 128, 160 / 128))
    assert set(np.unique(arr(case.label))) == {0, 1, 2, 3, 4}


def test_bad_requests_raise_input_error():
    with pytest.raises(InputError, match="unknown task"):
        generate_case("nope", 0, "source")
    with pytest.raises(InputError, match="domain"):
        generate_case(TASK, 0, "other")
    with pytest.raises(InputError, match="overrides"):
        generate_case(TASK, 0, "source", size=(64, 64, 64))
