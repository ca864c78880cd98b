"""Domain randomisation from the source labels and images (SynthSeg-style, Billot et al. 2023).

`synthesize` turns one labelled source crop into an image of an unknown modality on the same
anatomy: every label gets an intensity of its own, and so does each of a few intensity classes
of the unlabelled part (in real scans it holds skull, scalp, fat, fluid and air, whose contrast
also changes between modalities), so any order of tissue brightness occurs, inversions
included. Each class keeps the source image's own texture at a random gain, plus noise; then
come a random bias field, gamma, Gaussian or Rician noise, a random resolution (thick slices
along one axis) and the normalisation the network's inputs get. The geometry and the labels are
left as they are. It works on 2D and 3D crops, vectorised over voxels (about 30 ms of CPU per 64^3
crop, a tenth of a training step of the default UNet on two such crops: benchmarks/domain_randomize.py).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..normalize import normalize

# Ranges of the random draws (intensities on the [0, 1] scale of the synthesised image).
BACKGROUND_CLASSES = (2, 5)  # k-means classes of the unlabelled part, inclusive
# Background classes whose source intensities lie closer than this merge (normalised source
# units, a range of width 1 by default: 20 HU in a 400 HU CT window).
MIN_CLASS_GAP = 0.05
TEXTURE_GAIN = 2.0  # the source texture within a class is scaled by U(-gain, gain)
TEXTURE_CLIP = 2.0  # after clipping to this many of its standard deviations within the class
CLASS_NOISE = 0.05  # per-class noise std up to this
BIAS_STD = 0.3  # log bias field: a coarse random grid with std up to this
GAMMA_STD = 0.25  # exponent exp(N(0, std))
NOISE_STD = 0.05  # Gaussian or Rician image noise up to this
THICK_SLICES = (0.5, 1.0, 4.0)  # chance of thick slices along a random axis, and their thickness range in voxels
BLUR_SIGMA = 0.8  # isotropic blur up to this many voxels: partial volume at class edges


def crop_normalization(spec: dict) -> dict:
    """The normalisation of a synthesised crop: the network's target spec when it is per image
    (percentile, minmax); a fixed window means nothing in the arbitrary units of a synthesised
    image, so then the 1st-99th percentiles, onto the same output range."""
    if spec.get("kind") == "window":
        return {"kind": "percentile", "lower": 1, "upper": 99, "range": list(spec.get("range", [0, 1]))}
    return dict(spec)


def background_classes(values: np.ndarray, k: int, iterations: int = 10, bins: int = 64) -> np.ndarray:
    """Thresholds splitting `values` into at most `k` intensity classes: 1D k-means on their
    histogram, from quantile starts. Classes closer than MIN_CLASS_GAP merge, so a crop of air
    alone is not cut into bands of its own noise."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < MIN_CLASS_GAP:
        return np.empty(0, np.float32)
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres_of_bins = (edges[:-1] + edges[1:]) / 2
    cdf = np.cumsum(counts) / counts.sum()
    centres = centres_of_bins[np.minimum(np.searchsorted(cdf, (np.arange(k) + 0.5) / k), bins - 1)]
    for _ in range(iterations):
        centres = np.unique(centres)
        nearest = np.abs(centres_of_bins[:, None] - centres[None]).argmin(1)
        weight = np.bincount(nearest, weights=counts, minlength=len(centres))
        total = np.bincount(nearest, weights=counts * centres_of_bins, minlength=len(centres))
        centres = np.where(weight > 0, total / np.maximum(weight, 1e-12), centres)
    kept = [centres[0]]
    for c in np.sort(centres)[1:]:
        if c - kept[-1] >= MIN_CLASS_GAP:
            kept.append(c)
    kept = np.asarray(kept)
    return ((kept[:-1] + kept[1:]) / 2).astype(np.float32)


