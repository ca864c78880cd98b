"""Training the prompt network with a simulated user, and shipping it.

It reads labelled *source* training cases and, for a share of the samples (`target_share`), the
unlabelled *target* training images with the bundle's confident pseudo-labels (target_cases.py;
unknown voxels are never an object, never clicked and outside the loss, `known_dice_ce`); target
labels are never read. Each sample is one object of one case: a single
label (most often), one connected part of a label, the union of two touching labels, or a
synthetic lesion painted into the image, so the network learns "this object" and not the label
set. The object's current mask is empty (a new structure) or a corrupted copy of it (a draft);
the robot clicks 1 to MAX_CLICKS times in the largest error region (earlier regions corrected
before the last click), and the crop is centred near the last click. BOX_SHARE of the samples (a
network with the box channel only)
start from an empty mask and the object's bounding box, each face moved up to BOX_JITTER voxels
(as a user draws it), alone or followed by clicks. When fine-tuning, on
ITERATE_SHARE of the samples the earlier clicks are answered by the network itself, applied as the
session applies them, so it also learns from the masks its own answers leave (a first answer too
large, then negative clicks). On SYNTH_SHARE of the
source samples the image is a SynthSeg-style synthesis of the case (training/randomize.py: random
contrast per tissue, bias, noise, thick slices), so the network works on a modality it never saw
(a target image is shown as it is, with no painted lesion: it already has the target contrast);
crops are randomly flipped and their axes permuted (target scans come coronal or sagittal).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..bundle import load_bundle, update_bundle
from ..errors import InputError
from ..networks import build_network
from ..training.randomize import crop_normalization
from .encoding import Box, box_answer, crop_box
from .prompt_net import (BOX_CHANNELS, CLICK_CHANNELS, NETWORK_NAME, encode, prompt_grid, prompt_spec,
                         widen_to_box_channel)
from .simulate import next_click, training_clicks
from .prompt_cases import UNKNOWN, PromptCase, to_prompt_grid
from .target_cases import CONFIDENCE, load_target_cases, target_training_images
from .train_refiner import corrupt, train_step

MAX_CLICKS = 8
SYNTH_SHARE = 0.8
EMPTY_SHARE = 0.35  # samples starting from an empty mask (a new structure)
BOX_SHARE = 0.25  # samples starting from an empty mask and a box around the object
BOX_ONLY = 0.5  # of those: the box alone, no click yet
BOX_JITTER = 3  # voxels each face of the box may be off the object's bounding box
ITERATE_SHARE = 0.6  # fine-tuning: samples whose earlier clicks the network answered itself
# object kinds and their shares: one label, one connected part of a label, two touching labels, a lesion
OBJECT_KINDS = (("label", 0.55), ("part", 0.15), ("union", 0.15), ("lesion", 0.15))


def source_prompt_case(image: sitk.Image, label: sitk.Image, bundle) -> PromptCase:
    """A labelled source case on the network's grid (2D arrays for a 2D bundle), normalised as
    "source", with synthetic images drawn in the range of the bundle's target normalisation."""
    image, label = to_prompt_grid(image, label, bundle.spatial_dims)
    return PromptCase(bundle.normalize(image, "source"), label,
                      crop_normalization(bundle.metadata["normalization"]["target"]))


def load_prompt_cases(task_dir, bundle, limit: int | None = None) -> list[PromptCase]:
    """The labelled source training cases of a task folder, resampled to the network's grid
    (2D arrays for a 2D bundle)."""
    from ..data import TaskDir

    cases = []
    for _, image_path, label_path in TaskDir(task_dir).cases("train", "source"):
        if label_path is None:
            continue
        cases.append(source_prompt_case(sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path)), bundle))
        if limit and len(cases) >= limit:
            break
    if not cases:
        raise InputError(f"{task_dir} has no labelled source training cases to train the prompt network on.")
    return cases


