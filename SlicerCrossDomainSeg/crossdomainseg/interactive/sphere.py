"""The simplest click method: a click adds or removes a ball around itself (no model, no image).
The session's default, and a method a bundle may name (metadata `click_refiner`).

The ball's radius is the click's distance (mm) to the clicked label's boundary in the current
mask, at most `radius_mm` and at least `floor_mm`: a positive click outside the label reaches up
to the nearest label voxel, a negative click inside it up to the nearest voxel outside it.
Assumption: the user clicks in the middle of what is wrong. An error region beside the mask spans
from the mask's boundary to the true one, so a ball that stops at the mask's boundary also stops
about at the true boundary on the other side, instead of overshooting it where the error is
thinner than a fixed ball. The cap (3 mm) and the floor (2.5 mm) were chosen on fresh brain
SOURCE subjects, on their own grid and resampled to 5.66 mm slices (docs/experiments.md): with
thick slices the label in the next slice lies beyond a larger cap, and a click on a small error
in a slice of its own then took a ball several times that error's size.
"""

import numpy as np

from .encoding import DEFAULT_CROP_MM, CropInputs, squared_distance_mm
from .regions import apply_region


class SphereRefiner:
    name = "sphere"

    def __init__(self, radius_mm: float = 3.0, crop_mm=DEFAULT_CROP_MM, floor_mm: float = 2.5):
        self.radius_mm = float(radius_mm)
        self.floor_mm = min(float(floor_mm), self.radius_mm)
        self.crop_mm = tuple(float(c) for c in crop_mm)

    def radius(self, inputs: CropInputs, distance2: np.ndarray) -> float:
        """The ball's radius (mm) for this click: its distance to the nearest voxel on the other
        side of the label's boundary (`distance2`: squared mm from the click to every crop voxel),
        between `floor_mm` and `radius_mm`; the cap when the crop holds no such voxel."""
        other = inputs.current if inputs.click_positive else ~inputs.current
        if not other.any():
            return self.radius_mm
        return max(self.floor_mm, min(self.radius_mm, float(np.sqrt(distance2[other].min()))))

    def propose(self, inputs: CropInputs) -> np.ndarray:
        distance2 = squared_distance_mm(inputs.current.shape, inputs.click, inputs.spacing)
        # strictly inside: the voxel at the boundary distance is on the label's other side already
        return apply_region(inputs, distance2 < self.radius(inputs, distance2) ** 2)
