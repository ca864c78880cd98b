"""`crossdomainseg eval clicks`: the robot user corrects the bundle's automatic results with each click
method; `--choose` records the best on the SOURCE validation split as the one front ends use, scored
on its source drafts, randomised renderings and empty masks pooled (choice_starts.py)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

METHODS = ("prompt", "brs", "learned", "learned_network_only", "sphere", "fixed_ball", "region_growing", "local_otsu",
           "boundary_shift")
# what --choose may pick: the methods front ends click with ("prompt", "brs", "learned" and
# interactive.refiner's CLASSICAL); the network alone is a diagnostic (it ignores clicks it
# contradicts), region growing and the fixed ball baselines only
CHOOSABLE = ("prompt", "brs", "learned", "sphere", "local_otsu", "boundary_shift")


def _eval_subparsers(subparsers):
    """The `eval` command's own subparsers, shared with other modules that add `eval X`."""
    if "eval" not in subparsers.choices:
        parser = subparsers.add_parser("eval", help="evaluate models and interaction")
        parser.add_subparsers(dest="evaluation", metavar="WHAT", required=True)
    parser = subparsers.choices["eval"]
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def add_parser(subparsers) -> None:
    clicks = _eval_subparsers(subparsers).add_parser(
        "clicks", help="robot-user click correction: Dice after clicks, NoC@85/90, drops, latency",
        description="Start from the bundle's automatic result on each labelled target case and let "
        "a simulated user click up to --max-clicks times per label at the interior of the largest "
        "error region. Compares the prompt network, f-BRS (the bundle's segmenter refined at each "
        "click) and the learned refiner with the sphere, region-growing, local Otsu and boundary shift "
        "baselines. With --choose the robot clicks on the SOURCE validation split "
        "instead (target labels only report), from three starts pooled: the source drafts, the source "
        "images re-rendered with the bundle's domain randomisation (a stand-in for target drafts) and "
        "an empty mask on the first rendering; of the methods needing the fewest clicks for Dice 0.90 "
        "(within noise, paired over the objects) the one whose clicks lower Dice least often "
        "becomes the one front ends click with (bundle metadata click_refiner).")
    clicks.add_argument("--bundle", required=True, help="model bundle folder (with a refiner)")
    clicks.add_argument("--data", help="task folder (crossdomainseg data make), or a folder holding "
                        "images/ and labels/ (label maps named as their images)")
    clicks.add_argument("--images", help="instead of --data: a folder of target images")
    clicks.add_argument("--labels", help="with --images: their reference label maps, same file names")
    clicks.add_argument("--split", default="test", choices=("val", "test"),
                        help="task folders: the target split to report on (--choose always uses the "
                        "source val split)")
    clicks.add_argument("--methods", default=None,
                        help=f"comma-separated, from {', '.join(METHODS)} (default: all; the classical "
                        "ones only for a bundle without a refiner network)")
    clicks.add_argument("--max-clicks", type=int, default=20)
    clicks.add_argument("--limit", type=int, default=None, help="first N cases only")
    clicks.add_argument("--threads", type=int, default=None)
    clicks.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    clicks.add_argument("--mode", default="auto", choices=("auto", "tdgan", "vanilla"),
                        help="how the engine makes the automatic result the robot starts from")
    clicks.add_argument("--out", default=None, help="write the full results as JSON here")
    clicks.add_argument("--choose", action="store_true",
                        help="record the best method on the source validation split (NoC@90 within noise, "
                        "then clicks lowering Dice by over 0.01, then NoC@90 and NoC@85) in the bundle "
                        "as the one front ends use")
    clicks.add_argument("--renderings", type=int, default=None, metavar="N",
                        help="with --choose on a task folder: randomised renderings of each source validation "
                        "case (default 2; the empty start clicks on the first)")
    clicks.set_defaults(func=run_eval)


