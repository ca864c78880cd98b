"""`train all`: plan from the data (plan.py), then every stage of the method, each given epochs
from a wall-clock budget, into one bundle the engine and front ends load.

Stages, in order (`STAGES`; `--stages` runs some of them, `--randomize 0` leaves one out):
  source      the reference segmenter on the labelled source images;
  randomize   that segmenter fine-tuned with domain randomisation (`RANDOMIZE_LR`; best epoch on
              real + randomised renderings of the source validation cases): it reads raw target
              images;
  translator  the TD-GAN translator against the segmenter so far, for the synthetic preview;
  curriculum  the patent's curriculum on the unlabelled target images (curriculum_stage.py): its
              student becomes the segmenter, the segmenter it started from stays as `reference`.
Each stage writes its own bundle and checkpoints under CHECKPOINT_DIR/<stage>/; when it finishes,
its bundle is copied to --out with the plan, so --out always holds a bundle the engine loads.

Before any stage, the plan is fitted to the budget (`fit_to_budget`, budget.py): a short probe of
real segmenter steps and a validation pass picks the working grid the segmenter stages' shares
afford, and the source and randomize stages' steps per epoch (validation a small share of each).
Each stage first runs one epoch and times it (data loading excluded by an estimate from the
planning read), then resumes for as many more epochs as fit in its share (`SHARES`, renormalised
over the stages of the recipe still to train) of what is left of the budget. Time already spent
in earlier runs of the same checkpoint folder counts, so a run stopped after some stages
(`--stages`) and resumed with the rest shares one budget. The plan, each stage's epochs and wall
time are kept in CHECKPOINT_DIR/plan.json, so `--resume` continues the same run at the first
unfinished stage (the stages' own checkpoints replay the same batches), and go into the bundle's
metadata under `plan`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bundle import check_bundle_destination, load_bundle, save_bundle, update_bundle
from ..curriculum.params import CurriculumParams
from ..device import pick_device
from ..errors import InputError
from ..imageio import read_image
from ..store import atomic_write_json
from .budget import (MIN_EPOCH_STEPS, ROUND_TRIP_CASES, choose_grid, epoch_steps, probe, round_trip_dice,
                     validation_seconds)
from .curriculum_stage import CurriculumStage
from .datasets import check_label_channels
from .plan import epochs_for, fingerprint, make_plan
from .source import SourceConfig, train_source
from .translator import TranslatorConfig, train_translator

STAGES = ("source", "randomize", "translator", "curriculum")
# Shares of the budget, renormalised over the stages of the recipe (see `train_all`).
SHARES = {
    "source": 0.2,  # the reference learns the source labels; the transfer is the next stage's job
    "randomize": 0.45,  # carries the domain gap (brain T1->T2 raw reference 0.080, fine-tuned 0.595)
    "translator": 0.15,  # only the synthetic preview reads through it
    "curriculum": 0.2,  # adapts the randomised segmenter to the real unlabelled target images
}
# Share of the budget kept back for what follows the last epoch (metadata, the summary).
RESERVE_SHARE = 0.03
# The stages that train the segmenter (their steps are what the grid is sized by, budget.py).
SEGMENTER_STAGES = ("source", "randomize")
EPOCH_CAP = {"source": 300, "randomize": 300, "translator": 100, "curriculum": 100}
# The randomize stage's learning rate: the fine-tune measured on brain-t1-t2 (`train source
# --init-from REF --domain-randomize 0.8 --lr 1e-3`).
RANDOMIZE_LR = 1e-3


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
    return SourceConfig(
        task=data.task, labels=data.labels, colors=data.colors, spatial_dims=plan["spatial_dims"],
        spacing=plan["spacing"], roi_size=plan["roi_size"], normalization=plan["normalization"],
        input_modality=data.target_modality, output_modality=data.source_modality,
        channels=plan["channels"], strides=[2] * (len(plan["channels"]) - 1), num_res_units=1,
        # half the crops through a random intensity transfer function and foreground crops
        # centred on each label equally often: the shipped phantom recipe, fair on the target
        # before any adaptation and not blind to small labels
        intensity_remap=0.5, class_balanced=True, epochs=1, steps_per_epoch=steps, batch_size=2,
        domain_randomize=domain_randomize, lr=2e-3, seed=seed, version=version, data=data.description)


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


def recipe(randomize: float) -> list[str]:
    """The stages of the method for a run: `STAGES`, without `randomize` when its share is 0."""
    return [stage for stage in STAGES if stage != "randomize" or randomize > 0]


def stages_to_run(requested, stages: list[str], done: set) -> list[str]:
    """The stages of the recipe `stages` to train now: `requested` (default all) that are not
    `done`, each only when every earlier stage of the recipe is done or trained now."""
    requested = list(requested or stages)
    unknown = sorted(set(requested) - set(STAGES))
    if unknown:
        raise InputError(f"Unknown stage(s) {', '.join(unknown)} in --stages; the stages are {', '.join(STAGES)}.")
    if set(requested) - set(stages):
        raise InputError("--stages names randomize but --randomize is 0; drop one of the two.")
    for i, stage in enumerate(stages):
        missing = [before for before in stages[:i] if before not in requested and before not in done]
        if stage in requested and missing:
            raise InputError(f"Stage {stage} starts from the {missing[-1]} stage's bundle, which is neither "
                             "finished in the checkpoint folder nor in --stages; add it to --stages (or leave "
                             "--stages out), or run it first and continue with --resume.")
    return [stage for stage in stages if stage in requested and stage not in done]


def share(seconds: float, stage: str, stages) -> float:
    """`stage`'s part of `seconds` split among `stages` by their `SHARES`."""
    return seconds * SHARES[stage] / sum(SHARES[s] for s in stages)


