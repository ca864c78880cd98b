"""Models benchmark (issue 3): the shipped bundles on each task's held-out test split.

For each task: the reference segmenter's Dice on the source test split; Dice/HD95/ASSD on the
target test split of the reference applied directly ("vanilla") and to G(target) ("TD-GAN");
translation quality against the paired ground-truth source rendering (Dice between the
segmenter's output on the real source rendering and on the translation; MAE, PSNR, SSIM in the
bundle's normalised source units, [0, 1]); the size of the shipped weights. Every figure twice,
side by side (METHOD.md section 8): "raw", the networks' argmax, and "delivered", after the
post-processing steps the bundle lists (chosen on its source validation split).
Writes benchmarks/results/models.json (the raw networks' domain gap: benchmarks/domain_gap.py).

  python benchmarks/models.py [--tasks phantom-ct-mr xray-drr] [--data-root DIR] [--threads 2]

The task folders are the ones the shipped bundles were trained from (scripts/
train_default_bundles.sh: seed 0, n 30 / 60), generated under --data-root when missing; only
their test split is scored here.
"""

import argparse
import sys
import time
from pathlib import Path

from common import DATA_ROOT, task_dir, write_result

from crossdomainseg.bundle import load_bundle
from crossdomainseg.device import configure, pick_device
from crossdomainseg.resources import shipped_bundle
from crossdomainseg.postprocess import bundle_steps
from crossdomainseg.training.evaluate import evaluate_source, evaluate_target

def weights_mb(bundle) -> float:
    return sum((bundle.path / rel).stat().st_size for rel in bundle.metadata["weights"]) / 1e6


def scores(bundle, data, device, raw: bool) -> dict:
    source = evaluate_source(bundle, list(data.cases("test", "source")), device, raw)
    target_cases = [c for c in data.cases("test", "target") if c[2] is not None]
    paired = {cid: data.paired_source(cid) for cid, _, _ in target_cases}
    target = evaluate_target(bundle, target_cases, {k: v for k, v in paired.items() if v}, device, raw)
    result = {**source, **target}
    result["tdgan_gain_dice"] = result["tdgan_dice"] - result["vanilla_dice"]
    return result


def run_task(task: str, root: Path, device) -> dict:
    bundle = load_bundle(shipped_bundle(task))
    data = task_dir(task, root / task)
    began = time.time()
    result = {"postprocess": bundle_steps(bundle.metadata),
              "postprocess_chosen_on": (bundle.metadata.get("postprocess_choice") or {}).get("split"),
              **{kind: scores(bundle, data, device, kind == "raw") for kind in ("raw", "delivered")},
              "weights_mb": round(weights_mb(bundle), 3), "bundle_version": bundle.version,
              "eval_seconds": round(time.time() - began, 1)}
    for kind in ("raw", "delivered"):
        r = result[kind]
        print(f"{task} {kind}: source Dice {r['source_dice']:.3f}, vanilla {r['vanilla_dice']:.3f}, "
              f"TD-GAN {r['tdgan_dice']:.3f}", file=sys.stderr)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["phantom-ct-mr", "xray-drr"])
    parser.add_argument("--data-root", default=str(DATA_ROOT))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    threads = configure(args.threads)
    device = pick_device()
    results = {task: run_task(task, Path(args.data_root), device) for task in args.tasks}
    write_result("models", results, threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
