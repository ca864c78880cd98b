"""Regions around a click that the click methods share: a ball, the connected part holding a
voxel, and the label after a click takes a region in or out. Arrays are (z, y, x)."""

import numpy as np
from scipy import ndimage

from .encoding import CropInputs, squared_distance_mm


def within_a_voxel(reach_mm: float, spacing) -> float:
    """`reach_mm`, or one step along the coarsest axis when that is longer."""
    return max(float(reach_mm), max(float(s) for s in spacing) + 1e-3)


def ball_mm(shape, center, radius_mm: float, spacing) -> np.ndarray:
    return squared_distance_mm(shape, center, spacing) <= radius_mm**2


def component_at(mask: np.ndarray, index) -> np.ndarray:
    """The connected part of `mask` holding voxel `index` (empty when that voxel is off)."""
    if not mask[index]:
        return np.zeros_like(mask)
    components, _ = ndimage.label(mask)
    return components == components[index]


def apply_region(inputs: CropInputs, region: np.ndarray) -> np.ndarray:
    """The label after the click: `region` added (positive click) or taken away (negative)."""
    mask = (inputs.current | region) if inputs.click_positive else (inputs.current & ~region)
    return mask.astype(np.float32)
