"""Click methods that exist only to be compared with (`eval clicks`, benchmarks/clicks.py): the
product never clicks with them. `BASELINES` names every classical method the evaluation runs."""

import numpy as np
from scipy import ndimage

from ..interactive.boundary_shift import BoundaryShiftRefiner, LocalOtsuRefiner
from ..interactive.encoding import DEFAULT_CROP_MM, CropInputs
from ..interactive.regions import apply_region, ball_mm, component_at
from ..interactive.sphere import SphereRefiner


class FixedBallRefiner:
    """A ball of a fixed `radius_mm` around the click, whatever the mask: what the sphere did
    before its radius was bounded by the click's distance to the label's boundary."""

    name = "fixed_ball"

    def __init__(self, radius_mm: float = 5.0, crop_mm=DEFAULT_CROP_MM):
        self.radius_mm = float(radius_mm)
        self.crop_mm = tuple(float(c) for c in crop_mm)

    def propose(self, inputs: CropInputs) -> np.ndarray:
        return apply_region(inputs, ball_mm(inputs.current.shape, inputs.click, self.radius_mm, inputs.spacing))


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
        similar &= ball_mm(similar.shape, inputs.click, self.max_radius_mm, inputs.spacing)
        return apply_region(inputs, component_at(similar, inputs.click))


BASELINES = {refiner.name: refiner for refiner in (SphereRefiner, FixedBallRefiner, RegionGrowingRefiner, LocalOtsuRefiner,
                                                   BoundaryShiftRefiner)}


def baseline_refiner(name: str, **kwargs):
    """The classical click method `name` with its settings (`kwargs`)."""
    return BASELINES[name](**kwargs)
