"""f-BRS click correction by the bundle's own segmenter (Sofiiuk et al., CVPR 2020, after BRS by
Jang and Kim, CVPR 2019).

At a click the crop around it goes onto the segmenter's working grid (the bundle's spacing,
geometry.working_reference, as the engine resamples a whole scan) and the segmenter runs once on
it up to the features its last up-sampling block reads. Then only that block runs again while a scale and
a bias per feature channel are optimised so that the segmenter agrees with every click of the
label in the crop (positive: the label's logit beats every other label's by MARGIN at the clicked
voxel; negative: it loses by MARGIN), with an L2 penalty keeping them near identity. Voxels the
user did not click but the network sees alike flip with the click. The proposal is
sigmoid(label logit - best other logit) of the refined output, resampled back onto the crop's grid.
The session keeps its rules (one label, the crop, connected to the click, locks).

The segmenter reads what the engine feeds it (`engine.bundle_mode`): the crop's normalised image,
or the synthetic preview for a bundle that segments its translator's output.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy.special import expit

from .. import geometry
from ..device import pick_device
from ..errors import BundleError, InputError
from .encoding import CropInputs

ITERATIONS = 20  # optimiser steps per click at most (f-BRS' budget); most clicks are met in fewer
STEP = 0.1  # Adam's step: the parameters are of order 1 (scale 1, bias 0 at identity)
PENALTY = 1e-2  # weight of ||scale - 1||^2 + ||bias||^2: small, so a click is met, yet ties break to identity
MARGIN = 1.0  # logits by which the clicked voxel's answer must win (0.73 against the runner-up)
OUTSIDE = -10.0  # the label's margin where the working grid does not reach (never the label)


def split_unet(network: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(features, head) of a MONAI UNet: everything up to the input of the last up-sampling block,
    and that block."""
    model = getattr(network, "model", None)
    if not isinstance(model, torch.nn.Sequential) or len(model) != 3:
        raise BundleError("The bundle's segmenter is not a UNet the f-BRS click refiner can split into "
                          "features and head; choose another click method for it.")
    return torch.nn.Sequential(model[0], model[1]), model[2]


def label_margin(logits: torch.Tensor, label: int) -> torch.Tensor:
    """(1, *spatial): the label's logit minus the highest logit of any other label."""
    others = torch.cat([logits[:, :label], logits[:, label + 1:]], dim=1)
    return logits[:, label] - others.amax(dim=1)


