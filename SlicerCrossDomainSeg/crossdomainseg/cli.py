"""The `crossdomainseg` command line: one subcommand per feature module.

Each module listed in COMMANDS exposes `add_parser(subparsers)`, which registers its subcommand
and sets `func` on it; the function takes the parsed arguments and returns an exit code. Every
parser in the tree is a `CliParser`, whose help shows each option's default.
"""

import argparse
import copy
import importlib
import sys

from .errors import InputError

COMMANDS = [
    "crossdomainseg.interactive.cli",
    "crossdomainseg.evaluation.cli",
    "crossdomainseg.training.cli",
    "crossdomainseg.web_cli",
    "crossdomainseg.data.cli",
    "crossdomainseg.curriculum.cli",
    "crossdomainseg.segment_cli",
    "crossdomainseg.demo",
    "crossdomainseg.pacs.cli",
    "crossdomainseg.store_cli",
]


def _shows_default(action: argparse.Action) -> bool:
    default = action.default
    return bool(action.option_strings) and not (default is None or default is False
                                                 or default is argparse.SUPPRESS)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option with a default says it, with or without help text; a description written in
    lines keeps them, a one-line description is wrapped."""

    def _fill_text(self, text, width, indent):
        if "\n" in text.strip():
            return argparse.RawDescriptionHelpFormatter._fill_text(self, text, width, indent)
        return super()._fill_text(text, width, indent)

    def _format_action(self, action):
        if not action.help and _shows_default(action):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or not _shows_default(action):
            return text
        return f"{text} (default: %(default)s)"


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults; subcommand parsers are made of the same class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
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
