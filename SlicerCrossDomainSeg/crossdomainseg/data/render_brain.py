"""Task brain-t1-t2: one subject = the ICBM152 template under its own affine and smooth deformation.

Source: T1 on an axial 1.5 mm grid. Target: T2 on a coronal grid tilted 0-15 degrees (flipped
left-right in storage half of the time), 0.9-1.2 mm in plane and 4-6 mm thick slices, each slice
the average of four thin ones (partial volume across the slice). Both get a per-subject contrast
(gamma) and gain, a smooth multiplicative bias field (stronger in the target) and Rician noise.
Labels are the template's labels (brain.label_map) sampled nearest-neighbour through the same
transform, at the slice centres.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from .brain import label_map
from .icbm152 import Templates, load_templates
from .shapes import Deformation, Grid, bias_field, rotation

FIELD_OF_VIEW_MM = (172.0, 212.0, 180.0)  # LR, AP, SI: the head of the template
SOURCE_SPACING = 1.5
SUB_SLICES = 4
# Coronal storage: columns are the index axes in LPS (x to the left, rows head to feet, slices
# front to back).
CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


class Subject:
    """Maps subject-space LPS points to template LPS points: a smooth deformation then an affine
    (rotation up to 10 degrees, 0.9-1.1 scale per axis, +-6 mm shift) about the template's centre."""

    def __init__(self, seed: int, templates: Templates):
        rng = np.random.default_rng([seed, 501])
        self.deformation = Deformation(rng, amplitude_mm=rng.uniform(2.0, 5.0), wavelength_mm=(50.0, 140.0))
        self.matrix = rotation(rng.normal(size=3), rng.uniform(0, 10)) @ np.diag(rng.uniform(0.9, 1.1, 3))
        self.shift = rng.uniform(-6, 6, size=3)
        self.centre = templates.centre

    def template_index(self, grid: Grid, templates: Templates) -> np.ndarray:
        x, y, z = self.deformation.warped_points(grid)
        offset = [c - np.float32(m) for c, m in zip((x, y, z), self.centre)]
        q = [sum(np.float32(self.matrix[r, c]) * offset[c] for c in range(3))
             + np.float32(self.centre[r] + self.shift[r]) for r in range(3)]
        return templates.index_of(*q)


def _sample(array: np.ndarray, index: np.ndarray, order: int) -> np.ndarray:
    return ndimage.map_coordinates(array, index, order=order, mode="constant", cval=0.0, prefilter=False)


def source_grid(seed: int) -> Grid:
    rng = np.random.default_rng([seed, 502])
    size = [int(round(f / SOURCE_SPACING)) for f in FIELD_OF_VIEW_MM]
    return Grid.centred(size, (SOURCE_SPACING,) * 3, centre=rng.uniform(-4, 4, 3) + (0.0, 18.0, 18.0))


def target_grid(seed: int) -> tuple[Grid, Grid]:
    """(the T2 grid, the thin-slice grid each thick slice averages SUB_SLICES slices of)."""
    rng = np.random.default_rng([seed, 503])
    direction = rotation(rng.normal(size=3), rng.uniform(0, 15)) @ CORONAL
    if rng.random() < 0.5:
        direction = direction @ np.diag([-1.0, 1.0, 1.0])
    in_plane, thickness = rng.uniform(0.9, 1.2), rng.uniform(4.0, 6.0)
    fov = (FIELD_OF_VIEW_MM[0], FIELD_OF_VIEW_MM[2], FIELD_OF_VIEW_MM[1])  # index axes: LR, SI, AP
    size = (int(round(fov[0] / in_plane)), int(round(fov[1] / in_plane)), int(round(fov[2] / thickness)))
    centre = rng.uniform(-4, 4, 3) + (0.0, 18.0, 18.0)
    thick = Grid.centred(size, (in_plane, in_plane, thickness), centre=centre, direction=direction)
    thin = Grid.centred((size[0], size[1], size[2] * SUB_SLICES), (in_plane, in_plane, thickness / SUB_SLICES),
                        centre=centre, direction=direction)
    return thick, thin


def _acquire(intensity: np.ndarray, grid: Grid, rng, bias_strength: float, noise: float) -> np.ndarray:
    """Per-subject contrast and gain, bias field and Rician noise (relative to the brain's level)."""
    level = float(np.percentile(intensity[intensity > 0], 95)) if np.any(intensity > 0) else 1.0
    image = level * (np.maximum(intensity, 0) / level) ** rng.uniform(0.85, 1.15)
    image = image * bias_field(grid, rng) ** np.float32(bias_strength)
    sigma = noise * level
    real = image + rng.normal(0, sigma, size=image.shape).astype(np.float32)
    imag = rng.normal(0, sigma, size=image.shape).astype(np.float32)
    image = np.sqrt(real * real + imag * imag) * rng.uniform(0.5, 1.5) * 1000 / level
    return np.clip(np.round(image), 0, 32767).astype(np.int16)


def _thick(array: np.ndarray) -> np.ndarray:
    """Average each run of SUB_SLICES thin slices (array axis 0) into one thick slice."""
    return array.reshape(-1, SUB_SLICES, *array.shape[1:]).mean(axis=1)


def render_case(seed: int, domain: str, with_paired: bool = False, templates=None):
    """(image, label, paired T1 or None) as SimpleITK images for one subject in one domain."""
    tpl = load_templates(templates)
    labels = _labels(str(tpl.folder))
    subject = Subject(seed, tpl)
    rng = np.random.default_rng([seed, 504 if domain == "source" else 505])
    if domain == "source":
        grid = source_grid(seed)
        index = subject.template_index(grid, tpl)
        image = _acquire(_sample(tpl.t1, index, 1), grid, rng, 0.5, rng.uniform(0.01, 0.03))
        return grid.to_image(image), grid.to_image(_sample(labels, index, 0).astype(np.uint8)), None
    grid, thin = target_grid(seed)
    index = subject.template_index(thin, tpl)
    image = _acquire(_thick(_sample(tpl.t2, index, 1)), grid, rng, 1.0, rng.uniform(0.02, 0.04))
    label = grid.to_image(_sample(labels, subject.template_index(grid, tpl), 0).astype(np.uint8))
    paired = None
    if with_paired:
        paired_rng = np.random.default_rng([seed, 506])
        paired = grid.to_image(_acquire(_thick(_sample(tpl.t1, index, 1)), grid, paired_rng, 0.5, 0.02))
    return grid.to_image(image), label, paired


@lru_cache(maxsize=2)
def _labels(folder: str) -> np.ndarray:
    tpl = load_templates(folder)
    return label_map(tpl.parc, tpl.tpm, tpl.brainmask)
