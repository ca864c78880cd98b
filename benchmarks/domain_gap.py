"""Domain gap of each shipped bundle: its raw reference network (argmax, no post-processing) on the
source and on the target test split ("vanilla"); the gap is source Dice minus target Dice.

  python benchmarks/domain_gap.py [--tasks brain-t1-t2 phantom-ct-mr xray-drr] [--threads 2]

The test subjects are those of the task folders the bundles were trained from (seed 0, the
`n` of scripts/train_default_bundles.sh), rendered in memory from their subject seeds.
Writes benchmarks/results/domain_gap.json.
"""

import argparse
import sys

import numpy as np
from common import DATA_SEED, N_CASES, write_result
from method import raw_label

from crossdomainseg import metrics
from crossdomainseg.bundle import load_bundle
from crossdomainseg.data import generate_case
from crossdomainseg.data.tasks import plan_task
from crossdomainseg.device import configure, pick_device
from crossdomainseg.resources import shipped_bundle

def raw_dice(task: str, device) -> dict:
    bundle = load_bundle(shipped_bundle(task))
    segmenter = bundle.network("segmenter", device)
    labels = [v for v in bundle.labels.values() if v]
    plan = plan_task(N_CASES[task], DATA_SEED)
    result = {"bundle_version": bundle.version}
    for domain, key in (("source", "source_dice"), ("target", "target_dice_vanilla")):
        scores = []
        for _, seed in plan[domain]["test"]:
            case = generate_case(task, seed, domain)
            pred = raw_label(bundle, case.image, segmenter, None, device, domain)
            scores.append(metrics.dice(pred, case.label, labels))
        result[key] = round(float(np.mean(scores)), 4)
        result[f"n_{domain}"] = len(scores)
    result["gap"] = round(result["source_dice"] - result["target_dice_vanilla"], 4)
    print(f"{task}: {result}", file=sys.stderr)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(N_CASES))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    threads = configure(args.threads)
    device = pick_device()
    per_task = {task: raw_dice(task, device) for task in args.tasks}
    headline = "brain-t1-t2" if "brain-t1-t2" in per_task else args.tasks[0]
    write_result("domain_gap", {"task": headline, "source_dice": per_task[headline]["source_dice"],
                                "target_dice_vanilla": per_task[headline]["target_dice_vanilla"],
                                "raw_networks": True, "post_processing": "none (argmax)",
                                "split": "test", "per_task": per_task}, threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