def _ellipsoid(shape, center, radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1.0


def pick_object(case: PromptCase, image: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """(object mask, image) for one sample; a lesion is painted into a copy of the image (source
    cases only: a target image is shown unchanged)."""
    kinds = [(k, p) for k, p in OBJECT_KINDS if case.synthesize or k != "lesion"]
    shares = np.array([p for _, p in kinds])
    kind = rng.choice([k for k, _ in kinds], p=shares / shares.sum())
    value = case.values[rng.integers(len(case.values))]
    truth = case.label == value
    if kind == "part":
        parts, n = ndimage.label(truth)
        if n > 1:
            sizes = np.bincount(parts.ravel())[1:]
            big = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
            truth = parts == big[rng.integers(len(big))]
    elif kind == "union":
        ring = ndimage.binary_dilation(truth, iterations=2) & ~truth
        touching = [int(v) for v in np.unique(case.label[ring]) if v not in (0, value, UNKNOWN)]
        if touching:
            truth = truth | (case.label == touching[rng.integers(len(touching))])
    elif kind == "lesion":
        inside = np.argwhere(case.label > 0)
        centre = inside[rng.integers(len(inside))]
        radii = rng.uniform(2.0, 10.0, size=image.ndim)
        noise = ndimage.gaussian_filter(rng.standard_normal(image.shape).astype(np.float32), 2.0)
        grids = np.ogrid[tuple(slice(0, n) for n in image.shape)]
        distance = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)))
        truth = distance + 0.2 * noise / max(float(noise.std()), 1e-6) <= 1.0  # an irregular outline
        if truth.sum() < 8:
            truth = _ellipsoid(image.shape, centre, np.maximum(radii, 2.0))
        image = image.copy()
        level = rng.uniform(0.0, 1.0)
        texture = rng.uniform(0.0, 0.1) * rng.standard_normal(image.shape).astype(np.float32)
        edge = ndimage.gaussian_filter(truth.astype(np.float32), rng.uniform(0.3, 1.2))
        image = image * (1 - edge) + (level + texture) * edge
    return truth, image


def _run(network, x) -> np.ndarray:
    with torch.inference_mode():
        return network(torch.from_numpy(x)[None])[0, 0].numpy()


def _local_box(box: Box | None, crop: Box):
    return None if box is None else (crop.local(box.start), crop.local(box.stop))


