"""Label clean-up: small islands go, organs in two similar parts stay, 0 turns it off; a label the
bundle puts inside another loses its components outside it and is found again by its contrast."""

import numpy as np
import pytest

from crossdomainseg.bundle import BundleError, make_random_bundle, update_bundle
from crossdomainseg.engine import Engine
from crossdomainseg.errors import InputError
from crossdomainseg.postprocess import keep_inside, refit_inside, remove_islands


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


def _liver_with_lesions():
    label = np.zeros((20, 40, 40), np.uint8)
    label[2:18, 5:30, 5:30] = 1   # liver
    label[8:12, 12:16, 12:16] = 2  # lesion inside it: kept
    label[8:12, 10:14, 27:33] = 2  # lesion at its edge, half the liver around it: kept
    label[8:12, 33:37, 33:37] = 2  # "lesion" in another organ: dropped
    label[8:12, 30:40, 0:4] = 3
    label[9:11, 34:36, 1:3] = 2    # inside organ 3, not the liver: dropped
    return label


def test_a_contained_label_loses_the_components_outside_its_parent():
    label = _liver_with_lesions()
    kept = keep_inside(label, {2: 1})
    assert (kept[8:12, 12:16, 12:16] == 2).all() and (kept[8:12, 10:14, 27:33] == 2).all()
    assert (kept[8:12, 33:37, 33:37] == 0).all() and (kept[9:11, 34:36, 1:3] == 0).all()
    assert ((kept != label) == ((label == 2) & (kept == 0))).all()  # nothing else changes
    assert np.array_equal(label, _liver_with_lesions())
    assert np.array_equal(keep_inside(label, {}), label)


def test_bundle_inside_is_checked_and_applied(tmp_path):
    import SimpleITK as sitk

    from crossdomainseg.boundary_fit import fit_bundle_label

    bundle = make_random_bundle(tmp_path / "b", labels={"background": 0, "liver": 1, "lesion": 2, "spleen": 3})
    for bad in ({"lesion": "tumour"}, {"lesion": "lesion"}, {"background": "liver"}, ["lesion", "liver"]):
        with pytest.raises(BundleError, match="inside"):
            update_bundle(bundle.path, metadata={"inside": bad})
    bundle = update_bundle(bundle.path, metadata={"inside": {"lesion": "liver"}})
    label = _liver_with_lesions()
    image = sitk.GetImageFromArray(np.zeros(label.shape, np.float32))
    out = sitk.GetArrayFromImage(fit_bundle_label(bundle.metadata, label, image))
    assert np.array_equal(out, keep_inside(label, {2: 1})) and not np.array_equal(out, label)


def _liver_image(rng):
    """A noisy liver (intensity 100, sd 5) around a true lesion 20 deviations brighter that the
    draft left as a hole, and a drafted "lesion" of liver-like tissue."""
    label = np.zeros((16, 40, 40), np.uint8)
    label[2:14, 5:35, 5:35] = 1
    truth = label.copy()
    truth[6:10, 10:16, 10:16] = 2
    label[6:10, 10:16, 10:16] = 0      # the true lesion: a hole in the draft's liver
    label[6:10, 22:28, 22:28] = 2      # a drafted lesion of liver tissue
    image = rng.normal(0.0, 5.0, label.shape) + np.where(truth == 2, 200.0, np.where(truth == 1, 100.0, 0.0))
    image[0, 0, 0] = 1000.0            # a bright voxel outside the liver stays background
    return image.astype(np.float32), label, truth


def test_a_contained_label_is_found_again_by_its_contrast():
    image, label, truth = _liver_image(np.random.default_rng(0))
    out = refit_inside(image, label, {2: 1}, contrast=12.0)
    assert np.array_equal(out, truth)
    assert np.array_equal(refit_inside(-image, label, {2: 1}, contrast=12.0), truth)  # either sign
    # a contrast the lesion does not reach: the hole stays, the liver-like "lesion" is liver
    weak = refit_inside(image, label, {2: 1}, contrast=50.0)
    assert (weak == 2).sum() == 0 and (weak[6:10, 10:16, 10:16] == 0).all()
    assert np.array_equal(refit_inside(image, label, {}, contrast=12.0), label)
    # 2D: the enclosed hole is found, a bright slot open to the outside is not
    flat, flat_image = label[8].copy(), image[8].copy()
    flat[5:20, 18:22] = 0
    flat_image[5:20, 18:22] = 200.0
    out = refit_inside(flat_image, flat, {2: 1}, contrast=12.0)
    assert (out[10:16, 10:16] == 2).all() and (out[5:20, 18:22] == 0).all()


def test_bundle_inside_contrast_is_checked_and_applied(tmp_path):
    import SimpleITK as sitk

    from crossdomainseg.boundary_fit import fit_bundle_label

    bundle = make_random_bundle(tmp_path / "b", labels={"background": 0, "liver": 1, "lesion": 2})
    inside = {"inside": {"lesion": "liver"}}
    for bad in ({"inside_contrast": {"target": 12.0}}, {**inside, "inside_contrast": {"target": 0}},
                {**inside, "inside_contrast": 12.0}, {**inside, "inside_contrast": {"ct": 12.0}}):
        with pytest.raises(BundleError, match="inside_contrast"):
            update_bundle(bundle.path, metadata=bad)
    bundle = update_bundle(bundle.path, metadata={"inside": {"lesion": "liver"}, "inside_contrast": {"target": 12.0}})
    array, label, truth = _liver_image(np.random.default_rng(1))
    image = sitk.GetImageFromArray(array)
    assert np.array_equal(sitk.GetArrayFromImage(fit_bundle_label(bundle.metadata, label, image)), truth)
    # source images (the lesion's contrast differs there) get no contrast: keep_inside only
    source = sitk.GetArrayFromImage(fit_bundle_label(bundle.metadata, label, image, domain="source"))
    assert np.array_equal(source, keep_inside(label, {2: 1}))
