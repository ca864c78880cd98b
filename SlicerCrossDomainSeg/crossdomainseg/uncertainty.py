"""Test-time augmentation (TTA), the per-voxel uncertainty heatmap and the per-image U.

Patent eq. 1: U(x_t) = max_i D(p_i, p_bar), where p_i is the softmax of the reference segmenter on
T_i(G(x_t)) mapped back by T_i^-1, p_bar their mean and D = 1 - soft Dice over foreground classes.
The heatmap is the per-voxel spread of the same p_i.

Tensors are torch, shaped (B, C, *spatial) with spatial (z, y, x) or (y, x), so the curriculum
trainer can use the same functions on its batches.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

HEATMAP_KINDS = ("entropy", "variance", "mutual_information")


class Transform:
    """One TTA transform: `apply` to the image, `invert` on the class probabilities."""

    name = "identity"

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def invert(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities

    def __repr__(self) -> str:
        return self.name


class Flip(Transform):
    """Mirror along one spatial axis (-1 = x, -2 = y, -3 = z); its own inverse."""

    def __init__(self, axis: int):
        self.axis = axis
        self.name = f"flip{'xyz'[-axis - 1]}"

    def apply(self, image):
        return torch.flip(image, dims=(self.axis,))

    def invert(self, probabilities):
        return torch.flip(probabilities, dims=(self.axis,))


def _rotate_yx(tensor: torch.Tensor, degrees: float, mode: str) -> torch.Tensor:
    """Rotate about the centre in the (y, x) plane, rigid in voxel units on non-square grids."""
    h, w = tensor.shape[-2], tensor.shape[-1]
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    rot = [[c, -s * h / w], [s * w / h, c]]
    spatial = tensor.dim() - 2
    theta = torch.eye(spatial, spatial + 1, dtype=tensor.dtype, device=tensor.device)
    # affine_grid orders coordinates (x, y[, z]): the in-plane block is the top-left 2x2.
    theta[0, 0], theta[0, 1], theta[1, 0], theta[1, 1] = rot[0][0], rot[0][1], rot[1][0], rot[1][1]
    theta = theta.unsqueeze(0).expand(tensor.shape[0], -1, -1)
    grid = F.affine_grid(theta, list(tensor.shape), align_corners=False)
    return F.grid_sample(tensor, grid, mode=mode, padding_mode="border", align_corners=False)


class Rotate(Transform):
    """Small in-plane rotation; inverted by rotating the probabilities back."""

    def __init__(self, degrees: float):
        self.degrees = degrees
        self.name = f"rot{degrees:+g}"

    def apply(self, image):
        return _rotate_yx(image, self.degrees, "bilinear")

    def invert(self, probabilities):
        return _rotate_yx(probabilities, -self.degrees, "bilinear")


class GaussianBlur(Transform):
    """Separable Gaussian blur of the image (sigma in voxels); geometry unchanged."""

    def __init__(self, sigma: float):
        self.sigma = sigma
        self.name = f"blur{sigma:g}"

    def apply(self, image):
        radius = max(1, int(math.ceil(2.5 * self.sigma)))
        x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
        kernel = torch.exp(-0.5 * (x / self.sigma) ** 2)
        kernel = kernel / kernel.sum()
        spatial = image.dim() - 2
        channels = image.shape[1]
        out = image
        for axis in range(spatial):
            shape = [1] * spatial
            shape[axis] = kernel.numel()
            weight = kernel.reshape(1, 1, *shape).repeat(channels, 1, *([1] * spatial))
            pad = [0, 0] * spatial
            pad[2 * (spatial - 1 - axis)] = pad[2 * (spatial - 1 - axis) + 1] = radius
            conv = F.conv3d if spatial == 3 else F.conv2d
            out = conv(F.pad(out, pad, mode="replicate"), weight, groups=channels)
        return out


class IntensityScale(Transform):
    """Contrast change about the image mean; geometry unchanged."""

    def __init__(self, factor: float):
        self.factor = factor
        self.name = f"contrast{factor:g}"

    def apply(self, image):
        mean = image.mean(dim=tuple(range(2, image.dim())), keepdim=True)
        return mean + (image - mean) * self.factor


def all_transforms(spatial_dims: int = 3) -> list[Transform]:
    """Every defined transform, in the order `default_transforms` takes them: identity first (n = 1
    is plain inference), mirror flips last. Flips mirror the anatomy, which networks trained
    without flips read differently; measured on the xray-drr test split (benchmarks/uncertainty.py)
    they lowered the heatmap's error AUROC and made U rank cases worse (Spearman of U against
    Dice turned positive at n >= 6)."""
    ordered: list[Transform] = [
        Transform(), Rotate(10.0), GaussianBlur(1.0), Rotate(-10.0), IntensityScale(1.15),
        IntensityScale(0.85), GaussianBlur(0.6), Rotate(5.0), Rotate(-5.0), Flip(-1), Flip(-2),
    ]
    if spatial_dims == 3:
        ordered.append(Flip(-3))
    return ordered


def default_transforms(n: int, spatial_dims: int = 3) -> list[Transform]:
    """The first n of `all_transforms`."""
    ordered = all_transforms(spatial_dims)
    if n < 1:
        raise ValueError(f"TTA count must be at least 1, got {n}")
    if n > len(ordered):
        raise ValueError(f"at most {len(ordered)} TTA transforms are defined, got n={n}")
    return ordered[:n]


def tta_probabilities(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    transforms: Sequence[Transform],
    step: Callable[[int], None] | None = None,
    chunk: int = 1,
) -> list[torch.Tensor]:
    """p_i = T_i^-1(predict(T_i(image))) for each transform; `predict` returns probabilities.

    `chunk` transformed images go through `predict` as one batch (far faster on CPU for small
    patch networks); `step(i)` is called after each chunk with the index of its last transform.
    """
    outputs: list[torch.Tensor] = []
    for first in range(0, len(transforms), max(1, chunk)):
        group = transforms[first:first + max(1, chunk)]
        batch = predict(torch.cat([t.apply(image) for t in group]))
        size = image.shape[0]
        for j, transform in enumerate(group):
            outputs.append(transform.invert(batch[j * size:(j + 1) * size]))
        if step is not None:
            step(first + len(group) - 1)
    return outputs


def segmentation(probabilities: torch.Tensor) -> torch.Tensor:
    """Label per voxel (B, *spatial) of (B, C, *spatial) probabilities; argmax over a channels-last
    copy, as argmax across the strided channel axis is about 5x slower on CPU."""
    return probabilities.movedim(1, -1).contiguous().argmax(-1)


def label_dice(a: torch.Tensor, b: torch.Tensor, classes: int, eps: float = 1e-6) -> torch.Tensor:
    """Dice per batch item between two segmentations (B, *spatial) of `classes` labels, averaged
    over foreground labels; a label in neither counts as agreement. Counted from the joint label
    histogram: no one-hot volumes (the full-size TTA views are large)."""
    batch = a.shape[0]
    offsets = torch.arange(batch, device=a.device)[:, None] * classes * classes
    joint = a.reshape(batch, -1) * classes + b.reshape(batch, -1) + offsets
    counts = torch.bincount(joint.reshape(-1), minlength=batch * classes * classes)
    counts = counts.reshape(batch, classes, classes).double()
    inter = counts.diagonal(dim1=1, dim2=2)[:, 1:]
    total = counts.sum(2)[:, 1:] + counts.sum(1)[:, 1:]
    return ((2 * inter + eps) / (total + eps)).mean(dim=1).float()


def image_uncertainty(probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
    """U per batch item: max over TTA predictions of the Dice distance between the segmentation
    of p_i and that of p_bar (patent eq. 1). On segmentations, not on the soft maps: the soft
    Dice of a soft map with itself is below 1, and a label no voxel belongs to (a lesion absent
    from this image) still spreads a little probability over the whole volume, which alone would
    put every image's U near 1/C; a label absent from both segmentations counts as agreement."""
    classes = probabilities[0].shape[1]
    mean = segmentation(torch.stack(list(probabilities)).mean(0))
    distances = torch.stack([1.0 - label_dice(segmentation(p), mean, classes) for p in probabilities])
    return distances.max(0).values.clamp_min(0.0)