def _check_options(budget_minutes, steps, domain_randomize, randomize) -> None:
    if budget_minutes <= 0:
        raise InputError(f"--budget-minutes must be positive, got {budget_minutes}.")
    if steps is not None and steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}.")
    for name, value in (("--domain-randomize", domain_randomize), ("--randomize", randomize)):
        if not 0 <= value <= 1:
            raise InputError(f"{name} is a share of the training crops, between 0 and 1; got {value}.")


def _check_apart_from_inputs(data: TaskData, outputs: dict) -> None:
    """An output folder may not be an input folder, hold one, or lie inside one: the bundle would
    replace the user's images, or be read as an image folder by the next run."""
    folders = {Path(p).resolve().parent for cases in (data.source_train, data.source_val, data.target)
               for case in cases for p in case[1:] if p is not None}
    for flag, path in outputs.items():
        path = path.resolve()
        for folder in folders:
            if path == folder or path in folder.parents or folder in path.parents:
                raise InputError(f"{flag} {path} is, holds or lies inside the input folder {folder}; "
                                 "write the bundle to a folder of its own (nothing was written).")


def copy_bundle(source: Path, out: Path, metadata: dict) -> None:
    """The bundle at `source` written to `out` (replacing one there) with `metadata` keys added."""
    bundle = load_bundle(source)
    save_bundle(out, {**bundle.metadata, **metadata},
                {name: bundle.network(name) for name in bundle.network_names})


