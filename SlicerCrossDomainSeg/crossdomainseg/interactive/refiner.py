"""The learned click refiner: a small 3D UNet on a crop around the click (METHOD.md section 4).

Input channels: normalised image, synthetic preview, current probability of the label, positive
and negative click maps. Output: one logit per voxel, "belongs to the label being corrected".
The crop arrives on the image's own grid; it is rescaled per axis to the refiner's spacing
(the spacing it was trained at) and the probability is rescaled back.

A click is the user's ground truth at that voxel, and the network may misread an image of another
modality than it learnt on, so it never answers alone: a label with fewer than `small_voxels`
in the crop (a lesion, or nothing yet) goes to the small object refiner, one with fewer than
`fallback_voxels`, every positive click and every negative click the network contradicts (it
still calls the clicked voxel inside) go to `fallback` (the boundary shift refiner). On a
negative click it agrees with, the fallback's proposal stands except where the network still
sees the label: there the fallback's removal is vetoed.

`click_refiner` gives front ends the method the bundle's metadata names (`click_refiner.name`:
"learned", "prompt", "brs" (feature_brs.py) or one of CLASSICAL, written by `crossdomainseg eval clicks --choose` from the SOURCE
validation split).
"""

import numpy as np
import torch
import torch.nn.functional as F

from ..device import pick_device
from ..errors import BundleError
from .boundary_shift import FINE_VOXELS, SMALL_LABEL_VOXELS, BoundaryShiftRefiner, LocalOtsuRefiner, SmallObjectRefiner
from .encoding import NET_SIZE, NET_SPACING, CropInputs, click_maps, to_net_index
from .sphere import SphereRefiner

# the classical click methods a bundle may name (metadata `click_refiner`) besides "learned"
CLASSICAL = {refiner.name: refiner for refiner in (SphereRefiner, LocalOtsuRefiner, BoundaryShiftRefiner)}

# networks.build_network spec; grid size and spacing live in the bundle's metadata["refiner"]
REFINER_SPEC = {
    "kind": "refiner",
    "spatial_dims": 3,
    "in_channels": 5,
    "out_channels": 1,
    "channels": [8, 16, 32, 64],
    "strides": [2, 2, 2],
    "num_res_units": 0,  # residual units cost 4-6x the time per click for little gain here
    "norm": "instance",
}


