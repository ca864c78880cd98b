"""Inference: label map, class probabilities, synthetic-modality preview, uncertainty heatmap and
per-image U for one image, all returned on the input's own grid.

Pipeline: validate -> working grid at the bundle's spacing -> normalise as "target" -> generator
G gives the preview x_s = G(x_t) -> reference segmenter on the preview ("tdgan", default) or on the
raw target ("vanilla") -> softmax, with test-time augmentation when uncertainty is asked for ->
heatmap and U (uncertainty.py) -> probabilities, preview and heatmap resampled linearly to the
input grid, raw label = argmax there, label = the raw label after the post-processing steps the
bundle lists (postprocess.py). Label and probabilities come from the un-augmented pass, so they
are the same whether uncertainty was asked for or not.

`Engine` loads the networks once and keeps them on the device; given a model registry folder it
re-reads `CURRENT` on every call (one small file read) and reloads when a new version is current.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference

from . import geometry
from . import uncertainty as unc
from .bundle import Bundle, check_dimension, load_bundle
from .device import configure, pick_device
from .errors import BundleError, InputError
from .imageio import read_header, read_image, validate_image
from .normalize import denormalize
from .padding import fill_padding
from .postprocess import bundle_steps, postprocess_image

# Chosen by measurement on the xray-drr test split (benchmarks/uncertainty.py, by_config): with
# flips last, n = 6 is the smallest count whose error AUROC passed 0.85 (entropy 0.855, n = 8:
# 0.860) with U clearly ranking bad cases (Spearman vs Dice -0.66). The three heatmap kinds were
# within 0.006 AUROC of each other; entropy was best with the current bundle and, unlike the
# others, also shows the soft boundaries on which all augmentations agree.
DEFAULT_TTA_N = 6
DEFAULT_HEATMAP = "entropy"

# Input spacing more than this many times finer or coarser than the bundle's (any in-plane axis,
# or slice axis for 3D bundles) is refused: structures would be invented or lost in resampling.
MAX_SPACING_RATIO = 6.0
MODES = ("auto", "tdgan", "vanilla", "source")
# An image must cover at least this share of the network's patch along every segmented axis.
MIN_EXTENT_FRACTION = 0.25
# Peak memory of one segmentation above the loaded engine (benchmarks/engine_memory.py, phantom-ct-mr,
# 5 classes, 6 TTA passes): about 68-77 bytes per voxel of the input grid (the image, its float
# copy, the class probabilities resampled back, argmax, post-processing, preview, heatmap) and 360 per voxel of the working grid (network input, preview,
# per-pass probabilities, sliding-window buffers). The constants below (100 and 440 bytes at 5
# classes and 6 passes) put the estimate 1.37-1.91x above every measured peak
# (benchmarks/results/engine_memory.json); a 600^3 volume at 1 mm: 23.5 GiB.
INPUT_BYTES = 60
INPUT_BYTES_PER_CLASS = 8
WORK_BYTES = 200
WORK_BYTES_PER_CLASS_PASS = 6
BASE_BYTES = 100 * 2**20
# Sliding windows per forward pass, and TTA images per batch: batching the small training-sized
# windows was 4x faster per window on CPU than one at a time (measured, 2 threads).
WINDOW_BATCH = 8
TTA_CHUNK = 4

Progress = Callable[[float, str], None]


class SegmentationCancelled(Exception):
    """Raised inside `Engine.segment` when the caller's cancel check returns True."""


@dataclass
class WorkingArrays:
    """What the networks saw and produced, on the working grid (for click refinement in a crop).

    reference: empty image defining the working grid (geometry.working_reference, bundle spacing);
        arrays below are in its SimpleITK array order (z, y, x), a single slice for 2D images.
    image: the target image normalised as "target" (float32).
    preview: G(image) in source-normalised units (float32), None for bundles without a generator
        when mode is "vanilla".
    probabilities: (C, z, y, x) float32 class probabilities of the un-augmented pass.
    heatmap: (z, y, x) float32 per-voxel uncertainty in [0, 1], or None.
    segmenter_input: "preview" (tdgan) or "image" (vanilla): which array the segmenter read.
    """

    reference: sitk.Image
    image: np.ndarray
    preview: np.ndarray | None
    probabilities: np.ndarray
    heatmap: np.ndarray | None
    segmenter_input: str