def box_round(truth, image, current, network, box: Box, size=None) -> None:
    """`network`'s answer to `box` alone on the crop around its centre, applied to `current` (bool,
    changed in place) as the session applies a box (`box_answer`)."""
    size, spacing = _grid(truth, size)
    centre = tuple((a + b) // 2 for a, b in zip(box.start, box.stop))
    crop = crop_box(centre, size, truth.shape)
    here = current[crop.slices]
    x = encode(image[crop.slices], here, [], [], size, _local_box(box, crop))
    inside = _run(network, x)[tuple(slice(0, n) for n in here.shape)] >= 0
    local = Box(tuple(max(0, v) for v in crop.local(box.start)), crop.local(box.stop))
    here |= box_answer(inside, local, spacing)


def network_rounds(truth, image, current, network, rounds: int, size=None, box: Box | None = None,
                   known: np.ndarray | None = None, channels: int = BOX_CHANNELS, after_click=None):
    """The robot clicks up to `rounds` times on `current` (bool, changed in place), each click
    answered by `network` (of `channels` inputs) on the crop around it (with `box`, the user's
    box, when given) and applied as the session applies it (one-sided, connected to the click);
    it never clicks where `known` is False; `after_click(current)` is called after each click.
    Returns the clicks as ((z, y, x), positive)."""
    size, spacing = _grid(truth, size)
    clicks = []
    for _ in range(rounds):
        click = next_click(truth, _seen(current, truth, known), spacing)
        if click is None:
            break
        clicks.append((click.index, click.positive))
        crop = crop_box(click.index, size, truth.shape)
        local = [(crop.local(c), p) for c, p in clicks if crop.contains(c)]
        here = current[crop.slices]  # a view: writing it writes `current`
        x = encode(image[crop.slices], here, [c for c, p in local if p], [c for c, p in local if not p], size,
                   _local_box(box, crop), channels)
        inside = _run(network, x)[tuple(slice(0, n) for n in here.shape)] >= 0
        change = (inside & ~here) if click.positive else (~inside & here)
        index = crop.local(click.index)
        change[index] = True
        components, _ = ndimage.label(change)
        here[components == components[index]] = click.positive
        if after_click is not None:
            after_click(current)
    return clicks


def _grid(array: np.ndarray, size=None) -> tuple[tuple, tuple]:
    """(crop size, spacing) of the network grid `array` lies on (its dimension's, `size` when given)."""
    grid_size, spacing = prompt_grid(array.ndim)
    return tuple(size or grid_size), spacing


def _seen(current: np.ndarray, truth: np.ndarray, known: np.ndarray | None) -> np.ndarray:
    """`current` as the simulated user judges it: right wherever the truth is unknown, so no
    click lands there."""
    return current if known is None else np.where(known, current, truth)


def jittered_box(truth: np.ndarray, rng) -> Box:
    """The bounding box of `truth` as a user might draw it: each face up to BOX_JITTER voxels off."""
    bounds = ndimage.find_objects(truth.astype(np.uint8))[0]
    start = [max(0, s.start + int(rng.integers(-BOX_JITTER, BOX_JITTER + 1))) for s in bounds]
    stop = [min(n, s.stop + int(rng.integers(-BOX_JITTER, BOX_JITTER + 1))) for s, n in zip(bounds, truth.shape)]
    return Box(tuple(start), tuple(max(a + 1, b) for a, b in zip(start, stop)))


def make_prompt_sample(case: PromptCase, rng, size=None, network=None,
                       channels: int = BOX_CHANNELS) -> tuple[np.ndarray, np.ndarray]:
    """(input (channels, *size), target (2, *size)) float32 arrays for one simulated prompt on a
    crop of `size` (default: the network grid's of the case's dimension): the
    target is the object and where it is known (the loss weight: 0 on a target case's UNKNOWN
    voxels). With `network`, ITERATE_SHARE of the samples have earlier prompts it answered
    (`box_round`, `network_rounds`); boxes only for a network with the box channel."""
    size, spacing = _grid(case.image, size)
    dims = len(size)
    synthetic = case.synthesize and rng.random() < SYNTH_SHARE
    image = case.synthetic_image(rng) if synthetic else case.image
    truth, image = pick_object(case, image, rng)
    bounds = ndimage.find_objects(truth.astype(np.uint8))[0]
    around = tuple(slice(max(0, s.start - n // 2), s.stop + n // 2) for s, n in zip(bounds, size))
    truth_a, known_a = truth[around], case.known[around]
    with_box = channels >= BOX_CHANNELS and rng.random() < BOX_SHARE
    box = jittered_box(truth_a, rng) if with_box else None
    empty = box is not None or rng.random() < EMPTY_SHARE
    pred = np.zeros_like(truth_a) if empty else corrupt(truth_a, rng)
    if box is not None and rng.random() < BOX_ONLY:
        current, clicks = pred, []
    elif network is not None and rng.random() < ITERATE_SHARE:
        current = pred.copy()
        if box is not None:
            box_round(truth_a, image[around], current, network, box, size)
        earlier = network_rounds(truth_a, image[around], current, network, int(rng.integers(0 if box else 1, 4)),
                                 size, box, known_a, channels)
        last = next_click(truth_a, _seen(current, truth_a, known_a), spacing)
        clicks = [] if last is None else [*earlier, (last.index, last.positive)]
    else:
        n = 1 if empty and rng.random() < 0.6 else int(rng.integers(1, MAX_CLICKS + 1))
        # the robot corrects only known errors; unknown voxels keep the mask they had
        robot, corrected = training_clicks(truth_a, _seen(pred, truth_a, known_a), n, spacing)
        current = np.where(known_a, corrected, pred)
        clicks = [(c.index, c.positive) for c in robot]
    if not clicks and box is None:  # no error left: a confirming click inside the object
        inside = np.argwhere(truth_a)
        clicks = [(tuple(inside[rng.integers(len(inside))]), True)]
    clicks_local, positive = [c for c, _ in clicks], [p for _, p in clicks]
    centre = clicks_local[-1] if clicks else tuple((a + b) // 2 for a, b in zip(box.start, box.stop))
    centre = np.asarray(centre) + rng.integers(-4, 5, size=dims)
    crop = crop_box(centre, size, truth_a.shape)
    local = [(crop.local(c), p) for c, p in zip(clicks_local, positive) if crop.contains(c)]
    mask = current[crop.slices].astype(np.float32)
    if rng.random() < 0.5:  # at use the mask is rescaled from the image grid: soft edges
        mask = ndimage.gaussian_filter(mask, rng.uniform(0.3, 1.0))
    x = encode(image[around][crop.slices], mask, [c for c, p in local if p], [c for c, p in local if not p], size,
               _local_box(box, crop), channels)
    y = np.zeros((2, *size), np.float32)
    y[1] = 1.0  # padding beyond the image counts, as background
    t = truth_a[crop.slices]
    inside = tuple(slice(0, n) for n in t.shape)
    y[(0, *inside)] = t
    y[(1, *inside)] = known_a[crop.slices]
    order = rng.permutation(dims)
    x, y = x.transpose(0, *(order + 1)), y.transpose(0, *(order + 1))
    for axis in range(dims):
        if rng.random() < 0.5:
            x, y = np.flip(x, axis + 1), np.flip(y, axis + 1)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def known_dice_ce(logits: torch.Tensor, y: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Dice + binary cross-entropy of `logits` (B, 1, ...) against y[:, :1] over the voxels where
    y[:, 1:] is 1 (MONAI's DiceCELoss(sigmoid=True) when every voxel is known)."""
    truth, weight = y[:, :1], y[:, 1:]
    probability = torch.sigmoid(logits)
    axes = tuple(range(2, logits.ndim))
    overlap = (weight * probability * truth).sum(axes)
    dice = 1.0 - (2.0 * overlap + smooth) / ((weight * probability).sum(axes) + (weight * truth).sum(axes) + smooth)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, truth, weight=weight, reduction="sum")
    return dice.mean() + ce / weight.sum().clamp(min=1.0)


def train_prompt(cases: list[PromptCase], minutes: float, seed: int = 0, batch: int = 8, lr: float = 2e-3,
                 steps_limit: int | None = None, checkpoint=None, checkpoint_minutes: float = 5.0,
                 init: torch.nn.Module | None = None, log=print, target_cases: list[PromptCase] = (),
                 target_share: float = 0.0, channels: int = BOX_CHANNELS,
                 stop=lambda: False) -> tuple[torch.nn.Module, dict]:
    """Train the prompt network of `channels` inputs (fine-tune `init`, with samples it answers
    itself, when given) for `steps_limit` steps, else `minutes` of wall time (at least one step);
    `target_share` of the samples come from `target_cases` (pseudo-labelled target images); the
    network is 2D or 3D as the cases' arrays. Every
    `checkpoint_minutes` `checkpoint(network, summary)` is called (e.g. to write it into a bundle
    for evaluation while training goes on). Ctrl-C, or `stop()` turning True between steps, keeps
    what is trained so far (`stopped_early` in the summary)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dims = cases[0].image.ndim
    network = build_network(prompt_spec(dims, channels))
    if init is not None:
        if init.spec["spatial_dims"] != dims:
            raise InputError(f"The prompt network to fine-tune is {init.spec['spatial_dims']}D but the cases are "
                             f"{dims}D; train a new one (without --fine-tune).")
        network.load_state_dict(init.state_dict())
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    total = steps_limit or max(1, int(minutes * 60 / 1.0))  # cosine schedule length; re-estimated below
    scheduler_start = lr
    network.train()
    start, last_save, steps, losses, stopped = time.time(), time.time(), 0, [], False

    def summary() -> dict:
        return {"steps": steps, "seconds": round(time.time() - start, 1), "batch": batch, "lr": lr,
                "fine_tuned": init is not None, "target_share": target_share if target_cases else 0.0,
                "stopped_early": stopped, "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None}

    while steps == 0 or (steps < steps_limit if steps_limit else time.time() - start < minutes * 60):
        if steps and stop():
            stopped = True
            break
        try:
            if not steps_limit and steps == 20:  # measured pace: the cosine schedule ends with the budget
                total = max(21, int(minutes * 60 / ((time.time() - start) / 20)))
            for group in optimiser.param_groups:
                group["lr"] = scheduler_start * 0.5 * (1 + np.cos(np.pi * min(1.0, steps / total)))
            answering = None if init is None else network
            samples = []
            for _ in range(batch):
                pool = target_cases if target_cases and rng.random() < target_share else cases
                samples.append(make_prompt_sample(pool[rng.integers(len(pool))], rng, network=answering,
                                                  channels=channels))
            loss = train_step(network, optimiser, known_dice_ce, samples)
        except KeyboardInterrupt:
            if steps == 0:
                raise
            stopped = True
            log(f"interrupted after {steps} steps: keeping the network trained so far")
            break
        losses.append(loss)
        steps += 1
        if steps % 25 == 0:
            log(f"step {steps}  loss {np.mean(losses[-25:]):.4f}  {time.time() - start:.0f} s")
        if checkpoint is not None and time.time() - last_save > checkpoint_minutes * 60:
            network.eval()
            checkpoint(network, summary())
            network.train()
            last_save = time.time()
    network.eval()
    return network, summary()


def prompt_metadata(task_dir, cases: int, seed: int, threads: int, command: str, summary: dict,
                    before: dict | None = None, target_cases: int = 0, spatial_dims: int = 3) -> dict:
    data = (f"{Path(task_dir).name}: source train split ({cases} cases), simulated clicks, "
            f"synthetic contrast on {SYNTH_SHARE:.0%} of the source samples")
    if target_cases:
        data += (f"; {summary['target_share']:.0%} of samples on the target train split's images ({target_cases}, "
                 f"unlabelled) with the bundle's pseudo-labels (probability >= {CONFIDENCE})")
    training = {"data": data, "seed": seed, "threads": threads, "command": command, **summary}
    if before is not None:
        training["fine_tuned_from"] = before
    size, spacing = prompt_grid(spatial_dims)
    return {"size": list(size), "spacing": list(spacing), "training": training}


def train_and_ship_prompt(bundle_path, task_dir, minutes: float, seed: int = 0, threads: int = 1,
                          batch: int = 8, steps: int | None = None, limit_cases: int | None = None,
                          command: str | None = None, checkpoint_minutes: float = 5.0, lr: float = 2e-3,
                          fine_tune: bool = False, target_share: float = 0.0, clicks_only: bool = False,
                          log=print):
    """Train the prompt network on the task's source training cases and, for `target_share` of the
    samples, on its unlabelled target training images with the bundle's pseudo-labels
    (`fine_tune`: the bundle's own network, further; `clicks_only`: without the box channel, as a
    network saved before it) and write it into the bundle (also every `checkpoint_minutes`)."""
    from ..device import configure

    if not 0.0 <= target_share <= 1.0:
        raise InputError(f"The target share must be between 0 and 1, got {target_share}.")
    if target_share > 0:
        target_training_images(task_dir)  # refused before any work when there are none
    configure(threads)
    bundle = load_bundle(bundle_path)
    tick = time.time()
    init = before = None
    channels = CLICK_CHANNELS if clicks_only else BOX_CHANNELS
    if fine_tune:
        if not bundle.has_network(NETWORK_NAME):
            raise InputError(f"The model bundle {bundle_path} has no prompt network to fine-tune; "
                             "train one first (without --fine-tune).")
        init, before = bundle.network(NETWORK_NAME), bundle.metadata.get(NETWORK_NAME, {}).get("training")
        has = bundle.network_spec(NETWORK_NAME).get("in_channels", CLICK_CHANNELS)
        if clicks_only and has != CLICK_CHANNELS:
            raise InputError(f"The bundle's prompt network has a box channel ({has} inputs); fine-tune it "
                             "without --clicks-only.")
        if not clicks_only and has == CLICK_CHANNELS:
            init = widen_to_box_channel(init)  # answers as before; the box channel starts at zero
            log("the bundle's prompt network has no box channel: added one (zero weights)")
    cases = load_prompt_cases(task_dir, bundle, limit=limit_cases)
    targets = load_target_cases(task_dir, bundle, limit=limit_cases, log=log) if target_share > 0 else []
    command = command or " ".join(sys.argv)
    log(f"{len(cases)} source training cases, {len(targets)} pseudo-labelled target images "
        f"({time.time() - tick:.0f} s); training {f'{steps} steps' if steps else f'{minutes} min'} "
        f"on {threads} thread(s)")

    def ship(network, summary):
        update_bundle(bundle_path, networks={NETWORK_NAME: network},
                      metadata={NETWORK_NAME: prompt_metadata(task_dir, len(cases), seed, threads, command, summary,
                                                              before, len(targets), bundle.spatial_dims)})
        log(f"prompt network written to {bundle_path}: {json.dumps(summary)}")

    network, summary = train_prompt(cases, minutes, seed, batch, lr, steps_limit=steps, checkpoint=ship,
                                    checkpoint_minutes=checkpoint_minutes, init=init, log=log,
                                    target_cases=targets, target_share=target_share, channels=channels)
    ship(network, summary)
    return network, summary
