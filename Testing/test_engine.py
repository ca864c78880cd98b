"""Engine: geometry round trip, outputs, model kept warm, registry following, progress/cancel.

Random-weight bundles (bundle.make_random_bundle) keep these fast. Where a test needs a network
whose answer is known, the segmenter is swapped for a voxel-wise threshold, so what is checked is
the engine's own work (grids, resampling, orientation, TTA wiring), not a trained model.
"""

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from crossdomainseg import geometry, metrics
from crossdomainseg.bundle import make_random_bundle, update_bundle
from crossdomainseg.engine import Engine, SegmentationCancelled
from crossdomainseg.errors import BundleError


class Threshold(torch.nn.Module):
    """Foreground where the normalised intensity exceeds 0.5 (sharp sigmoid)."""

    def forward(self, x):
        z = (x - 0.5) * 40
        return torch.cat([-z, z], dim=1)


@pytest.fixture(scope="module")
def bundle3d(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("b3") / "bundle", spacing=2.0, roi=32)


@pytest.fixture(scope="module")
def bundle2d(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("b2") / "bundle", spatial_dims=2, spacing=1.0, roi=64)


def sphere_image(size=(48, 40, 36), spacing=(1.5, 1.8, 2.5), direction=None, offset_mm=(8.0, -6.0, 4.0),
                 radius_mm=20.0, origin=(-30.0, 20.0, -40.0)):
    """A bright ball off the image centre (by `offset_mm`, LPS) in an arbitrarily oriented grid,
    and its true mask."""
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    idx = np.indices(size[::-1]).reshape(3, -1)[::-1].T.astype(float)  # (N, xyz)
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    points = np.asarray(origin) + (idx * np.asarray(spacing)) @ d.T
    center = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size])
    inside = np.linalg.norm(points - np.asarray(center) - np.asarray(offset_mm), axis=1) <= radius_mm
    mask = inside.reshape(size[::-1])
    rng = np.random.default_rng(1)
    array = (mask * 100.0 + rng.normal(0, 3, mask.shape)).astype(np.float32)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out, mask


def oblique_flipped_direction():
    rot = np.asarray(sitk.VersorTransform((0.2, 0.3, 1.0), 0.5).GetMatrix()).reshape(3, 3)
    return (rot @ np.diag([-1.0, 1.0, -1.0])).ravel().tolist()


def assert_same_grid(a, b):
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing())
    assert np.allclose(a.GetOrigin(), b.GetOrigin())
    assert np.allclose(a.GetDirection(), b.GetDirection())


def test_outputs_on_input_grid_for_oblique_flipped_volume(bundle3d):
    image, _ = sphere_image(direction=oblique_flipped_direction())
    result = Engine(bundle3d, tta_n=3).segment(image)
    for out in (result.label, result.probabilities, result.preview, result.uncertainty):
        assert_same_grid(out, image)
    probs = sitk.GetArrayFromImage(result.probabilities)
    assert probs.shape[-1] == 2
    label = sitk.GetArrayFromImage(result.label)
    assert np.array_equal(label, probs.argmax(-1))  # the bundle lists no post-processing steps
    interior = probs.sum(-1) > 0  # voxels whose centre lies inside the working grid
    assert interior.mean() > 0.9 and np.allclose(probs.sum(-1)[interior], 1.0, atol=1e-4)
    heat = sitk.GetArrayFromImage(result.uncertainty)
    assert heat.min() >= 0 and heat.max() <= 1
    assert result.U is not None and 0 <= result.U <= 1
    assert result.tta_n == 3 and result.model_version == "random-0"
    assert result.labels == {"background": 0, "organ": 1}
    for stage in ("prepare", "preview", "tta", "uncertainty", "resample_out", "total"):
        assert result.timings[stage] >= 0
    w = result.working
    assert w.reference.GetSpacing() == (2.0, 2.0, 2.0)
    assert np.allclose(w.reference.GetDirection(), geometry.aligned_direction(image).ravel())  # the scan's axes
    grid = w.reference.GetSize()[::-1]
    assert w.image.shape == grid and w.preview.shape == grid and w.heatmap.shape == grid
    assert w.probabilities.shape == (2, *grid) and w.segmenter_input == "preview"