def train_all(data: TaskData, out: str | Path, budget_minutes: float, checkpoint_dir=None,
              resume: bool = False, device: str | None = None, steps: int | None = None, seed: int = 0,
              version: str = "0.1.0", domain_randomize: float = 0.0, progress: bool = True,
              command: str | None = None, log=print, randomize: float = 0.8, stages=None):
    """Plan, train the stages of the recipe (`stages`: those to train now, default all) within
    `budget_minutes` of wall time, and return the bundle written at `out`. `steps`: optimiser steps
    per epoch of every stage (None: segmenter stages sized by their validation time, budget.py)."""
    began = time.time()
    out = Path(out)
    _check_options(budget_minutes, steps, domain_randomize, randomize)
    if not data.source_train or not data.target:
        raise InputError("train all needs labelled source images and unlabelled target images.")
    check_label_channels(data.labels)
    check_bundle_destination(out, None if resume else
                             "pass --resume to continue its training, or choose another --out")
    budget = 60.0 * budget_minutes
    checkpoints = Path(checkpoint_dir) if checkpoint_dir else out.with_name(out.name + ".ckpt")
    _check_apart_from_inputs(data, {"--out": out, "the checkpoint folder": checkpoints})
    plan_file = checkpoints / "plan.json"
    chain = recipe(randomize)
    plan = json.loads(plan_file.read_text()) if resume and plan_file.is_file() else None
    if plan is not None and not isinstance(plan.get("steps_per_epoch"), dict):
        raise InputError(f"{plan_file} was planned by an earlier version (one epoch length for every stage); "
                         "start afresh without --resume, or with another --out.")
    if plan is not None and plan.get("recipe", chain) != chain:
        raise InputError(f"{plan_file} is a run of the stages {plan['recipe']}, not {chain}; resume it with "
                         "the same --randomize, or start afresh without --resume.")
    done = {name for name, stage in (plan or {}).get("stages", {}).items() if stage.get("done")}
    to_run = stages_to_run(stages, chain, done)
    torch_device = pick_device(device)

    source_cases = data.source_train + data.source_val
    source_print, source_read = _timed_fingerprint(source_cases, seed)
    target_print, target_read = _timed_fingerprint(data.target, seed)
    if plan is not None:
        log(f"plan: resumed from {plan_file}; finished stages: {', '.join(s for s in chain if s in done) or 'none'}")
    else:
        plan = make_plan(source_print, target_print, torch_device.type)
        left = budget * (1 - RESERVE_SHARE) - (time.time() - began)
        seconds = {stage: share(left, stage, chain) for stage in chain}
        plan = fit_to_budget(plan, data, seconds, steps, seed, version, domain_randomize, randomize, device)
        plan.update(budget_minutes=budget_minutes, recipe=chain, stages={})
        checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_json(plan_file, plan)
    log(f"plan: spacing {plan['spacing']} mm, roi {plan['roi_size']}, translator crop "
        f"{plan['translator_patch']}, device {torch_device.type} ({plan['reasons']['grid']['choice']}); "
        f"steps per epoch {plan['steps_per_epoch']}; normalisation source "
        f"{plan['normalization']['source']} ({plan['reasons']['normalization_source']}), target "
        f"{plan['normalization']['target']} ({plan['reasons']['normalization_target']}); "
        f"stages now: {', '.join(to_run) or 'none (all finished)'}")
    steps = plan["steps_per_epoch"]
    spent_before = plan.get("wall_seconds", 0.0)

    def save_plan() -> None:
        plan["wall_seconds"] = round(spent_before + time.time() - began, 1)
        atomic_write_json(plan_file, plan)

    def share_of_left(stage) -> float:
        """`stage`'s share of the budget left: its share among the recipe's unfinished stages from
        it on (those a later --resume would train count too)."""
        later = [s for s in chain[chain.index(stage):] if s not in done]
        return share(budget * (1 - RESERVE_SHARE) - spent_before - (time.time() - began), stage, later)

    def stage_bundle(stage) -> Path:
        return checkpoints / stage / "bundle"

    def stage_history(stage) -> list[dict]:
        """The per-epoch history a segmenter or translator stage's bundle records."""
        kind = "translator" if stage == "translator" else "source"
        return load_bundle(stage_bundle(stage)).metadata["training"][kind]["history"]

    src_config = source_config(data, plan, steps["source"], seed, version, domain_randomize)
    source_load = 2 * source_read
    # the randomised segmenter reads raw target images; without it the translator's preview is read
    reads = "image" if "randomize" in chain else "preview"

    def segmenter_runner(stage, config):
        def run(epochs, again, deadline):
            call = time.time()
            train_source(dataclasses.replace(config, epochs=epochs), data.source_train, data.source_val,
                         stage_bundle(stage), checkpoints / stage, again, device, progress, command, stage,
                         deadline)
            trained = stage_history(stage)[-1]["seconds"]
            return max(trained, time.time() - call - source_load), source_load
        return run

    runners = {
        "source": segmenter_runner("source", src_config),
        "randomize": segmenter_runner("randomize", dataclasses.replace(
            randomize_config(src_config, randomize), init_from=str(stage_bundle("source")),
            steps_per_epoch=steps.get("randomize", steps["source"]))),
    }
    tr_config = translator_config(plan, steps["translator"], seed)
    translator_load = 2 * (source_read * len(data.source_train) / len(source_cases) + target_read)

    def run_translator(epochs, again, deadline):
        call = time.time()
        if not (again and stage_bundle("translator").is_dir()):
            copy_bundle(stage_bundle(chain[chain.index("translator") - 1]), stage_bundle("translator"), {})
        train_translator(stage_bundle("translator"), dataclasses.replace(tr_config, epochs=epochs),
                         data.source_train, data.target, data.target_val, checkpoints / "translator", again,
                         device, progress, command, deadline=deadline)
        trained = stage_history("translator")[-1]["seconds"]
        return max(trained, time.time() - call - translator_load), translator_load

    runners["translator"] = run_translator
    curriculum = CurriculumStage(
        stage_bundle("translator"), stage_bundle("curriculum"), checkpoints / "curriculum", data.target,
        data.source_train, CurriculumParams(reference_input=reads, student_input=reads, steps_per_epoch=steps["curriculum"],
                                            seed=seed), torch_device, progress, log)
    # the trainer stays in memory between the timed first epoch and the rest: nothing to reload
    runners["curriculum"] = lambda epochs, again, deadline: (curriculum.run(epochs, again, deadline), 0.0)

    for stage in to_run:
        _stage(stage, plan, save_plan, runners[stage], share_of_left(stage), resume, log)
        # the translator and the curriculum keep the randomised segmenter's input: the raw image
        extra = {"segmenter_input": reads} if stage == "translator" else {}
        plan["stages"][stage]["done"] = True
        # a stage stops at its deadline, so the epochs it trained may be fewer than planned
        plan["stages"][stage]["epochs_done"] = (curriculum.epochs_done if stage == "curriculum"
                                                else len(stage_history(stage)))
        done.add(stage)
        save_plan()
        copy_bundle(stage_bundle(stage), out, {"plan": plan, **extra})

    save_plan()
    # the bundle's plan with this run's wall time (each stage's copy has the plan as it then was)
    bundle = update_bundle(out, metadata={"plan": plan}) if to_run else load_bundle(out)
    stages = ", ".join(f"{name} {stage.get('epochs_done', stage['epochs'])} of {stage['epochs']} epochs "
                       f"({stage.get('seconds', 0) / 60:.1f} min)" for name, stage in plan["stages"].items())
    log(f"train all: bundle {out} written, {plan['wall_seconds'] / 60:.1f} min in all (budget "
        f"{budget_minutes:g} min); {stages}; metrics {bundle.metrics}")
    return bundle


