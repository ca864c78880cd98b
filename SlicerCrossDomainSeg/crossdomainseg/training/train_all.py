"""`train all`: plan from the data (plan.py), then the reference segmenter and the translator,
each given epochs from a wall-clock budget, into one bundle the engine and front ends load.

Each stage first runs one epoch and times it (data loading excluded by an estimate from the
planning read), then resumes for as many more epochs as fit in its share of what is left of the
budget: the segmenter `SOURCE_SHARE` of it, the translator the rest. The plan and the epochs
chosen are kept in CHECKPOINT_DIR/plan.json, so `--resume` after a kill continues the same run
(the stages' own checkpoints replay the same batches). The segmenter's weights are those of its
best epoch on the source validation split (the last epoch without one); the translator ships its
last epoch's weight average. The plan, the stages' epochs and wall times go into the bundle's
metadata under `plan`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bundle import load_bundle, update_bundle
from ..device import pick_device
from ..errors import InputError
from ..store import atomic_write_json
from .plan import epochs_for, fingerprint, make_plan
from .source import SourceConfig, train_source
from .translator import TranslatorConfig, train_translator

SOURCE_SHARE = 0.6
# Share of the budget kept back for what follows the last epoch (metadata, the summary).
RESERVE_SHARE = 0.03
EPOCH_CAP = {"source": 300, "translator": 100}


@dataclass
class TaskData:
    """What `train all` trains on: (id, image, label-or-None) cases and how to name the task."""

    source_train: list
    source_val: list
    target: list
    labels: dict
    target_val: list = field(default_factory=list)  # labelled target cases, only logged
    colors: dict = field(default_factory=dict)
    task: str = "custom"
    source_modality: str = "source"
    target_modality: str = "target"
    description: str = ""


def split_validation(cases: list, share: float, seed: int) -> tuple[list, list]:
    """(train, val): a seeded `share` of the cases (at least one when there are two or more) held
    out to pick the segmenter's epoch."""
    if not 0 <= share < 1:
        raise InputError(f"--val-share must be at least 0 and below 1, got {share}.")
    n_val = 0 if len(cases) < 2 or share == 0 else max(1, round(share * len(cases)))
    held = set(np.random.default_rng(seed).choice(len(cases), n_val, replace=False).tolist())
    return ([c for i, c in enumerate(cases) if i not in held], [c for i, c in enumerate(cases) if i in held])


def source_config(data: TaskData, plan: dict, steps: int, seed: int, version: str,
                  domain_randomize: float) -> SourceConfig:
    extra = {}
    if domain_randomize:
        if "domain_randomize" not in {f.name for f in dataclasses.fields(SourceConfig)}:
            raise InputError("--domain-randomize needs `train source` with domain randomisation, "
                             "which this version does not have; leave the option off.")
        extra["domain_randomize"] = domain_randomize
    return SourceConfig(
        task=data.task, labels=data.labels, colors=data.colors, spatial_dims=plan["spatial_dims"],
        spacing=plan["spacing"], roi_size=plan["roi_size"], normalization=plan["normalization"],
        input_modality=data.target_modality, output_modality=data.source_modality,
        channels=plan["channels"], strides=[2] * (len(plan["channels"]) - 1), num_res_units=1,
        # half the crops through a random intensity transfer function and foreground crops
        # centred on each label equally often: the shipped phantom recipe, fair on the target
        # before any adaptation and not blind to small labels
        intensity_remap=0.5, class_balanced=True, epochs=1, steps_per_epoch=steps, batch_size=2,
        lr=2e-3, seed=seed, version=version, data=data.description, **extra)


def translator_config(plan: dict, steps: int, seed: int) -> TranslatorConfig:
    # The shipped phantom recipe: a residual generator that starts as the identity (so TD-GAN
    # starts at vanilla), pulled towards the source's organ intensities under the reference's
    # own labels, its weight average shipped.
    return TranslatorConfig(
        patch_size=plan["translator_patch"], generator_channels=8, n_down=2, n_blocks=2,
        stem_kernel=3, residual=True, discriminator_channels=8, discriminator_layers=3, lr=1e-3,
        lambda_identity=0.0, lambda_seg=5.0, lambda_semantic=1.0, lambda_class_intensity=10.0,
        average_decay=0.99, epochs=1, steps_per_epoch=steps, batch_size=1, seed=seed + 1)


def _timed_fingerprint(cases, seed):
    began = time.time()
    return fingerprint(cases, seed), time.time() - began


