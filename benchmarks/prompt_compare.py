"""Whether a retrained prompt network may replace a bundle's: both networks click on labelled cases
a user has, from an empty mask (the FROM_EMPTY structures: from one click, and for a network with a
box channel from the structure's bounding box) and from the segmenter's draft (every label).
--cases source-val (default): the brain task's SOURCE validation split (target labels never read);
--cases accepted: the TARGET validation split standing for the clinician's accepted cases
(METHOD.md section 8 allows them for choices), drafts by the engine as the front ends run it;
--cases target-test: the TARGET test split, a report only (never a choice). The new one ships when
by clicks its from-empty and from-draft NoC@90 and its from-empty Dice after 1 and 5 clicks (NoC@90
from empty sits at the 20-click cap) are no worse, and on accepted cases also its from-draft count
of clicks lowering Dice by more than 0.01. Writes benchmarks/results/prompt_compare.json (source-val
at the top level, the others under their own key).

    python benchmarks/prompt_compare.py --old Resources/bundles/brain-t1-t2 --new build/box-bundle \\
        --data build/default-bundle-data/brain-t1-t2 [--cases accepted] [--limit 6] [--threads 1]
"""

import argparse
import datetime
import json
import shlex
import sys
import time

from common import RESULTS, machine_info, task_dir, write_result

# --cases: (split, domain, engine mode, key in prompt_compare.json; None: the top level)
CASES = {"source-val": ("val", "source", "source", None),
         "accepted": ("val", "target", "auto", "accepted_target_val"),
         "target-test": ("test", "target", "auto", "target_test_report")}


def measure(bundle_path, data, limit: int, max_clicks: int, threads: int, log, cases: str = "source-val") -> dict:
    from clicks_brain import COMPACT, SUMMARY_KEYS, from_empty, group_figures, test_cases

    from crossdomainseg.engine import Engine
    from crossdomainseg.evaluation.clicks import evaluate_cases
    from crossdomainseg.interactive.prompt_net import PromptRefiner

    split, domain, mode, _ = CASES[cases]
    engine = Engine(bundle_path, device="cpu", threads=threads, mode=mode)
    refiners = {"prompt": PromptRefiner.from_bundle(engine.bundle, "cpu")}
    empty = from_empty(engine, data, refiners, limit, max_clicks, log, split=split, domain=domain)
    draft = evaluate_cases(engine, test_cases(data, limit, split, domain), limit, refiners, max_clicks,
                           log=log, domain=domain)["prompt"]
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
    parser.add_argument("--cases", choices=sorted(CASES), default="source-val")
    args = parser.parse_args()
    from crossdomainseg.device import configure

    configure(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    data = task_dir("brain-t1-t2", args.data)
    start = time.time()
    old = measure(args.old, data, args.limit, args.max_clicks, args.threads, log, args.cases)
    new = measure(args.new, data, args.limit, args.max_clicks, args.threads, log, args.cases)
    noc = {key: (old[key]["prompt"]["noc90_mean"] if key == "from_empty" else old[key]["noc90_mean"],
                 new[key]["prompt"]["noc90_mean"] if key == "from_empty" else new[key]["noc90_mean"])
           for key in ("from_empty", "from_draft")}
    dice = {k: (old["from_empty"]["prompt"]["dice_at_clicks"][k], new["from_empty"]["prompt"]["dice_at_clicks"][k])
            for k in ("1", "5")}
    drops = tuple(r["from_draft"]["clicks_dropping_over_0.01"] for r in (old, new))
    no_worse = all(n <= o for o, n in noc.values()) and all(n >= o for o, n in dice.values())
    split, domain, mode, key = CASES[args.cases]
    payload = {"task": "brain-t1-t2", "split": f"{domain} {split}", "subjects": args.limit,
               "max_clicks": args.max_clicks, "old": old, "new": new, "noc90_clicks_old_new": noc,
               "empty_dice_after_clicks_old_new": dice, "draft_clicks_dropping_over_0.01_old_new": drops,
               "eval_seconds": round(time.time() - start, 1)}
    path = RESULTS / "prompt_compare.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    if key is None:
        payload["new_no_worse"] = no_worse
        kept = {k: record[k] for _, _, _, k in CASES.values() if k in record}  # the other modes' figures
        write_result("prompt_compare", {**payload, **kept}, args.threads)
    else:
        if args.cases == "accepted":
            payload["new_no_worse"] = no_worse and drops[1] <= drops[0]
        else:
            payload["report_only"] = "target test labels: never a choice"
        record[key] = {"machine": machine_info(args.threads),
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       "command": shlex.join(["python", *sys.argv]), **payload}
        path.write_text(json.dumps(record, indent=2) + "\n")
    log(f"NoC@90 by clicks (old, new): {noc}; from-empty Dice after 1 and 5 clicks (old, new): {dice}; "
        f"from-draft clicks lowering Dice > 0.01 (old, new): {drops}; new no worse: {payload.get('new_no_worse')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
