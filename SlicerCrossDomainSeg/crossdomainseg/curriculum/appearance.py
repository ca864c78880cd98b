"""Target-appearance replay: labelled source anatomy rendered as the target modality shows it.

Image-level adaptation as CyCADA does, but with a class-conditional intensity model instead of
a GAN, so the labels stay exactly right. The appearance is learned from the unlabelled target
images through the teacher: `fit` takes, per class, the quantiles of the normalised target
intensities at the voxels the teacher is confident of, pooled over all target images. `render`
maps each voxel of a labelled source crop through its class's source CDF to a rank and then
through the target class's quantile function (per-class histogram matching that keeps the
source texture's order), then imposes the target acquisition geometry (thick slices along the
target's slice axis, `slice_geometry`). No target label is read.

Assumptions: within one label the target intensity distribution is roughly the same across
subjects (true after per-image normalisation for one protocol), and the acquisition geometry
(slice thickness and direction) is in the target images' headers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..geometry import aligned_direction
from ..training.randomize import texture as fine_texture
from ..training.randomize import thick_slices

log = logging.getLogger(__name__)

LEVELS = np.linspace(0.0, 1.0, 101)  # quantile levels of every class model
# Teacher softmax a voxel needs to count in a target class model: a teacher fair on the target
# (Dice about 0.6 on brain) is wrong mostly at class borders, where its softmax is split; its
# sure voxels are the class interiors, whose intensities are what the class looks like.
CONFIDENCE = 0.9
MIN_VOXELS = 100  # fewer confident voxels than this: no class model of its own (`fit`)
# Nor with confident voxels covering less than this share of the voxels the source anatomy leads
# to expect: such a model holds the few places the teacher is sure of, often its errors (brain
# T2, 1.1 teacher: confident CSF covers 1% of the expected CSF, every other label 9% or more).
MIN_COVERAGE = 0.05
# A label is one tissue, so its target intensities form one mode; the teacher's confident errors
# (e.g. dark skull called cortex) lie outside it. Kept: within this many robust SDs (1.4826 MAD)
# of the median. Not for background (label 0), which is every unlabelled tissue at once.
TRIM_SD = 3.0
SAMPLE_PER_CLASS = 1_000_000  # voxels per class kept for its quantiles (time bound)
RANK_GAMMA_STD = 0.1  # per class, the rank u becomes u ** exp(N(0, std)): a few percent of jitter
PARTIAL_VOLUME_SIGMA = 0.5  # "flat" rendering: blur (voxels) making partial volume at class edges
ANISOTROPY = 1.5  # images whose largest / smallest spacing is below this count as isotropic


def slice_geometry(image: sitk.Image, working_spacing) -> tuple[int, float] | None:
    """(array axis of the working grid, slice thickness in working voxels) of an image with thick
    slices, or None for a near-isotropic or single-slice image. The working grid's axes are the
    image's own (geometry.aligned_direction), arrays in (z, y, x) order: the axis is the one that
    holds the image's thickest spacing; the thickness is that spacing over the working spacing there."""
    spacing = np.asarray(image.GetSpacing(), float)
    if image.GetDimension() != 3 or image.GetSize()[2] == 1 or spacing.max() / spacing.min() < ANISOTROPY:
        return None
    thick = int(spacing.argmax())
    direction = np.asarray(image.GetDirection(), float).reshape(3, 3)[:, thick]  # physical x, y, z
    physical = int(np.abs(aligned_direction(image).T @ direction).argmax())  # the grid axis along it
    thickness = float(spacing[thick] / working_spacing[physical])
    return (2 - physical, thickness) if thickness > 1.0 else None


