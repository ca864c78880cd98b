"""Classical click refiners the learned one is compared with (same session, same rules).

- SphereRefiner: no model, a click adds or removes a ball around itself.
- RegionGrowingRefiner: seeded region growing in the image from the click, with a tolerance taken
  from the intensities around the click.
"""

import numpy as np
from scipy import ndimage

from .encoding import DEFAULT_CROP_MM, squared_distance_mm
from .session import CropInputs


def _ball_mm(shape, center, radius_mm: float, spacing) -> np.ndarray:
    return squared_distance_mm(shape, center, spacing) <= radius_mm**2


class SphereRefiner:
    name = "sphere"

    def __init__(self, radius_mm: float = 5.0, crop_mm=DEFAULT_CROP_MM):
        self.radius_mm = float(radius_mm)
        self.crop_mm = tuple(float(c) for c in crop_mm)

    def propose(self, inputs: CropInputs) -> np.ndarray:
        ball = _ball_mm(inputs.current.shape, inputs.click, self.radius_mm, inputs.spacing)
        mask = (inputs.current | ball) if inputs.click_positive else (inputs.current & ~ball)
        return mask.astype(np.float32)


class RegionGrowingRefiner:
    """Grow from the click over voxels whose smoothed intensity is within `tolerance` noise levels
    of the intensity at the click, at most `max_radius_mm` from it (limits leaks through weak
    edges). The noise level is measured on the whole crop (robust spread of neighbour
    differences), so a click near an edge does not inflate the tolerance."""

    name = "region_growing"

    def __init__(self, tolerance: float = 3.0, crop_mm=DEFAULT_CROP_MM, smoothing_voxels: float = 1.0,
                 max_radius_mm: float = 30.0):
        self.tolerance = float(tolerance)
        self.max_radius_mm = float(max_radius_mm)
        self.crop_mm = tuple(float(c) for c in crop_mm)
        self.smoothing = float(smoothing_voxels)

    def propose(self, inputs: CropInputs) -> np.ndarray:
        raw = inputs.image.astype(np.float32)
        image = ndimage.gaussian_filter(raw, self.smoothing)
        diffs = np.concatenate([np.diff(raw, axis=a).ravel() for a in range(3) if raw.shape[a] > 1])
        noise = max(1.4826 * float(np.median(np.abs(diffs))) / np.sqrt(2.0), 1e-3)
        seed = tuple(slice(max(0, c - 1), c + 2) for c in inputs.click)
        similar = np.abs(image - float(np.median(image[seed]))) <= self.tolerance * noise
        similar &= _ball_mm(similar.shape, inputs.click, self.max_radius_mm, inputs.spacing)
        components, _ = ndimage.label(similar)
        region = components == components[inputs.click] if similar[inputs.click] else np.zeros_like(similar)
        mask = (inputs.current | region) if inputs.click_positive else (inputs.current & ~region)
        return mask.astype(np.float32)
