"""What the image says about a label's boundary, for the click methods (boundary_shift.py): the
signed distance to the boundary, how much likelier an intensity is in the label's core than in a
ring around it, Otsu's split, and a mask's rim refitted to the intensities.

`fit_mask` relabels a voxel near the boundary by that likelihood ratio less its signed distance
over a prior length: the boundary's position is the prior, the intensities the evidence.
Unsmoothed intensities are used: smoothing blurs the very edge the fit looks for.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


CORE_MM = 3.0  # core: deeper than this inside the label
RING_MM = (3.0, 12.0)  # ring: this far outside it
MIN_HISTOGRAM_VOXELS = 50  # core and ring need more voxels than this for log_likelihood_ratio


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
             bins: int = 16) -> tuple[np.ndarray, np.ndarray] | None:
    """The mask with its voxels within `rim_mm` of its boundary relabelled, and the voxels that
    were relabelled; None when the image has too little of core or ring to tell them apart."""
    signed = signed_distance(mask, spacing)
    core, ring = signed < -CORE_MM, (signed > RING_MM[0]) & (signed < RING_MM[1])
    ratio = log_likelihood_ratio(image, core, ring, bins)
    if ratio is None:
        return None
    rim = np.abs(signed) <= rim_mm
    return np.where(rim, ratio - signed / prior_mm > 0, mask), rim