def class_quantiles(x: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, len(LEVELS)) quantiles of `x` within each label of `y`; NaN rows for
    labels absent from `y`."""
    out = np.full((num_classes, len(LEVELS)), np.nan, np.float32)
    for c in np.unique(y):
        out[int(c)] = np.quantile(x[y == c], LEVELS)
    return out


def source_anatomy(volumes, quantiles: dict, num_classes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """What `fit` needs of the labelled source volumes: each class's share of their foreground
    voxels and its mean class quantiles over the volumes (`quantiles`: key -> class_quantiles);
    None without volumes."""
    if not quantiles:
        return None
    counts = sum(np.bincount(v.y.numpy().ravel(), minlength=num_classes) for v in volumes).astype(float)
    stacked = np.stack([quantiles[v.key] for v in volumes])
    present = ~np.isnan(stacked[:, :, 0])
    mean = np.where(present[:, :, None], stacked, 0).sum(0) / np.maximum(present.sum(0), 1)[:, None]
    mean[~present.any(0)] = np.nan
    return counts / max(counts[1:].sum(), 1.0), mean.astype(np.float32)


@dataclass
class TargetAppearance:
    """Per class: quantiles (NaN row: no model, the class keeps its source intensities) and where
    they came from ("confident", "like <class>" or "none")."""

    quantiles: np.ndarray
    origin: list[str]

    def medians(self) -> list[float | None]:
        mid = len(LEVELS) // 2
        return [None if np.isnan(q[mid]) else round(float(q[mid]), 3) for q in self.quantiles]


def fit(volumes, source_shares: np.ndarray, source_quantiles: np.ndarray, confidence: float = CONFIDENCE,
        rng: np.random.Generator | None = None) -> TargetAppearance:
    """The target class models from (x (*spatial), probabilities (C, *spatial)) pairs: the
    normalised image and the teacher's softmax on it; a foreground class keeps its main mode
    (TRIM_SD).

    A foreground class the teacher is sure of on fewer than MIN_VOXELS voxels, or on less than
    MIN_COVERAGE of the voxels the source anatomy leads to expect (`source_shares`: each class's
    share of the source foreground voxels), has no model of its own: the teacher's voxels of it,
    confident or not, are mostly its errors. It takes the model of the modelled class nearest to
    it in the source's appearance (`source_quantiles`, (C, levels), NaN rows for classes the
    source lacks), as two labels of one tissue look alike in both modalities; a class absent
    from the source gets none (it keeps its source intensities)."""
    rng = rng or np.random.default_rng(0)
    confident: dict[int, list[np.ndarray]] = {}
    num_classes, foreground = len(source_shares), 0
    for x, probs in volumes:
        x = np.asarray(x, np.float32).ravel()
        probs = np.asarray(probs).reshape(num_classes, -1)
        foreground += int((probs.argmax(0) != 0).sum())
        for c in range(num_classes):
            confident.setdefault(c, []).append(x[probs[c] >= confidence])
    quantiles = np.full((num_classes, len(LEVELS)), np.nan, np.float32)
    origin = ["none"] * num_classes
    for c in range(num_classes):
        values = np.concatenate(confident.get(c, [np.empty(0, np.float32)]))
        if len(values) >= max(MIN_VOXELS, MIN_COVERAGE * source_shares[c] * foreground if c else 0):
            values = _sample(values if c == 0 else _main_mode(values), rng)
            quantiles[c], origin[c] = np.quantile(values, LEVELS), "confident"
    modelled = [k for k in range(num_classes) if origin[k] == "confident"]
    for c in range(num_classes):
        if origin[c] == "none" and modelled and not np.isnan(source_quantiles[c][0]):
            distance = [float(np.mean(np.abs(source_quantiles[c] - source_quantiles[k]))) for k in modelled]
            like = modelled[int(np.argmin(distance))]
            quantiles[c], origin[c] = quantiles[like], f"like {like}"
        elif origin[c] == "none":
            log.info("target appearance: class %d has no model; it keeps its source intensities", c)
    return TargetAppearance(quantiles, origin)


def _main_mode(values: np.ndarray) -> np.ndarray:
    """The values within TRIM_SD robust standard deviations of their median."""
    median = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - median))
    return values[np.abs(values - median) <= TRIM_SD * spread] if spread > 0 else values


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(values) <= SAMPLE_PER_CLASS:
        return values
    return values[rng.choice(len(values), SAMPLE_PER_CLASS, replace=False)]


def ranks(values: np.ndarray, quantiles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each value's rank u in [0, 1] under the class CDF given by `quantiles`. Values tied with
    several quantiles (clipped ends of a normalised image, flat air) get a random rank within the
    tie, so that they spread over the target's distribution instead of piling on one end."""
    strict = quantiles + np.arange(len(quantiles)) * 1e-7  # increasing, as np.interp needs
    u = np.interp(values, strict, LEVELS)
    lo = np.searchsorted(quantiles, values, "left")
    hi = np.searchsorted(quantiles, values, "right")
    tied = hi - lo > 1
    if tied.any():
        low, high = LEVELS[lo[tied]], LEVELS[hi[tied] - 1]
        u[tied] = low + rng.random(int(tied.sum())) * (high - low)
    return u


def render(x: np.ndarray, y: np.ndarray, source_quantiles: np.ndarray, target: TargetAppearance,
           geometry: tuple[int, float] | None, rng: np.random.Generator, texture: str = "flat") -> np.ndarray:
    """A source crop `x` (*spatial, normalised) with labels `y` in the target's appearance, then
    thick slices when `geometry` (from `slice_geometry` of a target image) says so. Labels are
    left as they are. `texture`:
    - "rank": per-class histogram matching from the source volume's class quantiles to the
      target's (a random gamma on the rank per class), keeping the source's order within a class;
    - "flat": each foreground label at its target median (the same random gamma on its rank) plus
      the source's fine texture scaled by the ratio of the classes' spreads, then blurred so that
      partial volume at class edges follows the target's contrast rather than the source's (a
      label's rank order near an inverted neighbour is inverted too); background as in "rank"."""
    x = np.asarray(x, np.float32)
    out = x.copy()
    fine = fine_texture(x, ndimage.uniform_filter(x, 3), y, len(target.quantiles)) if texture == "flat" else None
    for c in np.unique(y):
        src, tgt = source_quantiles[int(c)], target.quantiles[int(c)]
        if np.isnan(src[0]) or np.isnan(tgt[0]):
            continue
        mask = y == c
        gamma = np.exp(rng.normal(0.0, RANK_GAMMA_STD))
        if fine is not None and c != 0:
            gain = _spread(tgt) / max(_spread(src), 1e-3)
            out[mask] = np.interp(0.5**gamma, LEVELS, tgt) + gain * fine[mask]
        else:
            out[mask] = np.interp(ranks(x[mask], src, rng) ** gamma, LEVELS, tgt)
    if fine is not None:
        out = ndimage.gaussian_filter(out, PARTIAL_VOLUME_SIGMA, mode="nearest")
    if geometry is not None:
        out = thick_slices(out, geometry[0], geometry[1], rng)
    return out.astype(np.float32)


def _spread(quantiles: np.ndarray) -> float:
    """Interquartile range of a class model."""
    return float(quantiles[75] - quantiles[25])
