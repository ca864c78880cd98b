"""`crossdomainseg train-prompt`: train the prompt network and add it to a bundle."""

from __future__ import annotations

import shlex
import sys


def add_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "train-prompt", help="train the interactive prompt network (draft correction and new structures)",
        description="Trains on the task's labelled source training cases (simulated clicks on "
        "single labels, their parts, unions and synthetic lesions, from empty and corrupted masks, on "
        "synthetic contrasts) and, with --target-share, on its unlabelled target training images with "
        "the bundle's confident pseudo-labels (target labels are never read); writes models/prompt.pt "
        "into the bundle, also every --checkpoint-minutes while it trains.")
    train.add_argument("--bundle", required=True, help="model bundle folder to add the network to")
    train.add_argument("--data", required=True, help="task folder (crossdomainseg data make)")
    train.add_argument("--minutes", type=float, default=45.0, help="training wall time")
    train.add_argument("--steps", type=int, default=None, help="train this many steps (overrides --minutes)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=1)
    train.add_argument("--batch", type=int, default=8)
    train.add_argument("--checkpoint-minutes", type=float, default=5.0)
    train.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay over the run)")
    train.add_argument("--fine-tune", action="store_true",
                       help="start from the bundle's prompt network; most samples then have earlier clicks "
                       "the network answered itself")
    train.add_argument("--target-share", type=float, default=0.0,
                       help="share of samples (0-1) on the task's unlabelled target training images, with "
                       "pseudo-labels from the bundle's segmenter (voxels under 0.9 probability are unknown: "
                       "never an object, a click or a loss term); shown unchanged, no synthetic contrast")
    train.add_argument("--clicks-only", action="store_true",
                       help="a network without the box channel (4 inputs, as the shipped brain network)")
    train.set_defaults(func=run_train_prompt)


def run_train_prompt(args) -> int:
    from ..errors import InputError
    from .cli import interrupt_on_signals
    from .train_prompt import train_and_ship_prompt

    interrupt_on_signals()
    if args.minutes <= 0 and not args.steps:
        raise InputError(f"--minutes must be above 0, got {args.minutes}.")
    command = "crossdomainseg " + shlex.join(sys.argv[1:])
    train_and_ship_prompt(args.bundle, args.data, args.minutes, args.seed, args.threads, args.batch,
                          args.steps, command=command, checkpoint_minutes=args.checkpoint_minutes, lr=args.lr,
                          fine_tune=args.fine_tune, target_share=args.target_share, clicks_only=args.clicks_only,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0
