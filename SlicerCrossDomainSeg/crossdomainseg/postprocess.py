"""Label clean-up after the argmax: stray islands of a label, far from its organ, are what makes
HD95 large. A connected component smaller than `min_fraction` of its label's largest component
becomes background; organs in two parts of similar size (kidneys, lungs) keep both."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InputError

DEFAULT_MIN_ISLAND_FRACTION = 0.2


def check_min_fraction(min_fraction: float) -> float:
    if not 0.0 <= float(min_fraction) < 1.0:
        raise InputError(f"min_island_fraction must be in [0, 1), got {min_fraction}.")
    return float(min_fraction)


def remove_islands(label: np.ndarray, min_fraction: float = DEFAULT_MIN_ISLAND_FRACTION) -> np.ndarray:
    """A copy of `label` (integer array, any dimension) without small components; 0 keeps all."""
    out = label.copy()
    if min_fraction <= 0:
        return out
    for value in np.unique(label):
        if value == 0:
            continue
        components, n = ndimage.label(label == value)
        if n < 2:
            continue
        sizes = np.bincount(components.ravel())[1:]
        drop = np.concatenate([[False], sizes < min_fraction * sizes.max()])
        out[drop[components]] = 0  # a lookup table: np.isin sorts the whole volume
    return out