def tissue_classes(smooth: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A class per voxel: each label value its own, the unlabelled voxels one of a few k-means
    classes of the (lightly smoothed) source intensities. Returns (classes, number of classes)."""
    classes = label.astype(np.int64)
    first = int(classes.max()) + 1
    unlabelled = classes == 0
    if unlabelled.any():
        values = smooth[unlabelled]
        thresholds = background_classes(values, int(rng.integers(BACKGROUND_CLASSES[0], BACKGROUND_CLASSES[1] + 1)))
        classes[unlabelled] = first + np.searchsorted(thresholds, values)
        return classes, first + len(thresholds) + 1
    return classes, first


def texture(image: np.ndarray, smooth: np.ndarray, classes: np.ndarray, n: int) -> np.ndarray:
    """The source's fine texture: its deviation from the local 3-voxel mean, clipped to
    TEXTURE_CLIP of its standard deviation within each class, and none on the voxels next to
    another class. A deviation from the class mean would also hold partial volume (a class's rim
    darker or brighter towards its neighbour), which at a large or negative gain draws an outline
    round every structure; the blur in `synthesize` makes partial volume instead."""
    fine = image - smooth
    flat = classes.ravel()
    spread = np.sqrt(np.bincount(flat, weights=(fine**2).ravel(), minlength=n)
                     / np.maximum(np.bincount(flat, minlength=n), 1))
    limit = np.take((TEXTURE_CLIP * spread).astype(np.float32), classes)
    fine = np.clip(fine, -limit, limit)
    fine[class_edges(classes)] = 0
    return fine


def class_edges(classes: np.ndarray) -> np.ndarray:
    """Voxels with a face neighbour of another class (both sides of every boundary)."""
    edges = np.zeros(classes.shape, bool)
    for axis in range(classes.ndim):
        differs = np.diff(classes, axis=axis) != 0
        before = [slice(None)] * classes.ndim
        after = [slice(None)] * classes.ndim
        before[axis], after[axis] = slice(None, -1), slice(1, None)
        edges[tuple(before)] |= differs
        edges[tuple(after)] |= differs
    return edges


def bias_field(shape, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field: exp of a random coarse grid (3-5 knots per axis),
    interpolated linearly over the crop."""
    field = rng.normal(0, rng.uniform(0, BIAS_STD), size=[int(rng.integers(3, 6)) for _ in shape])
    for axis, n in enumerate(shape):  # separable: one axis at a time, the coarse grid spanning the crop
        field = _linear_take(field, np.linspace(0, field.shape[axis] - 1, n), axis)
    return np.exp(field.astype(np.float32))


def thick_slices(y: np.ndarray, axis: int, thickness: float, rng: np.random.Generator) -> np.ndarray:
    """An acquisition with slices `thickness` voxels thick along array `axis`: blurred over the
    slice thickness, sampled every `thickness` voxels from a random offset and interpolated back
    linearly."""
    n = y.shape[axis]
    y = ndimage.gaussian_filter1d(y, thickness / 2.355, axis=axis, mode="nearest")
    positions = np.arange(rng.uniform(0, thickness), n, thickness)
    if len(positions) < 2:
        return y
    low = _linear_take(y, positions, axis)
    return _linear_take(low, np.interp(np.arange(n), positions, np.arange(len(positions))), axis)


def _linear_take(y: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """`y` sampled at fractional `positions` along `axis` (linear, clamped at the ends)."""
    positions = np.clip(positions, 0, y.shape[axis] - 1)
    below = np.floor(positions).astype(np.int64)
    above = np.minimum(below + 1, y.shape[axis] - 1)
    shape = [1] * y.ndim
    shape[axis] = len(positions)
    weight = (positions - below).astype(np.float32).reshape(shape)
    return np.take(y, below, axis) * (1 - weight) + np.take(y, above, axis) * weight


def synthesize(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, spec: dict) -> np.ndarray:
    """A random-modality image of the crop's anatomy (see the module docstring), float32,
    normalised with `spec` (`crop_normalization` of the network's target spec)."""
    image = np.asarray(image, np.float32)
    smooth = ndimage.uniform_filter(image, 3)
    classes, n = tissue_classes(smooth, label, rng)
    fine = texture(image, smooth, classes, n)
    mean = rng.uniform(0, 1, n).astype(np.float32)
    gain = rng.uniform(-TEXTURE_GAIN, TEXTURE_GAIN, n).astype(np.float32)
    spread = rng.uniform(0, CLASS_NOISE, n).astype(np.float32)
    y = (np.take(mean, classes) + np.take(gain, classes) * fine
         + np.take(spread, classes) * rng.standard_normal(image.shape, dtype=np.float32))
    y = ndimage.gaussian_filter(y, rng.uniform(0, BLUR_SIGMA), mode="nearest")
    y = np.maximum(y, 0) * bias_field(y.shape, rng)
    y /= max(float(y.max()), 1e-6)
    y **= np.float32(np.exp(rng.normal(0, GAMMA_STD)))
    sigma = np.float32(rng.uniform(0, NOISE_STD))
    if rng.random() < 0.5:
        y = y + sigma * rng.standard_normal(y.shape, dtype=np.float32)
    else:  # Rician: the magnitude of a complex signal with noise on both channels
        y = np.hypot(y + sigma * rng.standard_normal(y.shape, dtype=np.float32),
                     sigma * rng.standard_normal(y.shape, dtype=np.float32))
    if rng.random() < THICK_SLICES[0]:
        y = thick_slices(y, int(rng.integers(y.ndim)), rng.uniform(*THICK_SLICES[1:]), rng)
    return normalize(y, spec)
