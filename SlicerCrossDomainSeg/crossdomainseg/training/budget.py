"""The part of `train all`'s plan that reads the time budget: a short probe of real segmenter steps
and a validation pass, the working grid the budget affords, and each segmenter stage's epoch length.

- Grid (`choose_grid`): the plan's grid is kept when the segmenter stages' share of the budget buys
  at least `MIN_SEGMENTER_STEPS` steps on it (steps timed by `probe`); otherwise the spacing is
  coarsened by `COARSEN_FACTOR` at a time (the roi keeps its extent in mm, so a step costs fewer
  voxels) until it does, but never past the spacing at which the SOURCE labels' round trip (to the
  grid and back, linear on one-hot, argmax: `round_trip_dice`) falls below `MIN_ROUND_TRIP_DICE`.
- Epoch length (`epoch_steps`): a segmenter stage validates after each epoch (its best epoch is
  chosen on the source validation cases), so an epoch has enough steps that validation takes at
  most `VALIDATION_SHARE` of the stage, and few enough that the stage still has `MIN_EPOCHS`.
No target image or label is read here.
"""

from __future__ import annotations

import math
import time

import numpy as np
import SimpleITK as sitk

from ..geometry import resample_to_reference, working_reference
from .datasets import load_samples
from .plan import regrid
from .source import VAL_RENDERINGS, evaluate_segmenter, train_step, training_parts

# Assumption: the brain 1.1 reference needed ~4300 steps of batch 2 (720 source + 3600 domain-randomised)
# to converge (its source validation Dice was still rising slowly at the end; 1650 steps reached 0.26).
MIN_SEGMENTER_STEPS = 4000
# Each coarsening step multiplies the spacing by 4/3 (1.5 mm -> 2 mm -> 2.67 mm): ~2.4x fewer voxels a crop.
COARSEN_FACTOR = 4 / 3
# At most this many coarsening steps (1.5 mm -> 4.7 mm); the label floor stops brain-sized labels sooner.
MAX_COARSENINGS = 4
# A grid on which the source labels themselves keep less than 0.9 mean Dice cannot be learnt to more.
MIN_ROUND_TRIP_DICE = 0.9
# Source label maps the round trip is measured on (their mean; a few suffice for a task's anatomy).
ROUND_TRIP_CASES = 2
# At most this share of a segmenter stage is spent validating (the rest trains).
VALIDATION_SHARE = 0.1
# Each segmenter stage is planned for at least this many epochs: a best epoch to choose, and a
# deadline that can stop the stage between epochs without losing much of its share.
MIN_EPOCHS = 4
# At least this many steps an epoch: saving the bundle and checkpoint after each epoch stays a small
# share even without validation cases.
MIN_EPOCH_STEPS = 25
# Timed steps of each probed stage (their median), after one untimed warm-up step (first-call allocations).
PROBE_STEPS = 5
# Training images loaded for the probe (crops are drawn from them).
PROBE_CASES = 2


def round_trip_dice(labels, spacing) -> float:
    """Mean Dice over labels (and cases) of each label map (SimpleITK images, read once by the
    caller: every candidate grid reuses them) taken to the working grid at `spacing` and back to
    its own grid: linear on the one-hot channels, then argmax."""
    scores = []
    for label in labels:
        array = sitk.GetArrayFromImage(label).astype(np.int64)
        values = [int(v) for v in np.unique(array) if v > 0]
        if not values:
            continue
        grid_spacing = [float(s) for s in spacing]
        if len(grid_spacing) == 2:  # a 2D grid keeps the image's own slice spacing (datasets.load_sample)
            grid_spacing.append(label.GetSpacing()[2])
        grid = working_reference(label, grid_spacing)
        back = []
        for value in [0] + values:
            channel = sitk.GetImageFromArray((array == value).astype(np.float32))
            channel.CopyInformation(label)
            outside = 1.0 if value == 0 else 0.0  # beyond the image: background
            there = resample_to_reference(channel, grid, sitk.sitkLinear, outside)
            back.append(sitk.GetArrayFromImage(resample_to_reference(there, label, sitk.sitkLinear, outside)))
        restored = np.asarray([0] + values)[np.argmax(np.stack(back), axis=0)]
        for value in values:
            a, b = array == value, restored == value
            scores.append(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))
    return float(np.mean(scores)) if scores else 1.0


