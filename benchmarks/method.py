"""Method benchmark: every adaptation method on a task's target test split, under the protocol of
METHOD.md section 8 (docs/protocol.md): no choice is made with target labels, which only report.

Rows, each {dice, hd95, assd, dice_per_label, delivered_dice, delivered_dice_per_label, train_s}:
- `vanilla`: the shipped bundle's reference segmenter on the target images directly;
- `tdgan`: the same through the shipped translator (the synthetic source image);
- `domain_randomized`: the same network and budget trained on the source labels with the
  `train source` domain-randomisation option (when this checkout has it);
- `supervised`: the same network and budget trained on ALL target training labels (the upper
  bound). Those labels are regenerated in memory from the task's subject seeds and written only to
  a folder under --work (git-ignored build/), never shipped.
`dice`, `hd95`, `assd` are the raw networks' (argmax on the working grid, resampled to the input's
grid); `delivered_*` are the engine's output with the bundle's default post-processing.
The reference rows are trained here (once, reused) with the shipped bundle's own source config.

  python benchmarks/method.py --task brain-t1-t2 [--threads 2] [--train-only ROW] [--rows ROW ...]

Results merge into benchmarks/results/method.json per task and row (other tasks' entries, and
the rows not in --rows, are kept).
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from common import DATA_ROOT, RESULTS, ROOT, task_dir, write_result

from crossdomainseg import metrics
from crossdomainseg.bundle import load_bundle
from crossdomainseg.data import generate_case
from crossdomainseg.device import configure, pick_device
from crossdomainseg.engine import Engine, bundle_mode
from crossdomainseg.imageio import read_image
from crossdomainseg.resources import shipped_bundle
from crossdomainseg.training.evaluate import to_working_array, working_grid
from crossdomainseg.training.loops import predict_probabilities, translate
from crossdomainseg.training.source import SourceConfig, train_source
from crossdomainseg.geometry import resample_to_reference

WORK = ROOT / "build" / "method"
PROTOCOL = {
    "target_labels_for_choices": False,
    "supervised_same_budget": True,
    # What settings were chosen on: the reference's best epoch on the source validation split;
    # the translator's options and the post-processing defaults as fixed in
    # scripts/train_default_bundles.sh before any target label was read.
    "tuned_on": ["source validation split (best epoch)", "scripts/train_default_bundles.sh options"],
}
ROWS = ("vanilla", "tdgan", "domain_randomized", "supervised")
DR_FIELD = "domain_randomize"  # `train source --domain-randomize 1`: synthetic crops only


def reference_config(bundle, **changes) -> SourceConfig:
    recorded = dict(recipe_config(bundle))
    known = {f.name for f in dataclasses.fields(SourceConfig)}
    return SourceConfig(**{**{k: v for k, v in recorded.items() if k in known},
                           "init_from": "", DR_FIELD: 0.0, **changes})


def supervised_cases(data, folder: Path) -> tuple[list, list]:
    """(train, val) labelled target cases; the train labels regenerated from the subject seeds."""
    seeds = json.loads((data.path / "task.json").read_text())["subject_seeds"]
    train = []
    for case_id, image_path, _ in data.cases("train", "target"):
        label_path = folder / f"{case_id}_label.nii.gz"
        if not label_path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            case = generate_case(data.name, seeds[case_id], "target")
            if not np.array_equal(sitk.GetArrayFromImage(case.image), sitk.GetArrayFromImage(read_image(image_path))):
                raise RuntimeError(f"{case_id}: regenerated image differs from the task's; stale task folder?")
            sitk.WriteImage(case.label, str(label_path), True)
        train.append((case_id, image_path, label_path))
    val = [c for c in data.cases("val", "target") if c[2] is not None]
    return train, val


def budget_steps(bundle) -> int:
    """Training steps behind a bundle's segmenter (its own and those of the bundle it started from)."""
    training = bundle.metadata["training"]
    config = training["source"]["config"]
    return int(training.get("budget_steps", config["epochs"] * config["steps_per_epoch"]))


