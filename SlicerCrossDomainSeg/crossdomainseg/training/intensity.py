"""Intensity domain randomisation shared by the segmenter and click-refiner trainers."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def remap_intensity(x: np.ndarray, rng, label: np.ndarray | None = None, label_shift: float = 0.5) -> np.ndarray:
    """An unknown modality: a random transfer function of the source intensities, bias, noise.

    Half the knots sit at quantiles of the crop, so tissues a few HU apart in the source (liver,
    spleen, lesion) can get any contrast, as they do in MR; the rest are spread evenly. The map
    is applied to the smoothed image and the texture added back at a random gain: a jagged map of
    the raw voxels would turn the source's noise into salt and pepper, where another modality
    shows each tissue as a smooth region of its own brightness.

    With `label`, half the labelled structures also get their brightness shifted by a random
    amount of their own, up to `label_shift` either way (SynthSeg-style): quantile knots rarely
    fall between tissues that fill a sliver of the crop, such as a lesion a few HU from its
    liver, yet another modality may show it far brighter (measurements: docs/experiments.md)."""
    smooth = ndimage.gaussian_filter(x, rng.uniform(0.7, 1.5))
    knots = np.unique(np.concatenate([np.quantile(smooth, np.linspace(0, 1, 8)),
                                      rng.uniform(float(smooth.min()), float(smooth.max()) + 1e-3, size=8)]))
    y = np.interp(smooth, knots, rng.uniform(0, 1, size=len(knots))).astype(np.float32)
    if label is not None:
        for value in np.unique(label[label > 0]):
            if rng.random() < 0.5:
                edge = ndimage.gaussian_filter((label == value).astype(np.float32), 0.7)
                y += np.float32(rng.uniform(-label_shift, label_shift)) * edge
    y += (x - smooth) * np.float32(rng.uniform(0.0, 1.5))
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in x.shape], indexing="ij")
    y *= 1.0 + sum(float(rng.uniform(-0.15, 0.15)) * g for g in grids)
    if rng.random() < 0.4:
        y = ndimage.gaussian_filter(y, rng.uniform(0.3, 1.0))
    y += rng.normal(0, rng.uniform(0, 0.05), size=y.shape).astype(np.float32)
    return y
