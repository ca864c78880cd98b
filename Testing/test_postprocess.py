"""Label clean-up: small islands go, organs in two similar parts stay, 0 turns it off."""

import numpy as np
import pytest

from crossdomainseg.bundle import make_random_bundle
from crossdomainseg.engine import Engine
from crossdomainseg.errors import InputError
from crossdomainseg.postprocess import remove_islands


def _label():
    label = np.zeros((1, 40, 40), np.uint8)
    label[0, 5:15, 5:15] = 1    # left lung, 100 voxels
    label[0, 5:15, 25:34] = 1   # right lung, 90: kept
    label[0, 30:32, 30:32] = 1  # 4-voxel stray island: removed
    label[0, 20:28, 10:18] = 2  # heart
    label[0, 35, 2] = 2         # 1-voxel island of another label: removed
    return label


def test_small_islands_are_removed_and_similar_parts_kept():
    label = _label()
    clean = remove_islands(label, 0.2)
    assert clean[0, 30:32, 30:32].sum() == 0 and clean[0, 35, 2] == 0
    assert (clean == 1).sum() == 190 and (clean == 2).sum() == 64
    assert np.array_equal(label, _label())  # the input is not changed
    assert np.array_equal(remove_islands(label, 0.0), label)


def test_engine_rejects_a_bad_island_fraction(tmp_path):
    bundle = make_random_bundle(tmp_path / "b")
    with pytest.raises(InputError, match="min_island_fraction"):
        Engine(bundle, device="cpu", min_island_fraction=1.5)


def test_engine_labels_are_cleaned(tmp_path):
    import SimpleITK as sitk

    bundle = make_random_bundle(tmp_path / "b", spatial_dims=2, spacing=1.0, roi=64)
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.normal(size=(1, 64, 64)).astype(np.float32))
    raw = Engine(bundle, device="cpu", min_island_fraction=0).segment(image, preview=False, uncertainty=False)
    clean = Engine(bundle, device="cpu").segment(image, preview=False, uncertainty=False)
    raw, clean = sitk.GetArrayFromImage(raw.label), sitk.GetArrayFromImage(clean.label)
    assert np.array_equal(clean, remove_islands(raw))
    assert (clean != raw).any()  # a random network on noise leaves islands to remove
