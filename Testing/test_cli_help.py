"""Every subcommand's --help shows the default of each option that has one."""

import argparse

from crossdomainseg.cli import build_parser


def _parsers(parser, path=("crossdomainseg",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_option_default_is_in_the_help():
    checked = 0
    for path, parser in _parsers(build_parser()):
        text = " ".join(parser.format_help().split())  # undo line wrapping
        for action in parser._actions:
            default = action.default
            if not action.option_strings or default is None or default is False or default == argparse.SUPPRESS:
                continue
            assert f"(default: {default})" in text, f"{' '.join(path)} {action.option_strings[0]}"
            checked += 1
    assert checked > 50  # train source, translator, all, eval clicks, segment, data make, ...


def test_train_all_help_names_its_budget_default():
    train_all = next(p for path, p in _parsers(build_parser()) if path[-2:] == ("train", "all"))
    text = " ".join(train_all.format_help().split())
    assert max(len(line) for line in train_all.format_help().splitlines()) <= 100  # wrapped
    assert "--budget-minutes BUDGET_MINUTES wall-clock time for all stages (default: 90.0)" in text
