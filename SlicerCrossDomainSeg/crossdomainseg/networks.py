"""Networks built from JSON-able specs, so a bundle's metadata alone says how to rebuild its modules.

A spec is a dict with a `kind` and the kind's parameters; `build_network(spec)` returns a
`torch.nn.Module` whose `spec` attribute holds the full spec (defaults filled in), which is what
`bundle.save_bundle` records. Kinds:

- `segmenter` / `refiner` / `unet`: MONAI `UNet` (2D or 3D). Logits out, one channel per label
  (background included). The refiner is the same network with more input channels (image,
  preview, previous probabilities, click maps).
  {"kind": "segmenter", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
   "channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1, "norm": "instance"}
- `generator`: ResNet-style image-to-image translator (CycleGAN's generator, small): a
  `stem_kernel`-wide stem and output conv (7 in CycleGAN; 3 keeps 3D affordable on a CPU),
  `n_down` stride-2 downsamplings, `n_blocks` residual blocks, as many upsamplings back.
  Output activation `sigmoid` for images normalised to [0, 1] (`tanh` for [-1, 1], `none`).
  Input sizes must be divisible by 2**n_down (pad first). With `residual` the net predicts a
  change to its input (added before the output activation, last conv zero-initialised), so an
  untrained generator is the identity and training starts from "no translation" rather than noise.
  `norm` "instance" (CycleGAN's) or "none": instance norm after the single-channel stem discards
  each patch's absolute intensity level, which an intensity-mapping task (MR -> CT) needs.
- `discriminator`: PatchGAN (LSGAN logits per patch): `n_layers` stride-2 conv blocks.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import BundleError

_UNET_DEFAULTS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [8, 16, 32, 64],
    "strides": [2, 2, 2],
    "num_res_units": 1,
    "norm": "instance",
    "dropout": 0.0,
}
_GENERATOR_DEFAULTS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "channels": 16,
    "n_down": 2,
    "n_blocks": 3,
    "stem_kernel": 7,
    "output": "sigmoid",
    "residual": False,
    "norm": "instance",
}
_DISCRIMINATOR_DEFAULTS = {
    "spatial_dims": 3,
    "in_channels": 1,
    "channels": 16,
    "n_layers": 3,
    "norm": "instance",
}
_DEFAULTS = {
    "segmenter": _UNET_DEFAULTS,
    "refiner": _UNET_DEFAULTS,
    "unet": _UNET_DEFAULTS,
    "generator": _GENERATOR_DEFAULTS,
    "discriminator": _DISCRIMINATOR_DEFAULTS,
}


def full_spec(spec: dict) -> dict:
    """The spec with every default filled in; raises BundleError on an unknown kind or key."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise BundleError(f"A network spec must be a dict with a 'kind'; got {spec!r}.")
    kind = spec["kind"]
    if kind not in _DEFAULTS:
        raise BundleError(f"Unknown network kind {kind!r}; expected one of {sorted(_DEFAULTS)}.")
    unknown = set(spec) - set(_DEFAULTS[kind]) - {"kind"}
    if unknown:
        raise BundleError(f"Network spec of kind {kind!r} has unknown keys {sorted(unknown)}.")
    out = {"kind": kind, **copy.deepcopy(_DEFAULTS[kind])}
    out.update(copy.deepcopy(spec))
    if out["spatial_dims"] not in (2, 3):
        raise BundleError(f"spatial_dims must be 2 or 3, got {out['spatial_dims']!r}.")
    return out


def build_network(spec: dict) -> nn.Module:
    """A freshly initialised module for `spec` (see module doc); `module.spec` is the full spec."""
    spec = full_spec(spec)
    kind = spec["kind"]
    if kind in ("segmenter", "refiner", "unet"):
        module = _unet(spec)
    elif kind == "generator":
        module = ResnetGenerator(spec)
    else:
        module = PatchDiscriminator(spec)
    module.spec = spec
    return module


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _unet(spec: dict) -> nn.Module:
    from monai.networks.nets import UNet

    if len(spec["strides"]) != len(spec["channels"]) - 1:
        raise BundleError("A UNet spec needs len(strides) == len(channels) - 1.")
    return UNet(
        spatial_dims=spec["spatial_dims"],
        in_channels=spec["in_channels"],
        out_channels=spec["out_channels"],
        channels=tuple(spec["channels"]),
        strides=tuple(spec["strides"]),
        num_res_units=spec["num_res_units"],
        norm=spec["norm"],
        dropout=spec["dropout"],
    )


