"""Safe promotion: a fine-tuned student becomes the current model only when it is not worse than
the current model on held-out accepted cases (issue 6: by more than 0.005 Dice), both scored as
the engine delivers them (after the bundle's fit to the image): on the phantom-ct-mr target test
split the curriculum's student beats the shipped model as networks (0.640 against 0.526 through
the translator) but not as delivered (0.828 against 0.867; benchmarks/results/curriculum.json)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..bundle import load_bundle
from ..registry import ModelRegistry
from .trainer import CurriculumTrainer, segmenter_input


def not_worse(student_dice: float, current_dice: float, tolerance: float) -> bool:
    return student_dice >= current_dice - tolerance


def promote_if_not_worse(trainer: CurriculumTrainer, registry: ModelRegistry, candidate: Path,
                         cache: dict | None = None) -> dict:
    """Evaluate student and current model on the held-out accepted cases; publish the student
    when it passes. Returns what was decided and why. `cache` keeps the current model's Dice per
    version so it is computed once."""
    cache = {} if cache is None else cache
    heldout = trainer.heldout_accepted()
    result = {"epoch": trainer.epoch, "heldout_cases": len(heldout), "published": None}
    if not heldout:
        result["reason"] = "no held-out accepted case yet (the 2nd accepted case is the first)"
        return result
    current_version = registry.current_version()
    key = (current_version, tuple(v.key for v in heldout))
    if key not in cache:
        current = load_bundle(registry.current_path())
        if current.spacing != trainer.bundle.spacing or current.labels != trainer.bundle.labels:
            result["reason"] = f"current model {current_version} has another grid or labels"
            return result
        cache[key] = trainer.mean_dice(current.network("segmenter"), heldout, segmenter_input(current),
                                       delivered=True)
    current_dice = cache[key]
    student_dice = trainer.mean_dice(trainer.student, heldout, delivered=True)
    tolerance = trainer.params.promotion_tolerance
    result.update(current_version=current_version, current_dice=current_dice,
                  student_dice=student_dice, tolerance=tolerance)
    if not not_worse(student_dice, current_dice, tolerance):
        result["reason"] = "student worse than the current model on held-out accepted cases"
        return result
    trainer.export(candidate)
    try:
        result["published"] = registry.publish(candidate, {
            "heldout_dice": student_dice, "previous_dice": current_dice,
            "previous_version": current_version, "heldout_cases": len(heldout), "epoch": trainer.epoch,
        })
    finally:
        shutil.rmtree(candidate, ignore_errors=True)
    cache[(result["published"], key[1])] = student_dice
    return result