def build_refiners(bundle, methods, device=None) -> dict:
    from ..errors import InputError
    from ..interactive.feature_brs import FeatureBRSRefiner
    from ..interactive.prompt_net import PromptRefiner
    from ..interactive.refiner import LearnedRefiner
    from .baselines import BASELINES, baseline_refiner

    unknown = set(methods) - set(METHODS)
    if unknown:
        raise InputError(f"Unknown click methods {sorted(unknown)}; choose from {', '.join(METHODS)}.")
    makers = {"prompt": lambda: PromptRefiner.from_bundle(bundle, device),
              "brs": lambda: FeatureBRSRefiner.from_bundle(bundle, device),
              "learned": lambda: LearnedRefiner.from_bundle(bundle, device),
              "learned_network_only": lambda: LearnedRefiner.from_bundle(bundle, device, fallback=None,
                                                                          small_voxels=0),
              **{name: (lambda name=name: baseline_refiner(name)) for name in BASELINES}}
    return {name: makers[name]() for name in methods}


def choose(results: dict) -> str:
    """The method front ends should click with, from validation results with per-object Dice
    curves: the fewest clicks to 0.90; a method whose clicks to 0.90 are within noise of that
    (paired over the same objects, mean difference at most `NOISE_SE` standard errors) is as
    good, and among those the one whose clicks lower Dice by more than 0.01 least often wins (a
    worst drop under 0.01 is noise, not a worse method), then fewer clicks to 0.90 and 0.85,
    then a classical method, which clicks as well without a network trained on another modality."""
    candidates = [m for m in results if m in CHOOSABLE]
    order = lambda m: (results[m]["noc90_mean"], results[m]["noc85_mean"])  # noqa: E731
    best = min(candidates, key=order)
    tied = [m for m in candidates if not _fewer_clicks(results[best], results[m])]
    return min(tied, key=lambda m: (results[m]["clicks_dropping_over_0.01"], *order(m),
                                    m in ("prompt", "brs", "learned")))


# How many standard errors of the paired per-object difference in clicks to 0.90 make one
# method need fewer clicks than another: two, the usual bound of a difference beyond chance.
NOISE_SE = 2.0


def _fewer_clicks(a: dict, b: dict) -> bool:
    """Whether `a` needs fewer clicks to 0.90 than `b` beyond noise, paired over the objects
    both were run on (their curves); one object is never beyond noise."""
    import numpy as np

    from ..errors import InputError
    from .robot import noc

    objects = sorted(set(a["curves"]) & set(b["curves"]))
    if not objects:
        raise InputError("The click results have no common objects to compare the methods on.")
    cap = len(a["curves"][objects[0]]) - 1
    diff = np.array([noc(b["curves"][o], 0.9, cap)[0] - noc(a["curves"][o], 0.9, cap)[0] for o in objects], float)
    if len(diff) < 2:
        return False
    return bool(diff.mean() > NOISE_SE * diff.std(ddof=1) / np.sqrt(len(diff)))


def labelled_folders(args) -> tuple[str, str] | None:
    """(images, labels) folders the robot user clicks on, from --images/--labels or a --data
    folder with images/ and labels/ (and no task.json); None for a task folder."""
    from ..errors import InputError

    if args.images or args.labels:
        if not (args.images and args.labels) or args.data:
            raise InputError("Give --images and --labels together (your images and their reference "
                             "label maps), or --data, not both.")
        return args.images, args.labels
    if not args.data:
        raise InputError("Give --images DIR --labels DIR (your images and their reference label maps), "
                         "or --data with a task folder or a folder holding images/ and labels/.")
    data = Path(args.data)
    if not (data / "task.json").exists() and (data / "images").is_dir() and (data / "labels").is_dir():
        return str(data / "images"), str(data / "labels")
    return None


