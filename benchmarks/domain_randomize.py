"""Domain randomisation (`train source --domain-randomize P`): its cost per training crop next to
a training step, and, with --train, the raw target Dice of small references trained with and
without it on the same budget.

    python benchmarks/domain_randomize.py [--threads 1] [--roi 64] [--repeats 20]
    python benchmarks/domain_randomize.py --train [--task-dir DIR] [--shares 0,0.5,1] [--epochs 40]

Speed: ms per synthesised crop (training/randomize.synthesize) and per optimiser step of the
default segmenter (channels 8,16,32,64, batch 2) on roi^3 crops of source cases, medians of
process CPU time (wall time on a shared machine mostly measures the other processes).
--train: `train source` on the task folder once per share (same seed, budget and options), then
each reference's raw output (argmax, no post-processing) scored against the target labels of the
validation and test splits, which only report: nothing is chosen on them.
Writes benchmarks/results/domain_randomize.json (its figures: --task-dir made by `crossdomainseg
data make --task phantom-ct-mr --n 12 --seed 5`, --train --epochs 40).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import ROOT, task_dir, write_result

SOURCE_OPTIONS = ["--source-norm", "window:-160:240", "--class-balanced", "--spacing", "3", "--roi", "40",
                  "--batch", "2", "--lr", "2e-3", "--steps", "25", "--seed", "1", "--no-progress",
                  "--rotated-copies", "2", "--max-degrees", "20"]


def speed(task, roi: int, repeats: int) -> dict:
    import torch
    from monai.losses import DiceCELoss

    from crossdomainseg.networks import build_network
    from crossdomainseg.training.datasets import load_samples
    from crossdomainseg.training.loops import batch, random_patch
    from crossdomainseg.training.randomize import crop_normalization, synthesize
    from crossdomainseg.training.source import SourceConfig, segmenter_spec

    labels = task.meta["labels"]
    cases = [(cid, image, label) for cid, image, label in task.cases("train", "source")][:2]
    samples = load_samples(cases, [3, 3, 3], {"kind": "window", "low": -160, "high": 240}, 3,
                           sorted(labels.values()))
    rng = np.random.default_rng(0)
    spec = crop_normalization({"kind": "percentile", "lower": 1, "upper": 99})
    crops = [random_patch(samples[i % len(samples)], [roi] * 3, rng) for i in range(repeats)]
    synth = []
    for x, y in crops:
        start = time.process_time()
        synthesize(x, y, rng, spec)
        synth.append(time.process_time() - start)
    config = SourceConfig(task="speed", labels=labels, spatial_dims=3, spacing=[3, 3, 3],
                          roi_size=[roi] * 3, normalization={})
    network = build_network(segmenter_spec(config))
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    images, targets = batch(crops[:2], "cpu")
    steps = []
    for _ in range(max(3, repeats // 4)):
        start = time.process_time()
        loss = loss_fn(network(images), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps.append(time.process_time() - start)
    return {"roi": roi, "clock": "process CPU time", "synthesize_ms_per_crop_p50": round(1000 * float(np.median(synth)), 1),
            "synthesize_ms_per_crop_p95": round(1000 * float(np.percentile(synth, 95)), 1),
            "train_step_ms_p50_batch2": round(1000 * float(np.median(steps[1:])), 1),
            "crops": repeats}


def raw_dice(bundle_path: Path, task, split: str) -> dict:
    """Mean Dice per domain of the segmenter's argmax on `split`, resampled to each input grid."""
    import SimpleITK as sitk

    from crossdomainseg import metrics
    from crossdomainseg.bundle import load_bundle
    from crossdomainseg.geometry import resample_to_reference
    from crossdomainseg.imageio import read_image
    from crossdomainseg.training.evaluate import to_working_array, working_grid
    from crossdomainseg.training.loops import predict_probabilities

    bundle = load_bundle(bundle_path)
    segmenter = bundle.network("segmenter", "cpu")
    names = {k: v for k, v in bundle.labels.items() if v}
    out = {}
    for domain in ("target", "source"):
        rows = []
        for _, image_path, label_path in task.cases(split, domain):
            image, truth = read_image(image_path), read_image(label_path)
            reference = working_grid(bundle, image)
            array = bundle.normalize(to_working_array(bundle, image, reference), domain)
            label = predict_probabilities(segmenter, array, bundle.roi_size).argmax(0).astype(np.uint8)
            label_image = sitk.GetImageFromArray(label[None] if bundle.spatial_dims == 2 else label)
            label_image.CopyInformation(reference)
            prediction = resample_to_reference(label_image, image, sitk.sitkNearestNeighbor, 0)
            rows.append(metrics.dice_per_label(prediction, truth, list(names.values())))
        per_label = {n: round(float(np.mean([r[v] for r in rows])), 4) for n, v in names.items()}
        out[domain] = {"dice": round(float(np.mean(list(per_label.values()))), 4),
                       "per_label": per_label, "n": len(rows)}
    return out


def compare(task, shares, epochs: int, threads: int, out_root: Path) -> dict:
    from crossdomainseg.cli import main

    runs = {}
    for share in shares:
        out = out_root / f"domain_randomize_{share}"
        start = time.perf_counter()
        code = main(["train", "source", "--task-dir", str(task.path), "--out", str(out), "--threads",
                     str(threads), "--epochs", str(epochs), "--domain-randomize", str(share), *SOURCE_OPTIONS])
        if code:
            raise SystemExit(f"train source failed for share {share}")
        runs[str(share)] = {"train_seconds": round(time.perf_counter() - start, 1),
                            **{split: raw_dice(out, task, split) for split in ("val", "test")}}
    return {"task": task.meta["task"], "task_dir": str(task.path), "task_seed": task.meta.get("seed"),
            "task_n": task.meta.get("n"), "epochs": epochs,
            "source_options": " ".join(SOURCE_OPTIONS), "raw_dice_by_share": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--roi", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--train", action="store_true", help="also train and compare references")
    parser.add_argument("--task-dir", help="phantom-ct-mr task folder (default: the bundles' data)")
    parser.add_argument("--shares", default="0,0.5,1")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    task = task_dir("phantom-ct-mr", args.task_dir)
    payload = {"speed": speed(task, args.roi, args.repeats)}
    if args.train:
        shares = [float(s) for s in args.shares.split(",")]
        payload["comparison"] = compare(task, shares, args.epochs, args.threads,
                                        ROOT / "build" / "benchmarks" / "domain_randomize")
    write_result("domain_randomize", payload, args.threads)


if __name__ == "__main__":
    main()
