"""The interactive prompt network: one small 3D UNet that segments "this object" from clicks
(nnInteractive / DeepEdit style, METHOD.md section 4).

Input channels, on a cubic crop of PROMPT_SIZE voxels at PROMPT_SPACING mm around the click:
the image (normalised as the bundle normalises it), the current mask of the object (empty for a
new structure), and Gaussian maps of the positive and the negative clicks. Output: one logit per
voxel, "belongs to the object". It knows no label set (trained on single labels, their connected
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
from ..errors import BundleError
from .encoding import CropInputs, click_maps, to_net_index

PROMPT_SIZE = (48, 48, 48)
# isotropic, so training may permute the axes (scans are stored axial, coronal or sagittal)
PROMPT_SPACING = (2.0, 2.0, 2.0)
PROMPT_CLICK_SIGMA = 1.5  # voxels of the network grid
NETWORK_NAME = "prompt"  # the bundle's network and metadata key
PROMPT_SPEC = {
    "kind": "refiner",
    "spatial_dims": 3,
    "in_channels": 4,
    "out_channels": 1,
    "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2],
    "num_res_units": 0,
    "norm": "instance",
}


def net_shape(crop_shape, crop_spacing, size=PROMPT_SIZE, spacing=PROMPT_SPACING) -> tuple[int, int, int]:
    """The crop's shape rescaled to the network's spacing, at most `size` per axis."""
    return tuple(min(int(n), max(1, int(round(c * s / t))))
                 for c, s, t, n in zip(crop_shape, crop_spacing, spacing, size))


def encode(image, mask, positive, negative, size=PROMPT_SIZE) -> np.ndarray:
    """(4, *size) float32 network input from arrays already on the network grid (smaller arrays
    are padded at their end with zeros; clicks as (z, y, x) indices of that grid)."""
    shape = image.shape
    pad = [(0, int(n) - s) for n, s in zip(size, shape)]
    dense = np.stack([np.pad(np.asarray(image, np.float32), pad), np.pad(np.asarray(mask, np.float32), pad)])
    maps = click_maps(tuple(size), positive, negative, PROMPT_CLICK_SIGMA)
    return np.concatenate([dense, maps]).astype(np.float32, copy=False)


class PromptRefiner:
    """The prompt network as a click refiner of InteractiveSession (`crop_mm`, `propose`)."""

    name = NETWORK_NAME

    def __init__(self, network: torch.nn.Module, size=PROMPT_SIZE, spacing=PROMPT_SPACING, device=None):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.network = network.to(self.device).eval()
        self.size = tuple(int(s) for s in size)
        self.spacing = tuple(float(s) for s in spacing)
        self.crop_mm = tuple(n * s for n, s in zip(self.size, self.spacing))

    @classmethod
    def from_bundle(cls, bundle, device=None) -> "PromptRefiner":
        """The bundle's prompt network, loaded once and warmed up so the first click pays no loading."""
        if not bundle.has_network(NETWORK_NAME):
            raise BundleError(f"The model bundle {bundle.path} has no prompt network; train one with "
                              "`crossdomainseg train-prompt`.")
        device = device if isinstance(device, torch.device) else pick_device(device)
        grid = bundle.metadata.get(NETWORK_NAME, {})
        refiner = cls(bundle.network(NETWORK_NAME, device), grid.get("size", PROMPT_SIZE),
                      grid.get("spacing", PROMPT_SPACING), device)
        refiner.warm()
        return refiner

    def warm(self) -> None:
        zeros = np.zeros(self.size, np.float32)
        centre = tuple(c // 2 for c in self.size)
        self.propose(CropInputs(zeros, zeros, zeros, zeros.astype(bool), [centre], [], centre, True, self.spacing))

    def propose(self, inputs: CropInputs) -> np.ndarray:
        """Probability of the object on the crop, given its current mask and the clicks."""
        crop_shape = inputs.image.shape
        shape = net_shape(crop_shape, inputs.spacing, self.size, self.spacing)
        dense = torch.from_numpy(np.stack([inputs.image, inputs.current]).astype(np.float32))[None]
        if shape != crop_shape:
            dense = F.interpolate(dense, size=shape, mode="trilinear", align_corners=False)
        x = encode(dense[0, 0].numpy(), dense[0, 1].numpy(),
                   [to_net_index(p, crop_shape, shape) for p in inputs.positive],
                   [to_net_index(p, crop_shape, shape) for p in inputs.negative], self.size)
        with torch.inference_mode():
            logits = self.network(torch.from_numpy(x)[None].to(self.device))[:, :, : shape[0], : shape[1], : shape[2]]
            if shape != crop_shape:
                logits = F.interpolate(logits, size=crop_shape, mode="trilinear", align_corners=False)
            return torch.sigmoid(logits[0, 0]).float().cpu().numpy()
