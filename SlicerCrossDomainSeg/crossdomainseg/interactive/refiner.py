"""The learned click refiner: a small 3D UNet on a crop around the click (METHOD.md section 4).

Input channels: normalised image, synthetic preview, current probability of the label, positive
and negative click maps. Output: one logit per voxel, "belongs to the label being corrected".
The crop arrives on the image's own grid; it is rescaled per axis to the refiner's spacing
(the spacing it was trained at) and the probability is rescaled back.

A click is the user's ground truth at that voxel. Where the network's answer contradicts a
negative click (it still calls the voxel inside), the network has not understood this image, and
the click goes to `fallback` (the classical boundary shift refiner by default). A label with fewer than
`small_voxels` in the crop (a lesion, or nothing yet) goes to the small object refiner, as in the
boundary shift refiner: on the phantom-ct-mr target test split the network took a drafted lesion
from Dice 0.67 to 0.13 with one click, and the routing took the learned refiner's NoC@90 from
12.0 to 9.1 (lesions 14.7 -> 3.2; validation 8.6 -> 7.1). A label with fewer than
`fallback_voxels` goes to the fallback, which has its own rules for small objects and fine
clicks: once the engine found the lesions again (postprocess.refit_inside, lesion Dice 0.96) the
network took one from Dice 0.98 to 0.00 with a click on its rim; routing labels under 4000 voxels
took the clicks lowering Dice by over 0.01 on the validation split from 36 to 25 of 480 (worst
0.13 -> 0.08) and NoC@90 4.67 -> 3.21, on the test split 21 -> 14 (worst 0.98 -> 0.07), NoC@90
6.54 -> 6.50.

The network no longer answers alone where it agrees with the click. Positive clicks go to the
fallback; on a negative click it agrees with, it vetoed the fallback's removal where it still
saw the label. Answering alone, it redrew the rim near every click it agreed with. Measured on
12 fresh tuning subjects (seeds 920001-920012), NoC@90 (clicks lowering Dice by over 0.01 of
960): network alone 4.83 (45); gating both signs (a positive click adds what both add) 3.62 (0);
negative clicks only, shipped, 2.98 (0). Validation split 2.00 (25) -> 1.33 (1) -> 1.29 (0),
test split 4.50 (18) -> 3.46 (3) -> 3.38 (3). Gating positive clicks only: tuning 3.33; adding
what either adds: test 3.96.

Vetoing every removal still cost clicks against the fallback alone (tuning 2.98 against 2.71),
so the network now vetoes only the fallback's swallowed-tissue step (the boundary shift
refiner's deep fit, its riskiest move): a negative click it agrees with takes off what the
fallback takes off without that step, and of the step only what the network sees as not the
label. On 24 tuning subjects (seeds 920001-920024) with the fallback of the time: NoC@90 2.37
(1 click over 0.01) -> 2.13 (2, worst 0.013), validation 1.29 -> 1.21 (0). Since the fallback
took on the coreless and far-face rules the veto costs clicks (tuning 2.28 against the fallback's
2.20, test 3.21 against 2.96): of the step's voxels it keeps, 54% are the label on the tuning
subjects and 37% on the validation split, against 44% and 41% of all the step's voxels. Vetoing
only where the network's mask agrees with the fallback's (Dice >= 0.8 / 0.9 in the crop) gave
2.23 / 2.20, i.e. no gain over not asking the network. Nor did a sixth input channel holding the
fallback's proposal (the shipped network widened, that channel's weights starting at zero, then
trained 3000-4000 steps on the same simulated users with the fallback run on each sample's last
click): answering alone, validation 1.21, tuning 2.80; vetoing only the fallback's changes, 2.84.

So the network no longer vetoes voxels: on a negative click it agrees with, it decides whether
the swallowed-tissue step is taken at all, keeping the fallback's proposal with the step or
without it, whichever agrees more with its own mask (Dice in the crop). On 120 tuning subjects
(seeds 920001-920120, 480 objects, 9600 clicks) NoC@90 2.82 with the veto, 2.72 with the choice,
2.71 for the fallback alone (clicks lowering Dice by over 0.01: 17 / 15 / 15); validation 1.17 /
1.12 / 1.12; test 3.08 / 3.00 / 3.00. The choice changes the clicks on a fifth of the objects and
saves about as many clicks as it costs: the network is no better a judge of this image than the
fallback's rules. Letting it choose the move too (factor 1, 1.5 or 2, the
candidate it agrees with most) cost clicks (seeds 920025-920048 and 920097-920120: 3.31 against
3.27).

The probability channel is the label's where the label departs from the segmenter's
probabilities (the engine's boundary fit moves it): the network alone on the validation split
6.96 -> 6.04, clicks lowering Dice by over 0.01 19 -> 3 (worst 0.98 -> 0.04); the learned
refiner the same (tuning 2.28, validation 1.17).

`click_refiner` gives front ends the method the bundle's metadata names (`click_refiner.name`,
written by `crossdomainseg eval clicks --choose` from a validation split): a bundle whose refiner
network was trained on one modality may click better on another with a classical method.
"""