def probe(configs: dict, train_cases, val_cases, device) -> dict:
    """Seconds one training step takes for each stage's `configs` ({stage: SourceConfig}, same grid)
    and one validation case takes to segment, measured on real crops of `PROBE_CASES` images."""
    first = next(iter(configs.values()))
    label_values = sorted(first.labels.values())
    norm = first.normalization["source"]
    train = load_samples(train_cases[:PROBE_CASES], first.spacing, norm, first.spatial_dims, label_values)
    val = load_samples((val_cases or train_cases)[:1], first.spacing, norm, first.spatial_dims, label_values)
    rng = np.random.default_rng(0)
    step_seconds = {}
    for stage, config in configs.items():
        network, optimiser, loss_fn = training_parts(config, device)
        network.train()
        train_step(network, optimiser, loss_fn, train, rng, config, device)
        times = []
        for _ in range(PROBE_STEPS):
            began = time.time()
            train_step(network, optimiser, loss_fn, train, rng, config, device)
            times.append(time.time() - began)
        step_seconds[stage] = round(float(np.median(times)), 4)  # the median: a stall by another process counts once
    began = time.time()
    evaluate_segmenter(network, val, first.roi_size, max(label_values) + 1, device)
    return {"step_seconds": step_seconds, "val_seconds_per_case": round(time.time() - began, 3)}


def validation_seconds(probed: dict, config, n_val: int) -> float:
    """Seconds a stage of `config` spends validating each epoch: every real validation case, and
    as many randomised renderings of each when the stage randomises."""
    renderings = 1 + (VAL_RENDERINGS if config.domain_randomize else 0)
    return probed["val_seconds_per_case"] * n_val * renderings


def affordable_steps(step_seconds: dict, stage_seconds: dict) -> int:
    """Segmenter steps the stages' seconds buy, `VALIDATION_SHARE` of each kept for validation."""
    return int(sum(stage_seconds[s] * (1 - VALIDATION_SHARE) / step_seconds[s] for s in stage_seconds))


def choose_grid(plan: dict, stage_seconds: dict, measure, floor) -> tuple[dict, dict]:
    """(plan, record): `plan` or a coarser one (`regrid`) whose probed steps (`measure(plan)`, as
    `probe` returns) in `stage_seconds` ({segmenter stage: seconds}) reach `MIN_SEGMENTER_STEPS`,
    none coarser than the last whose `floor(spacing)` round-trip Dice is at least
    `MIN_ROUND_TRIP_DICE`. The record lists every candidate tried and why the choice was made."""
    candidates, chosen = [], None
    for k in range(MAX_COARSENINGS + 1):
        candidate = regrid(plan, COARSEN_FACTOR ** k) if k else plan
        entry = {"spacing": candidate["spacing"], "roi_size": candidate["roi_size"]}
        if k:
            entry["round_trip_dice"] = round(floor(candidate["spacing"]), 4)
            if entry["round_trip_dice"] < MIN_ROUND_TRIP_DICE:
                candidates.append(entry)
                why = (f"the source labels' round trip to {candidate['spacing']} mm keeps only "
                       f"{entry['round_trip_dice']:.3f} mean Dice (< {MIN_ROUND_TRIP_DICE}); kept the "
                       "last grid above it")
                break
        probed = measure(candidate)
        entry.update(probed, steps=affordable_steps(probed["step_seconds"], stage_seconds))
        candidates.append(entry)
        chosen = (candidate, probed)
        if entry["steps"] >= MIN_SEGMENTER_STEPS:
            why = (f"{entry['steps']} segmenter steps fit in the budget at {candidate['spacing']} mm "
                   f"(at least {MIN_SEGMENTER_STEPS} wanted)")
            break
    else:
        why = f"coarsened {MAX_COARSENINGS} times, the most allowed; fewer than {MIN_SEGMENTER_STEPS} steps fit"
    return chosen[0], {"candidates": candidates, "choice": why, "probe": chosen[1]}


def epoch_steps(step_s: float, val_s: float, stage_s: float) -> tuple[int, str]:
    """(steps per epoch, reason) for a segmenter stage: validation (`val_s` seconds an epoch) at most
    `VALIDATION_SHARE` of it, at least `MIN_EPOCH_STEPS` steps, yet `MIN_EPOCHS` epochs in `stage_s`."""
    wanted = max(MIN_EPOCH_STEPS, math.ceil((1 - VALIDATION_SHARE) / VALIDATION_SHARE * val_s / step_s))
    most = max(1, int(stage_s * (1 - VALIDATION_SHARE) / step_s / MIN_EPOCHS))
    steps = min(wanted, most)
    reason = (f"step {step_s:.3f} s, validation {val_s:.1f} s an epoch: {wanted} steps keep validation "
              f"at most {VALIDATION_SHARE:.0%}")
    if steps < wanted:
        reason += f"; {steps} so that {MIN_EPOCHS} epochs fit in the stage's {stage_s / 60:.1f} min"
    return steps, reason

