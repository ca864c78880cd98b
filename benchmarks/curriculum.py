"""Curriculum benchmark (issue 6): the table of METHOD.md section 7 on the target test split, the
confident samples per epoch, Dice after 0/1/3/5 accepted corrected cases, and the click latency
while the background trainer runs compared with idle. Writes benchmarks/results/curriculum.json
and benchmarks/results/curriculum_confident.png (for another --task: curriculum_<task>.json and
curriculum_<task>_confident.png).

  nice -n 15 python benchmarks/curriculum.py [--task-dir DIR]
      [--task phantom-ct-mr] [--bundle Resources/bundles/<task>] [--epochs 8] [--threads 2]

Methods, all from the same bundle and data in one run:
  vanilla       reference segmenter on the raw target image
  tdgan         reference segmenter on G(target) (the Engine's default path)
  mean_teacher  plain mean teacher: every unlabelled target image every epoch, no U, no gate,
                every voxel in the consistency loss, the teacher's labels as they are
  mean_teacher_same_pseudo_labels  the same, with the curriculum's pseudo-labels (confident
                voxels only, labels fitted to the image near their boundaries and given back
                the tissue they swallowed, contained labels found again by their contrast): shows
                what the image curriculum adds on top of them
  curriculum    the patent's curriculum (memory bank, U with TTA, tau_u, warm-up gate tau_ts); with
                --param appearance_weight=1 also the labelled source replayed in the target's
                appearance (off by default)
  supervised    upper bound: the segmenter fine-tuned on the labelled target val split
  mean_teacher_with_accepted, curriculum_with_accepted  the semi-supervised variant (patent
                Fig. 5), as the product runs it: the same unlabelled images plus, as accepted
                cases, the labelled cases the supervised bound learns from, with its epochs and
                steps (so as many supervised steps as the bound)
The unlabelled data are the target train split (labels never read); the target val split stands
in for the clinician's accepted corrected cases; everything is scored on the target test split,
on each image's own grid (Dice, HD95 and ASSD in mm over the foreground labels), as the networks
give them and (`delivered_dice`) after the bundle's fit to the image, as the engine delivers them.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from common import RESULTS, task_dir, write_result

from crossdomainseg import geometry
from crossdomainseg.bundle import load_bundle
from crossdomainseg.curriculum import process
from crossdomainseg.curriculum.cps import CrossPseudoSupervision
from crossdomainseg.curriculum.params import CurriculumParams
from crossdomainseg.curriculum.trainer import CurriculumTrainer, prepare
from crossdomainseg.device import configure
from crossdomainseg.imageio import read_image
from crossdomainseg.metrics import assd, dice, dice_per_label, hd95
from crossdomainseg.postprocess import bundle_steps, postprocess_image

ROOT = Path(__file__).resolve().parents[1]


def load_split(bundle, task, split, domain, labelled=True, limit=None):
    out = []
    for case_id, image_path, label_path in list(task.cases(split, domain))[:limit]:
        image = read_image(image_path)
        label = read_image(label_path) if labelled else None
        out.append((prepare(bundle, image, f"{domain}:{case_id}", domain, label), image, label))
    return out


def score(trainer, network, test, reads):
    """Mean Dice / HD95 / ASSD of `network` on the test cases, on each image's own grid, and the
    mean Dice of each label; `delivered_dice`: the same labels after the bundle's post-processing
    steps (postprocess.py), as the engine delivers them to the clinician."""
    names = {v: k for k, v in trainer.bundle.labels.items() if v != 0}
    labels = list(names)
    rows, per_label, delivered = [], [], []
    for volume, image, label in test:
        predicted = trainer.predict(network, volume, reads).astype(np.uint8)
        work = sitk.GetImageFromArray(predicted[None] if predicted.ndim == 2 else predicted)  # 2D: one slice
        work.CopyInformation(geometry.working_reference(image, trainer.bundle.spacing))
        pred = geometry.resample_to_reference(work, image, sitk.sitkNearestNeighbor, 0)
        ref = sitk.Cast(label, sitk.sitkUInt8)
        rows.append((dice(pred, ref, labels), hd95(pred, ref, labels=labels), assd(pred, ref, labels=labels)))
        per_label.append(dice_per_label(pred, ref, labels))
        fitted = postprocess_image(bundle_steps(trainer.bundle.metadata), sitk.GetArrayFromImage(pred), image)
        delivered.append(dice(sitk.Cast(fitted, sitk.sitkUInt8), ref, labels))
    dice_m, hd_m, assd_m = (float(np.mean(col)) for col in zip(*rows))
    return {"dice": round(dice_m, 4), "hd95": round(hd_m, 2), "assd": round(assd_m, 2),
            "dice_per_label": {name: round(float(np.mean([row[v] for row in per_label])), 4)
                               for v, name in names.items()},
            "delivered_dice": round(float(np.mean(delivered)), 4)}


def share_caches(trainer, probe):
    """G and S_pre are frozen and shared by every method: translate and compute U once."""
    trainer._translated, trainer._ref_cache = probe._translated, probe._ref_cache
    trainer.bank.uncertainty = probe.bank.uncertainty


def train(bundle, params, target, accepted, source, epochs, probe, start=None, label="",
          kind=CurriculumTrainer, watch=(), watch_every=0):
    """`watch`: labelled cases not trained on whose Dice (working grid) is recorded every
    `watch_every` epochs and after the last in `trainer.watched` {epoch: Dice}."""
    trainer = kind(bundle, params, target, accepted, source)
    trainer.watched = {}
    if start is not None:
        trainer.student.load_state_dict(start.student.state_dict())
        trainer.teacher.load_state_dict(start.teacher.state_dict())
        trainer.bank.load_state_dict(start.bank.state_dict())
        trainer.epoch = start.epoch
    share_caches(trainer, probe)
    began = time.perf_counter()
    for i in range(epochs):
        summary = trainer.run_epoch()
        print(f"  {label} epoch {summary['epoch']}: confident {summary['confident']} "
              f"losses {({k: round(v, 3) for k, v in summary['losses'].items()})} "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
        if "appearance_medians" in summary:
            print(f"  {label} target appearance medians {summary['appearance_medians']}", flush=True)
        done = summary["epoch"] + 1
        if watch and ((watch_every and done % watch_every == 0) or i == epochs - 1):
            trainer.watched[done] = round(trainer.mean_dice(trainer.student, watch), 4)
            print(f"  {label} epoch {summary['epoch']}: Dice on the accepted cases {trainer.watched[done]}", flush=True)
    return trainer


def click_latency(bundle_path, test, store_root, registry_root, unlabelled, params, n_clicks):
    """p50 of one click (InteractiveSession.add_click) idle, then with the trainer process running."""
    from crossdomainseg.engine import Engine
    from crossdomainseg.interactive.session import InteractiveSession

    from crossdomainseg.interactive.refiner import click_refiner

    bundle = load_bundle(bundle_path)
    refiner = click_refiner(bundle)  # as the Slicer Logic does
    engine = Engine(bundle, device="cpu", threads=1)
    _, image, label = test[0]
    result = engine.segment(image, preview=True, uncertainty=False)
    label_array = sitk.GetArrayFromImage(label)
    values = [int(v) for v in np.unique(label_array) if v != 0]

    def measure():
        # the same clicks idle and while training (a fresh session each time, same generator seed)
        rng = np.random.default_rng(0)
        session = InteractiveSession.from_result(image, result, bundle, refiner)
        times = []
        for _ in range(n_clicks):
            value = int(rng.choice(values))
            # in tissue the current result misses: a click there always runs the refiner
            zyx = np.argwhere((label_array == value) & (session.label != value))
            if not len(zyx):
                zyx = np.argwhere(label_array == value)
            z, y, x = zyx[rng.integers(len(zyx))]
            point = image.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
            began = time.perf_counter()
            session.add_click(point, positive=True, label=value)
            times.append(time.perf_counter() - began)
        return 1000 * statistics.median(times)

    measure()  # warm-up
    idle = measure()
    process.start(store_root, registry_root, bundle=bundle_path, unlabelled=unlabelled, params=params)
    try:
        # Measure once it works on the data (U, gate, steps: all CPU-bound network passes).
        deadline = time.monotonic() + 600
        while process.status(store_root).get("state") != "training" and time.monotonic() < deadline:
            time.sleep(1.0)
        state = process.status(store_root)
        if state.get("state") != "training":
            raise RuntimeError(f"trainer did not start training: {state}")
        time.sleep(5.0)
        training = measure()
        if not process.status(store_root)["running"]:
            raise RuntimeError("the trainer stopped while clicks were measured")
    finally:
        process.stop(store_root, timeout=120)
    return idle, training, refiner.name


def plot(confident, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(range(1, len(confident) + 1), confident, marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("confident samples")
    ax.set_title("Curriculum: unlabelled target images used per epoch")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


ROWS = ("vanilla", "tdgan", "mean_teacher", "mean_teacher_same_pseudo_labels", "cps", "curriculum",
        "supervised", "mean_teacher_with_accepted", "curriculum_with_accepted", "accepted_curve", "latency")


def _can(check) -> bool:
    """Whether a target's rows were all run (a KeyError means one was not)."""
    try:
        check()
        return True
    except KeyError:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task-dir", default=None, help="task folder (default: generated like the bundles' training data)")
    parser.add_argument("--task", default="phantom-ct-mr", help="task whose bundle and data are used")
    parser.add_argument("--bundle", default=None, help="model bundle (default: the task's shipped bundle)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of mean teacher and curriculum")
    parser.add_argument("--accept-epochs", type=int, default=2,
                        help="further curriculum epochs after accepting 1/3/5 corrected cases")
    parser.add_argument("--supervised-epochs", type=int, default=8)
    parser.add_argument("--supervised-steps", type=int, default=10, help="steps per supervised epoch")
    parser.add_argument("--replay", type=int, default=4, help="labelled source cases for replay")
    parser.add_argument("--unlabelled", type=int, default=None, help="at most this many unlabelled images")
    parser.add_argument("--clicks", type=int, default=30, help="clicks per latency measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="at most this many cases per split (smoke runs)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="curriculum parameter override for all trained methods")
    parser.add_argument("--name", help="results file name (default: curriculum, or curriculum_<task>)")
    parser.add_argument("--score-accepted", type=int, default=0, metavar="EPOCHS",
                        help="also score mean teacher, CPS and curriculum on the accepted cases (target val, "
                             "working grid; the data the protocol lets a choice read) every this many "
                             "epochs and after the last (0: not)")
    parser.add_argument("--rows", nargs="+", default=None, choices=ROWS,
                        help="methods to run (default: all); the accepted-case curve and the click "
                             "latency need `curriculum` and `latency`")
    args = parser.parse_args()
    rows = set(args.rows or ROWS)
    threads = configure(args.threads)
    load_at_start = os.getloadavg()  # the latency ratio means little on a machine busy elsewhere
    torch.manual_seed(0)
    began = time.perf_counter()
    args.bundle = args.bundle or str(ROOT / "Resources" / "bundles" / args.task)
    bundle = load_bundle(args.bundle)
    task = task_dir(args.task, args.task_dir)
    overrides = dict(p.split("=", 1) for p in args.param)
    target = [v for v, _, _ in load_split(bundle, task, "train", "target", labelled=False,
                                          limit=args.unlabelled or args.limit)]
    accepted = [v for v, _, _ in load_split(bundle, task, "val", "target", limit=args.limit)]
    source = [v for v, _, _ in load_split(bundle, task, "train", "source", limit=args.replay)]
    test = load_split(bundle, task, "test", "target", limit=args.limit)
    print(f"data: {len(target)} unlabelled, {len(accepted)} accepted, {len(test)} test "
          f"({time.perf_counter() - began:.0f} s)", flush=True)

    base = CurriculumParams.for_bundle(bundle.metadata, {**overrides, "holdout_every": 0})
    probe = CurriculumTrainer(bundle, base, [], [])
    began_u = time.perf_counter()
    u_values = [probe.reference_view(v)[1] for v in target]
    print(f"U of the unlabelled images ({time.perf_counter() - began_u:.0f} s): "
          f"{sorted(round(u, 3) for u in u_values)}", flush=True)
    table = {"vanilla": score(probe, probe.reference, test, "image")} if "vanilla" in rows else {}
    if "tdgan" in rows and probe.generator is not None:
        table["tdgan"] = score(probe, probe.reference, test, "preview")
    print(table, flush=True)
    # the plain peers train without the curriculum's target-appearance replay
    watching = {"watch": accepted, "watch_every": args.score_accepted} if args.score_accepted else {}
    plain_params = {**base.to_dict(), "curriculum": False, "confidence_threshold": 0.0, "appearance_weight": 0.0}
    if "mean_teacher" in rows:
        plain = train(bundle, CurriculumParams(**plain_params), target, [], source, args.epochs, probe,
                      label="mean teacher", **watching)
        table["mean_teacher"] = score(plain, plain.student, test, None)
        if plain.watched:
            table["mean_teacher"]["accepted_dice_by_epoch"] = plain.watched
        print("mean_teacher", table["mean_teacher"], flush=True)
    if "cps" in rows:
        cps = train(bundle, CurriculumParams(**{**base.to_dict(), "curriculum": False}), target, [], source,
                    args.epochs, probe, label="cps", kind=CrossPseudoSupervision, **watching)
        table["cps"] = score(cps, cps.student, test, None)
        if cps.watched:
            table["cps"]["accepted_dice_by_epoch"] = cps.watched
        print("cps", table["cps"], flush=True)
    if base.confidence_threshold > 0 and "mean_teacher_same_pseudo_labels" in rows:
        same = train(bundle, CurriculumParams(**{**base.to_dict(), "curriculum": False, "appearance_weight": 0.0}),
                     target, [], source, args.epochs, probe, label="mean teacher, same pseudo-labels")
        table["mean_teacher_same_pseudo_labels"] = score(same, same.student, test, None)
        print("mean_teacher_same_pseudo_labels", table["mean_teacher_same_pseudo_labels"], flush=True)
    confident, after = [], {}
    if "curriculum" in rows:
        curriculum = train(bundle, base, target, [], source, args.epochs, probe, label="curriculum", **watching)
        table["curriculum"] = score(curriculum, curriculum.student, test, None)
        if curriculum.watched:
            table["curriculum"]["accepted_dice_by_epoch"] = curriculum.watched
        print("curriculum", table["curriculum"], flush=True)
        confident = [h["confident"] for h in curriculum.history]
    if "supervised" in rows:
        # Same input and start as the curriculum; true labels instead of the teacher's.
        supervised_params = CurriculumParams(**{**base.to_dict(), "curriculum": False, "consistency_weight": 0.0,
                                                "replay_weight": 0.0, "steps_per_epoch": args.supervised_steps})
        supervised = train(bundle, supervised_params, [], accepted, [], args.supervised_epochs, probe,
                           label="supervised")
        table["supervised"] = score(supervised, supervised.student, test, None)
        print("supervised", table["supervised"], flush=True)

    with_accepted = {"steps_per_epoch": args.supervised_steps}
    for name, params in (("mean_teacher_with_accepted", plain_params), ("curriculum_with_accepted", base.to_dict())):
        if name not in rows:
            continue
        trainer = train(bundle, CurriculumParams(**{**params, **with_accepted}), target, accepted, source,
                        args.supervised_epochs, probe, label=name.replace("_", " "))
        table[name] = score(trainer, trainer.student, test, None)
        print(name, table[name], flush=True)

    if "curriculum" in rows and "accepted_curve" in rows:
        after = {"0": table["curriculum"]["dice"]}
        for k in (1, 3, 5):
            tuned = train(bundle, base, target, accepted[:k], source, args.accept_epochs, probe,
                          start=curriculum, label=f"{k} accepted")
            after[str(k)] = score(tuned, tuned.student, test, None)["dice"]
            print(f"after {k} accepted: {after[str(k)]}", flush=True)

    idle = training = refiner = None
    if "latency" in rows:
        with tempfile.TemporaryDirectory() as tmp:
            unlabelled = Path(tmp) / "unlabelled"
            unlabelled.mkdir()
            for case_id, image_path, _ in task.cases("train", "target"):
                (unlabelled / image_path.name).symlink_to(image_path)
            idle, training, refiner = click_latency(args.bundle, test, Path(tmp) / "store", Path(tmp) / "registry",
                                                    unlabelled, {**overrides, "epochs": 1000}, args.clicks)
    name = args.name or ("curriculum" if args.task == "phantom-ct-mr" else f"curriculum_{args.task}")
    if confident:
        plot(confident, RESULTS / f"{name}_confident.png")
    d = {k: v["dice"] for k, v in table.items()}
    payload = {
        "task": task.name,
        "bundle_version": bundle.version,
        "rows_run": sorted(rows),
        "table": table,
        "confident_per_epoch": confident,
        "dice_after_accepted": after,
        "trainer_process": {"threads": process.DEFAULT_THREADS, "nice": process.DEFAULT_NICE},
        "params": base.to_dict(),
        "epochs": {"mean_teacher": args.epochs, "curriculum": args.epochs, "cps": args.epochs,
                   "supervised": args.supervised_epochs, "supervised_steps_per_epoch": args.supervised_steps,
                   "after_accepting": args.accept_epochs},
        "u_unlabelled": sorted(round(u, 4) for u in u_values),
        "splits": {"unlabelled": "target train", "accepted": "target val", "scored": "target test"},
        "targets_met": {
            name: check for name, check in (
                ("curriculum_beats_vanilla_by_0.10", lambda: d["curriculum"] - d["vanilla"] >= 0.10),
                ("curriculum_beats_mean_teacher", lambda: d["curriculum"] > d["mean_teacher"]),
                ("curriculum_beats_cps", lambda: d["curriculum"] > d["cps"]),
                ("curriculum_within_0.03_of_supervised", lambda: d["supervised"] - d["curriculum"] <= 0.03),
                ("with_accepted_beats_mean_teacher_with_accepted",
                 lambda: d["curriculum_with_accepted"] > d["mean_teacher_with_accepted"]),
            ) if _can(check)
        },
        "wall_s": round(time.perf_counter() - began, 1),
        "load_average_at_start": [round(v, 2) for v in load_at_start],
    }
    payload["targets_met"] = {k: bool(v()) for k, v in payload["targets_met"].items()}
    if idle is not None:
        payload.update({"click_latency_ratio_training_vs_idle": round(training / idle, 3),
                        "click_latency_ms_p50_idle": round(idle, 2),
                        "click_latency_ms_p50_training": round(training, 2), "click_refiner": refiner})
        payload["targets_met"]["latency_ratio_at_most_1.5"] = training / idle <= 1.5
    write_result(name, payload, threads)


if __name__ == "__main__":
    main()
