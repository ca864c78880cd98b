"""The interactive prompt network: one small UNet that segments "this object" from clicks
(nnInteractive / DeepEdit style, METHOD.md section 4), 3D or 2D as its bundle (`spatial_dims` of
its spec; a 2D network works on the plane of a single-slice image, 48 pixels at 2 mm per side).

Input channels, on a cubic (square) crop of PROMPT_SIZE voxels at PROMPT_SPACING mm around the click:
the image (normalised as the bundle normalises it), the current mask of the object (empty for a
new structure), Gaussian maps of the positive and the negative clicks, and the user's box around
the object (1 inside; all 0 without a box). Networks saved before the box channel have the first
four channels only (`in_channels` of their spec): they take clicks, not boxes. Output: one logit
per voxel, "belongs to the object". It knows no label set (trained on single labels, their connected
parts, unions of touching labels and synthetic lesions, from empty and from corrupted masks), so
the same network corrects a label of the automatic draft and outlines a structure the bundle has
no label for. The crop arrives on the image's own grid and is rescaled per axis to the network's
spacing; the probability is rescaled back. The session decides what a click may change (one
label, inside the crop, connected to the click, never locked voxels).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..device import pick_device
from ..errors import BundleError, InputError
from .encoding import CropInputs, box_map, click_maps, to_net_index

PROMPT_SIZE = (48, 48, 48)
# isotropic, so training may permute the axes (scans are stored axial, coronal or sagittal)
PROMPT_SPACING = (2.0, 2.0, 2.0)
PROMPT_CLICK_SIGMA = 1.5  # voxels of the network grid
NETWORK_NAME = "prompt"  # the bundle's network and metadata key
CLICK_CHANNELS = 4  # image, mask, positive and negative clicks: networks without the box channel
BOX_CHANNELS = 5
PROMPT_SPEC = {
    "kind": "refiner",
    "spatial_dims": 3,
    "in_channels": 5,
    "out_channels": 1,
    "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2],
    "num_res_units": 0,
    "norm": "instance",
}


def prompt_grid(spatial_dims: int = 3) -> tuple[tuple, tuple]:
    """(size, spacing) of the network grid of a prompt network of `spatial_dims` (2: (y, x))."""
    return PROMPT_SIZE[-spatial_dims:], PROMPT_SPACING[-spatial_dims:]


def prompt_spec(spatial_dims: int = 3, in_channels: int = BOX_CHANNELS) -> dict:
    """The prompt network's spec for `spatial_dims` and `in_channels`."""
    return {**PROMPT_SPEC, "spatial_dims": int(spatial_dims), "in_channels": int(in_channels)}


def net_shape(crop_shape, crop_spacing, size=PROMPT_SIZE, spacing=PROMPT_SPACING) -> tuple[int, ...]:
    """The crop's shape rescaled to the network's spacing, at most `size` per axis."""
    return tuple(min(int(n), max(1, int(round(c * s / t))))
                 for c, s, t, n in zip(crop_shape, crop_spacing, spacing, size))



def encode(image, mask, positive, negative, size=PROMPT_SIZE, box=None, channels: int = BOX_CHANNELS) -> np.ndarray:
    """(channels, *size) float32 network input from arrays already on the network grid (smaller
    arrays are padded at their end with zeros; clicks as (z, y, x), or (y, x), indices of that grid; `box`:
    (start, stop) in that grid's edge coordinates, see `box_map`, or None)."""
    if box is not None and channels < BOX_CHANNELS:
        raise ValueError("a box needs the network's box channel")
    shape = image.shape
    pad = [(0, int(n) - s) for n, s in zip(size, shape)]
    parts = [np.pad(np.asarray(image, np.float32), pad)[None], np.pad(np.asarray(mask, np.float32), pad)[None],
             click_maps(tuple(size), positive, negative, PROMPT_CLICK_SIGMA)]
    if channels >= BOX_CHANNELS:
        inside = np.zeros(shape, np.float32) if box is None else box_map(shape, *box)
        parts.append(np.pad(inside, pad)[None])
    return np.concatenate(parts).astype(np.float32, copy=False)


def widen_to_box_channel(network: torch.nn.Module) -> torch.nn.Module:
    """A prompt network of `network`'s dimension with the box channel, answering exactly as
    `network`, one without it: its weights copied, the first layer's weights for the box channel zero."""
    from ..networks import build_network

    wide = build_network(prompt_spec(getattr(network, "spec", PROMPT_SPEC)["spatial_dims"], BOX_CHANNELS))
    state, widened = wide.state_dict(), 0
    for key, value in network.state_dict().items():
        target = state[key]
        if value.shape != target.shape:  # the first convolution: (out, in, k, k[, k])
            if value.shape[1] != CLICK_CHANNELS or target.shape[1] != BOX_CHANNELS or widened:
                raise BundleError(f"The prompt network's layer {key} {tuple(value.shape)} does not fit "
                                  f"{tuple(target.shape)}; retrain it with `crossdomainseg train-prompt`.")
            value = torch.cat([value, torch.zeros_like(value[:, :1])], dim=1)
            widened += 1
        state[key] = value
    wide.load_state_dict(state)
    return wide.eval()


