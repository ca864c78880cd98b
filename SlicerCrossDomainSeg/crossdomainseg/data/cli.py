"""`crossdomainseg data make`: write a seeded cross-domain task folder."""

from __future__ import annotations

import time

from tqdm import tqdm

from .tasks import TASKS


def add_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="generate cross-domain tasks with ground truth",
                                 description="Generate seeded cross-domain segmentation tasks with ground truth.")
    commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    tasks = "; ".join(f"{name}: {spec.description}" for name, spec in TASKS.items())
    make = commands.add_parser(
        "make", help="write a task folder (source/ and target/ images, labels, task.json)",
        description=f"Write N source and N target cases (different subjects, split 60/20/20 into "
        f"train/val/test) to OUT. Target labels and paired source renderings are written for val and "
        f"test only. Tasks: {tasks}.")
    make.add_argument("--task", default="phantom-ct-mr", choices=sorted(TASKS), help="which task")
    make.add_argument("--n", type=int, default=20, help="cases per domain (at least 3)")
    make.add_argument("--seed", type=int, default=0, help="same seed, same task, voxel for voxel")
    make.add_argument("--out", required=True, help="output folder (must be new or empty)")
    make.add_argument("--templates", help="brain-t1-t2: the niworkflows-0.0.5.tar.gz archive or the folder "
                      "extracted from it (default: downloaded from PyPI once and cached, see "
                      "CROSSDOMAINSEG_CACHE)")
    make.set_defaults(func=_make)


def _make(args) -> int:
    from .tasks import make_task

    start = time.perf_counter()
    bars = []  # opened on the first finished case, so that input errors print without a bar

    def progress(done, total, case_id):
        if not bars:
            bars.append(tqdm(total=total, unit="case", desc=args.task))
        bars[0].set_postfix_str(case_id)
        bars[0].update(1)

    try:
        out = make_task(args.task, args.n, args.seed, args.out, progress=progress, templates=args.templates)
    finally:
        for bar in bars:
            bar.close()
    print(f"wrote {args.task} ({args.n} source + {args.n} target cases, seed {args.seed}) to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
