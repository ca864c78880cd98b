"""Domain randomisation (training/randomize.py): synthetic images of a random modality from a
labelled source crop, and the `train source --domain-randomize P` option."""

import numpy as np
import pytest

from crossdomainseg.errors import InputError
from crossdomainseg.training.randomize import background_classes, crop_normalization, synthesize
from crossdomainseg.training.source import SourceConfig, _crop_intensities

SPEC = {"kind": "percentile", "lower": 1, "upper": 99}


def _crop(shape=(32, 32, 32)):
    """Two labelled blobs of the same source intensity in an unlabelled body of two tissues
    (0.2 and 0.7) with noise: only the labels and the source intensities tell them apart."""
    rng = np.random.default_rng(3)
    image = np.full(shape, 0.2, np.float32)
    image[..., shape[-1] // 2:] = 0.7
    label = np.zeros(shape, np.int64)
    label[(slice(4, 12),) * len(shape)] = 1
    label[(slice(18, 28),) * len(shape)] = 2
    image[label > 0] = 0.5
    image += rng.normal(0, 0.02, shape).astype(np.float32)
    return image, label


def _means(y, label):
    return [float(y[label == v].mean()) for v in (1, 2)]


def test_each_label_gets_its_own_random_intensity():
    image, label = _crop()
    draws = [_means(synthesize(image, label, np.random.default_rng(seed), SPEC), label) for seed in range(40)]
    first, second = np.array(draws).T
    # two crops of one case differ in their per-label means
    assert np.abs(np.diff(first)).mean() > 0.1 and np.abs(np.diff(second)).mean() > 0.1
    # the two labels (same source intensity) get unrelated contrasts, either order
    order = np.mean(first > second)
    assert 0.2 < order < 0.8
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.5


def test_unlabelled_tissues_get_intensities_of_their_own():
    """The two unlabelled tissues (0.2 and 0.7 in the source) become classes with independent
    intensities: their order flips between draws (a contrast inversion), which a monotone map
    of the source intensities never gives."""
    image, label = _crop()
    thresholds = background_classes(image[label == 0], 4)
    assert len(thresholds) == 1 and 0.3 < thresholds[0] < 0.6
    left, right = (label == 0) & (image < 0.45), (label == 0) & (image > 0.45)
    flips = [float(y[left].mean() > y[right].mean())
             for y in (synthesize(image, label, np.random.default_rng(seed), SPEC) for seed in range(40))]
    assert 0.2 < np.mean(flips) < 0.8


def test_flat_background_is_not_cut_into_bands_of_its_noise():
    values = np.random.default_rng(0).normal(0.1, 0.003, 5000).astype(np.float32)
    assert len(background_classes(values, 5)) == 0
    assert len(background_classes(np.zeros(100, np.float32), 3)) == 0


def test_geometry_and_labels_untouched_values_finite_and_normalised():
    image, label = _crop()
    image_before, label_before = image.copy(), label.copy()
    tissues = np.where((label == 0) & (image > 0.45), 3, label)
    aligned, shifted = [], []
    for seed in range(20):
        y = synthesize(image, label, np.random.default_rng(seed), SPEC)
        assert y.shape == image.shape and y.dtype == np.float32
        assert np.all(np.isfinite(y)) and y.min() >= 0.0 and y.max() <= 1.0
        # the image's regions lie where the labels and tissues are: their means explain more of
        # it in place than moved by 3 voxels
        for store, lab in ((aligned, tissues), (shifted, np.roll(tissues, 3, axis=(0, 2)))):
            fit = np.zeros_like(y)
            for v in (0, 1, 2, 3):
                fit[lab == v] = y[lab == v].mean()
            store.append(float(((y - fit) ** 2).mean()))
    assert np.array_equal(image, image_before) and np.array_equal(label, label_before)
    assert np.median(np.array(aligned) / np.array(shifted)) < 0.8


def test_deterministic_under_a_seed():
    image, label = _crop()
    a = synthesize(image, label, np.random.default_rng(7), SPEC)
    b = synthesize(image, label, np.random.default_rng(7), SPEC)
    c = synthesize(image, label, np.random.default_rng(8), SPEC)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c, atol=0.05)


def test_two_dimensional_crops():
    image, label = _crop((40, 40))
    draws = [_means(synthesize(image, label, np.random.default_rng(seed), SPEC), label) for seed in range(30)]
    first, second = np.array(draws).T
    assert 0.15 < np.mean(first > second) < 0.85


def test_output_range_follows_the_networks_normalisation():
    image, label = _crop()
    spec = crop_normalization({"kind": "window", "low": -400, "high": 600, "range": [-1, 1]})
    assert spec["kind"] == "percentile"  # a HU window means nothing for synthetic intensities
    y = synthesize(image, label, np.random.default_rng(0), spec)
    assert y.min() == pytest.approx(-1.0) and y.max() == pytest.approx(1.0)


def _config(**options):
    return SourceConfig(task="t", labels={"background": 0, "a": 1, "b": 2}, spatial_dims=3,
                        spacing=[1, 1, 1], roi_size=[32, 32, 32],
                        normalization={"source": SPEC, "target": SPEC}, **options)


def test_training_crops_are_synthesised_at_the_given_share():
    image, label = _crop()
    rng = np.random.default_rng(0)
    never = [_crop_intensities(image, label, rng, _config()) for _ in range(10)]
    assert all(x is image for x in never)
    shares = []
    for share in (0.5, 1.0):
        crops = [_crop_intensities(image, label, rng, _config(domain_randomize=share)) for _ in range(60)]
        assert not any(np.allclose(x, image) for x in crops if x is not image)
        shares.append(np.mean([x is not image for x in crops]))
    assert 0.3 < shares[0] < 0.7 and shares[1] == 1.0


def test_train_source_rejects_a_share_outside_0_1(tmp_path):
    from crossdomainseg.training.source import train_source

    with pytest.raises(InputError, match="domain-randomize"):
        train_source(_config(domain_randomize=1.5), [("c", tmp_path / "missing.nii.gz", None)], [],
                     tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_partial_volume_rims_do_not_become_outlines():
    """Two labels meeting at a blurred source edge: the synthetic profile across the edge stays
    between the two sides' intensities, whatever the texture gain (the deviation of the rim's
    partial-volume voxels from their label's mean is not texture)."""
    from scipy import ndimage

    label = np.ones((16, 16, 32), np.int64)
    label[..., 16:] = 2
    image = ndimage.gaussian_filter1d(np.where(label == 1, 0.2, 0.8).astype(np.float32), 1.5, axis=2)
    inside = []
    for seed in range(60):
        profile = synthesize(image, label, np.random.default_rng(seed), SPEC)[2:-2, 2:-2].mean((0, 1))
        left, right = profile[9:11].mean(), profile[21:23].mean()  # just outside the rims
        if abs(left - right) < 0.2:  # too little contrast to tell an outline from the texture
            continue
        tolerance = 0.1 * abs(left - right) + 0.03
        rim = profile[12:20]
        inside.append(bool(np.all(rim >= min(left, right) - tolerance) and np.all(rim <= max(left, right) + tolerance)))
    assert len(inside) > 20 and np.mean(inside) >= 0.9
