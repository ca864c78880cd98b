"""Training the click refiner with a simulated user, and shipping it in a model bundle.

Only labelled *source* images are used (target training labels do not exist). Each sample:
one label of one case; the automatic result is either a draft (the bundle's segmenter run on a
randomly remapped copy of the case, with the errors it makes on an unknown modality: whole
regions of the wrong tissue, missed parts) or a corrupted version of the label (erosion/dilation,
shift, missing or extra blobs, missed object, stray islands); the robot clicks 0-10 times (first
at the object's deepest point, then inside the largest error region, earlier regions corrected
before the last click); the crop is centred on the last click. The image channel is the source
image under a random intensity remapping, each labelled structure shifted by its own amount (the
refiner must work on a modality it never saw, where organs and their surroundings may differ as
they do not in the source; at use it gets the target image); the preview channel is the source
image itself (the synthetic preview is a source-modality rendering).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from .. import geometry
from ..bundle import load_bundle, update_bundle
from ..errors import InputError
from ..networks import build_network
from ..training.intensity import remap_intensity
from .encoding import NET_SIZE, NET_SPACING, click_maps, crop_box, pad_to
from .refiner import REFINER_SPEC
from .simulate import training_clicks

NO_CLICK_SHARE = 0.1
# Share of samples whose automatic result is a real draft (the segmenter on a remapped copy of
# the case) rather than a synthetic corruption, when the case has drafts.
DRAFT_SHARE = 0.8
DRAFTS_PER_CASE = 16
MAX_CLICKS = 10
# Voxels kept each side of a label's box for simulating on it: more than half a crop (NET_SIZE),
# so a crop centred anywhere on the label fits; kept at the size the shipped refiner used.
AROUND_MARGIN = (16, 24, 24)


@dataclass
class Draft:
    """The segmenter's answer on an unknown modality: a remapped copy of a case and the
    segmenter's probabilities on it (uint8, 255 = 1), on the refiner grid."""

    image: np.ndarray
    probabilities: np.ndarray  # (C, z, y, x)


@dataclass
class TrainCase:
    image: np.ndarray  # source image normalised as "source", on the refiner grid (z, y, x)
    label: np.ndarray
    drafts: list = field(default_factory=list)

    def __post_init__(self):
        self.values = [int(v) for v in np.unique(self.label) if v != 0]
        self.boxes = {v: ndimage.find_objects((self.label == v).astype(np.uint8))[0] for v in self.values}

    def around(self, value: int) -> tuple[slice, slice, slice]:
        """The label's bounding box plus AROUND_MARGIN each side: the crops of a sample lie in
        it, and simulating on it is much cheaper than on the whole volume."""
        return tuple(slice(max(0, s.start - m), s.stop + m) for s, m in zip(self.boxes[value], AROUND_MARGIN))


def make_drafts(case: TrainCase, segmenter, segmenter_spacing, roi, n: int, rng) -> list[Draft]:
    """`n` drafts of `case`: the segmenter (trained on the source) run on copies of the image
    under random label-aware remappings. Their errors are the errors it makes on a modality it
    never saw (missed parts, wrong neighbouring tissue, lost lesions), which synthetic
    corruptions of the mask do not imitate: those only grow, shrink and shift it."""
    from ..training.loops import predict_probabilities

    zoom = [a / b for a, b in zip(NET_SPACING, segmenter_spacing)]
    drafts = []
    for _ in range(n):
        image = remap_intensity(case.image, rng, case.label)
        probabilities = predict_probabilities(segmenter, ndimage.zoom(image, zoom, order=1), roi)
        back = torch.nn.functional.interpolate(torch.from_numpy(probabilities)[None], size=case.image.shape,
                                               mode="trilinear", align_corners=False)[0].numpy()
        drafts.append(Draft(image.astype(np.float16), np.round(np.clip(back, 0, 1) * 255).astype(np.uint8)))
    return drafts


def load_cases(task_dir, bundle, spacing=NET_SPACING, limit: int | None = None, drafts: int = 0,
               seed: int = 0) -> list[TrainCase]:
    """The labelled source training cases of a task folder, resampled to the refiner's grid,
    each with `drafts` drafts of the bundle's segmenter."""
    from ..data import TaskDir

    task = TaskDir(task_dir)
    cases = []
    for _, image_path, label_path in task.cases("train", "source"):
        if label_path is None:
            continue
        image, label = sitk.ReadImage(str(image_path), sitk.sitkFloat32), sitk.ReadImage(str(label_path))
        cases.append(prepare_case(image, label, bundle, spacing))
        if limit and len(cases) >= limit:
            break
    if not cases:
        raise InputError(f"{task_dir} has no labelled source training cases to train the refiner on.")
    if drafts:
        rng = np.random.default_rng(seed)
        segmenter = bundle.network("segmenter", torch.device("cpu")).eval()
        seg_spacing = tuple(reversed(bundle.metadata["spacing"]))
        for case in cases:
            case.drafts = make_drafts(case, segmenter, seg_spacing, bundle.roi_size, drafts, rng)
    return cases