def train_all(data: TaskData, out: str | Path, budget_minutes: float, checkpoint_dir=None,
              resume: bool = False, device: str | None = None, steps: int = 25, seed: int = 0,
              version: str = "0.1.0", domain_randomize: float = 0.0, progress: bool = True,
              command: str | None = None, log=print):
    """Plan, train both stages within `budget_minutes` of wall time, and return the bundle."""
    began = time.time()
    out = Path(out)
    if budget_minutes <= 0:
        raise InputError(f"--budget-minutes must be positive, got {budget_minutes}.")
    if steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}.")
    if not data.source_train or not data.target:
        raise InputError("train all needs labelled source images and unlabelled target images.")
    if (out / "configs" / "metadata.json").exists() and not resume:
        raise InputError(f"{out} already holds a bundle; pass --resume to continue its training, "
                         "or choose another --out (nothing was overwritten).")
    budget = 60.0 * budget_minutes
    checkpoints = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + ".ckpt")
    plan_file = checkpoints / "plan.json"
    torch_device = pick_device(device)

    source_cases = data.source_train + data.source_val
    source_print, source_read = _timed_fingerprint(source_cases, seed)
    target_print, target_read = _timed_fingerprint(data.target, seed)
    if resume and plan_file.is_file():
        plan = json.loads(plan_file.read_text())
        log(f"plan: resumed from {plan_file}")
    else:
        plan = make_plan(source_print, target_print, torch_device.type)
        plan.update(budget_minutes=budget_minutes, steps_per_epoch=steps, stages={})
        checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_file, plan)
    log(f"plan: spacing {plan['spacing']} mm, roi {plan['roi_size']}, translator crop "
        f"{plan['translator_patch']}, device {torch_device.type}; normalisation source "
        f"{plan['normalization']['source']} ({plan['reasons']['normalization_source']}), target "
        f"{plan['normalization']['target']} ({plan['reasons']['normalization_target']})")

    def left() -> float:
        return budget * (1 - RESERVE_SHARE) - (time.time() - began)

    src_config = source_config(data, plan, steps, seed, version, domain_randomize)

    def run_source(epochs, again):
        train_source(dataclasses.replace(src_config, epochs=epochs), data.source_train, data.source_val,
                     out, checkpoints, again, device, progress, command)

    _stage("source", plan, plan_file, run_source, SOURCE_SHARE * left(), 2 * source_read, resume, out, log)

    tr_config = translator_config(plan, steps, seed)

    def run_translator(epochs, again):
        train_translator(out, dataclasses.replace(tr_config, epochs=epochs), data.source_train,
                         data.target, data.target_val, checkpoints, again, device, progress, command)

    _stage("translator", plan, plan_file, run_translator, left(),
           2 * (source_read * len(data.source_train) / len(source_cases) + target_read), resume, out, log)

    plan["wall_seconds"] = round(time.time() - began, 1)
    atomic_write_json(plan_file, plan)
    bundle = update_bundle(out, metadata={"plan": plan})
    log(f"train all: bundle {out} written in {plan['wall_seconds'] / 60:.1f} min (budget {budget_minutes:g} min); "
        f"source {plan['stages']['source']['epochs']} epochs, translator "
        f"{plan['stages']['translator']['epochs']} epochs; metrics {bundle.metrics}")
    return bundle


def _stage(name, plan, plan_file, run, budget_s, load_s, resume, out, log) -> None:
    """Run stage `name` for the epochs that fit in `budget_s` (its first epoch timed), or for the
    epochs the plan already chose (a resumed run)."""
    began = time.time()
    chosen = plan["stages"].get(name)
    if chosen is not None:
        run(chosen["epochs"], True)
    else:
        run(1, resume)
        wall = time.time() - began
        trained = load_bundle(out).metadata["training"][name]["history"][-1]["seconds"]
        epoch_s = max(trained, wall - load_s)
        more = epochs_for(budget_s - wall - load_s, epoch_s, EPOCH_CAP[name] - 1)
        chosen = {"epochs": 1 + more, "epoch_seconds": round(epoch_s, 2), "budget_seconds": round(budget_s, 1)}
        plan["stages"][name] = chosen
        atomic_write_json(plan_file, plan)
        log(f"{name}: one epoch takes about {epoch_s:.1f} s; {chosen['epochs']} epochs of "
            f"{plan['steps_per_epoch']} steps fit in its {budget_s / 60:.1f} min")
        if chosen["epochs"] > 1:
            run(chosen["epochs"], True)
    chosen["seconds"] = round(chosen.get("seconds", 0.0) + time.time() - began, 1)
    atomic_write_json(plan_file, plan)