class LearnedRefiner:
    name = "learned"

    def __init__(self, network: torch.nn.Module, size=NET_SIZE, spacing=NET_SPACING, device=None,
                 fallback="boundary_shift", small_voxels: int = SMALL_LABEL_VOXELS,
                 fallback_voxels: int = FINE_VOXELS):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.network = network.to(self.device).eval()
        self.size = tuple(int(s) for s in size)
        self.spacing = tuple(float(s) for s in spacing)
        self.crop_mm = tuple(n * s for n, s in zip(self.size, self.spacing))
        if isinstance(fallback, str):
            fallback = CLASSICAL[fallback](crop_mm=self.crop_mm)
        self.fallback = fallback
        self.small_voxels, self.fallback_voxels = int(small_voxels), int(fallback_voxels)
        self.small_objects = SmallObjectRefiner(crop_mm=self.crop_mm, island_voxels=self.small_voxels)
        self.fallbacks = 0  # clicks handed to the fallback so far

    @classmethod
    def from_bundle(cls, bundle, device=None, fallback="boundary_shift",
                    small_voxels: int = SMALL_LABEL_VOXELS, fallback_voxels: int = FINE_VOXELS) -> "LearnedRefiner":
        """The bundle's refiner, loaded once and warmed up so the first click pays no loading."""
        if not bundle.has_network("refiner"):
            raise BundleError(f"The model bundle {bundle.path} has no click refiner; "
                              "train one with `crossdomainseg train-refiner`.")
        device = device if isinstance(device, torch.device) else pick_device(device)
        grid = bundle.metadata.get("refiner", {})
        refiner = cls(bundle.network("refiner", device), grid.get("size", NET_SIZE),
                      grid.get("spacing", NET_SPACING), device, fallback, small_voxels, fallback_voxels)
        refiner.warm()
        return refiner

    def warm(self) -> None:
        zeros = np.zeros(self.size, np.float32)
        centre = tuple(c // 2 for c in self.size)
        self.network_probability(CropInputs(zeros, zeros, zeros, zeros.astype(bool), [centre], [], centre,
                                            True, self.spacing))

    def net_shape(self, crop_shape, spacing) -> tuple[int, int, int]:
        return tuple(min(n, max(1, int(round(c * s / t))))
                     for c, s, t, n in zip(crop_shape, spacing, self.spacing, self.size))

    def propose(self, inputs: CropInputs) -> np.ndarray:
        voxels = inputs.current.sum()
        if voxels < self.small_voxels:
            return self.small_objects.propose(inputs)
        if self.fallback is not None and voxels < self.fallback_voxels:
            self.fallbacks += 1
            return self.fallback.propose(inputs)
        if self.fallback is None:
            return self.network_probability(inputs)
        proposal = self.fallback.propose(inputs)
        if inputs.click_positive:
            self.fallbacks += 1
            return proposal
        probability = self.network_probability(inputs)
        if probability[inputs.click] >= 0.5:  # the network contradicts the click
            self.fallbacks += 1
            return proposal
        # it agrees: of the fallback's removal, what the network still sees as the label stays
        kept = inputs.current & (proposal < 0.5) & (probability >= 0.5)
        return np.where(kept, 1.0, proposal).astype(np.float32)

    def network_probability(self, inputs: CropInputs) -> np.ndarray:
        crop_shape = inputs.image.shape
        shape = self.net_shape(crop_shape, inputs.spacing)
        # It learnt on probabilities that agree with the label it corrects (a draft's own, the
        # voxels clicks changed made certain); the engine's post-processed label departs from its
        # segmenter's probabilities, so where they disagree the label's hard value stands in.
        probability = np.where((inputs.probability >= 0.5) == inputs.current, inputs.probability, inputs.current)
        dense = torch.from_numpy(np.stack([inputs.image, inputs.preview, probability])
                                 .astype(np.float32, copy=False))[None]
        if shape != crop_shape:
            dense = F.interpolate(dense, size=shape, mode="trilinear", align_corners=False)
        maps = click_maps(shape, [to_net_index(p, crop_shape, shape) for p in inputs.positive],
                          [to_net_index(p, crop_shape, shape) for p in inputs.negative])
        x = torch.cat([dense, torch.from_numpy(maps)[None]], dim=1)
        pad = [v for n, s in zip(reversed(self.size), reversed(shape)) for v in (0, n - s)]
        x = F.pad(x, pad)
        with torch.inference_mode():
            logits = self.network(x.to(self.device))[:, :, : shape[0], : shape[1], : shape[2]]
            if shape != crop_shape:
                logits = F.interpolate(logits, size=crop_shape, mode="trilinear", align_corners=False)
            return torch.sigmoid(logits[0, 0]).float().cpu().numpy()


def click_refiner_name(bundle) -> str:
    """The name of the method front ends click with: the one named in the bundle's metadata
    `click_refiner` ("prompt", "learned", "brs" or a classical name), else "learned" when the bundle ships a
    refiner network, else "boundary_shift"."""
    name = (bundle.metadata.get("click_refiner") or {}).get("name")
    if name is None:
        name = "learned" if bundle.has_network("refiner") else "boundary_shift"
    return name


def click_refiner(bundle, device=None):
    """What front ends click with (`click_refiner_name`), ready to click."""
    name = click_refiner_name(bundle)
    if name == "learned":
        return LearnedRefiner.from_bundle(bundle, device)
    if name == "prompt":
        from .prompt_net import PromptRefiner

        return PromptRefiner.from_bundle(bundle, device)
    if name == "brs":
        from .feature_brs import FeatureBRSRefiner

        return FeatureBRSRefiner.from_bundle(bundle, device)
    if name not in CLASSICAL:
        raise BundleError(f"The model bundle {bundle.path} names an unknown click refiner {name!r}; "
                          f"known: prompt, learned, brs, {', '.join(CLASSICAL)}.")
    return CLASSICAL[name]()
