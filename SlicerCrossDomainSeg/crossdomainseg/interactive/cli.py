"""`crossdomainseg train-refiner`: train the click refiner and add it to a bundle."""

from __future__ import annotations

import shlex
import sys


def add_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "train-refiner", help="train the click refiner with a simulated user and add it to a bundle",
        description="Trains on the task's labelled source training cases only (simulated automatic "
        "results and robot clicks) and writes models/refiner.pt into the bundle.")
    train.add_argument("--bundle", required=True, help="model bundle folder to add the refiner to")
    train.add_argument("--data", required=True, help="task folder (crossdomainseg data make)")
    train.add_argument("--minutes", type=float, default=12.0, help="training CPU time (all threads)")
    train.add_argument("--steps", type=int, default=None, help="train this many steps (overrides --minutes)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--batch", type=int, default=4)
    train.add_argument("--drafts", type=int, default=None,
                       help="drafts per case: the bundle's segmenter on randomly remapped copies, "
                       "used as the automatic result in most samples (default 16); 0: synthetic "
                       "corruptions of the label only")
    train.set_defaults(func=run_train)


def run_train(args) -> int:
    import signal

    from ..errors import InputError
    from .train_refiner import DRAFTS_PER_CASE, train_and_ship

    def stop(signum, frame):
        raise KeyboardInterrupt

    # SIGINT / SIGTERM end training early and still write the network trained so far
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    command = "crossdomainseg " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    drafts = DRAFTS_PER_CASE if args.drafts is None else args.drafts
    if drafts < 0:
        raise InputError(f"--drafts must be 0 or more, got {drafts}.")
    train_and_ship(args.bundle, args.data, args.minutes, args.seed, args.threads, args.batch, args.steps,
                   command=command, drafts=drafts, log=lambda m: print(m, file=sys.stderr))
    return 0
