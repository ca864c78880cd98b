"""Click correction on brain-t1-t2 (real anatomy, T2 target with thick coronal slices): the robot
user against the shipped brain bundle's automatic draft on the target test split, the prompt
network and the f-BRS refiner (the bundle's segmenter refined at each click) against the sphere,
region-growing and boundary shift refiners on the same starts; the prompt network and the
baselines from an EMPTY mask (a new structure; the prompt network also from the structure's
bounding box, then clicks); the clicks of the front ends' method, the prompt network and f-BRS
that lower their object's Dice by more than 0.01 on freshly generated target subjects; latency per
click of the front ends' method and of f-BRS on a 128^3 volume. Target
labels only report; the front ends' method is the one the bundle names (chosen on the source
validation split by `eval clicks --choose`). Merges its figures into
benchmarks/results/clicks.json under per_task["brain-t1-t2"], leaving the other entries; with
--methods only those methods run, and the other methods' rows of the earlier run stay (listed
under "earlier_rows" with that run's date and command).

    python benchmarks/clicks.py --task brain-t1-t2 --bundle Resources/bundles/brain-t1-t2 [--limit 6] [--methods sphere,fixed_ball]
"""

import json
import sys
import time

import numpy as np

from common import RESULTS, machine_info, task_dir

COMPACT = ("lateral_ventricles", "thalamus", "caudate", "putamen", "pallidum", "brainstem", "cerebellum")
TISSUES = ("white_matter", "cortical_grey_matter", "csf")
FROM_EMPTY = ("lateral_ventricles", "thalamus", "putamen", "brainstem")
METHODS = ("prompt", "brs", "sphere", "fixed_ball", "region_growing", "boundary_shift")
# from an empty mask f-BRS has nothing to refine but the segmenter's own draft
NOT_FROM_EMPTY = ("brs",)
SUMMARY_KEYS = ("objects", "noc90_mean", "noc85_mean", "never_90_share", "max_dice_drop", "max_dice_drop_where",
                "clicks_dropping_over_0.01", "clicks_scored", "dice_at_clicks")


def group_figures(result: dict, names, max_clicks: int) -> dict:
    """NoC@90/85 and Dice after k clicks over the objects whose label is in `names`, and per label."""
    from crossdomainseg.evaluation.robot import noc

    rows = {o: c for o, c in result["curves"].items() if o.split("/")[-1] in names}
    if not rows:
        return {}
    arr = np.asarray(list(rows.values()))
    drops = arr[:, :-1] - arr[:, 1:]
    per_label = {}
    for name in names:
        mine = [c for o, c in rows.items() if o.split("/")[-1] == name]
        if mine:
            per_label[name] = {"dice_0": round(float(np.mean([c[0] for c in mine])), 4),
                               "noc90_mean": round(float(np.mean([noc(c, 0.9, max_clicks)[0] for c in mine])), 3),
                               "noc85_mean": round(float(np.mean([noc(c, 0.85, max_clicks)[0] for c in mine])), 3)}
    return {"objects": len(rows),
            "noc90_mean": round(float(np.mean([noc(c, 0.9, max_clicks)[0] for c in rows.values()])), 3),
            "noc85_mean": round(float(np.mean([noc(c, 0.85, max_clicks)[0] for c in rows.values()])), 3),
            "never_90_share": round(float(np.mean([not noc(c, 0.9, max_clicks)[1] for c in rows.values()])), 4),
            "dice_at_clicks": {str(k): round(float(arr[:, k].mean()), 4) for k in (0, 1, 2, 3, 5, 10, 20)
                               if k < arr.shape[1]},
            "clicks_dropping_over_0.01": int((drops > 0.01).sum()), "clicks_scored": int(drops.size),
            "per_label": per_label}


def test_cases(data_dir, limit, split: str = "test", domain: str = "target"):
    from crossdomainseg.imageio import read_image

    paths = [c for c in data_dir.cases(split, domain) if c[2] is not None][: limit or None]
    for case_id, image_path, label_path in paths:
        yield case_id, read_image(image_path), read_image(label_path)


