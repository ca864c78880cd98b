"""The task registry, in-memory cases (`generate_case`) and the on-disk task writer (`make_task`).

Every case is a subject drawn from its own seed. Source and target cases are different subjects
(unpaired), each domain split 60/20/20 into train/val/test. Target labels and the paired source
rendering (the same target subject rendered in the source modality on the target grid) are written
for val and test only: they exist for evaluation, never for training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from . import abdomen, icbm152, brain, render_brain, render_ct_mr, render_xray, thorax

DOMAINS = ("source", "target")
SPLITS = ("train", "val", "test")


@dataclass
class Case:
    image: sitk.Image
    label: sitk.Image
    paired_source: sitk.Image | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    spatial_dims: int
    labels: dict[str, int]
    colors: dict[str, list[int]]
    source_modality: str
    target_modality: str
    render: Callable  # (seed, domain, with_paired, **overrides) -> (image, label, paired or None)
    description: str


TASKS = {
    "phantom-ct-mr": TaskSpec(
        "phantom-ct-mr", 3, abdomen.LABELS, abdomen.COLORS, "CT", "MR", render_ct_mr.render_case,
        "3D abdomen: CT in HU (source) -> oblique T2-like MR with bias field and Rician noise (target)"),
    "xray-drr": TaskSpec(
        "xray-drr", 2, thorax.LABELS, thorax.COLORS, "DRR", "XR", render_xray.render_case,
        "2D chest: DRRs of CT phantoms (source) -> X-ray-like radiographs of other phantoms (target)"),
    "brain-t1-t2": TaskSpec(
        "brain-t1-t2", 3, brain.LABELS, brain.COLORS, "T1", "T2", render_brain.render_case,
        "3D brain from the real ICBM152 2009c T1 and T2 templates, each subject under its own affine "
        "and smooth deformation: axial 1.5 mm T1 (source) -> coronal/oblique T2 with 4-6 mm slices, "
        "bias field and Rician noise (target); labels from the template's tissue maps and its "
        "Harvard-Oxford based parcellation (FSL licence, non-commercial use)"),
}
# Tasks rendered from the ICBM152 templates (`templates`: the archive or folder a user names).
TEMPLATE_TASKS = ("brain-t1-t2",)


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def generate_case(name: str, seed: int, domain: str, with_paired: bool = False, templates=None,
                  **overrides) -> Case:
    """One subject (from `seed`) rendered in `domain` ("source" or "target"), in memory.

    `with_paired` adds, for the target domain, the same subject rendered in the source modality on
    the target grid. phantom-ct-mr accepts `size` and/or `spacing` (x, y, z) for its target grid.
    `templates` (brain-t1-t2 only): the ICBM152 archive or folder to read instead of the cache."""
    spec = task_spec(name)
    _check_seed(seed)
    if domain not in DOMAINS:
        raise InputError(f"unknown domain {domain!r}; use 'source' or 'target'")
    if overrides and (name != "phantom-ct-mr" or domain != "target" or set(overrides) - {"size", "spacing"}):
        raise InputError(f"grid overrides {sorted(overrides)} are only supported for the phantom-ct-mr target "
                         "domain (size, spacing)")
    if templates is not None:
        if name not in TEMPLATE_TASKS:
            raise InputError(f"--templates is only used by {', '.join(TEMPLATE_TASKS)}, not {name}")
        overrides["templates"] = templates
    image, label, paired = spec.render(int(seed), domain, with_paired and domain == "target", **overrides)
    return Case(image, label, paired)


def _check_seed(seed) -> None:
    if int(seed) < 0:
        raise InputError(f"seed {seed} is negative; use 0 or a positive integer")


def split_counts(n: int) -> dict[str, int]:
    """60/20/20, at least one case in each split."""
    if n < 3:
        raise InputError(f"--n {n} is too small: each domain needs at least 3 cases (one per split)")
    val = max(1, int(round(0.2 * n)))
    test = max(1, int(round(0.2 * n)))
    return {"train": n - val - test, "val": val, "test": test}


def case_seed(seed: int, domain: str, index: int) -> int:
    """Independent subject seed per (task seed, domain, index): domains never share a subject."""
    return int(np.random.SeedSequence([seed, DOMAINS.index(domain), index]).generate_state(1)[0])


def plan_task(n: int, seed: int) -> dict[str, dict[str, list[tuple[str, int]]]]:
    """{domain: {split: [(case id, subject seed), ...]}} for a task of n cases per domain."""
    counts = split_counts(n)
    _check_seed(seed)
    plan = {}
    for domain in DOMAINS:
        order = np.random.default_rng([seed, 7, DOMAINS.index(domain)]).permutation(n)
        plan[domain] = {}
        start = 0
        for split in SPLITS:
            ids = sorted(int(i) for i in order[start:start + counts[split]])
            plan[domain][split] = [(f"{domain}_{i:03d}", case_seed(seed, domain, i)) for i in ids]
            start += counts[split]
    return plan


def make_task(name: str, n: int, seed: int, out, progress: Callable | None = None, templates=None) -> Path:
    """Write task `name` (n cases per domain) under `out` in the layout of docs/ARCHITECTURE.md.

    `progress(done, total, case_id)` is called after each case (the CLI drives a progress bar).
    Template tasks fetch (or read `templates`) and check the templates before writing anything,
    and copy their licence notice to `out/NOTICE.txt`."""
    spec = task_spec(name)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} is not empty; choose a new folder or remove it first")
    plan = plan_task(n, seed)
    if name in TEMPLATE_TASKS:
        templates = str(icbm152.locate(templates))
        out.mkdir(parents=True, exist_ok=True)
        (out / "NOTICE.txt").write_text(icbm152.NOTICE)
    elif templates is not None:
        raise InputError(f"--templates is only used by {', '.join(TEMPLATE_TASKS)}, not {name}")
    total = 2 * n
    done = 0
    for domain in DOMAINS:
        for split in SPLITS:
            for case_id, subject_seed in plan[domain][split]:
                evaluation = domain == "target" and split != "train"
                case = generate_case(name, subject_seed, domain, with_paired=evaluation, templates=templates)
                _write(case.image, out / domain / "images" / f"{case_id}.nii.gz")
                if domain == "source" or evaluation:
                    _write(case.label, out / domain / "labels" / f"{case_id}.nii.gz")
                if evaluation:
                    _write(case.paired_source, out / domain / "paired_source" / f"{case_id}.nii.gz")
                done += 1
                if progress:
                    progress(done, total, case_id)
    meta = {
        "task": name, "seed": int(seed), "n": int(n), "spatial_dims": spec.spatial_dims,
        "labels": spec.labels, "colors": spec.colors,
        "source_modality": spec.source_modality, "target_modality": spec.target_modality,
        "description": spec.description,
        "splits": {split: [cid for domain in DOMAINS for cid, _ in plan[domain][split]] for split in SPLITS},
        "domain_splits": {d: {s: [cid for cid, _ in plan[d][s]] for s in SPLITS} for d in DOMAINS},
        "subject_seeds": {cid: sd for d in DOMAINS for s in SPLITS for cid, sd in plan[d][s]},
    }
    # task.json last: its presence marks a complete task folder.
    (out / "task.json").write_text(json.dumps(meta, indent=1))
    return out


def _write(image: sitk.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