class FeatureBRSRefiner:
    """The bundle's segmenter as a click refiner of InteractiveSession (`crop_mm`, `propose`)."""

    name = "brs"

    def __init__(self, segmenter: torch.nn.Module, spacing, roi_size, spatial_dims: int = 3,
                 reads_preview: bool = False, device=None):
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.features, self.head = split_unet(segmenter.to(self.device).eval())
        self.spacing = tuple(float(s) for s in spacing)  # SimpleITK order (x, y[, z])
        self.spatial_dims = int(spatial_dims)
        self.stride = int(np.prod(segmenter.spec["strides"])) if hasattr(segmenter, "spec") else 8
        self.channels = int(getattr(segmenter, "spec", {}).get("out_channels", 0)) or None
        self.reads_preview = bool(reads_preview)
        # the crop the segmenter was trained on (its patch), (z, y, x) mm; a 2D model's slice axis
        # takes the session's whole crop depth (one slice)
        roi = [int(r) for r in roi_size]
        zyx_spacing = list(reversed(self.spacing))
        if self.spatial_dims == 2:
            roi, zyx_spacing = [1] + roi, [1.0] + zyx_spacing
        self.roi, self.zyx_spacing = tuple(roi), tuple(zyx_spacing)
        self.crop_mm = tuple(float(n * s) for n, s in zip(roi, zyx_spacing))

    @classmethod
    def from_bundle(cls, bundle, device=None) -> "FeatureBRSRefiner":
        """The bundle's segmenter as a click refiner, warmed up so the first click pays no loading."""
        from ..engine import bundle_mode

        if not bundle.has_network("segmenter"):
            raise BundleError(f"The model bundle {bundle.path} has no segmenter, so the f-BRS click "
                              "refiner has nothing to refine; reinstall or retrain the bundle.")
        device = device if isinstance(device, torch.device) else pick_device(device)
        refiner = cls(bundle.network("segmenter", device), bundle.spacing, bundle.roi_size,
                      bundle.spatial_dims, bundle_mode(bundle) == "tdgan", device)
        refiner.warm()
        return refiner

    def warm(self) -> None:
        zeros = np.zeros(self.roi, np.float32)
        centre = tuple(c // 2 for c in self.roi)
        self.propose(CropInputs(zeros, zeros, zeros, zeros.astype(bool), [centre], [], centre, True,
                                self.zyx_spacing, 1))

    def propose(self, inputs: CropInputs) -> np.ndarray:
        """Probability that the refined segmenter gives the crop's voxels the label."""
        if inputs.label < 1 or (self.channels is not None and inputs.label >= self.channels):
            raise InputError(f"This model's segmenter has no label {inputs.label}; outline a new "
                             "structure with a model that has a prompt network.")
        crop = self._crop_image(inputs.preview if self.reads_preview else inputs.image, inputs)
        working = geometry.to_working_grid(crop, self.spacing)
        array = sitk.GetArrayFromImage(working).astype(np.float32)
        shape = array.shape if self.spatial_dims == 3 else array.shape[1:]
        padded = np.pad(array.reshape(shape), [(0, -n % self.stride) for n in shape], mode="edge")
        clicks = [(self._working_voxel(p, crop, working), 1.0) for p in inputs.positive]
        clicks += [(self._working_voxel(p, crop, working), -1.0) for p in inputs.negative]
        margin = self._refine(torch.from_numpy(padded)[None, None].to(self.device), clicks, inputs.label)
        margin_image = sitk.GetImageFromArray(margin[tuple(slice(0, n) for n in shape)].reshape(array.shape))
        margin_image.CopyInformation(working)
        back = geometry.resample_to_reference(margin_image, crop, sitk.sitkLinear, OUTSIDE)
        return expit(sitk.GetArrayFromImage(back)).astype(np.float32)

    def _refine(self, x: torch.Tensor, clicks, label: int) -> np.ndarray:
        """The label's margin on the working grid after the scale and bias are fitted to `clicks`
        ((voxel index of x's spatial axes, +1 positive / -1 negative))."""
        with torch.no_grad():
            features = self.features(x)
        shape = (1, features.shape[1]) + (1,) * (features.dim() - 2)
        scale = torch.ones(shape, device=self.device, requires_grad=True)
        bias = torch.zeros(shape, device=self.device, requires_grad=True)
        optimiser = torch.optim.Adam([scale, bias], lr=STEP)
        index = tuple(torch.tensor([c[0][a] for c in clicks], dtype=torch.long, device=self.device)
                      for a in range(x.dim() - 2))
        signs = torch.tensor([c[1] for c in clicks], device=self.device)
        with torch.enable_grad():
            for step in range(ITERATIONS + 1):
                margin = label_margin(self.head(features * scale + bias), label)[0]
                signed = margin[index] * signs
                if step == ITERATIONS or not clicks or bool((signed >= MARGIN).all()):
                    break
                loss = F.softplus(MARGIN - signed).sum() + PENALTY * (
                    (scale - 1).square().sum() + bias.square().sum())
                scale.grad, bias.grad = torch.autograd.grad(loss, [scale, bias])
                optimiser.step()
        return margin.detach().float().cpu().numpy()

    @staticmethod
    def _crop_image(array: np.ndarray, inputs: CropInputs) -> sitk.Image:
        """The crop as an image with the session grid's spacing and direction (origin 0: only
        positions within the crop matter)."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
        image.SetSpacing([float(s) for s in reversed(inputs.spacing)])
        if inputs.direction is not None:
            image.SetDirection([float(d) for d in inputs.direction])
        return image

    def _working_voxel(self, index, crop: sitk.Image, working: sitk.Image) -> tuple[int, ...]:
        """The working-grid voxel (array order, the network's spatial axes) nearest a crop voxel."""
        point = crop.TransformIndexToPhysicalPoint([int(i) for i in reversed(index)])
        continuous = working.TransformPhysicalPointToContinuousIndex(point)
        size = working.GetSize()
        voxel = tuple(int(np.clip(round(c), 0, n - 1)) for c, n in zip(reversed(continuous), reversed(size)))
        return voxel if self.spatial_dims == 3 else voxel[1:]
