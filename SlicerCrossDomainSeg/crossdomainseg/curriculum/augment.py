"""Augmented views for the consistency loss (eq. 2): weak ones (the TTA family of eq. 1) and
strong ones drawn RandAugment-style (a few random intensity and geometry ops at one magnitude).

Teacher and student see the same view T_i(x), so views need no inverse. Tensors are
(B, C, *spatial) with intensities normalised to about [0, 1].
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from ..uncertainty import Flip, GaussianBlur, IntensityScale, Rotate, Transform


def weak_transforms(spatial_dims: int) -> list[Transform]:
    flips = [Flip(-1), Flip(-2)] + ([Flip(-3)] if spatial_dims == 3 else [])
    return flips + [Rotate(10.0), Rotate(-10.0), GaussianBlur(0.8), IntensityScale(1.1), IntensityScale(0.9)]


def weak_views(x: torch.Tensor, n: int, rng: random.Random) -> list[torch.Tensor]:
    """n weak views: the image itself first, then randomly chosen weak transforms."""
    if n <= 0:
        return []
    choices = weak_transforms(x.dim() - 2)
    return [x] + [rng.choice(choices).apply(x) for _ in range(n - 1)]


def _affine(x: torch.Tensor, degrees: float, scale: float) -> torch.Tensor:
    spatial = x.dim() - 2
    a = math.radians(degrees)
    theta = torch.eye(spatial, spatial + 1, dtype=x.dtype, device=x.device)
    theta[0, 0], theta[0, 1] = math.cos(a) / scale, -math.sin(a) / scale
    theta[1, 0], theta[1, 1] = math.sin(a) / scale, math.cos(a) / scale
    if spatial == 3:
        theta[2, 2] = 1.0 / scale
    grid = F.affine_grid(theta.unsqueeze(0).expand(x.shape[0], -1, -1), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _op(name: str, x: torch.Tensor, m: float, rng: random.Random) -> torch.Tensor:
    sign = rng.choice((-1.0, 1.0))
    if name == "contrast":
        return IntensityScale(1.0 + sign * 0.5 * m).apply(x)
    if name == "brightness":
        return x + sign * 0.2 * m
    if name == "gamma":
        lo = x.amin(dim=tuple(range(1, x.dim())), keepdim=True)
        hi = x.amax(dim=tuple(range(1, x.dim())), keepdim=True)
        unit = ((x - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
        return lo + unit ** (2.0 ** (sign * m)) * (hi - lo)
    if name == "noise":
        generator = torch.Generator().manual_seed(rng.randrange(2**31))
        return x + 0.1 * m * torch.randn(x.shape, generator=generator).to(x)
    if name == "blur":
        return GaussianBlur(0.5 + 1.5 * m).apply(x)
    if name == "sharpen":
        return x + m * (x - GaussianBlur(1.0).apply(x))
    if name == "rotate":
        return _affine(x, sign * 30.0 * m, 1.0)
    if name == "scale":
        return _affine(x, 0.0, 1.0 + sign * 0.25 * m)
    raise ValueError(name)


STRONG_OPS = ("contrast", "brightness", "gamma", "noise", "blur", "sharpen", "rotate", "scale")


def strong_view(x: torch.Tensor, rng: random.Random, ops: int, magnitude: float) -> torch.Tensor:
    for name in rng.sample(STRONG_OPS, k=min(ops, len(STRONG_OPS))):
        x = _op(name, x, magnitude, rng)
    return x


def views(x: torch.Tensor, n_weak: int, n_strong: int, rng: random.Random, ops: int,
          magnitude: float) -> torch.Tensor:
    """The m = n_weak + n_strong views of a batch, concatenated along the batch axis."""
    out = weak_views(x, n_weak, rng)
    out += [strong_view(x, rng, ops, magnitude) for _ in range(n_strong)]
    return torch.cat(out, dim=0)


def flip_pair(x: torch.Tensor, y: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Random mirror applied alike to images (B, C, ...) and labels (B, ...), for labelled data."""
    for axis in range(1, y.dim()):
        if rng.random() < 0.5:
            x, y = torch.flip(x, dims=(axis + 1,)), torch.flip(y, dims=(axis,))
    return x, y
