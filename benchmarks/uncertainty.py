"""Uncertainty quality on the target test split: does the heatmap find the voxel errors (AUROC), are
the probabilities calibrated (ECE), and does the per-image U rank the bad cases (Spearman of U
against per-case Dice, which must be negative)?

    python benchmarks/uncertainty.py [--task-dir DIR] [--bundle B] [--extra 0]

Each case is segmented once under every defined TTA transform; each configuration (transform
ordering, count n, heatmap kind) is then scored from those same predictions on the input grid
where the reference labels live. Orderings: `default` (uncertainty.all_transforms, what the engine
runs: its first n) and `noflip` (the same without mirror flips, which mirror the anatomy).
Voxel figures are pooled over all voxels of all cases (`error_auroc`, `ece`) and, as a harder check
not inflated by the easy far background, over voxels within 10 mm of the reference or predicted
foreground (`*_near`). `--extra K` adds K freshly generated target cases (other subjects, seeds
70000+) to a second, larger Spearman estimate.
Writes benchmarks/results/uncertainty.json: the engine's default (n, heatmap kind) as headline
figures, every configuration under `by_config`.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import SimpleITK as sitk
from common import RESULTS, task_dir, write_result

NEAR_MM = 10.0
HEADLINE_TASK = "xray-drr"  # its figures are uncertainty.json's top-level keys; others go to per_task


def previous_per_task() -> dict:
    path = RESULTS / "uncertainty.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    return {"per_task": previous["per_task"]} if "per_task" in previous else {}
COUNTS = (1, 2, 3, 4, 6, 8)


def orderings(spatial_dims: int) -> dict[str, list]:
    from crossdomainseg import uncertainty as unc

    everything = unc.all_transforms(spatial_dims)
    return {"default": everything, "noflip": [t for t in everything if not isinstance(t, unc.Flip)]}


def score_case(engine, image, label_ref: np.ndarray, labels: list[int]) -> dict:
    """Per (ordering, n): error/near/confidence arrays, U and Dice; per kind: the heatmap."""
    import torch
    from scipy import ndimage

    from crossdomainseg import metrics
    from crossdomainseg import uncertainty as unc
    from crossdomainseg.engine import to_input_grid

    sets = orderings(engine.bundle.spatial_dims)
    everything = sets["default"]
    checked, reference, predictions = engine.tta_predictions(image, everything)
    by_name = {t.name: torch.from_numpy(p)[None] for t, p in zip(everything, predictions)}
    spacing_zyx = np.asarray(checked.GetSpacing())[::-1]
    out = {}
    for order, transforms in sets.items():
        for n in (c for c in COUNTS if c <= len(transforms)):
            tensors = [by_name[t.name] for t in transforms[:n]]
            mean = torch.stack(tensors).mean(0)[0].numpy()
            probs = sitk.GetArrayFromImage(to_input_grid(np.moveaxis(mean, 0, -1), reference, checked, vector=True))
            pred = probs.argmax(-1)
            error = pred != label_ref
            foreground = (pred > 0) | (label_ref > 0)
            near = ndimage.distance_transform_edt(~foreground, sampling=spacing_zyx) <= NEAR_MM
            entry = {"error": error.ravel(), "near": near.ravel(),
                     "confidence": probs.max(-1).ravel().astype(np.float32),
                     "U": float(unc.image_uncertainty(tensors)[0]),
                     "dice": metrics.dice(pred, label_ref, labels=labels), "heat": {}}
            for kind in unc.HEATMAP_KINDS:
                heat = unc.heatmap(tensors, kind)[0, 0].numpy()
                entry["heat"][kind] = sitk.GetArrayFromImage(to_input_grid(heat, reference, checked)).ravel()
            out[(order, n)] = entry
    return out


def summarize(slots: list[dict], extra: list[dict], kind: str) -> dict:
    from crossdomainseg import metrics

    heat = np.concatenate([s["heat"][kind] for s in slots])
    error = np.concatenate([s["error"] for s in slots])
    near = np.concatenate([s["near"] for s in slots])
    conf = np.concatenate([s["confidence"] for s in slots])
    u, dice = [s["U"] for s in slots], [s["dice"] for s in slots]
    entry = {
        "error_auroc": round(metrics.auroc(heat, error), 4),
        "error_auroc_near": round(metrics.auroc(heat[near], error[near]), 4),
        "ece": round(metrics.ece(conf, ~error), 4),
        "ece_near": round(metrics.ece(conf[near], ~error[near]), 4),
        "u_dice_spearman": round(metrics.spearman(u, dice), 4),
    }
    if extra:
        u_all = u + [e["U"] for e in extra]
        d_all = dice + [e["dice"] for e in extra]
        entry["u_dice_spearman_with_extra"] = round(metrics.spearman(u_all, d_all), 4)
        entry["n_cases_with_extra"] = len(u_all)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="xray-drr", choices=("phantom-ct-mr", "xray-drr", "brain-t1-t2"))
    parser.add_argument("--task-dir", default=None, help="task folder (default: generated like the bundles' training data)")
    parser.add_argument("--bundle", help="bundle folder (default: the shipped bundle of the task)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--extra", type=int, default=0, help="extra generated target cases for Spearman")
    parser.add_argument("--mode", default="tdgan", choices=("tdgan", "vanilla"))
    parser.add_argument("--limit", type=int, help="at most this many split cases (quick checks)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from crossdomainseg.data import generate_case
    from crossdomainseg.device import configure
    from crossdomainseg.engine import Engine
    from crossdomainseg.imageio import read_image
    from crossdomainseg.resources import shipped_bundle
    from crossdomainseg.uncertainty import HEATMAP_KINDS

    threads = configure(args.threads)
    task = task_dir(args.task, args.task_dir)
    bundle = args.bundle or shipped_bundle(task.name)
    engine = Engine(bundle, threads=threads, mode=args.mode)
    labels = [v for v in task.labels.values() if v != 0]

    def cases():
        for cid, image, label in list(task.cases(args.split, "target"))[: args.limit]:
            yield cid, read_image(image), read_image(label), False
        for i in range(args.extra):
            case = generate_case(task.name, 70000 + i, "target")
            yield f"extra_{i:03d}", case.image, case.label, True

    test_slots: dict = {}
    extra_slots: dict = {}
    per_case = []
    default_key = ("default", engine.tta_n)
    for cid, image, label, is_extra in cases():
        scored = score_case(engine, image, sitk.GetArrayFromImage(label), labels)
        for key, entry in scored.items():
            if is_extra:  # only U and Dice are kept for these
                extra_slots.setdefault(key, []).append({"U": entry["U"], "dice": entry["dice"]})
            else:
                test_slots.setdefault(key, []).append(entry)
        head = scored[default_key]
        per_case.append({"case": cid, "dice": round(head["dice"], 4), "U": round(head["U"], 4),
                         "dice_n1": round(scored[("default", 1)]["dice"], 4)})
        print(f"{cid}: Dice {head['dice']:.3f} (n=1: {per_case[-1]['dice_n1']:.3f})  U {head['U']:.4f}",
              flush=True)

    by_config = {}
    for (order, n), slots in sorted(test_slots.items()):
        for kind in HEATMAP_KINDS:
            by_config[f"{order}_n{n}_{kind}"] = summarize(slots, extra_slots.get((order, n), []), kind)
    headline = by_config[f"default_n{engine.tta_n}_{engine.heatmap_kind}"]
    test_cases = [c for c in per_case if not c["case"].startswith("extra_")]
    payload = {
        "task": task.name, "split": args.split, "n_cases": len(test_cases), "bundle": str(bundle),
        "model_version": engine.model_version, "mode": engine.mode,
        "tta_n": engine.tta_n, "heatmap": engine.heatmap_kind,
        "transforms": [t.name for t in orderings(engine.bundle.spatial_dims)["default"][: engine.tta_n]],
        **headline,
        "mean_dice": round(float(np.mean([c["dice"] for c in test_cases])), 4),
        "near_mm": NEAR_MM, "per_case": per_case, "by_config": by_config,
    }
    if task.name == HEADLINE_TASK:
        write_result("uncertainty", {**previous_per_task(), **payload}, threads)
    else:  # other tasks go under per_task, the headline task's figures are kept
        merged = json.loads((RESULTS / "uncertainty.json").read_text()) if (RESULTS / "uncertainty.json").exists() else {}
        merged.setdefault("per_task", {})[task.name] = {"command": " ".join(sys.argv), **payload}
        write_result("uncertainty", {k: v for k, v in merged.items() if k not in ("machine", "date", "command")},
                     threads)


if __name__ == "__main__":
    main()
