"""Robot-user evaluation of click correction (`crossdomainseg eval clicks`).

Every (case, label) of the split is one object, as in interactive-segmentation benchmarks. Each
object gets its own session from the engine's automatic result, so every refiner and every label
starts from the same draft (a positive click may take voxels from another label: in one session
per case, the labels corrected later would start from what earlier clicks left). The robot
clicks up to `max_clicks` times on the label, always at the interior of its largest error region.
A case may also say how its sessions start: another engine's draft, or an empty mask (the starts
`eval clicks --choose` pools, choice_starts.py). Target cases only report; a method is chosen on the
source validation split (`domain` "source", with an engine in mode "source").
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import same_grid
from ..store import undefined_label_values
from .robot import noc, robot_on_label

CHECKPOINTS = (0, 1, 2, 3, 5, 10)


def summarise(curves: list, latencies: list, names: list, other_drops: list | None = None) -> dict:
    """The RESULTS.md figures for one method from per-object Dice curves."""
    arr = np.asarray(curves)
    n90 = [noc(c, 0.90, arr.shape[1] - 1) for c in curves]
    n85 = [noc(c, 0.85, arr.shape[1] - 1) for c in curves]
    drops = arr[:, :-1] - arr[:, 1:]
    worst = np.unravel_index(int(np.argmax(drops)), drops.shape)
    ms = np.asarray(latencies) * 1000.0
    return {
        "objects": len(curves),
        "dice_at_clicks": {str(k): round(float(arr[:, k].mean()), 4) for k in CHECKPOINTS if k < arr.shape[1]},
        "noc85_mean": round(float(np.mean([k for k, _ in n85])), 3),
        "noc90_mean": round(float(np.mean([k for k, _ in n90])), 3),
        "never_90_share": round(float(np.mean([not ok for _, ok in n90])), 4),
        "max_dice_drop": round(max(0.0, float(drops[worst])), 4),
        "max_dice_drop_where": {"object": names[worst[0]], "click": int(worst[1]) + 1},
        "clicks_dropping_over_0.01": int((drops > 0.01).sum()),
        "clicks_scored": int(drops.size),
        "max_other_label_drop": round(max(other_drops or [0.0]), 4),
        "latency_ms_p50": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "latency_ms_p95": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
        "clicks_timed": int(len(ms)),
    }


def evaluate(engine, data_dir, refiners: dict, split: str = "test", max_clicks: int = 20,
             limit: int | None = None, log=print, domain: str = "target") -> dict:
    """Per method name in `refiners`: `evaluate_paths` over the `domain` cases of `split` of the
    task folder `data_dir` that have labels."""
    if (domain == "source") != (engine.mode == "source"):
        raise InputError(f"{domain} cases need an engine in mode 'source' exactly when they are source "
                         f"images; this engine is in mode {engine.mode!r}.")
    return evaluate_paths(engine, labelled_paths(data_dir, split, domain), refiners, max_clicks, limit, log, domain)


def labelled_paths(data_dir, split: str, domain: str) -> list:
    """(id, image path, label path) of the labelled `domain` cases of `split` of a task folder."""
    from ..data import TaskDir

    paths = [c for c in TaskDir(data_dir).cases(split, domain) if c[2] is not None]
    if not paths:
        raise InputError(f"{data_dir} has no labelled {domain} cases in split {split!r}: the robot "
                         "user needs reference labels to click against.")
    return paths


def evaluate_paths(engine, paths, refiners: dict, max_clicks: int = 20, limit: int | None = None,
                   log=print, domain: str = "target") -> dict:
    """`evaluate_cases` over (id, image path, reference label path) cases (the first `limit`),
    e.g. a user's folders of images and label maps."""
    from ..imageio import read_header, read_image

    paths = list(paths)[: limit or None]

    def check(image_path, label_path) -> None:
        """The pair's grids from the files' headers (both files read where a header cannot tell:
        a DICOM folder, a 2D file), the label's values from its voxels: each image is read once,
        for its evaluation."""
        image, truth = read_header(image_path), read_header(label_path)
        label = None
        if image is None or truth is None:
            image, truth = read_image(image_path), read_image(label_path)
            label = truth
        if not same_grid(image, truth):
            raise InputError(f"The label map {label_path} is not on the grid of {image_path} (size, spacing, "
                             f"origin or direction differ: image {image.GetSize()}, label {truth.GetSize()}).")
        unknown = undefined_label_values(read_image(label_path) if label is None else label, engine.bundle.labels)
        if unknown:
            raise InputError(f"The label map {label_path} holds values {unknown[:10]} that the model does not "
                             f"define (its labels: {engine.bundle.labels}); relabel them or use the model "
                             "made for these structures.")

    for _, image_path, label_path in paths:  # every pair checked before any case is evaluated
        check(image_path, label_path)
    cases = ((case_id, read_image(image_path), read_image(label_path)) for case_id, image_path, label_path in paths)
    return evaluate_cases(engine, cases, len(paths), refiners, max_clicks, log, domain)