def box_corners(image, truth: np.ndarray) -> tuple:
    """The LPS corners of the voxel bounding box of `truth` (a tight box, as a user draws it)."""
    from scipy import ndimage

    bounds = ndimage.find_objects(truth.astype(np.uint8))[0]
    return tuple(image.TransformIndexToPhysicalPoint([int(v) for v in reversed(corner)])
                 for corner in ([s.start for s in bounds], [s.stop - 1 for s in bounds]))


def robot_from_box(session, image, truth: np.ndarray, value: int, max_clicks: int):
    """The robot starts the structure `value` from its bounding box, then clicks: Dice after 0
    (nothing), 1 (the box) .. max_clicks interactions, the box counted as one; seconds per
    interaction."""
    import time as clock

    from crossdomainseg.evaluation.robot import robot_on_label

    start = clock.perf_counter()
    session.new_structure_from_box(*box_corners(image, truth == value), value)
    seconds = clock.perf_counter() - start
    curve, times, _ = robot_on_label(session, truth, value, max_clicks - 1)
    return [0.0] + curve, [seconds] + times


def from_empty(engine, data_dir, refiners: dict, limit, max_clicks: int, log, split: str = "test",
               domain: str = "target", names=FROM_EMPTY) -> dict:
    """Per method: the robot outlines each label of `names` starting from nothing (no draft: an
    all-background label map), as a user adds a structure the model does not segment; for a
    refiner with a box channel also "<name>_box": the structure started from its bounding box,
    then clicks (the box counts as the first interaction)."""
    import SimpleITK as sitk

    from crossdomainseg.interactive import InteractiveSession
    from crossdomainseg.evaluation.clicks import summarise
    from crossdomainseg.evaluation.robot import robot_on_label

    labels = engine.bundle.labels
    starts = [(name, refiner, False) for name, refiner in refiners.items()]
    starts += [(f"{name}_box", refiner, True) for name, refiner in refiners.items()
               if getattr(refiner, "accepts_box", False)]
    curves = {name: [] for name, _, _ in starts}
    times = {name: [] for name, _, _ in starts}
    objects = []
    for case_id, image, truth_image in test_cases(data_dir, limit, split, domain):
        truth = sitk.GetArrayFromImage(truth_image).astype(np.int16)
        features = engine.bundle.normalize(sitk.GetArrayFromImage(image), domain)
        empty = np.zeros(truth.shape, np.int16)
        values = [labels[n] for n in names if (truth == labels[n]).any()]
        objects += [f"{case_id}/{n}" for n in names if (truth == labels[n]).any()]
        for name, refiner, box in starts:
            for value in values:
                others = [v for v in labels.values() if v and (v != value or not box)]
                session = InteractiveSession(image, empty, None, features, None, refiner, others)
                if box:
                    curve, t = robot_from_box(session, image, truth, value, max_clicks)
                else:
                    curve, t, _ = robot_on_label(session, truth, value, max_clicks)
                curves[name].append(curve)
                times[name] += t
        log(f"from empty {case_id}: " + "  ".join(
            f"{n} {np.mean([c[1] for c in curves[n][-len(values):]]):.3f}>{np.mean([c[-1] for c in curves[n][-len(values):]]):.3f}"
            for n in curves))
    out = {}
    for name in curves:
        summary = summarise(curves[name], times[name], objects)
        summary["curves"] = {o: [round(v, 4) for v in c] for o, c in zip(objects, curves[name])}
        out[name] = {**{k: summary[k] for k in SUMMARY_KEYS},
                     **group_figures(summary, names, max_clicks)}
    return out


def latency_128(engine, refiner, data_dir, threads: int) -> dict:
    """Per-click seconds on a target test image resampled to 128^3 (same field of view): the
    robot corrects every label of the automatic draft for 20 clicks, model warm."""
    import SimpleITK as sitk

    _, image, truth_image = next(test_cases(data_dir, 1))
    reference = sitk.Image([128, 128, 128], sitk.sitkFloat32)
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(image.GetOrigin())
    reference.SetSpacing([s * n / 128 for s, n in zip(image.GetSpacing(), image.GetSize())])
    image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    truth = sitk.GetArrayFromImage(sitk.Resample(truth_image, reference, sitk.Transform(),
                                                 sitk.sitkNearestNeighbor, 0)).astype(np.int16)
    return click_latency(engine, refiner, image, truth, threads)