@dataclass
class SegmentationResult:
    """Outputs on the input image's own grid (spacing, origin, direction, size preserved).

    label: UInt8 label map (values as in `labels`), after the bundle's post-processing steps
    (`postprocess`, the steps applied; none when the engine was asked for raw output). raw_label:
    the argmax of the probabilities before those steps. probabilities: float32 vector image, one
    component per class. preview: synthetic source-modality image in source units (e.g. HU when
    the bundle's source normalisation is a window), None unless asked. uncertainty: float32
    heatmap in [0, 1], None unless asked. U: per-image uncertainty (patent eq. 1), None unless
    asked. timings: seconds per stage and "total". model_version: the bundle version used.
    """

    label: sitk.Image
    raw_label: sitk.Image
    postprocess: list
    probabilities: sitk.Image
    preview: sitk.Image | None
    uncertainty: sitk.Image | None
    U: float | None
    timings: dict
    model_version: str
    labels: dict
    colors: dict
    tta_n: int
    working: WorkingArrays = field(repr=False)


def _available_memory_bytes() -> int:
    return int(psutil.virtual_memory().available)


class _FileGeometry:
    """Size and geometry of an image file from its header, without its voxels: enough for
    geometry.working_reference (which reads GetSize and GetDirection and maps indices to physical
    points)."""

    def __init__(self, reader: sitk.ImageFileReader):
        self.size = reader.GetSize()
        self._probe = sitk.Image([1] * len(self.size), sitk.sitkUInt8)
        self._probe.SetSpacing(reader.GetSpacing())
        self._probe.SetOrigin(reader.GetOrigin())
        self._probe.SetDirection(reader.GetDirection())

    def GetSize(self):  # noqa: N802 (SimpleITK's naming)
        return self.size

    def GetDirection(self):  # noqa: N802
        return self._probe.GetDirection()

    def TransformContinuousIndexToPhysicalPoint(self, index):  # noqa: N802
        return self._probe.TransformContinuousIndexToPhysicalPoint(index)


def _file_geometry(path: Path) -> _FileGeometry | None:
    """The header geometry of a 3D image file, or None (DICOM folder, 2D, unreadable header:
    the checks after reading cover those)."""
    reader = read_header(path)
    if reader is None or reader.GetSize()[2] == 1:
        return None
    return _FileGeometry(reader)


def bundle_mode(bundle: Bundle) -> str:
    """What the bundle's segmenter reads: its metadata `segmenter_input` ("image": the raw target,
    e.g. a student fine-tuned on it, or a reference measured better there than on G(x)), else the
    synthetic preview when it has a generator."""
    if bundle.metadata.get("segmenter_input") == "image" or not bundle.has_network("generator"):
        return "vanilla"
    return "tdgan"