def _layers(spatial_dims: int, norm_kind: str = "instance"):
    """(conv, transposed conv, norm factory taking a channel count, replication pad)."""
    if norm_kind not in ("instance", "none"):
        raise BundleError(f"Generator/discriminator norm must be instance or none, not {norm_kind!r}.")
    instance = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d

    def norm(channels):
        return instance(channels, affine=True) if norm_kind == "instance" else nn.Identity()

    if spatial_dims == 3:
        return nn.Conv3d, nn.ConvTranspose3d, norm, nn.ReplicationPad3d
    return nn.Conv2d, nn.ConvTranspose2d, norm, nn.ReplicationPad2d


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, spatial_dims: int, norm_kind: str):
        super().__init__()
        conv, _, norm, pad = _layers(spatial_dims, norm_kind)
        self.body = nn.Sequential(
            pad(1), conv(channels, channels, 3), norm(channels), nn.ReLU(inplace=True),
            pad(1), conv(channels, channels, 3), norm(channels),
        )

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator, scaled down; replication padding avoids border artefacts."""

    def __init__(self, spec: dict):
        super().__init__()
        dims, ch = spec["spatial_dims"], spec["channels"]
        conv, convt, norm, pad = _layers(dims, spec["norm"])
        k = spec["stem_kernel"]
        layers = [pad(k // 2), conv(spec["in_channels"], ch, k), norm(ch), nn.ReLU(True)]
        for i in range(spec["n_down"]):
            c = ch * 2**i
            layers += [conv(c, 2 * c, 3, stride=2, padding=1), norm(2 * c), nn.ReLU(True)]
        c = ch * 2 ** spec["n_down"]
        layers += [_ResidualBlock(c, dims, spec["norm"]) for _ in range(spec["n_blocks"])]
        for _ in range(spec["n_down"]):
            layers += [
                convt(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                norm(c // 2),
                nn.ReLU(True),
            ]
            c //= 2
        last = conv(ch, spec["out_channels"], k)
        layers += [pad(k // 2), last]
        if spec["output"] not in ("sigmoid", "tanh", "none"):
            raise BundleError("Generator output must be one of sigmoid, tanh, none.")
        self.residual, self.output = bool(spec["residual"]), spec["output"]
        if self.residual:
            if spec["in_channels"] != spec["out_channels"]:
                raise BundleError("A residual generator needs in_channels == out_channels.")
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.model = nn.Sequential(*layers)
        self.multiple = 2 ** spec["n_down"]

    def forward(self, x):
        y = self.model(x)
        if self.residual:  # pre-activation of the input itself, plus the learned change
            if self.output == "sigmoid":
                y = y + torch.logit(x.clamp(1e-3, 1 - 1e-3))
            elif self.output == "tanh":
                y = y + torch.atanh(x.clamp(-1 + 1e-3, 1 - 1e-3))
            else:
                y = y + x
        if self.output == "sigmoid":
            return torch.sigmoid(y)
        return torch.tanh(y) if self.output == "tanh" else y


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: one real/fake logit per overlapping patch (LSGAN target 1/0)."""

    def __init__(self, spec: dict):
        super().__init__()
        conv, _, norm, _ = _layers(spec["spatial_dims"], spec["norm"])
        ch = spec["channels"]
        layers = [conv(spec["in_channels"], ch, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        c = ch
        for i in range(1, spec["n_layers"]):
            nxt = ch * min(2**i, 8)
            layers += [conv(c, nxt, 4, stride=2, padding=1), norm(nxt), nn.LeakyReLU(0.2, True)]
            c = nxt
        layers += [conv(c, 1, 3, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)
