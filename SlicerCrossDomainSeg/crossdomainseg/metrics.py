"""Evaluation metrics: overlap (Dice), surface distances in mm (HD95, ASSD), AUROC, ECE, Spearman.

Label maps are integer arrays in SimpleITK array order `(z, y, x)` or SimpleITK images.
`spacing` is always given in SimpleITK order `(x, y, z)`, exactly as `image.GetSpacing()` returns
it; when an image is passed its own spacing is used.

Empty masks are handled explicitly, never as NaN:
- Dice: both empty -> 1.0 (nothing to find, nothing found); one empty -> 0.0.
- HD95 / ASSD: both empty -> 0.0; one empty -> the diagonal of the image extent in mm (the worst
  distance possible on that grid), so a missed structure is penalised instead of dropping out of
  an average.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, stats


def _array_and_spacing(image, spacing):
    if isinstance(image, sitk.Image):
        return sitk.GetArrayFromImage(image), image.GetSpacing() if spacing is None else spacing
    return np.asarray(image), spacing


def _foreground_labels(pred: np.ndarray, ref: np.ndarray, labels: Iterable[int] | None) -> list[int]:
    if labels is not None:
        return [int(v) for v in labels if int(v) != 0]
    if pred.dtype == bool and ref.dtype == bool:
        return [1]
    values = np.union1d(np.unique(pred), np.unique(ref))
    return [int(v) for v in values if v != 0]


def dice_per_label(pred, ref, labels: Iterable[int] | None = None) -> dict[int, float]:
    """Dice of each foreground label (default: every non-zero value present in either map)."""
    pred, _ = _array_and_spacing(pred, None)
    ref, _ = _array_and_spacing(ref, None)
    if pred.shape != ref.shape:
        raise ValueError(f"label maps differ in shape: {pred.shape} vs {ref.shape}")
    scores = {}
    for value in _foreground_labels(pred, ref, labels):
        a, b = pred == value, ref == value
        total = int(a.sum()) + int(b.sum())
        scores[value] = 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
    return scores


def dice(pred, ref, labels: Iterable[int] | None = None) -> float:
    """Mean Dice over foreground labels; boolean masks are compared as one label."""
    scores = dice_per_label(pred, ref, labels)
    return float(np.mean(list(scores.values()))) if scores else 1.0


def _squeeze_with_spacing(mask: np.ndarray, spacing_zyx: np.ndarray):
    """Drop singleton axes (a 2D image stored as one slice) so erosion does not eat the plane."""
    keep = [i for i, n in enumerate(mask.shape) if n > 1]
    return mask.reshape([mask.shape[i] for i in keep]), spacing_zyx[keep]


def _surface(mask: np.ndarray) -> np.ndarray:
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _directed_distances(a: np.ndarray, b: np.ndarray, spacing: np.ndarray):
    """Distances (mm) from each surface voxel of a to the surface of b, and back."""
    surface_a, surface_b = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)
    return to_b[surface_a], to_a[surface_b]


def _surface_metric(pred, ref, spacing, labels, reduce) -> float:
    pred, spacing_p = _array_and_spacing(pred, spacing)
    ref, spacing_r = _array_and_spacing(ref, spacing)
    spacing = spacing_p if spacing_p is not None else spacing_r
    if spacing is None:
        raise ValueError("spacing is required for arrays (SimpleITK order x, y, z)")
    if pred.shape != ref.shape:
        raise ValueError(f"label maps differ in shape: {pred.shape} vs {ref.shape}")
    spacing_zyx = np.asarray(spacing, dtype=float)[::-1][-pred.ndim:]
    worst = float(np.sqrt(np.sum((np.asarray(pred.shape) * spacing_zyx) ** 2)))
    values = []
    for value in _foreground_labels(pred, ref, labels):
        a, spacing_used = _squeeze_with_spacing(pred == value, spacing_zyx)
        b, _ = _squeeze_with_spacing(ref == value, spacing_zyx)
        if not a.any() and not b.any():
            values.append(0.0)
        elif not a.any() or not b.any():
            values.append(worst)
        else:
            values.append(reduce(*_directed_distances(a, b, spacing_used)))
    return float(np.mean(values)) if values else 0.0


def hd95(pred, ref, spacing: Sequence[float] | None = None, labels: Iterable[int] | None = None) -> float:
    """95th-percentile Hausdorff distance (mm), symmetric as in MONAI: the larger of the two
    directed 95th percentiles; mean over foreground labels."""
    return _surface_metric(
        pred, ref, spacing, labels,
        lambda ab, ba: max(np.percentile(ab, 95), np.percentile(ba, 95)),
    )


def assd(pred, ref, spacing: Sequence[float] | None = None, labels: Iterable[int] | None = None) -> float:
    """Average symmetric surface distance (mm); mean over foreground labels."""
    return _surface_metric(
        pred, ref, spacing, labels,
        lambda ab, ba: (ab.sum() + ba.sum()) / (ab.size + ba.size),
    )


def auroc(scores, positives) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U), ties counted half.

    `scores`: higher means "more likely positive"; `positives`: booleans of the same size.
    Returns NaN when one of the two classes is absent (AUROC is undefined then).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = np.asarray(positives, dtype=bool).ravel()
    if scores.shape != positives.shape:
        raise ValueError(f"scores and positives differ in size: {scores.size} vs {positives.size}")
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(scores)
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def ece(confidence, correct, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins on [0, 1].

    `confidence`: predicted probability of the chosen class per sample (e.g. max softmax per
    voxel); `correct`: whether that choice was right.
    """
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence and correct differ in size: {confidence.size} vs {correct.size}")
    if confidence.size == 0:
        return 0.0
    bins = np.minimum((np.clip(confidence, 0.0, 1.0) * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    return float(np.abs(acc_sum - conf_sum).sum() / confidence.size)


def ece_from_probabilities(probabilities, reference, channel_axis: int = 0, n_bins: int = 15) -> float:
    """ECE of class probabilities (channels on `channel_axis`) against a reference label map."""
    probabilities = np.asarray(probabilities)
    confidence = probabilities.max(axis=channel_axis)
    correct = probabilities.argmax(axis=channel_axis) == np.asarray(reference)
    return ece(confidence, correct, n_bins)


def spearman(a, b) -> float:
    """Spearman rank correlation; NaN when either input is constant."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)
