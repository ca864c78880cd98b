"""The `crossdomainseg` command line: one subcommand per feature module.

Each module listed in COMMANDS exposes `add_parser(subparsers)`, which registers its subcommand
and sets `func` on it; the function takes the parsed arguments and returns an exit code. Every
parser in the tree is a `CliParser`, whose help shows each option's default.

Other installed packages (the web app) add subcommands the same way through the entry point group
`crossdomainseg.commands` (name = command, value = "module:add_parser"), so the engine names no
front end. Run from a source checkout, the entry points declared in its pyproject.toml count too:
an install made before they were declared does not hide them.
"""

import argparse
import copy
import importlib
import importlib.metadata
import sys
from pathlib import Path

from .errors import InputError

PLUGIN_GROUP = "crossdomainseg.commands"
CHECKOUT_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# said when a command is unknown: front-end commands come with the project's extras
EXTRAS_HINT = "commands of the front ends come with their extras, e.g. pip install 'crossdomainseg[web]'"
COMMANDS = [
    "crossdomainseg.interactive.cli",
    "crossdomainseg.evaluation.cli",
    "crossdomainseg.training.cli",
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


def plugin_commands() -> dict[str, str]:
    """Command name -> "module:function" of the subcommands other packages add: the installed
    entry points of PLUGIN_GROUP, and those declared in the checkout's pyproject.toml when the
    engine runs from one."""
    commands = {entry.name: entry.value for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP)}
    if CHECKOUT_PYPROJECT.is_file() and sys.version_info >= (3, 11):
        import tomllib

        project = tomllib.loads(CHECKOUT_PYPROJECT.read_text()).get("project", {})
        if project.get("name") == "crossdomainseg":
            commands.update(project.get("entry-points", {}).get(PLUGIN_GROUP, {}))
    return commands


def _add_plugin(subparsers, name: str, target: str) -> None:
    """Let the plugin `target` ("module:function") register its subcommand; a plugin that cannot
    be imported (its extra not installed) becomes a command that says so."""
    module, _, function = target.partition(":")
    try:
        add_parser = getattr(importlib.import_module(module), function or "add_parser")
    except (ImportError, AttributeError) as error:
        reason = f"The `{name}` command cannot load ({target}: {error}); {EXTRAS_HINT}."

        def unavailable(args, reason=reason):
            raise InputError(reason)

        # takes any arguments (no option prefix), so running it reaches the message
        broken = subparsers.add_parser(name, help=f"(not available: {error})", add_help=False, prefix_chars="\0")
        broken.add_argument("arguments", nargs="*")
        broken.set_defaults(func=unavailable)
        return
    add_parser(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="crossdomainseg",
        description="Segment images of a modality without labels: data, training, inference, "
        "click correction and background fine-tuning. Run `crossdomainseg COMMAND --help` for each.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(subparsers)
    for name, target in sorted(plugin_commands().items()):
        if name not in subparsers.choices:
            _add_plugin(subparsers, name, target)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        print(f"error: no command {argv[0]!r} (commands: {', '.join(commands)}); {EXTRAS_HINT}.",
              file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
