"""Whether a retrained prompt network may replace a bundle's: both networks click on the brain
task's SOURCE validation split (labels a user has; target labels are never read), from an empty
mask (the FROM_EMPTY structures: from one click, and for a network with a box channel from the
structure's bounding box) and from the segmenter's draft (every label). The new one ships when
by clicks its from-empty and from-draft NoC@90 and its from-empty Dice after 1 and 5 clicks (NoC@90
from empty sits at the 20-click cap) are no worse. Writes benchmarks/results/prompt_compare.json.

    python benchmarks/prompt_compare.py --old Resources/bundles/brain-t1-t2 --new build/box-bundle \\
        --data build/default-bundle-data/brain-t1-t2 [--limit 6] [--threads 1]
"""

import argparse
import sys
import time

from common import task_dir, write_result


def measure(bundle_path, data, limit: int, max_clicks: int, threads: int, log) -> dict:
    from clicks_brain import COMPACT, SUMMARY_KEYS, from_empty, group_figures, test_cases

    from crossdomainseg.engine import Engine
    from crossdomainseg.evaluation.clicks import evaluate_cases
    from crossdomainseg.interactive.prompt_net import PromptRefiner

    engine = Engine(bundle_path, device="cpu", threads=threads, mode="source")
    refiners = {"prompt": PromptRefiner.from_bundle(engine.bundle, "cpu")}
    empty = from_empty(engine, data, refiners, limit, max_clicks, log, split="val", domain="source")
    draft = evaluate_cases(engine, test_cases(data, limit, "val", "source"), limit, refiners, max_clicks,
                           log=log, domain="source")["prompt"]
    return {"from_empty": {name: {k: v for k, v in r.items() if k != "curves"} for name, r in empty.items()},
            "from_draft": {**{k: draft[k] for k in SUMMARY_KEYS},
                           "compact": group_figures(draft, COMPACT, max_clicks)},
            "prompt_training": engine.bundle.metadata.get("prompt", {}).get("training")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from crossdomainseg.device import configure

    configure(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    data = task_dir("brain-t1-t2", args.data)
    start = time.time()
    old = measure(args.old, data, args.limit, args.max_clicks, args.threads, log)
    new = measure(args.new, data, args.limit, args.max_clicks, args.threads, log)
    noc = {key: (old[key]["prompt"]["noc90_mean"] if key == "from_empty" else old[key]["noc90_mean"],
                 new[key]["prompt"]["noc90_mean"] if key == "from_empty" else new[key]["noc90_mean"])
           for key in ("from_empty", "from_draft")}
    dice = {k: (old["from_empty"]["prompt"]["dice_at_clicks"][k], new["from_empty"]["prompt"]["dice_at_clicks"][k])
            for k in ("1", "5")}
    payload = {"task": "brain-t1-t2", "split": "source val", "subjects": args.limit, "max_clicks": args.max_clicks,
               "old": old, "new": new, "noc90_clicks_old_new": noc, "empty_dice_after_clicks_old_new": dice,
               "new_no_worse": all(n <= o for o, n in noc.values()) and all(n >= o for o, n in dice.values()),
               "eval_seconds": round(time.time() - start, 1)}
    write_result("prompt_compare", payload, args.threads)
    log(f"NoC@90 by clicks (old, new): {noc}; from-empty Dice after 1 and 5 clicks (old, new): {dice}; "
        f"new no worse: {payload['new_no_worse']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