def evaluate_cases(engine, cases, n_cases: int, refiners: dict, max_clicks: int = 20, log=print,
                   domain: str = "target") -> dict:
    """Per method name in `refiners`: summary (see `summarise`) plus per-label NoC@90 and the
    Dice curves, over `cases` ((case id, image, reference label image on its grid), `n_cases` of
    them, read one at a time). A case may carry a fourth item (engine, domain[, empty]): its
    sessions start from that engine's result, the image read as `domain`, or with `empty` true
    from an empty mask with that result's image channels (every label outlined from nothing);
    without it, from `engine`'s result read as `domain`. `max_other_label_drop`: the largest Dice
    drop a click on one label caused to another (a positive click may take their voxels)."""
    from ..interactive.session import InteractiveSession

    bundle = engine.bundle
    label_names = {v: k for k, v in bundle.labels.items() if v != 0}
    curves = {name: [] for name in refiners}
    latencies = {name: [] for name in refiners}
    other_drops = {name: [] for name in refiners}
    objects = []
    for i, (case_id, image, truth_image, *how) in enumerate(cases):
        drafter, case_domain, *empty = how[0] if how else (engine, domain)
        truth = sitk.GetArrayFromImage(truth_image).astype(np.int16)
        result = drafter.segment(image, preview=True, uncertainty=False)
        values = [v for v in label_names if (truth == v).any()]
        objects += [f"{case_id}/{label_names[v]}" for v in values]
        # normalised once per case; each object's session gets its own label and probabilities
        start = InteractiveSession.from_result(image, result, bundle, domain=case_domain)
        label, probabilities = ((np.zeros(truth.shape, np.int16), None) if any(empty)
                                else (result.label, result.probabilities))
        for name, refiner in refiners.items():
            for value in values:
                session = InteractiveSession(image, label, probabilities, start.features, start.preview, refiner,
                                             start.label_values)
                curve, times, other_drop = robot_on_label(session, truth, value, max_clicks)
                curves[name].append(curve)
                latencies[name] += times
                other_drops[name].append(other_drop)
        log(f"[{i + 1}/{n_cases}] {case_id}: " + "  ".join(
            f"{name} {np.mean([c[-1] for c in curves[name][-len(values):]]):.3f}" for name in refiners))
    out = {}
    for name in refiners:
        summary = summarise(curves[name], latencies[name], objects, other_drops[name])
        per_label = {}
        for value, label_name in label_names.items():
            rows = [c for c, o in zip(curves[name], objects) if o.endswith(f"/{label_name}")]
            if rows:
                per_label[label_name] = {
                    "dice_0": round(float(np.mean([r[0] for r in rows])), 4),
                    "noc90_mean": round(float(np.mean([noc(r, 0.9, max_clicks)[0] for r in rows])), 3)}
        summary["per_label"] = per_label
        summary["curves"] = {o: [round(v, 4) for v in c] for o, c in zip(objects, curves[name])}
        out[name] = summary
    return out