@pytest.mark.parametrize("direction", [None, "oblique"])
def test_label_lands_where_the_structure_is(bundle3d, direction):
    """With a known voxel-wise segmenter the label must match the ball on the input grid, so any
    axis swap, flip or origin error in the working-grid round trip shows up as low Dice."""
    image, mask = sphere_image(direction=oblique_flipped_direction() if direction else None)
    engine = Engine(bundle3d, mode="vanilla", tta_n=4)
    engine.segmenter = Threshold()
    result = engine.segment(image)
    label = sitk.GetArrayFromImage(result.label)
    assert metrics.dice(label.astype(bool), mask) > 0.95
    # A ball with sharp edges under flips, blur and small rotations: predictions agree.
    assert result.U < 0.1
    heat = sitk.GetArrayFromImage(result.uncertainty)
    from scipy import ndimage

    edge = mask ^ ndimage.binary_erosion(mask, iterations=1)
    far = ~ndimage.binary_dilation(mask, iterations=4)
    assert heat[edge].mean() > 5 * heat[far].mean()


def test_2d_bundle_runs_on_one_slice(bundle2d):
    size = (90, 70)
    yy, xx = np.mgrid[: size[1], : size[0]]
    mask = (xx - 50) ** 2 + ((yy - 30) * 1.2) ** 2 < 15**2
    img2d = sitk.GetImageFromArray((mask * 50.0 + 10).astype(np.float32))
    img2d.SetSpacing((0.8, 1.2))
    img2d.SetDirection((-1.0, 0.0, 0.0, 1.0))
    img2d.SetOrigin((12.0, -7.0))
    engine = Engine(bundle2d, mode="vanilla", tta_n=5)
    engine.segmenter = Threshold()
    result = engine.segment(img2d)
    assert result.label.GetSize() == (90, 70, 1)
    assert np.allclose(result.label.GetSpacing()[:2], (0.8, 1.2))
    assert np.allclose(result.label.GetOrigin()[:2], (12.0, -7.0))
    assert result.label.GetDirection()[0] == -1.0
    assert metrics.dice(sitk.GetArrayFromImage(result.label)[0].astype(bool), mask) > 0.9
    assert result.working.probabilities.shape[1] == 1  # one slice on the working grid too


def test_without_preview_and_uncertainty(bundle3d):
    image, _ = sphere_image(size=(20, 20, 20))
    result = Engine(bundle3d).segment(image, preview=False, uncertainty=False)
    assert result.preview is None and result.uncertainty is None and result.U is None
    assert result.tta_n == 1 and "segment" in result.timings and "tta" not in result.timings
    assert result.working.heatmap is None


def test_preview_is_in_source_units(bundle3d):
    # Source normalisation is a CT window [-250, 250]: the preview comes back in HU.
    image, _ = sphere_image(size=(24, 24, 24))
    result = Engine(bundle3d).segment(image, uncertainty=False)
    preview = sitk.GetArrayFromImage(result.preview)
    working = result.working.preview
    assert 0 <= working.min() and working.max() <= 1
    assert -250 <= preview.min() and preview.max() <= 250
    assert np.ptp(preview) > 50 * np.ptp(working) - 1e-3


def test_path_input_and_model_kept_warm(bundle3d, tmp_path):
    image, _ = sphere_image(size=(20, 24, 16))
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(image, str(path))
    engine = Engine(bundle3d)
    segmenter = engine.segmenter
    first = engine.segment(path, uncertainty=False)
    second = engine.segment(path, uncertainty=False)
    assert engine.segmenter is segmenter and "load" not in second.timings
    assert np.array_equal(sitk.GetArrayFromImage(first.label), sitk.GetArrayFromImage(second.label))
    assert_same_grid(first.label, sitk.ReadImage(str(path)))


