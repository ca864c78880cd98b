"""Task xray-drr: chest phantoms projected to 2D (128 x 128 pixels of 2.8 mm).

Source: digitally reconstructed radiographs, the Beer-Lambert line integral of attenuation (from
HU) along antero-posterior rays, stored log-converted (the integral itself). Target: other
subjects imaged with different physics: a softer effective spectrum (bone attenuates more),
beam hardening, heel effect, scatter haze, Poisson quantum noise, a detector gamma and edge
enhancement, collimator shutters and a burned-in side marker, stored as 12-bit values.
Labels are the projections of the 3D masks; the heart wins where it overlaps a lung (as in JSRT).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .shapes import Grid, rasterise
from .thorax import HU, Tissue, sample_thorax

PIXELS = 128
PIXEL_MM = 2.8
DEPTH_MM, DEPTH_STEP_MM = 272.0, 4.0
MU_WATER = 0.0195  # 1/mm, about 70 keV

# The letter 'L' of the burned-in marker (7 x 5).
_LETTER_L = np.array([[1, 0, 0, 0, 0]] * 6 + [[1, 1, 1, 1, 1]], dtype=bool)


def volume_grid() -> Grid:
    return Grid.centred((PIXELS, int(DEPTH_MM / DEPTH_STEP_MM), PIXELS), (PIXEL_MM, DEPTH_STEP_MM, PIXEL_MM))


def image_grid() -> Grid:
    """Single-slice grid of the radiograph; rows run from head (row 0) to feet."""
    return Grid.centred((PIXELS, PIXELS, 1), (PIXEL_MM, PIXEL_MM, PIXEL_MM))


def _hu_volume(tissue: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 606])
    means = np.zeros(len(Tissue), np.float32)
    textures = np.zeros(len(Tissue), np.float32)
    for t, (mean, texture) in HU.items():
        means[t] = mean + (abs(mean) * rng.uniform(-0.05, 0.05) if t != Tissue.AIR else 0)
        textures[t] = texture
    field = ndimage.gaussian_filter(rng.standard_normal(tissue.shape, dtype=np.float32), 1.0)
    field /= max(float(field.std()), 1e-6)
    return means[tissue] + textures[tissue] * field


def _project(volume: np.ndarray) -> np.ndarray:
    """Sum along AP (array axis 1) and turn (z, x) into image rows from head to feet."""
    return volume.sum(axis=1)[::-1] * np.float32(DEPTH_STEP_MM)


def project_labels(tissue: np.ndarray) -> np.ndarray:
    lungs = _project((tissue == Tissue.LUNG).astype(np.float32)) > 0
    heart = _project((tissue == Tissue.HEART).astype(np.float32)) > 0
    label = np.zeros(lungs.shape, np.uint8)
    label[lungs] = 1
    label[heart] = 2
    return label


def drr(hu: np.ndarray) -> np.ndarray:
    mu = np.maximum(MU_WATER * (1 + hu / 1000), 0)
    return _project(mu).astype(np.float32)


def radiograph(hu: np.ndarray, tissue: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 707])
    factor = np.ones(len(Tissue), np.float32)
    bone = rng.uniform(1.4, 1.9)  # a softer spectrum: photoelectric absorption in bone grows
    factor[[Tissue.BONE, Tissue.SPONGY_BONE]] = bone, 1 + (bone - 1) * 0.6
    factor[[Tissue.MUSCLE, Tissue.SOFT, Tissue.LIVER, Tissue.BLOOD, Tissue.HEART]] = rng.uniform(1.0, 1.12)
    factor[Tissue.FAT] = rng.uniform(0.85, 1.0)
    line = _project(np.maximum(MU_WATER * (1 + hu / 1000), 0) * factor[tissue])
    line = line / (1 + rng.uniform(0.05, 0.15) * line)  # beam hardening flattens thick paths
    x = np.linspace(-1, 1, PIXELS, dtype=np.float32)
    heel = 1 + rng.uniform(-0.15, 0.15) * x[None, :] + rng.uniform(-0.1, 0.1) * x[:, None]
    primary = np.exp(-line) * heel
    fluence = primary + rng.uniform(0.2, 0.6) * ndimage.gaussian_filter(primary, rng.uniform(10, 20))
    photons = rng.uniform(3000, 20000)
    detected = np.maximum(rng.poisson(fluence * photons), 1) / photons
    value = -np.log(detected)
    lo, hi = np.percentile(value, [1, 99.7])
    value = np.clip((value - lo) / (hi - lo), 0, 1) ** rng.uniform(0.6, 1.6)
    value = value + rng.uniform(0.3, 1.0) * (value - ndimage.gaussian_filter(value, 3))  # edge enhancement
    value = np.clip(value, 0, 1)
    # Collimator shutters: unexposed borders read as full attenuation.
    top, bottom, left, right = (int(m) if rng.random() < 0.7 else 0 for m in rng.integers(2, 15, size=4))
    shutter = np.ones_like(value, dtype=bool)
    shutter[top:PIXELS - bottom, left:PIXELS - right] = False
    value[shutter] = 1.0
    _burn_marker(value, rng, top, left, right)
    return np.round(value * 4095).astype(np.int16)


def _burn_marker(value: np.ndarray, rng, top: int, left: int, right: int) -> None:
    """A side marker: a dark block with a bright 'L' (scaled x2) near an upper corner."""
    letter = np.kron(_LETTER_L, np.ones((2, 2), dtype=bool))
    h, w = letter.shape[0] + 4, letter.shape[1] + 4
    row = top + int(rng.integers(2, 10))
    col = left + int(rng.integers(2, 12)) if rng.random() < 0.5 else PIXELS - right - w - int(rng.integers(2, 12))
    block = value[row:row + h, col:col + w]
    block[:] = 0.05
    block[2:-2, 2:-2][letter] = 1.0


def render_case(seed: int, domain: str, with_paired: bool = False):
    subject = sample_thorax(seed)
    tissue = rasterise(subject.steps, subject.deformation, volume_grid())
    hu = _hu_volume(tissue, seed)
    grid = image_grid()
    label = grid.to_image(project_labels(tissue)[None])
    if domain == "source":
        return grid.to_image(drr(hu)[None]), label, None
    image = grid.to_image(radiograph(hu, tissue, seed)[None])
    paired = grid.to_image(drr(hu)[None]) if with_paired else None
    return image, label, paired