def click_latency(engine, refiner, image, truth: np.ndarray, threads: int) -> dict:
    """Per-click milliseconds (p50, p95) on `image`: the robot corrects every label of the
    automatic draft for 20 clicks against `truth` (its array), model warm."""
    from crossdomainseg.interactive import InteractiveSession
    from crossdomainseg.evaluation.robot import robot_on_label

    result = engine.segment(image, preview=True, uncertainty=False)
    session = InteractiveSession.from_result(image, result, engine.bundle, refiner)
    times = []
    for value in session.label_values:
        _, t, _ = robot_on_label(session, truth, value, 20)
        times += t
    ms = np.asarray(times) * 1000
    return {"volume_shape": list(truth.shape), "clicks": len(times), "threads": threads, "device": "cpu",
            "model_warm": True, "p50": round(float(np.percentile(ms, 50)), 1),
            "p95": round(float(np.percentile(ms, 95)), 1)}


def fresh_subjects(engine, refiners: dict, seeds, max_clicks: int, log, task: str = "brain-t1-t2") -> dict:
    """{name: figures} on freshly generated target subjects of `task` (never a training subject)."""
    from crossdomainseg.data import generate_case
    from crossdomainseg.evaluation.clicks import evaluate_cases

    def cases():
        for seed in seeds:
            case = generate_case(task, seed, "target")
            yield f"seed {seed}", case.image, case.label

    results = evaluate_cases(engine, cases(), len(seeds), refiners, max_clicks, log=log)
    return {name: {"seeds": [seeds[0], seeds[-1]], "subjects": len(seeds),
                   **{k: r[k] for k in SUMMARY_KEYS}, "per_label": r["per_label"],
                   "clicks_dropping_over_0.01_per_subject": harmful_per_subject(r["curves"])}
            for name, r in results.items()}


def harmful_per_subject(curves: dict) -> dict:
    """Per subject ("seed N"): how many clicks lowered their object's Dice by more than 0.01, from
    the curves as stored (4 decimals)."""
    counts = {}
    for name, curve in curves.items():
        drops = -np.diff(np.asarray(curve))
        subject = name.split("/")[0]
        counts[subject] = counts.get(subject, 0) + int((drops > 0.01).sum())
    return counts


def keep_earlier_rows(payload: dict, earlier: dict, methods) -> dict:
    """`payload` (a run of `methods` only) with the rows of the other methods, and the latencies
    it did not measure, from the `earlier` brain entry; "earlier_rows" names, per kept row, the
    run that measured it (its date, command and note)."""
    origins = earlier.get("earlier_rows", {})
    run_of = {k: earlier.get(k) for k in ("date", "command", "note")}
    kept = {}
    for key in ("from_draft", "from_empty", "fresh_subjects", "curves_from_draft"):
        for name, row in earlier.get(key, {}).items():
            if name.split("_box")[0] not in methods and name not in payload[key]:
                payload[key][name] = row
                kept[f"{key}/{name}"] = origins.get(f"{key}/{name}", run_of)
    for key in ("latency_128", "latency_128_brs"):
        if payload[key] is None:
            payload[key] = earlier.get(key)
            kept[key] = origins.get(key, run_of)
    payload["earlier_rows"] = kept
    return payload


