"""The cases the prompt network trains on (train_prompt.py): an image and a label map on the
network grid ((z, y, x), or (y, x) for a 2D network); UNKNOWN marks the voxels of a pseudo-labelled target case the segmenter was unsure
of (target_cases.py)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..training.randomize import synthesize

UNKNOWN = -1  # pseudo-label of an unconfident voxel (and of voxels outside the image)
RESYNTH = 0.3  # chance a case's synthetic image is drawn again when the case is sampled


def grid_array(image: sitk.Image, spatial_dims: int) -> np.ndarray:
    """The (z, y, x) array of `image` for a 3D network; for a 2D one the (y, x) plane of a
    single-slice image (2D images are stored as one slice)."""
    array = sitk.GetArrayFromImage(image)
    if spatial_dims == 3:
        return array
    if array.shape[0] != 1:
        raise InputError(f"The model is 2D but an image has {array.shape[0]} slices; give single-slice (2D) "
                         "images, as the model was trained on.")
    return array[0]


class PromptCase:
    """A case on the network grid: its image, label map and, for a source case (`synthesize`), a
    synthetic image of a random modality, redrawn from time to time. A target case
    (target_cases.py) has pseudo-labels, UNKNOWN where the segmenter was unsure (`known` False),
    and is always shown as it is (already the target contrast)."""

    def __init__(self, image: np.ndarray, label: np.ndarray, spec: dict | None, synthesize: bool = True):
        self.image, self.label, self.spec = image.astype(np.float32), label.astype(np.int16), spec
        self.synthesize = synthesize
        self.known = self.label != UNKNOWN
        self.values = [int(v) for v in np.unique(label) if v not in (0, UNKNOWN)]
        self.synthetic = None

    def synthetic_image(self, rng) -> np.ndarray:
        if self.synthetic is None or rng.random() < RESYNTH:
            self.synthetic = synthesize(self.image, self.label, rng, self.spec).astype(np.float32)
        return self.synthetic
