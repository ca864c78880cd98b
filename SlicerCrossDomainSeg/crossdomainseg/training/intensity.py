"""Intensity domain randomisation shared by the segmenter and click-refiner trainers."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def remap_intensity(x: np.ndarray, rng) -> np.ndarray:
    """An unknown modality: a random transfer function of the source intensities, bias, noise.

    Half the knots sit at quantiles of the crop, so tissues a few HU apart in the source (liver,
    spleen, lesion) can get any contrast, as they do in MR; the rest are spread evenly."""
    knots = np.unique(np.concatenate([np.quantile(x, np.linspace(0, 1, 8)),
                                      rng.uniform(float(x.min()), float(x.max()) + 1e-3, size=8)]))
    y = np.interp(x, knots, rng.uniform(0, 1, size=len(knots))).astype(np.float32)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in x.shape], indexing="ij")
    y *= 1.0 + sum(float(rng.uniform(-0.15, 0.15)) * g for g in grids)
    if rng.random() < 0.4:
        y = ndimage.gaussian_filter(y, rng.uniform(0.3, 1.0))
    y += rng.normal(0, rng.uniform(0, 0.05), size=y.shape).astype(np.float32)
    return y