class PromptRefiner:
    """The prompt network as a click refiner of InteractiveSession (`crop_mm`, `propose`).

    Its dimension is that of its grid (`size`, `spacing`): a 2D network gets crops one slice
    thick (`crop_mm` 0 along z) of a single-slice image and answers on that slice."""

    name = NETWORK_NAME

    def __init__(self, network: torch.nn.Module, size=PROMPT_SIZE, spacing=PROMPT_SPACING, device=None,
                 in_channels: int = BOX_CHANNELS):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.network = network.to(self.device).eval()
        self.size = tuple(int(s) for s in size)
        self.spacing = tuple(float(s) for s in spacing)
        if len(self.size) not in (2, 3) or len(self.spacing) != len(self.size):
            raise BundleError(f"A prompt network's grid needs 2 or 3 sizes and as many spacings; got {size} "
                              f"and {spacing}.")
        self.spatial_dims = len(self.size)
        self._flat = 3 - self.spatial_dims  # leading (z) axes of the session's crops the network does not see
        self.crop_mm = (0.0,) * self._flat + tuple(n * s for n, s in zip(self.size, self.spacing))
        self.in_channels = int(in_channels)

    @property
    def accepts_box(self) -> bool:
        """Whether the network has the box channel (a new structure may start from a box)."""
        return self.in_channels >= BOX_CHANNELS

    @classmethod
    def from_bundle(cls, bundle, device=None) -> "PromptRefiner":
        """The bundle's prompt network, loaded once and warmed up so the first click pays no loading."""
        if not bundle.has_network(NETWORK_NAME):
            raise BundleError(f"The model bundle {bundle.path} has no prompt network; train one with "
                              "`crossdomainseg train-prompt`.")
        device = device if isinstance(device, torch.device) else pick_device(device)
        spec = bundle.network_spec(NETWORK_NAME)
        dims = int(spec.get("spatial_dims", 3))
        size, spacing = prompt_grid(dims)
        grid = bundle.metadata.get(NETWORK_NAME, {})
        size, spacing = grid.get("size", size), grid.get("spacing", spacing)
        if len(size) != dims:
            raise BundleError(f"The prompt network of {bundle.path} is {dims}D but its grid {size} is not; "
                              "retrain it with `crossdomainseg train-prompt`.")
        refiner = cls(bundle.network(NETWORK_NAME, device), size, spacing, device,
                      spec.get("in_channels", CLICK_CHANNELS))
        refiner.warm()
        return refiner

    def warm(self) -> None:
        shape = (1,) * self._flat + self.size
        zeros = np.zeros(shape, np.float32)
        centre = tuple(c // 2 for c in shape)
        self.propose(CropInputs(zeros, zeros, zeros, zeros.astype(bool), [centre], [], centre, True,
                                (1.0,) * self._flat + self.spacing))

    def propose(self, inputs: CropInputs) -> np.ndarray:
        """Probability of the object on the crop, given its current mask, the clicks and the box."""
        if inputs.box is not None and not self.accepts_box:
            raise BundleError("This model's prompt network takes clicks, not a box (it was trained "
                              "before the box channel): start the structure with a click instead.")
        flat = self._flat
        if any(n != 1 for n in inputs.image.shape[:flat]):
            raise InputError(f"This model's prompt network is {self.spatial_dims}D: it works on single-slice "
                             f"images, not on a crop of {inputs.image.shape[0]} slices.")
        image, current = inputs.image[(0,) * flat], inputs.current[(0,) * flat]
        crop_shape = image.shape
        shape = net_shape(crop_shape, inputs.spacing[flat:], self.size, self.spacing)
        mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        dense = torch.from_numpy(np.stack([image, current]).astype(np.float32))[None]
        if shape != crop_shape:
            dense = F.interpolate(dense, size=shape, mode=mode, align_corners=False)
        box = None
        if inputs.box is not None:  # voxel edges scale with the grid
            box = tuple(tuple(e * n / c for e, c, n in zip(edges[flat:], crop_shape, shape))
                        for edges in (inputs.box.start, inputs.box.stop))
        x = encode(dense[0, 0].numpy(), dense[0, 1].numpy(),
                   [to_net_index(p[flat:], crop_shape, shape) for p in inputs.positive],
                   [to_net_index(p[flat:], crop_shape, shape) for p in inputs.negative], self.size, box,
                   self.in_channels)
        with torch.inference_mode():
            logits = self.network(torch.from_numpy(x)[None].to(self.device))
            logits = logits[(slice(None), slice(None), *(slice(0, n) for n in shape))]
            if shape != crop_shape:
                logits = F.interpolate(logits, size=crop_shape, mode=mode, align_corners=False)
            return torch.sigmoid(logits[0, 0]).float().cpu().numpy().reshape(inputs.image.shape)