class Engine:
    """Segments images with one model bundle (or the current version of a registry), kept warm.

    bundle_or_path_or_registry: a `Bundle`, a bundle folder, or a registry folder (has `CURRENT`).
    device: "cuda", "cpu", ... (default: CUDA when available). threads: torch CPU threads.
    tta_n: test-time augmentations for the uncertainty (default DEFAULT_TTA_N).
    mode: "tdgan" segments the synthetic preview, "vanilla" the raw target image, "auto" (default)
    what each loaded bundle says (`bundle_mode`), also after a registry switches versions;
    "source" segments an image of the source modality (normalised as "source", no translation,
    the image itself as its preview: choices made on source validation cases).
    heatmap: one of uncertainty.HEATMAP_KINDS. memory_limit_bytes: refuse images whose estimated
    working memory exceeds it (default: 80% of the memory available at the call).
    postprocess: False delivers the raw argmax as the label (benchmarks report both).
    """

    def __init__(self, bundle_or_path_or_registry, device=None, threads: int | None = None,
                 tta_n: int | None = None, mode: str = "auto", heatmap: str = DEFAULT_HEATMAP,
                 memory_limit_bytes: int | None = None, max_spacing_ratio: float = MAX_SPACING_RATIO,
                 postprocess: bool = True):
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}.")
        if heatmap not in unc.HEATMAP_KINDS:
            raise InputError(f"heatmap must be one of {unc.HEATMAP_KINDS}, got {heatmap!r}.")
        self.device = pick_device(device)
        if self.device.type == "cpu" or threads is not None:
            configure(threads)
        self.tta_n = DEFAULT_TTA_N if tta_n is None else int(tta_n)
        if self.tta_n < 1:
            raise InputError(f"tta_n must be at least 1, got {tta_n}.")
        self.requested_mode = mode
        self.mode = mode
        self.heatmap_kind = heatmap
        self.memory_limit_bytes = memory_limit_bytes
        self.max_spacing_ratio = max_spacing_ratio
        self.postprocess = bool(postprocess)
        self.registry: Path | None = None
        self._registry_version: str | None = None
        self.bundle: Bundle | None = None
        self.load_seconds = 0.0
        source = bundle_or_path_or_registry
        if isinstance(source, Bundle):
            self._use(source)
        else:
            path = Path(source)
            if (path / "CURRENT").is_file():
                self.registry = path
                self._follow_registry()
            else:
                self._use(load_bundle(path))

    # -- model ------------------------------------------------------------------------------
    def _use(self, bundle: Bundle) -> None:
        start = time.perf_counter()
        self.mode = self.requested_mode if self.requested_mode != "auto" else bundle_mode(bundle)
        if self.mode == "tdgan" and not bundle.has_network("generator"):
            raise BundleError(
                f"Bundle {bundle.path} has no generator, so the synthetic preview (tdgan mode) is "
                "impossible; use mode='vanilla' or a bundle with a trained generator."
            )
        self.segmenter = bundle.network("segmenter", self.device)
        self.generator = bundle.network("generator", self.device) if bundle.has_network("generator") else None
        self.bundle = bundle
        self.load_seconds = time.perf_counter() - start

    def _follow_registry(self) -> bool:
        """Reload when the registry's CURRENT names a new version; True if it did."""
        try:
            version = (self.registry / "CURRENT").read_text().strip()
        except OSError as error:
            raise BundleError(f"Model registry {self.registry}: cannot read CURRENT ({error}).") from None
        if version == self._registry_version:
            return False
        path = self.registry / "versions" / version
        if not path.is_dir():
            raise BundleError(f"Model registry {self.registry}: CURRENT names '{version}', which is missing.")
        self._use(load_bundle(path))
        self._registry_version = version
        return True

    @property
    def model_version(self) -> str:
        return str(self.bundle.version)

    # -- checks -----------------------------------------------------------------------------
    def _check_image(self, image: sitk.Image, name: str) -> sitk.Image:
        image = validate_image(image, name)
        check_dimension(self.bundle, image.GetSize(), name)
        dims = self.bundle.spatial_dims
        spacing = np.asarray(image.GetSpacing(), dtype=float)[:dims]
        wanted = np.asarray(self.bundle.spacing, dtype=float)[:dims]
        ratio = spacing / wanted
        if np.any(ratio > self.max_spacing_ratio) or np.any(ratio < 1.0 / self.max_spacing_ratio):
            raise InputError(
                f"{name}: voxel spacing {tuple(np.round(spacing, 3))} mm is far from the "
                f"{tuple(wanted)} mm this model works at (more than {self.max_spacing_ratio:g}x "
                "apart); resample the image nearer to the model's spacing first, or use a model "
                "trained at this resolution. Check the file's header spacing if this is unexpected."
            )
        return image

    def _check_extent(self, reference, name: str) -> None:
        """Refuse an image far smaller than the region the network looks at: padded to the
        network's patch, it would be mostly padding, and the network has not seen such input."""
        dims = self.bundle.spatial_dims
        size = np.asarray(reference.GetSize()[:dims])
        roi = np.asarray(self.bundle.roi_size)
        if np.any(size < MIN_EXTENT_FRACTION * roi):
            spacing = np.asarray(self.bundle.spacing, dtype=float)[:dims]
            raise InputError(
                f"{name}: the image covers only {' x '.join(f'{v:.0f}' for v in size * spacing)} mm; "
                f"this model ({self.bundle.task}) looks at {' x '.join(f'{v:.0f}' for v in roi * spacing)} "
                f"mm at a time and needs at least {MIN_EXTENT_FRACTION:.0%} of that along every axis. "
                "Give the whole scan (or a larger crop) rather than a small cut-out."
            )

    def memory_estimate(self, input_size, working_size, tta: int) -> int:
        """Peak bytes to segment an image of `input_size` voxels whose working grid has
        `working_size` voxels, with `tta` segmenter passes (see the constants above)."""
        classes = self.bundle.num_classes
        n_input, n_work = int(np.prod(input_size)), int(np.prod(working_size))
        return int(n_input * (INPUT_BYTES + INPUT_BYTES_PER_CLASS * classes)
                   + n_work * (WORK_BYTES + WORK_BYTES_PER_CLASS_PASS * classes * (tta + 2))
                   + BASE_BYTES)

    def _check_memory(self, input_size, working_size, tta: int) -> None:
        estimate = self.memory_estimate(input_size, working_size, tta)
        limit = self.memory_limit_bytes or int(0.8 * _available_memory_bytes())
        if estimate > limit:
            raise InputError(
                f"The image ({'x'.join(map(str, input_size))} voxels, "
                f"{'x'.join(map(str, working_size))} at the model's spacing) needs about "
                f"{estimate / 2**30:.1f} GiB to segment but only {limit / 2**30:.1f} GiB is "
                "available; crop it to the region of interest, lower the uncertainty "
                "augmentations (tta_n), or close other programs."
            )

    # -- networks ---------------------------------------------------------------------------
    def _to_tensor(self, array: np.ndarray) -> torch.Tensor:
        """(z, y, x) array -> (1, 1, *spatial) tensor on the device; 2D bundles drop the slice."""
        if self.bundle.spatial_dims == 2:
            array = array[0]
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None].to(self.device)

    def _from_tensor(self, tensor: torch.Tensor) -> np.ndarray:
        """(1, C, *spatial) -> (C, z, y, x) float32 numpy."""
        out = tensor[0].float().cpu().numpy()
        return out[:, None] if self.bundle.spatial_dims == 2 else out

    def _run(self, network: torch.nn.Module, tensor: torch.Tensor) -> torch.Tensor:
        roi = self.bundle.roi_size
        return sliding_window_inference(
            tensor, roi, sw_batch_size=WINDOW_BATCH, predictor=network,
            overlap=0.25, mode="gaussian", padding_mode="replicate",
        )

    def _segment_probabilities(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self._run(self.segmenter, tensor), dim=1)

    def _prepare(self, image_or_path, passes: int):
        """Checked float image, working-grid reference, normalised working-grid array; `passes`
        segmenter runs are planned (for the memory estimate). A file's size is checked against
        the memory from its header, before its voxels are read."""
        if isinstance(image_or_path, sitk.Image):
            name, image = "image", image_or_path
        else:
            name = str(image_or_path)
            header = _file_geometry(Path(image_or_path))
            if header is not None:
                check_dimension(self.bundle, header.GetSize(), name)
                reference = geometry.working_reference(header, self.bundle.spacing)
                self._check_memory(header.GetSize(), reference.GetSize(), passes)
            image = read_image(image_or_path)
        pixel_id = image.GetPixelID()
        image = self._check_image(image, name)
        reference = geometry.working_reference(image, self.bundle.spacing)
        self._check_extent(reference, name)
        self._check_memory(image.GetSize(), reference.GetSize(), passes)
        # padding outside the field of view becomes background before anything measures the image,
        # and the network sees only the box the field of view fills: the same scan padded or not
        # gets the same working grid (results are resampled back onto the whole input grid, where
        # the padding is background)
        original = sitk.Cast(image, sitk.sitkFloat32)
        image, padding = fill_padding(original, pixel_id)
        scanned = image
        if padding is not None:  # the box, not the padded whole, must cover the network's patch
            scanned = _field_of_view_box(image, original, padding.value)
            reference = geometry.working_reference(scanned, self.bundle.spacing)
            self._check_extent(reference, name)
        # Exactly as training prepares images (training/datasets.py): resample with the image
        # minimum as padding, then normalise the working-grid array.
        working = geometry.to_working_grid(scanned, self.bundle.spacing)
        domain = "source" if self.mode == "source" else "target"
        return image, reference, self.bundle.normalize(sitk.GetArrayViewFromImage(working), domain)

    def tta_predictions(self, image_or_path, transforms: list[unc.Transform] | None = None):
        """Each TTA prediction separately, for evaluating heatmap kinds and transform sets without
        rerunning (benchmarks/uncertainty.py): returns (checked input image, working reference,
        list of (C, z, y, x) probabilities), one per transform (default: the engine's own)."""
        transforms = transforms or unc.default_transforms(self.tta_n, self.bundle.spatial_dims)
        image, reference, normalized = self._prepare(image_or_path, len(transforms))
        with torch.inference_mode():
            x = self._to_tensor(normalized)
            seg_input = self._run(self.generator, x) if self.mode == "tdgan" else x
            predictions = unc.tta_probabilities(self._segment_probabilities, seg_input, transforms,
                                                chunk=TTA_CHUNK)
            return image, reference, [self._from_tensor(p) for p in predictions]

    # -- the call ---------------------------------------------------------------------------
    def segment(self, image_or_path, preview: bool = True, uncertainty: bool = True,
                progress: Progress | None = None,
                cancel: Callable[[], bool] | None = None) -> SegmentationResult:
        """Segment one image (SimpleITK image or file/DICOM folder path); see SegmentationResult.

        progress(fraction, message) is called between stages; cancel() is polled between stages
        and TTA passes and raises SegmentationCancelled when it returns True.
        """
        timings: dict[str, float] = {}
        start = clock = time.perf_counter()

        def stage(name: str, fraction: float, message: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - clock
            clock = now
            if cancel is not None and cancel():
                raise SegmentationCancelled("segmentation cancelled")
            if progress is not None:
                progress(fraction, message)

        if self.registry is not None and self._follow_registry():
            timings["load"] = self.load_seconds
            clock = time.perf_counter()
        image, reference, normalized = self._prepare(image_or_path, self.tta_n if uncertainty else 1)
        stage("prepare", 0.1, "checked the image, resampled it to the model grid, normalised it")

        with torch.inference_mode():
            x = self._to_tensor(normalized)
            x_s = x if self.mode == "source" else None
            if self.mode != "source" and self.generator is not None and (self.mode == "tdgan" or preview):
                x_s = self._run(self.generator, x)
                stage("preview", 0.3, "made the synthetic preview")
            seg_input = x_s if self.mode == "tdgan" else x
            # the label's pass alone, as without uncertainty (batching it with the augmentations
            # could change its rounding and flip near-tie voxels)
            plain = self._segment_probabilities(seg_input)
            stage("segment", 0.35, "segmented")
            heat, u_value = None, None
            if uncertainty:
                transforms = unc.default_transforms(self.tta_n, self.bundle.spatial_dims)

                def step(i):
                    stage("tta", 0.35 + 0.45 * (i + 2) / len(transforms),
                          f"segmented augmentation {i + 2} of {len(transforms)}")

                # the first transform is the identity: the plain pass stands for it
                predictions = [plain, *unc.tta_probabilities(self._segment_probabilities, seg_input,
                                                             transforms[1:], step, chunk=TTA_CHUNK)]
                heat = unc.heatmap(predictions, self.heatmap_kind)
                u_value = float(unc.image_uncertainty(predictions)[0])
                del predictions
                stage("uncertainty", 0.85, "computed the uncertainty")
            probabilities = self._from_tensor(plain)
            preview_array = self._from_tensor(x_s)[0] if x_s is not None else None
            heat_array = self._from_tensor(heat)[0] if heat is not None else None
        del plain, x, x_s, seg_input, heat

        probs_image = to_input_grid(np.moveaxis(probabilities, 0, -1), reference, image, vector=True)
        # Outside the working grid every class got 0, and argmax of all-zero is 0: background.
        label_array = np.argmax(sitk.GetArrayViewFromImage(probs_image), axis=-1).astype(np.uint8)
        raw_label = sitk.GetImageFromArray(label_array)
        raw_label.CopyInformation(image)
        steps = bundle_steps(self.bundle.metadata) if self.postprocess else []
        label = postprocess_image(steps, label_array, image) if steps else raw_label
        preview_image = None
        if preview and preview_array is not None:
            display = denormalize(preview_array, self.bundle.metadata["normalization"]["source"])
            preview_image = to_input_grid(display, reference, image, default=float(display.min()))
        heat_image = to_input_grid(heat_array, reference, image) if heat_array is not None else None
        stage("resample_out", 1.0, "done")
        timings["total"] = time.perf_counter() - start
        return SegmentationResult(
            label=label, raw_label=raw_label, postprocess=steps, probabilities=probs_image, preview=preview_image, uncertainty=heat_image,
            U=u_value, timings=timings, model_version=self.model_version, labels=self.bundle.labels,
            colors=self.bundle.colors, tta_n=self.tta_n if uncertainty else 1,
            working=WorkingArrays(
                reference=reference, image=normalized, preview=preview_array,
                probabilities=probabilities, heatmap=heat_array,
                segmenter_input="preview" if self.mode == "tdgan" else "image",
            ),
        )


def _field_of_view_box(image: sitk.Image, original: sitk.Image, sentinel: float) -> sitk.Image:
    """`image` cropped to the bounding box of the voxels of `original` that are not padding."""
    inside = sitk.GetArrayViewFromImage(original) != sentinel
    spans = []  # (first, last) index along x, y, z (array axes reversed)
    for axis in reversed(range(inside.ndim)):
        hit = np.flatnonzero(inside.any(axis=tuple(a for a in range(inside.ndim) if a != axis)))
        spans.append((int(hit[0]), int(hit[-1])))
    return sitk.RegionOfInterest(image, [last - first + 1 for first, last in spans], [first for first, _ in spans])


def to_input_grid(array: np.ndarray, reference: sitk.Image, image: sitk.Image, default: float = 0.0,
                  vector: bool = False) -> sitk.Image:
    """A working-grid array ((z, y, x), or (z, y, x, C) with vector=True) resampled linearly onto
    the input image's grid."""
    working_image = sitk.GetImageFromArray(array, isVector=vector)
    working_image.CopyInformation(reference)
    return geometry.resample_to_reference(working_image, image, sitk.sitkLinear, default)