def test_follows_registry_current(bundle3d, tmp_path):
    registry = tmp_path / "registry"
    (registry / "versions").mkdir(parents=True)
    shutil.copytree(bundle3d.path, registry / "versions" / "v0001")
    other = make_random_bundle(tmp_path / "other", spacing=2.0, roi=32, seed=5)
    shutil.copytree(other.path, registry / "versions" / "v0002")
    (registry / "CURRENT").write_text("v0001\n")
    image, _ = sphere_image(size=(20, 20, 20))
    engine = Engine(registry)
    first = engine.segment(image, uncertainty=False)
    assert engine.bundle.path == registry / "versions" / "v0001"
    (registry / "CURRENT").write_text("v0002\n")
    second = engine.segment(image, uncertainty=False)
    assert engine.bundle.path == registry / "versions" / "v0002" and "load" in second.timings
    a = sitk.GetArrayFromImage(first.probabilities)
    b = sitk.GetArrayFromImage(second.probabilities)
    assert not np.allclose(a, b)  # different weights were really used
    (registry / "CURRENT").write_text("v0009\n")
    with pytest.raises(BundleError, match="v0009"):
        engine.segment(image, uncertainty=False)


def test_progress_and_cancel(bundle3d):
    image, _ = sphere_image(size=(20, 20, 20))
    engine = Engine(bundle3d, tta_n=3)
    seen = []
    engine.segment(image, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(seen) >= 5
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(SegmentationCancelled):
        engine.segment(image, cancel=cancel)


def test_vanilla_without_generator(tmp_path):
    bundle = make_random_bundle(tmp_path / "nogen", spacing=2.0, roi=32, with_generator=False)
    with pytest.raises(BundleError, match="generator"):
        Engine(bundle, mode="tdgan")
    image, _ = sphere_image(size=(20, 20, 20))
    for mode in ("vanilla", "auto"):
        result = Engine(bundle, mode=mode).segment(image, preview=True)
        assert result.preview is None and result.label.GetSize() == image.GetSize()
        assert result.working.segmenter_input == "image"


def test_auto_mode_follows_each_versions_segmenter_input(bundle3d, tmp_path):
    """A fine-tuned version whose segmenter reads the raw image is fed the raw image once it is
    current, while the preview is still made; an explicit mode overrides the metadata."""
    registry = tmp_path / "registry"
    (registry / "versions").mkdir(parents=True)
    shutil.copytree(bundle3d.path, registry / "versions" / "v0001")
    tuned = update_bundle(shutil.copytree(bundle3d.path, tmp_path / "tuned"),
                          metadata={"segmenter_input": "image"})
    shutil.copytree(tuned.path, registry / "versions" / "v0002")
    (registry / "CURRENT").write_text("v0001\n")
    image, _ = sphere_image(size=(20, 20, 20))
    engine = Engine(registry)
    assert engine.segment(image, uncertainty=False).working.segmenter_input == "preview"
    (registry / "CURRENT").write_text("v0002\n")
    result = engine.segment(image, uncertainty=False, preview=True)
    assert result.working.segmenter_input == "image" and result.preview is not None
    assert Engine(tuned.path, mode="tdgan").segment(image, uncertainty=False).working.segmenter_input == "preview"


def test_tta_predictions_start_with_the_plain_pass_segment_labels(bundle3d):
    image, _ = sphere_image(size=(24, 24, 20))
    engine = Engine(bundle3d, tta_n=3)
    checked, reference, predictions = engine.tta_predictions(image)
    assert len(predictions) == 3 and checked.GetSize() == image.GetSize()
    result = engine.segment(image)
    assert reference.GetSize() == result.working.reference.GetSize()
    # the label's probabilities are the un-augmented pass, the first of the TTA predictions
    assert np.allclose(predictions[0], result.working.probabilities, atol=1e-5)
    assert not np.allclose(predictions[0], predictions[1], atol=1e-3)  # the augmentations differ
