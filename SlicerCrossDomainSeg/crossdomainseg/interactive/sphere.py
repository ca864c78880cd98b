"""The simplest click method: a click adds or removes a ball around itself (no model, no image).
The session's default, and a method a bundle may name (metadata `click_refiner`)."""

import numpy as np

from .encoding import DEFAULT_CROP_MM, CropInputs
from .regions import apply_region, ball_mm


class SphereRefiner:
    name = "sphere"

    def __init__(self, radius_mm: float = 5.0, crop_mm=DEFAULT_CROP_MM):
        self.radius_mm = float(radius_mm)
        self.crop_mm = tuple(float(c) for c in crop_mm)

    def propose(self, inputs: CropInputs) -> np.ndarray:
        return apply_region(inputs, ball_mm(inputs.current.shape, inputs.click, self.radius_mm, inputs.spacing))