import numpy as np
import torch
import torch.nn.functional as F

from ..boundary_fit import swallowed_labels
from ..device import pick_device
from ..errors import BundleError
from .baselines import CLASSICAL, FINE_VOXELS, SMALL_LABEL_VOXELS, SmallObjectRefiner, classical_refiner
from .encoding import NET_SIZE, NET_SPACING, click_maps
from .session import CropInputs
from .simulate import dice

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


def to_net_index(index, crop_shape, net_shape):
    """A crop voxel index on the rescaled grid (half-pixel centres, as F.interpolate maps them)."""
    return tuple((i + 0.5) * n / c - 0.5 for i, c, n in zip(index, crop_shape, net_shape))


class LearnedRefiner:
    name = "learned"

    def __init__(self, network: torch.nn.Module, size=NET_SIZE, spacing=NET_SPACING, device=None,
                 fallback="boundary_shift", small_voxels: int = SMALL_LABEL_VOXELS,
                 fallback_voxels: int = FINE_VOXELS, swallowed: dict[int, str] | None = None):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.network = network.to(self.device).eval()
        self.size = tuple(int(s) for s in size)
        self.spacing = tuple(float(s) for s in spacing)
        self.crop_mm = tuple(n * s for n, s in zip(self.size, self.spacing))
        if isinstance(fallback, str):
            fallback = classical_refiner(fallback, swallowed, crop_mm=self.crop_mm)
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
                      grid.get("spacing", NET_SPACING), device, fallback, small_voxels, fallback_voxels,
                      bundle_swallowed(bundle))
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
        if inputs.click_positive:
            self.fallbacks += 1
            return self.fallback.propose(inputs)
        if not hasattr(self.fallback, "proposals"):
            self.fallbacks += 1
            return self.fallback.propose(inputs)
        proposal, without_swallowed = self.fallback.proposals(inputs)
        if without_swallowed is None:  # no swallowed-tissue step: nothing for the network to choose
            self.fallbacks += 1
            return proposal
        probability = self.network_probability(inputs)
        if probability[inputs.click] >= 0.5:  # the network contradicts the click
            self.fallbacks += 1
            return proposal
        # the network decides whether the swallowed-tissue step is taken: of the fallback's two
        # proposals, the one whose mask agrees more (Dice in the crop) with its own
        network = probability >= 0.5
        if dice(without_swallowed >= 0.5, network) > dice(proposal >= 0.5, network):
            return without_swallowed
        return proposal

    def network_probability(self, inputs: CropInputs) -> np.ndarray:
        crop_shape = inputs.image.shape
        shape = self.net_shape(crop_shape, inputs.spacing)
        # It learnt on probabilities that agree with the label it corrects (a draft's own, the
        # voxels clicks changed made certain); the engine's fitted label departs from its
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
    `click_refiner` ("learned" or a classical name), else "learned" when the bundle ships a
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
    if name not in CLASSICAL:
        raise BundleError(f"The model bundle {bundle.path} names an unknown click refiner {name!r}; "
                          f"known: learned, {', '.join(CLASSICAL)}.")
    return classical_refiner(name, bundle_swallowed(bundle))


def bundle_swallowed(bundle) -> dict[int, str]:
    """{label value: side} of the tissue each label swallows in target images (the bundle's
    boundary_fit.swallowed): what the boundary shift refiner's negative clicks take off."""
    return swallowed_labels(bundle.metadata, "target")