def prepare_case(image: sitk.Image, label: sitk.Image, bundle, spacing=NET_SPACING) -> TrainCase:
    xyz = tuple(reversed(spacing))
    work = geometry.to_working_grid(image, xyz, sitk.sitkLinear)
    work_label = geometry.resample_to_reference(label, work, sitk.sitkNearestNeighbor, 0)
    return TrainCase(bundle.normalize(sitk.GetArrayFromImage(work), "source"),
                     sitk.GetArrayFromImage(work_label).astype(np.int16))


# ---- simulated automatic results -----------------------------------------------------------

def _blob(shape, center, radii):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1.0


def corrupt(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible wrong automatic mask for `truth` (bool, 2D or 3D)."""
    if rng.random() < 0.2:
        return np.zeros_like(truth)  # missed object: the first click starts from nothing
    pred = truth.copy()
    dims = truth.ndim
    edge = np.argwhere(truth ^ ndimage.binary_erosion(truth))
    for kind in rng.choice(["morph", "shift", "blobs", "island"], size=rng.integers(1, 3), replace=False,
                           p=[0.35, 0.2, 0.35, 0.1]):
        if kind == "morph":
            r = int(rng.integers(1, 6))  # drafts on a new modality can be far off
            op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
            pred = op(pred, ndimage.generate_binary_structure(dims, 1), iterations=r)
        elif kind == "shift":
            pred = np.roll(pred, tuple(int(v) for v in rng.integers(-3, 4, size=dims)), axis=tuple(range(dims)))
        elif kind == "blobs" and len(edge):
            for _ in range(int(rng.integers(1, 4))):
                c = edge[rng.integers(len(edge))] + rng.integers(-2, 3, size=dims)
                blob = _blob(pred.shape, c, rng.uniform(2, 10, size=dims))
                pred = (pred | blob) if rng.random() < 0.5 else (pred & ~blob)
        elif kind == "island":
            c = [rng.integers(n) for n in pred.shape]
            pred |= _blob(pred.shape, c, rng.uniform(2, 6, size=dims))
    return pred


def soften(mask: np.ndarray, rng) -> np.ndarray:
    """Probability-like version of a mask: the engine gives soft probabilities, clicks give hard."""
    prob = mask.astype(np.float32)
    if rng.random() < 0.6:
        prob = ndimage.gaussian_filter(prob, rng.uniform(0.3, 1.5))
    return prob


def perturb_preview(x: np.ndarray, rng) -> np.ndarray:
    """The translator's preview is imperfect: blur, contrast change, noise; and sometimes plain
    wrong (tissues given other intensities), so the refiner learns not to trust it blindly."""
    if rng.random() < 0.3:
        return remap_intensity(x, rng)
    if rng.random() < 0.3:
        return x
    y = ndimage.gaussian_filter(x, rng.uniform(0, 1.0)) * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    return (y + rng.normal(0, 0.02, size=x.shape)).astype(np.float32)


def make_sample(case: TrainCase, rng: np.random.Generator, size=NET_SIZE):
    """(input (5, *size), target (1, *size)) float32 arrays for one simulated click."""
    value = case.values[rng.integers(len(case.values))]
    around = case.around(value)
    volume, labels = case.image[around], case.label[around]
    truth = labels == value
    draft = case.drafts[rng.integers(len(case.drafts))] if case.drafts and rng.random() < DRAFT_SHARE else None
    if draft is None:
        pred = corrupt(truth, rng)
    else:
        draft_probability = draft.probabilities[(value,) + around].astype(np.float32) / 255.0
        pred = draft.probabilities[(slice(None),) + around].argmax(0) == value
    n = 0 if rng.random() < NO_CLICK_SHARE else int(rng.integers(1, MAX_CLICKS + 1))
    clicks, current = training_clicks(truth, pred, n, NET_SPACING)
    if clicks:
        center = np.asarray(clicks[-1].index) + rng.integers(-2, 3, size=3)
    else:
        inside = np.argwhere(truth | current)
        center = inside[rng.integers(len(inside))] if len(inside) else np.asarray(truth.shape) // 2
    box = crop_box(center, size, truth.shape)
    local = [(box.local(c.index), c.positive) for c in clicks if box.contains(c.index)]
    preview = pad_to(volume[box.slices], size)
    if draft is None:
        image = preview if rng.random() < 0.25 else remap_intensity(preview, rng, pad_to(labels[box.slices], size))
        probability = soften(current[box.slices], rng)
    else:  # the image the draft was made from; clicks so far made their voxels certain
        image = pad_to(draft.image[around][box.slices].astype(np.float32), size)
        now, before = current[box.slices], pred[box.slices]
        probability = np.where(now == before, draft_probability[box.slices], now.astype(np.float32))
    maps = click_maps(size, [p for p, pos in local if pos], [p for p, pos in local if not pos])
    x = np.concatenate([np.stack([image, perturb_preview(preview, rng), pad_to(probability, size)]), maps])
    y = pad_to(truth[box.slices].astype(np.float32), size)[None]
    for axis in range(3):  # MR grids are often stored flipped
        if rng.random() < 0.5:
            x, y = np.flip(x, axis + 1), np.flip(y, axis + 1)
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.float32)


# ---- training --------------------------------------------------------------------------------

def train_step(network, optimiser, loss_fn, samples) -> float:
    """One optimiser step on a batch of (input, target) array pairs; returns the loss."""
    x = torch.from_numpy(np.stack([s[0] for s in samples]))
    y = torch.from_numpy(np.stack([s[1] for s in samples]))
    loss = loss_fn(network(x), y)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return float(loss.detach())


def train(cases: list[TrainCase], minutes: float, seed: int = 0, batch: int = 4, lr: float = 2e-3,
          spec: dict = REFINER_SPEC, size=NET_SIZE, steps_limit: int | None = None,
          log=print) -> tuple[torch.nn.Module, dict]:
    """Train a refiner for `steps_limit` steps, else for `minutes` of CPU time of this process
    (all threads: comparable on a busy machine, unlike wall time), at least one step; returns it
    and a summary. It runs on crops of the `size` it trained on (the bundle records it)."""
    from monai.losses import DiceCELoss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cpu = time.process_time()
    network = build_network(spec)
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    loss_fn = DiceCELoss(sigmoid=True)
    network.train()
    start, steps, losses, sampling = time.time(), 0, [], 0.0
    stopped = False

    def more() -> bool:
        if steps_limit is not None:
            return steps < max(1, steps_limit)
        return steps == 0 or time.process_time() - cpu < minutes * 60

    while more():
        try:
            tick = time.time()
            samples = [make_sample(cases[rng.integers(len(cases))], rng, size) for _ in range(batch)]
            sampling += time.time() - tick
            loss = train_step(network, optimiser, loss_fn, samples)
        except KeyboardInterrupt:  # Ctrl-C (or SIGINT) ends training early and keeps the network
            if steps == 0:
                raise
            stopped = True
            log(f"interrupted after {steps} steps: keeping the network trained so far")
            break
        losses.append(loss)
        steps += 1
        if steps % 25 == 0:
            of = f"/{steps_limit}" if steps_limit else ""
            log(f"step {steps}{of}  loss {np.mean(losses[-25:]):.4f}  {time.time() - start:.0f} s "
                f"({sampling:.0f} s simulating)")
    network.eval()
    return network, {"steps": steps, "seconds": round(time.time() - start, 1), "batch": batch, "lr": lr,
                     "crop": list(size), "cpu_seconds": round(time.process_time() - cpu, 1),
                     "stopped_early": stopped,
                     "final_loss": round(float(np.mean(losses[-50:])), 4)}


def train_and_ship(bundle_path, task_dir, minutes: float, seed: int = 0, threads: int = 2,
                   batch: int = 4, steps: int | None = None, limit_cases: int | None = None,
                   command: str | None = None, drafts: int = DRAFTS_PER_CASE, log=print):
    """Train a refiner on the task's source training cases (with `drafts` drafts of the bundle's
    segmenter per case; 0: synthetic corruptions only) and write it into the bundle."""
    from ..device import configure

    configure(threads)
    bundle = load_bundle(bundle_path)
    tick = time.time()
    cases = load_cases(task_dir, bundle, limit=limit_cases, drafts=drafts, seed=seed)
    log(f"{len(cases)} source training cases, {drafts} segmenter drafts each ({time.time() - tick:.0f} s); "
        f"training {f'{steps} steps' if steps else f'{minutes} min'} on {threads} thread(s)")
    network, summary = train(cases, minutes, seed, batch, steps_limit=steps, log=log)
    meta = {"size": summary["crop"], "spacing": list(NET_SPACING), "training": {
        "data": f"{Path(task_dir).name}: source train split ({len(cases)} cases), simulated clicks",
        "drafts_per_case": drafts, "draft_share": DRAFT_SHARE if drafts else 0.0,
        "seed": seed, "threads": threads,
        "command": command or " ".join(sys.argv), **summary}}
    update_bundle(bundle_path, networks={"refiner": network}, metadata={"refiner": meta})
    log(f"refiner written to {bundle_path}: {json.dumps(summary)}")
    return network, meta


def copy_refiner(source_path, target_path, note: str | None = None):
    """Put the refiner trained into one bundle into another whose normalisation is the same (the
    refiner reads nothing else of the bundle, though its drafts came from the first bundle's
    segmenter), e.g. into a bundle retrained later."""
    from ..errors import BundleError

    source, target = load_bundle(source_path), load_bundle(target_path)
    if source.metadata["normalization"] != target.metadata["normalization"]:
        raise BundleError(f"The refiner of {source_path} was trained with normalisation "
                          f"{source.metadata['normalization']} but {target_path} uses "
                          f"{target.metadata['normalization']}; retrain it with train-refiner.")
    meta = json.loads(json.dumps(source.metadata["refiner"]))
    if note:
        meta["training"]["note"] = note
    return update_bundle(target_path, networks={"refiner": source.network("refiner")},
                         metadata={"refiner": meta})
