"""Settings a bundle takes from its SOURCE validation split, never from target labels (the
protocol of METHOD.md section 8): its post-processing steps and its uncertainty hint bands.

`SourceValidation` reads a task folder's labelled source validation cases and nothing else: it
only ever builds paths under `<task>/source/`, so the choosers below cannot see a target label.
Each case is segmented once by the engine in "source" mode (raw label and U); the choosers work on
those results.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .metrics import dice
from .postprocess import apply_steps

# Candidate steps, in the order they are tried; the alternatives of one group compete for one
# place in the list. Each is kept only where it raises mean source validation Dice by MIN_GAIN.
CANDIDATES = (
    ({"step": "remove_islands", "min_fraction": 0.2},),
)
MIN_GAIN = 0.002
HINT_QUANTILES = (50, 90)  # U percentiles of the source validation images: confident / unsure


@dataclass
class SourceCase:
    """One source validation case segmented by the engine: arrays (z, y, x) on the image's grid."""

    case_id: str
    image: np.ndarray
    spacing: tuple
    raw_label: np.ndarray
    truth: np.ndarray
    U: float


class SourceValidation:
    """The labelled source validation cases of a task folder (crossdomainseg data make layout)."""

    def __init__(self, task_dir):
        from .data import TaskDir

        self.task = TaskDir(task_dir)
        self.folder = Path(task_dir) / "source"

    def paths(self) -> list[tuple[str, Path, Path]]:
        ids = self.task.meta.get("domain_splits", {}).get("source", {}).get("val", [])
        out = [(case_id, self.folder / "images" / f"{case_id}.nii.gz", self.folder / "labels" / f"{case_id}.nii.gz")
               for case_id in ids]
        missing = [str(p) for _, image, label in out for p in (image, label) if not p.is_file()]
        if not out or missing:
            raise InputError(f"{self.task.path} needs labelled source validation cases to choose settings "
                             f"on ({'missing: ' + ', '.join(missing[:3]) if missing else 'its source val split is empty'}); "
                             "regenerate the task folder or give one with a source validation split.")
        return out

    def segment(self, engine, log=print) -> list[SourceCase]:
        """Each case through `engine` (mode "source"), with U."""
        from .imageio import read_image

        if engine.mode != "source":
            raise InputError("Source validation cases must be segmented by an engine in mode 'source'.")
        cases = []
        for case_id, image_path, label_path in self.paths():
            image, truth = read_image(image_path), read_image(label_path)
            result = engine.segment(image, preview=False, uncertainty=True)
            cases.append(SourceCase(case_id, sitk.GetArrayFromImage(image).astype(np.float32),
                                    tuple(reversed(image.GetSpacing())), sitk.GetArrayFromImage(result.raw_label),
                                    sitk.GetArrayFromImage(truth), float(result.U)))
            log(f"{case_id}: U {result.U:.4f}")
        return cases


def mean_dice(cases: list[SourceCase], steps: list[dict], labels: list[int]) -> float:
    return float(np.mean([dice(apply_steps(steps, c.raw_label, c.image, c.spacing), c.truth, labels)
                          for c in cases]))


def choose_steps(cases: list[SourceCase], labels: list[int], candidates=CANDIDATES,
                 min_gain: float = MIN_GAIN) -> tuple[list[dict], dict]:
    """Greedy: each group of `candidates` in turn adds its best alternative when that raises the
    mean Dice of `cases` by at least `min_gain`. Returns the steps and a record of every score."""
    chosen: list[dict] = []
    base = mean_dice(cases, chosen, labels)
    record = {"raw_dice": round(base, 4), "tried": []}
    for group in candidates:
        scores = [(mean_dice(cases, chosen + [dict(step)], labels), dict(step)) for step in group]
        record["tried"] += [{"after": list(chosen), "step": step, "dice": round(score, 4)} for score, step in scores]
        best, step = max(scores, key=lambda s: s[0])
        if best - base >= min_gain:
            chosen.append(step)
            base = best
    record["delivered_dice"] = round(base, 4)
    return chosen, record


def hint_bands(cases: list[SourceCase]) -> dict:
    """U percentiles (HINT_QUANTILES) of the source validation images: below the first the model
    is as sure as on a typical image it knows, above the second less sure than on nine in ten."""
    values = np.array([c.U for c in cases])
    confident, unsure = (round(float(np.percentile(values, q)), 5) for q in HINT_QUANTILES)
    return {"confident_up_to": confident, "unsure_above": unsure, "quantiles": list(HINT_QUANTILES),
            "source_val_U": [round(float(v), 5) for v in values]}
