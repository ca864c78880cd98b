"""`crossdomainseg trainer start|stop|status|rollback`: the background fine-tuning from a shell."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError
from ..store import image_entries
from . import process


def _params(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InputError(f"--param takes NAME=VALUE, got {pair!r}.")
        name, value = pair.split("=", 1)
        out[name.strip()] = value.strip()
    return out


def _start(args) -> int:
    pid = process.start(args.store, args.registry, bundle=args.bundle, source=args.source,
                        unlabelled=args.unlabelled, params=_params(args.param),
                        threads=args.threads, nice=args.nice, device=args.device)
    print(json.dumps({"started": pid, "status": str(process.trainer_dir(args.store) / "status.json")}))
    if args.unlabelled and not image_entries(Path(args.unlabelled)):  # start refuses it without accepted cases
        print(f"note: {args.unlabelled} holds no images yet; the trainer learns from the accepted cases "
              "alone and picks up images put there later.", file=sys.stderr)
    return 0


def _stop(args) -> int:
    print(json.dumps(process.stop(args.store, timeout=args.timeout), indent=2, default=str))
    return 0


def _status(args) -> int:
    print(json.dumps(process.status(args.store), indent=2, default=str))
    return 0


def _rollback(args) -> int:
    from ..registry import ModelRegistry

    registry = ModelRegistry(args.registry)
    before = registry.current_version()
    print(json.dumps({"from": before, "current": registry.rollback()}))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "trainer", help="background fine-tuning on accepted cases and unlabelled target images",
        description="Run the curriculum trainer in its own low-priority process; check it, stop "
        "it, or roll the published model back.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    start = actions.add_parser("start", help="start (or resume) the trainer process")
    start.add_argument("--store", required=True, help="accepted-case store folder")
    start.add_argument("--registry", required=True, help="model registry folder (created from --bundle)")
    start.add_argument("--bundle", help="model bundle to create the registry from")
    start.add_argument("--unlabelled", help="folder of unlabelled target images to learn from")
    start.add_argument("--source", help="labelled source data for replay (images/ and labels/)")
    start.add_argument("--threads", type=int, default=process.DEFAULT_THREADS, help="torch threads (default 1)")
    start.add_argument("--nice", type=int, default=process.DEFAULT_NICE, help="niceness increment (default 10)")
    start.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    start.add_argument("--param", action="append", metavar="NAME=VALUE",
                       help="curriculum parameter override (see curriculum/params.py), repeatable")
    start.set_defaults(func=_start)

    stop = actions.add_parser("stop", help="stop after the current step (checkpointed)")
    stop.add_argument("--store", required=True)
    stop.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a clean stop before the process is terminated")
    stop.set_defaults(func=_stop)

    status = actions.add_parser("status", help="print the trainer status as JSON")
    status.add_argument("--store", required=True)
    status.set_defaults(func=_status)

    rollback = actions.add_parser("rollback", help="make the previous model version current again")
    rollback.add_argument("--registry", required=True)
    rollback.set_defaults(func=_rollback)
