"""The cases the prompt network trains on (train_prompt.py): an image and a label map on the
network grid ((z, y, x), or (y, x) for a 2D network; `to_prompt_grid`); UNKNOWN marks the
voxels of a pseudo-labelled target case the segmenter was unsure of (target_cases.py)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .. import geometry
from ..errors import InputError
from ..training.randomize import synthesize
from .prompt_net import PROMPT_SPACING

UNKNOWN = -1  # pseudo-label of an unconfident voxel (and of voxels outside the image)
RESYNTH = 0.3  # chance a case's synthetic image is drawn again when the case is sampled


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


def to_prompt_grid(image: sitk.Image, label: sitk.Image, spatial_dims: int,
                   fill: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) arrays on the grid of a prompt network of `spatial_dims` over `image`'s
    extent: the image interpolated linearly, the label by nearest neighbour (`fill` where it does
    not reach); (z, y, x) for a 3D network, for a 2D one the (y, x) plane of a single-slice image
    (2D images are stored as one slice)."""
    work = geometry.to_working_grid(sitk.Cast(image, sitk.sitkFloat32), tuple(reversed(PROMPT_SPACING)),
                                    sitk.sitkLinear)
    label = geometry.resample_to_reference(label, work, sitk.sitkNearestNeighbor, fill)
    image, label = sitk.GetArrayFromImage(work), sitk.GetArrayFromImage(label)
    if spatial_dims == 3:
        return image, label
    if image.shape[0] != 1:
        raise InputError(f"The model is 2D but an image has {image.shape[0]} slices; give single-slice (2D) "
                         "images, as the model was trained on.")
    return image[0], label[0]
