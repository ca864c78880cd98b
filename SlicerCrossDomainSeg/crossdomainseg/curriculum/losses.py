"""Losses of the curriculum: D (eq. 1, 3) and D~ (eq. 2) of the patent.

D is 1 - Dice between the segmentations (argmax) of two probability maps, over foreground
classes (uncertainty.label_dice): the soft Dice of a soft map with itself is below 1. D~ is cross-entropy plus soft Dice loss of the student's logits against a
hard one-hot target: the teacher's argmax H(S_tea) for the consistency loss, the clinician's label
for the supervised loss on accepted cases and the source label for replay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..uncertainty import label_dice, segmentation


def dice_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """D(p, q) per batch item, in [0, 1], for (B, C, *spatial) probability maps."""
    return (1.0 - label_dice(segmentation(p), segmentation(q), p.shape[1])).clamp_min(0.0)


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-5,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """D~(one_hot(target), softmax(logits)): mean cross-entropy + mean soft Dice loss.

    `target` holds class indices (B, *spatial). The Dice term is per item over foreground classes
    present in the target or the prediction, so an empty class does not dominate. `weight`
    (B, *spatial, 0 or 1) keeps only the voxels it marks, in both terms.
    """
    probs = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(target, probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = tuple(range(2, probs.dim()))
    if weight is None:
        ce = F.cross_entropy(logits, target)
        inter = (probs[:, 1:] * one_hot[:, 1:]).sum(dims)
        total = probs[:, 1:].sum(dims) + one_hot[:, 1:].sum(dims)
    else:
        weight = weight.to(probs.dtype)
        ce = (F.cross_entropy(logits, target, reduction="none") * weight).sum() / weight.sum().clamp_min(1.0)
        inter = (probs[:, 1:] * one_hot[:, 1:] * weight[:, None]).sum(dims)
        total = ((probs[:, 1:] + one_hot[:, 1:]) * weight[:, None]).sum(dims)
    dice = 1.0 - (2 * inter + eps) / (total + eps)
    return ce + dice.mean()


def pseudo_labels(teacher_logits: torch.Tensor, confidence_threshold: float = 0.0,
                  class_adaptive: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """H(S_tea(T_i x)) of eq. 2 and the voxels that count (None: all). Voxels where the
    teacher's top softmax is below `confidence_threshold` are left out (0: every voxel, as in
    the patent); `class_adaptive`: below the threshold scaled per labelled class by the teacher's
    mean top softmax on that class over the batch, relative to its most confident class."""
    teacher = torch.softmax(teacher_logits.detach(), dim=1)
    confidence, labels = teacher.max(dim=1)
    if confidence_threshold <= 0:
        return labels, None
    if not class_adaptive:
        return labels, confidence >= confidence_threshold
    n = teacher.shape[1]
    flat = labels.flatten()
    counts = torch.bincount(flat, minlength=n)
    means = torch.zeros(n, dtype=confidence.dtype, device=confidence.device).scatter_add_(
        0, flat, confidence.flatten()) / counts.clamp_min(1)
    scale = means / means[counts > 0].max()
    return labels, confidence >= confidence_threshold * scale[labels]


def consistency_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                     confidence_threshold: float = 0.0, class_adaptive: bool = False) -> torch.Tensor:
    """Eq. 2 for a batch of augmented views: D~(H(S_tea(T_i x)), S_stu(T_i x)); no gradient to
    the teacher. `confidence_threshold` and `class_adaptive` as in `pseudo_labels`."""
    labels, weight = pseudo_labels(teacher_logits, confidence_threshold, class_adaptive)
    return ce_dice_loss(student_logits, labels, weight=weight)
