"""The `crossdomainseg` command line: one subcommand per feature module.

Each module listed in COMMANDS exposes `add_parser(subparsers)`, which registers its subcommand
and sets `func` on it; the function takes the parsed arguments and returns an exit code.
"""

import argparse
import importlib
import sys

from .errors import InputError

COMMANDS = [
    "crossdomainseg.interactive.cli",
    "crossdomainseg.training.cli",
    "crossdomainseg.web_cli",
    "crossdomainseg.data.cli",
    "crossdomainseg.curriculum.cli",
    "crossdomainseg.segment_cli",
    "crossdomainseg.demo",
    "crossdomainseg.pacs.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossdomainseg",
        description="Segment images of a modality without labels: data, training, inference, "
        "click correction and background fine-tuning. Run `crossdomainseg COMMAND --help` for each.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