def recipe_config(bundle) -> dict:
    """The source recipe at the start of `bundle`'s fine-tuning chain (metadata training.start):
    the rows train from scratch with it (no fine-tuning, no domain randomisation unless asked)."""
    training = bundle.metadata["training"]
    return (training.get("start") or training["source"])["config"]


def budget_changes(bundle, steps: int) -> dict:
    """Epochs and steps per epoch giving `steps` steps with the bundle's steps per epoch."""
    per_epoch = bundle.metadata["training"]["source"]["config"]["steps_per_epoch"]
    epochs = max(1, round(steps / per_epoch))
    return {"epochs": epochs, "steps_per_epoch": int(round(steps / epochs))}


def train_row(row: str, data, bundle, device, steps: int | None = None) -> Path:
    """The reference bundle of `row` under WORK (trained once, then reused; a run stopped
    part-way resumes from its checkpoint), with `steps` training steps (default: the bundle's)."""
    budget = budget_changes(bundle, steps) if steps else {}
    out = WORK / data.name / (row if not steps else f"{row}-{steps}")
    if (out / "configs" / "metadata.json").exists():
        source = load_bundle(out).metadata["training"]["source"]
        if len(source["history"]) >= source["config"]["epochs"]:
            return out
    if row == "supervised":
        train, val = supervised_cases(data, WORK / data.name / "supervised-labels")
        # trained on target images, so normalised as the target is (the rows are scored that way)
        target_norm = recipe_config(bundle)["normalization"]["target"]
        config = reference_config(bundle, version=f"{bundle.version}-supervised", **budget,
                                  normalization={"source": target_norm, "target": target_norm},
                                  data=f"{len(train)} target training cases with their labels (upper bound)")
    else:
        train = list(data.cases("train", "source"))
        val = list(data.cases("val", "source"))
        config = reference_config(bundle, version=f"{bundle.version}-dr", **{DR_FIELD: 1.0, **budget})
    resume = out.with_name(out.name + ".ckpt").exists()
    train_source(config, train, val, out, None, resume, device, True, f"benchmarks/method.py ({row})")
    return out


def train_seconds(bundle) -> float:
    training = bundle.metadata["training"]
    return float(sum(e["seconds"] for stage in ("source", "translator")
                     for e in (training.get(stage) or {}).get("history", [])))


def raw_label(bundle, image, segmenter, generator, device, domain="target") -> sitk.Image:
    """The raw network's label (argmax on the working grid) on the input's grid."""
    reference = working_grid(bundle, image)
    array = bundle.normalize(to_working_array(bundle, image, reference), domain)
    if generator is not None:
        array = translate(generator, array, bundle.roi_size, device)
    label = predict_probabilities(segmenter, array, bundle.roi_size, device).argmax(0).astype(np.uint8)
    label_image = sitk.GetImageFromArray(label[None] if bundle.spatial_dims == 2 else label)
    label_image.CopyInformation(reference)
    return resample_to_reference(label_image, image, sitk.sitkNearestNeighbor, 0)


def score_row(bundle_path: Path, mode: str, cases, device) -> dict:
    bundle = load_bundle(bundle_path)
    mode = bundle_mode(bundle) if mode == "auto" else mode
    labels = {n: v for n, v in bundle.labels.items() if v}
    segmenter = bundle.network("segmenter", device)
    generator = bundle.network("generator", device) if mode == "tdgan" else None
    engine = Engine(bundle_path, device=device, mode=mode)
    raw, delivered = [], []
    for _, image_path, label_path in cases:
        image, truth = read_image(image_path), read_image(label_path)
        pred = raw_label(bundle, image, segmenter, generator, device)
        out = engine.segment(image, preview=False, uncertainty=False).label
        raw.append({"dice": metrics.dice(pred, truth, list(labels.values())),
                    "hd95": metrics.hd95(pred, truth, labels=list(labels.values())),
                    "assd": metrics.assd(pred, truth, labels=list(labels.values())),
                    "per_label": metrics.dice_per_label(pred, truth, list(labels.values()))})
        delivered.append({"dice": metrics.dice(out, truth, list(labels.values())),
                          "per_label": metrics.dice_per_label(out, truth, list(labels.values()))})

    def per_label(rows):
        return {n: round(float(np.mean([r["per_label"][v] for r in rows])), 4) for n, v in labels.items()}

    return {"dice": round(float(np.mean([r["dice"] for r in raw])), 4),
            "budget_steps": budget_steps(bundle),
            "hd95": round(float(np.mean([r["hd95"] for r in raw])), 2),
            "assd": round(float(np.mean([r["assd"] for r in raw])), 2),
            "dice_per_label": per_label(raw),
            "delivered_dice": round(float(np.mean([r["dice"] for r in delivered])), 4),
            "delivered_dice_per_label": per_label(delivered),
            "train_s": round(train_seconds(bundle), 1), "bundle_version": bundle.version,
            "n_cases": len(raw)}


