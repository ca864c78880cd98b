"""Click correction on xray-drr (2D chest radiographs, 128^2 at 2.8 mm): the robot user against the
bundle's automatic draft on the target test split, every click method the bundle can run (the 2D
prompt network, f-BRS, sphere, fixed ball, region growing, local Otsu, boundary shift) on the same
starts; the prompt network and the classical methods from an EMPTY mask (lungs, heart; the prompt
network also from the structure's bounding box); the clicks of the front ends' method and of the
prompt network that lower their object's Dice by more than 0.01 on freshly generated target
subjects (50: 2000 clicks per method); latency per click on a 128^2 target test image, model warm.
Target labels only report; the front ends' method is the one the bundle names (chosen on the
source validation split by `eval clicks --choose`). Merges its figures into
benchmarks/results/clicks.json under per_task["xray-drr"], leaving the other entries.

    python benchmarks/clicks.py --task xray-drr --bundle BUNDLE_WITH_PROMPT_NETWORK [--data DIR]
"""

import sys
import time

import numpy as np

from clicks_brain import (SUMMARY_KEYS, NOT_FROM_EMPTY, click_latency, from_empty, fresh_subjects, task_payload,
                          test_cases, write_task_payload)
from common import task_dir

TASK = "xray-drr"
FROM_EMPTY = ("lungs", "heart")
FRESH_SEEDS = list(range(900001, 900051))  # 50 subjects x 2 labels x 20 clicks: 2000 clicks per method


def latency(engine, refiner, data_dir, threads: int) -> dict:
    """Per-click milliseconds on the first target test image as it is (128^2), model warm."""
    import SimpleITK as sitk

    _, image, truth_image = next(test_cases(data_dir, 1))
    return click_latency(engine, refiner, image, sitk.GetArrayFromImage(truth_image).astype(np.int16), threads)


def run(args) -> int:
    from crossdomainseg.device import configure
    from crossdomainseg.engine import Engine
    from crossdomainseg.evaluation.cli import METHODS, build_refiners
    from crossdomainseg.evaluation.clicks import evaluate_cases
    from crossdomainseg.interactive.refiner import click_refiner_name

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    configure(args.threads)
    engine = Engine(args.bundle, device="cpu", threads=args.threads, mode=args.mode)
    data = task_dir(TASK, args.data)
    networks = {"prompt": "prompt", "learned": "refiner", "learned_network_only": "refiner"}
    methods = [m for m in METHODS if m not in networks or engine.bundle.has_network(networks[m])]
    refiners = build_refiners(engine.bundle, methods, "cpu")
    front = click_refiner_name(engine.bundle)
    chosen = engine.bundle.metadata.get("click_refiner") or {}
    start = time.time()
    n_test = len([c for c in data.cases("test", "target") if c[2] is not None])
    limit = min(args.limit or n_test, n_test)
    draft = evaluate_cases(engine, test_cases(data, limit), limit, refiners, args.max_clicks, log=log)
    rows = {name: {**{k: r[k] for k in SUMMARY_KEYS}, "per_label": r["per_label"],
                   "latency_ms_p50_test_split": r["latency_ms_p50"], "latency_ms_p95_test_split": r["latency_ms_p95"]}
            for name, r in draft.items()}
    log(f"draft starts done ({time.time() - start:.0f} s)")
    empty = from_empty(engine, data, {n: r for n, r in refiners.items() if n not in NOT_FROM_EMPTY}, limit,
                       args.max_clicks, log, names=FROM_EMPTY)
    log(f"empty starts done ({time.time() - start:.0f} s)")
    seeds = FRESH_SEEDS[: args.fresh_subjects or len(FRESH_SEEDS)]
    fresh_names = [n for n in dict.fromkeys((front, "prompt")) if n in refiners]
    fresh = fresh_subjects(engine, {n: refiners[n] for n in fresh_names}, seeds, args.max_clicks, log, TASK)
    log(f"fresh subjects done ({time.time() - start:.0f} s)")
    timed = {n: latency(engine, refiners[n], data, args.threads) for n in fresh_names}
    payload = task_payload(TASK, args, engine, chosen, front, limit, n_test, start, draft,
                           from_draft=rows, from_empty=empty, fresh_subjects=fresh, latency_128=timed)
    write_task_payload(TASK, payload, log)
    return 0
