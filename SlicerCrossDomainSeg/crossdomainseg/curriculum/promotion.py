"""Safe promotion: a fine-tuned student becomes the current model only when it scores at least as
well as every version the registry keeps (the current one, the best, the rollback target, the
recent ones, the shipped one) on the held-out accepted cases, plus `promotion_margin`. Comparing
with the current version alone let regressions pile up (each step within a tolerance of the
last). Scores are what the engine delivers (after the bundle's fit to the image): on the
phantom-ct-mr target test split the curriculum's student beats the shipped model as networks
(0.640 against 0.526 through the translator) but not as delivered (0.828 against 0.867;
benchmarks/results/curriculum.json).

Drafts accepted unchanged: a held-out case whose label is the draft of version V, accepted with
no voxel edited (the store's `edited_voxels` 0), says only that V agrees with itself. It is left
out when the student is compared with V (and when V's own score is taken), and counts for every
other version. Cases whose draft is unknown (`edited_voxels` None: the caller gave none) count
as corrected. A version with no held-out case left to compare on blocks promotion: there is no
evidence that the student does better than it.

The published bundle carries the current version's prompt network, which has its own gate
(prompt_promotion.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..bundle import load_bundle
from ..registry import ModelRegistry
from .prompt_promotion import carry_current_prompt
from .trainer import CurriculumTrainer, Volume, segmenter_input


def version_names(registry: ModelRegistry, version: str) -> set[str]:
    """The names a case's `model_version` may give `version` by: its registry name, and for the
    registry's first version also the name of the bundle it was made from."""
    names = {version}
    if version == registry.versions()[0]:
        parent = load_bundle(registry.versions_dir / version).metadata.get("parent_version")
        if parent:
            names.add(str(parent))
    return names


def fair_cases(heldout: list[Volume], names: set[str]) -> list[int]:
    """Indices of the held-out cases that are not an unchanged draft of the version named `names`."""
    return [i for i, v in enumerate(heldout) if v.unchanged_draft_of not in names]


def promote_if_best(trainer: CurriculumTrainer, registry: ModelRegistry, candidate: Path,
                    cache: dict | None = None) -> dict:
    """Score the student and every kept version on the held-out accepted cases; publish the
    student when it is not below any of them. Returns what was decided and why. `cache` keeps each
    version's Dice per case, so a version is scored once per case."""
    cache = {} if cache is None else cache
    heldout = trainer.heldout_accepted()
    result = {"epoch": trainer.epoch, "heldout_cases": len(heldout), "published": None}
    if not heldout:
        result["reason"] = "no held-out accepted case yet (the 2nd accepted case is the first)"
        return result
    student = trainer.case_dice(trainer.student, heldout, delivered=True)
    margin = trainer.params.promotion_margin
    scores, blocked = {}, []
    for version in registry.kept_versions():
        model = load_bundle(registry.versions_dir / version)
        if model.spacing != trainer.bundle.spacing or model.labels != trainer.bundle.labels:
            scores[version] = {"skipped": "another grid or labels"}
            continue
        fair = fair_cases(heldout, version_names(registry, version))
        if not fair:
            blocked.append(version)
            continue
        missing = [v for v in heldout if (version, v.key) not in cache]
        if missing:
            dice = trainer.case_dice(model.network("segmenter"), missing, segmenter_input(model), delivered=True)
            cache.update({(version, v.key): d for v, d in zip(missing, dice)})
        own = float(np.mean([cache[(version, heldout[i].key)] for i in fair]))
        theirs = float(np.mean([student[i] for i in fair]))
        scores[version] = {"dice": own, "student_dice": theirs, "cases": len(fair)}
    compared = {v: s for v, s in scores.items() if "dice" in s}
    result.update(versions=scores, student_dice=float(np.mean(student)), margin=margin)
    if compared:
        best = max(compared, key=lambda v: compared[v]["dice"])
        result["best_version"] = best
    if blocked:
        result["reason"] = (f"every held-out case is an unchanged draft of {', '.join(blocked)}: nothing to "
                            "compare the student with them on")
    elif not compared:
        result["reason"] = "no kept version has this model's grid and labels"
    else:
        worse = [v for v, s in compared.items() if s["student_dice"] < s["dice"] + margin]
        if worse:
            result["reason"] = f"student below {', '.join(worse)} on held-out accepted cases"
    if "reason" in result:
        if compared and registry.best_version() != result["best_version"]:
            registry.set_best(result["best_version"])
        return result
    trainer.export(candidate)
    try:
        carry_current_prompt(candidate, registry)
        result["published"] = registry.publish(candidate, {
            "heldout_dice": result["student_dice"], "compared": scores, "heldout_cases": len(heldout),
            "epoch": trainer.epoch,
        }, best=True, protect=(trainer.bundle.version,))
    finally:
        shutil.rmtree(candidate, ignore_errors=True)
    cache.update({(result["published"], v.key): d for v, d in zip(heldout, student)})
    return result
