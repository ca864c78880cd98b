"""Task phantom-ct-mr: render one abdominal subject as CT (source) or T2-like MR (target).

CT: Hounsfield units with per-tissue texture and noise on an axial grid (1.5, 1.5, 2.5) mm,
identity direction. MR: a non-monotone contrast (fat and fluid bright, liver dark, vessels flow
voids, bone dark), partial-volume blur, a smooth multiplicative bias field, Rician noise and an
arbitrary gain, on a coarser (1.8, 1.8, 3.0) mm grid rotated 10-25 degrees and sometimes flipped.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .abdomen import FIELD_OF_VIEW_MM, TISSUE_TO_LABEL, Subject, Tissue, sample_abdomen
from .shapes import Grid, bias_field, rasterise, rotation

CT_SPACING = (1.5, 1.5, 2.5)
MR_SPACING = (1.8, 1.8, 3.0)

# Per tissue: (mean, texture amplitude). CT in HU, MR in arbitrary units before gain and bias.
CT = {
    Tissue.AIR: (-1000, 0), Tissue.FAT: (-100, 12), Tissue.MUSCLE: (50, 10), Tissue.CORTICAL_BONE: (700, 80),
    Tissue.MARROW: (250, 40), Tissue.DISC: (80, 10), Tissue.CSF: (10, 4), Tissue.AORTA: (180, 8),
    Tissue.VEIN: (130, 8), Tissue.BOWEL: (35, 15), Tissue.GAS: (-900, 40), Tissue.FLUID: (10, 5),
    Tissue.KIDNEY: (150, 14), Tissue.SPLEEN: (45, 8), Tissue.LIVER: (60, 8), Tissue.LESION: (20, 6),
}
MR = {
    Tissue.AIR: (0, 0), Tissue.FAT: (800, 60), Tissue.MUSCLE: (150, 20), Tissue.CORTICAL_BONE: (30, 10),
    Tissue.MARROW: (450, 50), Tissue.DISC: (700, 50), Tissue.CSF: (1400, 40), Tissue.AORTA: (60, 20),
    Tissue.VEIN: (90, 25), Tissue.BOWEL: (380, 70), Tissue.GAS: (10, 5), Tissue.FLUID: (1300, 50),
    Tissue.KIDNEY: (620, 50), Tissue.SPLEEN: (520, 35), Tissue.LIVER: (210, 20), Tissue.LESION: (1500, 60),
}


def _table(spec, rng, relative_jitter):
    """Per-tissue (mean, texture) lookup arrays, means jittered per subject (physiology varies)."""
    means = np.zeros(len(Tissue), np.float32)
    textures = np.zeros(len(Tissue), np.float32)
    for tissue, (mean, texture) in spec.items():
        means[tissue] = mean + (abs(mean) * rng.uniform(-relative_jitter, relative_jitter) if tissue != Tissue.AIR else 0)
        textures[tissue] = texture
    return means, textures


def _texture(shape, rng, sigma_voxels):
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_voxels)
    return field / max(float(field.std()), 1e-6)


def ct_grid() -> Grid:
    size = [int(round(f / s)) for f, s in zip(FIELD_OF_VIEW_MM, CT_SPACING)]
    return Grid.centred(size, CT_SPACING)


def mr_grid(seed: int, size=None, spacing=None) -> Grid:
    """The subject's MR grid: oblique (10-25 degrees about a random axis), flipped left-right in
    storage half of the time; `size` / `spacing` override the default field of view sampling."""
    rng = np.random.default_rng([seed, 202])
    if spacing is None:
        spacing = MR_SPACING if size is None else tuple(f / n for f, n in zip(FIELD_OF_VIEW_MM, size))
    if size is None:
        size = tuple(int(round(f / s)) for f, s in zip(FIELD_OF_VIEW_MM, spacing))
    direction = rotation(rng.normal(size=3), rng.choice([-1, 1]) * rng.uniform(10, 25))
    if rng.random() < 0.5:
        direction = direction @ np.diag([-1.0, 1.0, 1.0])
    centre = rng.uniform(-5, 5, size=3)
    return Grid.centred(size, spacing, centre=centre, direction=direction)


def render_ct(tissue: np.ndarray, grid: Grid, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 303, *grid.size])
    means, textures = _table(CT, rng, 0.08)
    image = means[tissue] + textures[tissue] * _texture(tissue.shape, rng, 1.2)
    sigma = 0.35 * 1.5 / np.array(grid.spacing)[::-1]  # slight scanner blur, in voxels (z, y, x)
    image = ndimage.gaussian_filter(image, sigma)
    image += rng.normal(0, 9, size=image.shape).astype(np.float32)
    return np.clip(np.round(image), -1024, 3071).astype(np.int16)


def render_mr(tissue: np.ndarray, grid: Grid, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 404, *grid.size])
    means, textures = _table(MR, rng, 0.12)
    image = means[tissue] + textures[tissue] * _texture(tissue.shape, rng, 1.0)
    # Partial volume: thick slices blur more along the slice axis.
    sigma = np.array([1.2, 0.6, 0.6]) * np.array([grid.spacing[2] / 3.0, *grid.spacing[1::-1]]) / 1.8
    image = ndimage.gaussian_filter(np.maximum(image, 0), sigma)
    image *= bias_field(grid, rng)
    noise = rng.uniform(15, 35)
    real = image + rng.normal(0, noise, size=image.shape).astype(np.float32)
    imag = rng.normal(0, noise, size=image.shape).astype(np.float32)
    image = np.sqrt(real * real + imag * imag) * rng.uniform(0.6, 1.4)
    return np.clip(np.round(image), 0, 32767).astype(np.int16)


def render_case(seed: int, domain: str, with_paired: bool = False, size=None, spacing=None):
    """(image, label, paired CT or None) as SimpleITK images for one subject in one domain."""
    subject: Subject = sample_abdomen(seed)
    if domain == "source":
        grid = ct_grid()
        tissue = rasterise(subject.steps, subject.deformation, grid)
        return grid.to_image(render_ct(tissue, grid, seed)), grid.to_image(TISSUE_TO_LABEL[tissue]), None
    grid = mr_grid(seed, size, spacing)
    tissue = rasterise(subject.steps, subject.deformation, grid)
    paired = grid.to_image(render_ct(tissue, grid, seed)) if with_paired else None
    return grid.to_image(render_mr(tissue, grid, seed)), grid.to_image(TISSUE_TO_LABEL[tissue]), paired
