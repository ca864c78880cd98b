"""Which reference segmenter to ship (issue 3): accuracy per CPU millisecond of MONAI UNet sizes.

Each candidate is trained with the phantom-ct-mr recipe of scripts/train_default_bundles.sh
(same data and seed; only the channels change, and --epochs, by default half the shipped 120 to
keep the run short), then scored on the source and target test splits (Dice; target = the
reference on raw target images) and timed on the working grid of a 128^3 volume (sliding windows, warm model, CPU
threads as given). The choice rule: the fastest candidate whose Dice is within 0.02 of the best.
Writes benchmarks/results/model_choice.json.

  python benchmarks/model_choice.py [--threads 2] [--epochs 50]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, task_dir, write_result

from crossdomainseg.bundle import load_bundle
from crossdomainseg.device import configure
from crossdomainseg.imageio import read_image
from crossdomainseg.metrics import dice
from crossdomainseg.training.evaluate import CaseRunner, evaluate_source
from crossdomainseg.training.loops import predict_probabilities

CANDIDATES = ["4,8,16,32", "8,16,32,64", "16,32,64,128"]
RECIPE = ["--source-norm", "window:-160:240", "--intensity-remap", "0.5", "--spacing", "3", "--roi", "40",
          "--res-units", "1", "--batch", "2", "--lr", "2e-3", "--rotated-copies", "2", "--max-degrees", "20", "--steps", "25",
          "--seed", "1"]
DICE_MARGIN = 0.02


def evaluate_vanilla(bundle, cases) -> float:
    runner = CaseRunner(bundle, torch.device("cpu"))
    labels = [v for v in bundle.labels.values() if v]
    return float(np.mean([dice(runner.segment(read_image(image), "target")[0], read_image(label), labels)
                          for _, image, label in cases]))


def time_ms(bundle, repeats: int) -> list[float]:
    """Milliseconds per segmentation of a 128^3 volume at 1.5 mm resampled to the working grid."""
    shape = [int(round(128 * 1.5 / s)) for s in bundle.spacing][::-1]
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    network = bundle.network("segmenter", "cpu")
    predict_probabilities(network, image, bundle.roi_size)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        predict_probabilities(network, image, bundle.roi_size)
        times.append(1000 * (time.perf_counter() - began))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    threads = configure(args.threads)
    data = task_dir("phantom-ct-mr")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for channels in CANDIDATES:
            out = Path(tmp) / channels.replace(",", "-")
            began = time.perf_counter()
            subprocess.run([sys.executable, "-m", "crossdomainseg.cli", "train", "source", "--task-dir",
                            str(data.path), "--out", str(out), "--threads", str(threads), "--channels", channels,
                            "--epochs", str(args.epochs), "--no-progress", *RECIPE],
                           check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT / "SlicerCrossDomainSeg"),
                                                      "PATH": "/usr/bin:/bin"})
            train_s = time.perf_counter() - began
            bundle = load_bundle(out)
            source = evaluate_source(bundle, list(data.cases("test", "source")), torch.device("cpu"))
            target = evaluate_vanilla(bundle, [c for c in data.cases("test", "target") if c[2] is not None])
            ms = time_ms(bundle, args.repeats)
            params = sum(p.numel() for p in bundle.network("segmenter").parameters())
            rows[channels] = {"source_dice": round(source["source_dice"], 4),
                              "target_vanilla_dice": round(target, 4), "ms_p50": round(statistics.median(ms), 1),
                              "parameters": params, "train_s": round(train_s, 1),
                              "dice_per_cpu_s": round(source["source_dice"] / (statistics.median(ms) / 1000), 3)}
            print(channels, rows[channels], flush=True)
    best = max(r["source_dice"] for r in rows.values())
    chosen = min((c for c, r in rows.items() if r["source_dice"] >= best - DICE_MARGIN),
                 key=lambda c: rows[c]["ms_p50"])
    write_result("model_choice", {"task": "phantom-ct-mr", "network": "MONAI UNet, 1 residual unit",
                                  "candidates": rows, "rule": f"fastest within {DICE_MARGIN} Dice of the best",
                                  "chosen_channels": chosen, "epochs": args.epochs}, threads)


if __name__ == "__main__":
    main()