def heatmap(probabilities: Sequence[torch.Tensor], kind: str = "entropy") -> torch.Tensor:
    """Per-voxel uncertainty in [0, 1], shape (B, 1, *spatial).

    entropy: entropy of p_bar / log(C) (total uncertainty, non-zero even with one prediction);
    variance: variance over predictions, summed over classes, scaled so the maximum is 1;
    mutual_information: entropy of p_bar minus mean entropy of p_i (disagreement only), / log(C).
    """
    if kind not in HEATMAP_KINDS:
        raise ValueError(f"heatmap kind must be one of {HEATMAP_KINDS}, got {kind!r}")
    stack = torch.stack(list(probabilities))
    mean = stack.mean(0)
    classes = mean.shape[1]
    norm = math.log(classes) if classes > 1 else 1.0

    def entropy(p):
        return -(p * torch.log(p.clamp_min(1e-8))).sum(dim=1, keepdim=True)

    if kind == "entropy":
        out = entropy(mean) / norm
    elif kind == "variance":
        # Two predictions at opposite one-hot corners give the maximum: sum of variances = 0.5.
        out = stack.var(0, unbiased=False).sum(dim=1, keepdim=True) / 0.5
    else:
        out = (entropy(mean) - torch.stack([entropy(p) for p in stack]).mean(0)) / norm
    return out.clamp(0.0, 1.0)
