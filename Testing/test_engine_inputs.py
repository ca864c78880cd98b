"""Bad input to the engine: each case gets an InputError that says what is wrong."""

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg.bundle import make_random_bundle
from crossdomainseg.engine import Engine
from crossdomainseg.errors import BundleError, InputError


@pytest.fixture(scope="module")
def engine3d(tmp_path_factory):
    return Engine(make_random_bundle(tmp_path_factory.mktemp("b") / "bundle", spacing=2.0, roi=32))


@pytest.fixture(scope="module")
def engine2d(tmp_path_factory):
    return Engine(make_random_bundle(tmp_path_factory.mktemp("b") / "bundle", spatial_dims=2, roi=32))


def volume(shape=(16, 20, 24), spacing=(2.0, 2.0, 2.0), fill=None):
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32) if fill is None else fill
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def test_wrong_dimensionality(engine3d, engine2d):
    four_d = sitk.Image([8, 8, 8, 3], sitk.sitkFloat32)
    with pytest.raises(InputError, match="4D"):
        engine3d.segment(four_d)
    with pytest.raises(InputError, match="3D volumes"):
        engine3d.segment(volume(shape=(1, 20, 24)))
    with pytest.raises(InputError, match="2D images"):
        engine2d.segment(volume(spacing=(1.0, 1.0, 1.0)))
    rgb = sitk.Compose([volume()] * 3)
    with pytest.raises(InputError, match="components"):
        engine3d.segment(rgb)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_voxels(engine3d, bad):
    array = np.random.default_rng(0).normal(size=(16, 20, 24)).astype(np.float32)
    array[3, 4, 5] = bad
    with pytest.raises(InputError, match="NaN or infinite"):
        engine3d.segment(volume(fill=array))


def test_empty_and_constant_images(engine3d):
    with pytest.raises(InputError, match="same value"):
        engine3d.segment(volume(fill=np.full((16, 20, 24), 7.0, np.float32)))
    with pytest.raises(InputError, match="same value"):
        engine3d.segment(volume(fill=np.zeros((16, 20, 24), np.float32)))


def test_spacing_far_from_bundle(engine3d):
    with pytest.raises(InputError, match="far from"):
        engine3d.segment(volume(spacing=(0.2, 0.2, 2.0)))  # 10x finer in-plane
    with pytest.raises(InputError, match="far from"):
        engine3d.segment(volume(spacing=(2.0, 2.0, 15.0)))  # 7.5x thicker slices
    result = engine3d.segment(volume(spacing=(1.0, 1.0, 5.0)), uncertainty=False)  # within range
    assert result.label.GetSpacing() == (1.0, 1.0, 5.0)


def test_volume_too_large_for_memory_is_refused(tmp_path):
    bundle = make_random_bundle(tmp_path / "bundle", spacing=2.0, roi=32)
    engine = Engine(bundle, memory_limit_bytes=200 * 2**20)
    small = volume(shape=(16, 16, 16))
    engine.segment(small, uncertainty=False)  # fits
    with pytest.raises(InputError, match="GiB .*crop"):
        engine.segment(volume(shape=(96, 96, 96)))


def test_unreadable_path_and_bad_bundle(engine3d, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        engine3d.segment(tmp_path / "missing.nii.gz")
    with pytest.raises(BundleError):
        Engine(tmp_path)  # neither a bundle nor a registry
    with pytest.raises(InputError, match="tta_n"):
        Engine(engine3d.bundle, tta_n=0)
    with pytest.raises(InputError, match="mode"):
        Engine(engine3d.bundle, mode="magic")
