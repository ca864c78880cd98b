"""Fitting a label's boundary to the image it labels.

A voxel near the boundary is relabelled by how much likelier its intensity is in the label's core
than in a ring around the label, less its signed distance to the boundary over a prior length:
the boundary's position is the prior, the intensities the evidence. Unsmoothed intensities are
used: smoothing blurs the very edge the fit looks for. The post-processing step `boundary_fit`
(postprocess.py) fits every label of a result; the boundary shift click refiner fits near a click.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


CORE_MM = 3.0  # core: deeper than this inside the label
RING_MM = (3.0, 12.0)  # ring: this far outside it
MIN_HISTOGRAM_VOXELS = 50  # core and ring need more voxels than this for log_likelihood_ratio
DEEP_EVIDENCE = 1.0  # fit_mask(deep=True): log-likelihood ratio for taking voxels past the rim


def signed_distance(mask: np.ndarray, spacing) -> np.ndarray:
    """mm to the mask's boundary: negative inside, positive outside."""
    return np.where(mask, -ndimage.distance_transform_edt(mask, sampling=spacing),
                    ndimage.distance_transform_edt(~mask, sampling=spacing))


def log_likelihood_ratio(image: np.ndarray, core: np.ndarray, ring: np.ndarray,
                         bins: int = 16) -> np.ndarray | None:
    """log p(intensity | core) - log p(intensity | ring) per voxel of `image`, from histograms;
    None when core or ring has too few voxels (MIN_HISTOGRAM_VOXELS) for a histogram."""
    if core.sum() <= MIN_HISTOGRAM_VOXELS or ring.sum() <= MIN_HISTOGRAM_VOXELS:
        return None
    low, high = np.percentile(image[core | ring], [1, 99])
    edges = np.linspace(low, high + 1e-6, bins + 1)
    inside = np.histogram(np.clip(image[core], low, high), edges)[0] + 1.0
    outside = np.histogram(np.clip(image[ring], low, high), edges)[0] + 1.0
    table = np.log(inside / inside.sum()) - np.log(outside / outside.sum())
    return table[np.clip(np.digitize(image, edges) - 1, 0, bins - 1)]


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold: the histogram split with the largest between-class variance."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)[:-1].astype(np.float64)
    above = counts.sum() - below
    mass = np.cumsum(counts * centres)[:-1]
    total_mass = float((counts * centres).sum())
    valid = (below > 0) & (above > 0)
    between = np.zeros_like(below)
    between[valid] = (total_mass * below[valid] / counts.sum() - mass[valid]) ** 2 / (below[valid] * above[valid])
    return float(edges[int(np.argmax(between)) + 1])


def fit_mask(image: np.ndarray, mask: np.ndarray, spacing, rim_mm: float, prior_mm: float,
             bins: int = 16, deep: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """The mask with its voxels within `rim_mm` of its boundary relabelled, and the voxels that
    were relabelled; None when the image has too little of core or ring to tell them apart.

    `deep`: for a label that swallowed a slab of a neighbouring tissue thicker than the rim, whose
    core is then part neighbour. The core voxels likelier in the ring are left out of the core's
    histogram, and the label's voxels deeper than the rim that are e^DEEP_EVIDENCE likelier in the
    ring go too where they connect to what the rim fit took off."""
    signed = signed_distance(mask, spacing)
    core, ring = signed < -CORE_MM, (signed > RING_MM[0]) & (signed < RING_MM[1])
    ratio = log_likelihood_ratio(image, core, ring, bins)
    if ratio is None:
        return None
    if deep:
        sure = core & (ratio > 0)
        organ = sure if sure.sum() >= 0.3 * core.sum() else None  # mostly ring-like: no core to purify
        purified = log_likelihood_ratio(image, organ, ring, bins) if organ is not None else None
        ratio = ratio if purified is None else purified
    rim = np.abs(signed) <= rim_mm
    fitted = np.where(rim, ratio - signed / prior_mm > 0, mask)
    if deep:
        taken = mask & ~fitted
        parts, _ = ndimage.label(taken | (mask & (ratio < -DEEP_EVIDENCE)))
        deeper = np.isin(parts, np.unique(parts[taken]))
        fitted &= ~deeper
        rim |= deeper
    return fitted, rim


def _widened_box(mask: np.ndarray, margin) -> tuple[slice, ...]:
    """The mask's bounding box widened by `margin` voxels per axis, inside the array."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(slice(max(0, b.start - m), min(n, b.stop + m)) for b, m, n in zip(box, margin, mask.shape))


def _label_boxes(labels: np.ndarray, spacing, reach_mm: float, min_voxels: int):
    """(value, box, label mask in the box) per label of at least `min_voxels`, largest first. The
    box is the label's bounding box widened past the ring and `reach_mm`, where distances are the
    same as over the whole volume (a 128^3 volume: 2.6 s -> well under 1 s)."""
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    margin = [int(np.ceil(max(RING_MM[1], reach_mm) / s)) + 1 for s in spacing]
    for value, count in sorted(zip(values, counts), key=lambda vc: -vc[1]):
        if count >= min_voxels:
            box = _widened_box(labels == value, margin)
            yield value, box, labels[box] == value


def fit_labels(image: np.ndarray, labels: np.ndarray, spacing, rim_mm: float, prior_mm: float,
               min_voxels: int = 300, deep: bool = False) -> np.ndarray:
    """Every label of a label map fitted to `image`, largest first; a fitted label takes only
    background and gives its voxels back to background, so labels never trade voxels. Labels with
    fewer than `min_voxels` (a small lesion: too few for a histogram of its core) are kept as
    they are; `deep` as in `fit_mask`."""
    image = image.astype(np.float32)
    out = labels.copy()
    for value, box, mask in _label_boxes(labels, spacing, rim_mm, min_voxels):
        result = fit_mask(image[box], mask, spacing, rim_mm, prior_mm, deep=deep)
        if result is None:
            continue
        new = result[0]
        view = out[box]  # a view: the writes land in `out`
        view[mask & ~new & (view == value)] = 0
        view[new & ~mask & (view == 0)] = value
    return out


def majority(labels: np.ndarray) -> np.ndarray:
    """Each voxel takes the label most common in its 3-voxel neighbourhood (ties: the lower value,
    so background first): evens out the voxel-by-voxel decisions of a fit on a noisy image."""
    values = np.unique(labels)
    votes = np.stack([ndimage.uniform_filter((labels == v).astype(np.float32), 3) for v in values])
    return values[votes.argmax(0)].astype(labels.dtype)