def segmenter_configs(data: TaskData, plan: dict, seed: int, version: str, domain_randomize: float,
                      randomize: float) -> dict:
    """{stage: SourceConfig} of the recipe's segmenter stages on `plan`'s grid (steps per epoch not
    yet chosen)."""
    config = source_config(data, plan, MIN_EPOCH_STEPS, seed, version, domain_randomize)
    configs = {"source": config}
    if randomize > 0:
        configs["randomize"] = randomize_config(config, randomize)
    return configs


def randomize_config(source: SourceConfig, randomize: float) -> SourceConfig:
    """The randomize stage's config from the source stage's: `randomize` of its crops synthesised
    from their labels, at `RANDOMIZE_LR` (the probe and the stage train the same)."""
    return dataclasses.replace(source, domain_randomize=randomize, lr=RANDOMIZE_LR)


def fit_to_budget(plan: dict, data: TaskData, seconds: dict, steps, seed: int, version: str,
                  domain_randomize: float, randomize: float, device) -> dict:
    """`plan` on the grid the segmenter stages' `seconds` ({stage: seconds of its share}) afford, with
    each stage's steps per epoch (`steps`, or for the segmenter stages from their probed step and
    validation times), the candidates, probe timings and choices in its `reasons`."""
    def measure(candidate):
        return probe(segmenter_configs(data, candidate, seed, version, domain_randomize, randomize),
                     data.source_train, data.source_val, device)

    labels = [read_image(case[2]) for case in data.source_train[:ROUND_TRIP_CASES]]
    segmenter_seconds = {stage: seconds[stage] for stage in SEGMENTER_STAGES if stage in seconds}
    plan, record = choose_grid(plan, segmenter_seconds, measure, lambda spacing: round_trip_dice(labels, spacing))
    configs = segmenter_configs(data, plan, seed, version, domain_randomize, randomize)
    chosen, reasons = {}, {}
    for stage in seconds:
        if steps is not None:
            chosen[stage], reasons[stage] = steps, "--steps"
        elif stage in configs:
            step_s = record["probe"]["step_seconds"][stage]
            chosen[stage], reasons[stage] = epoch_steps(
                step_s, validation_seconds(record["probe"], configs[stage], len(data.source_val)), seconds[stage])
        else:
            chosen[stage], reasons[stage] = MIN_EPOCH_STEPS, "fixed (no validation pass sizes it)"
    plan["steps_per_epoch"] = chosen
    plan["reasons"] = {**plan["reasons"], "grid": record, "steps_per_epoch": reasons}
    return plan


def _stage(name, plan, save_plan, run, budget_s, resume, log) -> None:
    """Run stage `name` for the epochs that fit in `budget_s` (its first epoch timed), or for the
    epochs the plan already chose (a resumed run). `run(epochs, again, deadline)` trains up to
    `epochs` in all (`again`: continue from the stage's checkpoint; `deadline`: the time.time()
    its share ends: no runner starts an epoch it expects to end past it) and returns (seconds one epoch
    takes, seconds a further call spends loading before it trains)."""
    began = time.time()
    deadline = began + budget_s
    chosen = plan["stages"].get(name)
    if chosen is not None:
        run(chosen["epochs"], True, deadline)
    else:
        epoch_s, reload_s = run(1, resume, None)
        wall = time.time() - began
        more = epochs_for(budget_s - wall - reload_s, epoch_s, EPOCH_CAP[name] - 1)
        chosen = {"epochs": 1 + more, "epoch_seconds": round(epoch_s, 3), "budget_seconds": round(budget_s, 1)}
        plan["stages"][name] = chosen
        save_plan()
        log(f"{name}: one epoch takes about {epoch_s:.1f} s; {chosen['epochs']} epochs of "
            f"{plan['steps_per_epoch'][name]} steps fit in its {budget_s / 60:.1f} min")
        if chosen["epochs"] > 1:
            run(chosen["epochs"], True, deadline)
    chosen["seconds"] = round(chosen.get("seconds", 0.0) + time.time() - began, 1)
    save_plan()