def run_eval(args) -> int:
    from ..bundle import update_bundle
    from ..engine import Engine
    from ..errors import InputError
    from ..training.datasets import labelled_cases
    from .clicks import evaluate, evaluate_paths

    folders = labelled_folders(args)
    # the protocol (METHOD.md section 8): on a task folder a choice never sees target labels (it
    # runs on the source val split); user folders are the user's own labelled (accepted) cases
    on_source = args.choose and folders is None
    if args.renderings is not None and (not on_source or args.renderings < 1):
        raise InputError("--renderings (1 or more) goes with --choose on a task folder.")
    split, domain = ("val", "source") if on_source else (args.split, "target")
    engine = Engine(args.bundle, device=args.device, threads=args.threads,
                    mode="source" if on_source else args.mode)
    if args.methods is None:
        networks = {"prompt": "prompt", "learned": "refiner", "learned_network_only": "refiner"}
        methods = [m for m in METHODS if m not in networks or engine.bundle.has_network(networks[m])]
    else:
        methods = [m for m in args.methods.split(",") if m]
    refiners = build_refiners(engine.bundle, methods, args.device)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    starts = None
    if on_source:
        results, starts = _choice_results(engine, args, refiners, log)
    elif folders is None:
        results = evaluate(engine, args.data, refiners, split, args.max_clicks, args.limit, log=log,
                           domain=domain)
    else:
        results = evaluate_paths(engine, labelled_cases(*folders, what="evaluation"), refiners,
                                 args.max_clicks, args.limit, log=log)
    for name, r in results.items():
        print(f"{name:15s} NoC@85 {r['noc85_mean']:.2f}  NoC@90 {r['noc90_mean']:.2f}  never@90 "
              f"{r['never_90_share']:.0%}  max drop {r['max_dice_drop']:.4f}  Dice@" + " ".join(
                  f"{k}:{v:.3f}" for k, v in r["dice_at_clicks"].items())
              + f"  latency p50/p95 {r['latency_ms_p50']}/{r['latency_ms_p95']} ms")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    if args.choose:
        name = choose(results)
        update_bundle(args.bundle, metadata={"click_refiner": {
            "name": name, "split": "source val" if folders is None else "user folders",
            "data": str(args.data) if folders is None else " ".join(folders), "max_clicks": args.max_clicks,
            "command": "crossdomainseg " + shlex.join(sys.argv[1:]),
            **_figures(results), **({"starts": starts} if starts else {})}})
        print(f"click refiner for {args.bundle}: {name}")
    return 0


def _figures(results: dict) -> dict:
    """The figures a choice is recorded with, per method."""
    return {key: {m: r[key] for m, r in results.items()}
            for key in ("noc90_mean", "noc85_mean", "clicks_dropping_over_0.01")}


def _choice_results(engine, args, refiners: dict, log) -> tuple[dict, dict]:
    """(results over the pooled objects of every start, each method's entry with its per-start
    summaries under "starts"; the record of the starts for click_refiner) of the robot user on the
    task folder's source validation split (choice_starts.py)."""
    from ..engine import Engine
    from .choice_starts import RENDER_SEED, RENDERINGS, chooser_cases, per_start, randomisation_record
    from .clicks import evaluate_cases, labelled_paths

    renderings = RENDERINGS if args.renderings is None else args.renderings
    paths = labelled_paths(args.data, "val", "source")[: args.limit or None]
    # the renderings stand in for target images: drafted as the product drafts one
    target_engine = Engine(engine.bundle, device=args.device, threads=args.threads, mode=args.mode)
    results = evaluate_cases(engine, chooser_cases(engine, target_engine, paths, renderings),
                             len(paths) * (renderings + 2), refiners, args.max_clicks, log)
    figures = per_start(results)
    for name, r in results.items():
        r["starts"] = {start: rows[name] for start, rows in figures.items()}
    record = {"pooled": "each method scored on the objects of every start together",
              "randomisation": randomisation_record(engine.bundle), "renderings": renderings,
              "seed": RENDER_SEED, "engine_mode": target_engine.mode}
    for start, rows in figures.items():
        record[start] = {"objects": next(iter(rows.values()))["objects"],
                         "dice_0": {m: r["dice_at_clicks"]["0"] for m, r in rows.items()}, **_figures(rows)}
    return results, record