def source_dice(bundle_path: Path, cases, device) -> float:
    bundle = load_bundle(bundle_path)
    segmenter = bundle.network("segmenter", device)
    labels = [v for v in bundle.labels.values() if v]
    return round(float(np.mean([metrics.dice(raw_label(bundle, read_image(image), segmenter, None, device, "source"),
                                             read_image(label), labels) for _, image, label in cases])), 4)


def dr_available() -> bool:
    return DR_FIELD in {f.name for f in dataclasses.fields(SourceConfig)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="brain-t1-t2")
    parser.add_argument("--data-root", default=str(DATA_ROOT))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-only", choices=("supervised", "domain_randomized"),
                        help="train that reference row's network and stop (rows train in parallel)")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=ROWS, help="rows to score")
    parser.add_argument("--bundle", help="the reference bundle (default: the task's shipped bundle); "
                                         "its training budget is the supervised and domain-randomised rows'")
    parser.add_argument("--extra-row", action="append", default=[], metavar="NAME=BUNDLE[:MODE]",
                        help="also score BUNDLE (mode vanilla, tdgan or auto) as row NAME")
    args = parser.parse_args()
    threads = configure(args.threads)
    device = pick_device()
    data = task_dir(args.task, Path(args.data_root) / args.task)
    shipped = Path(args.bundle) if args.bundle else shipped_bundle(args.task)
    bundle = load_bundle(shipped)
    steps = budget_steps(bundle)
    if args.train_only:
        print(train_row(args.train_only, data, bundle, device, steps))
        return 0
    test = [c for c in data.cases("test", "target") if c[2] is not None]
    source_test = list(data.cases("test", "source"))
    entry = {"n_test": len(test)}
    if "vanilla" in args.rows:  # the reference's own figures: source test Dice and the vanilla row
        entry.update(source_dice=source_dice(shipped, source_test, device), bundle_version=bundle.version)
        entry["vanilla"] = score_row(shipped, "vanilla", test, device)
        entry["vanilla"]["train_s"] = round(float(sum(
            e["seconds"] for e in bundle.metadata["training"]["source"]["history"])), 1)
    if "tdgan" in args.rows and bundle.has_network("generator"):
        entry["tdgan"] = score_row(shipped, "tdgan", test, device)
    if "domain_randomized" in args.rows and dr_available():
        entry["domain_randomized"] = score_row(train_row("domain_randomized", data, bundle, device, steps),
                                               "vanilla", test, device)
    if "supervised" in args.rows:
        entry["supervised"] = score_row(train_row("supervised", data, bundle, device, steps), "vanilla", test, device)
    for spec in args.extra_row:
        name, _, path = spec.partition("=")
        path, _, mode = path.partition(":")
        entry[name] = {**score_row(Path(path), mode or "auto", test, device),
                       "source_dice": source_dice(Path(path), source_test, device)}
    print(json.dumps(entry, indent=1), file=sys.stderr)
    existing = RESULTS / "method.json"
    tasks = json.loads(existing.read_text()).get("tasks", {}) if existing.exists() else {}
    # rows not scored in this run keep their last figures
    tasks[args.task] = {**tasks.get(args.task, {}), **entry}
    write_result("method", {"protocol": PROTOCOL, "tasks": tasks}, threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