def task_payload(task: str, args, engine, chosen: dict, front: str, limit: int, n_test: int, start: float,
                 draft: dict, **figures) -> dict:
    """The clicks.json per_task entry of a run on `task`'s target test split: what ran and how,
    the `figures` given (from_draft, from_empty, fresh_subjects, latencies) and the Dice curves of
    the `draft` starts."""
    return {
        "task": task, "machine": machine_info(args.threads),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", *sys.argv]), "bundle": str(args.bundle),
        "split": "test (target domain)", "subjects": limit, "of_test_subjects": n_test,
        "start": f"the bundle's automatic result (engine mode {engine.mode})",
        "unit": "one object = one label of one case; Dice of that label; robot clicks only on it",
        "front_end_refiner": {"name": front, "chosen_on": chosen.get("split"),
                              "validation_noc90_mean": chosen.get("noc90_mean"),
                              "validation_clicks_dropping_over_0.01": chosen.get("clicks_dropping_over_0.01")},
        **figures,
        "model_version": engine.model_version,
        "prompt_training": engine.bundle.metadata.get("prompt", {}).get("training"),
        "eval_seconds": round(time.time() - start, 1),
        "curves_from_draft": {name: r["curves"] for name, r in draft.items()},
    }


def write_task_payload(task: str, payload: dict, log, methods=None) -> None:
    """Merge `payload` into benchmarks/results/clicks.json as per_task[task], leaving the other
    entries; a run of some `methods` only keeps the earlier entry's other rows (keep_earlier_rows)."""
    path = RESULTS / "clicks.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    earlier = record.get("per_task", {}).get(task)
    if earlier and methods is not None and set(methods) != set(METHODS):
        payload = keep_earlier_rows(payload, earlier, methods)
    record.setdefault("per_task", {})[task] = payload
    path.write_text(json.dumps(record, indent=2) + "\n")
    log(json.dumps({k: v for k, v in payload.items() if k != "curves_from_draft"}, indent=1)[:6000])


def run(args, fresh_seeds) -> int:
    from crossdomainseg.device import configure
    from crossdomainseg.engine import Engine
    from crossdomainseg.evaluation.cli import build_refiners
    from crossdomainseg.evaluation.clicks import evaluate_cases
    from crossdomainseg.interactive.refiner import click_refiner_name

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    configure(args.threads)
    engine = Engine(args.bundle, device="cpu", threads=args.threads, mode=args.mode)
    data = task_dir("brain-t1-t2", args.data)
    methods = [m for m in METHODS if m != "prompt" or engine.bundle.has_network("prompt")]
    if args.methods:
        methods = [m for m in methods if m in args.methods.split(",")]
    refiners = build_refiners(engine.bundle, methods, "cpu")
    front = click_refiner_name(engine.bundle)
    chosen = engine.bundle.metadata.get("click_refiner") or {}
    start = time.time()
    n_test = len(list(data.cases("test", "target")))
    limit = min(args.limit or n_test, n_test)
    draft = evaluate_cases(engine, test_cases(data, limit), limit, refiners, args.max_clicks, log=log)
    rows = {name: {**{k: r[k] for k in SUMMARY_KEYS},
                   "compact": group_figures(r, COMPACT, args.max_clicks),
                   "tissues": group_figures(r, TISSUES, args.max_clicks),
                   "latency_ms_p50_test_split": r["latency_ms_p50"], "latency_ms_p95_test_split": r["latency_ms_p95"]}
            for name, r in draft.items()}
    log(f"draft starts done ({time.time() - start:.0f} s)")
    empty = from_empty(engine, data, {n: r for n, r in refiners.items() if n not in NOT_FROM_EMPTY}, limit,
                       args.max_clicks, log)
    log(f"empty starts done ({time.time() - start:.0f} s)")
    fresh_names = [n for n in dict.fromkeys((front, "fixed_ball", "prompt", "brs")) if n in refiners]
    fresh = fresh_subjects(engine, {n: refiners[n] for n in fresh_names}, fresh_seeds, args.max_clicks, log)
    log(f"fresh subjects done ({time.time() - start:.0f} s)")
    latency = latency_128(engine, refiners[front], data, args.threads) if front in refiners else None
    latency_brs = latency if front == "brs" else (
        latency_128(engine, refiners["brs"], data, args.threads) if "brs" in refiners else None)
    payload = task_payload("brain-t1-t2", args, engine, chosen, front, limit, n_test, start, draft,
                           from_draft=rows, from_empty=empty, fresh_subjects=fresh, latency_128=latency,
                           latency_128_brs=latency_brs)
    if args.note:
        payload["note"] = args.note
    write_task_payload("brain-t1-t2", payload, log, methods)
    return 0
