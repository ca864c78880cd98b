"""Subcommands that other packages add to `crossdomainseg` through the `crossdomainseg.commands`
entry points (the web app's `web`), found without the engine naming them."""

import importlib.metadata

import pytest

from crossdomainseg import cli

PLUGIN = '''
def add_parser(subparsers):
    parser = subparsers.add_parser("hello", help="a plugin command")
    parser.add_argument("--times", type=int, default=1)
    parser.set_defaults(func=lambda args: print("hello " * args.times) or 7)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A module `fake_plugin` on sys.path, no installed entry points, no checkout pyproject.toml;
    returns a function that sets the installed entry points to {name: value}."""
    (tmp_path / "fake_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "CHECKOUT_PYPROJECT", tmp_path / "checkout" / "pyproject.toml")

    def install(points: dict) -> None:
        entries = [importlib.metadata.EntryPoint(name, value, cli.PLUGIN_GROUP) for name, value in points.items()]
        monkeypatch.setattr(importlib.metadata, "entry_points",
                            lambda group=None: entries if group == cli.PLUGIN_GROUP else [])

    install({})
    return install


def test_an_entry_point_adds_a_command_and_main_dispatches_to_it(plugin, capsys):
    plugin({"hello": "fake_plugin:add_parser"})
    assert cli.main(["hello", "--times", "2"]) == 7
    assert capsys.readouterr().out.strip() == "hello hello"


def test_without_the_entry_point_the_command_is_unknown_and_the_error_says_which_extra(plugin, capsys):
    assert cli.main(["hello"]) == 2
    err = capsys.readouterr().err
    assert "no command 'hello'" in err and "pip install 'crossdomainseg[web]'" in err


def test_a_plugin_that_cannot_be_imported_says_so_when_run(plugin, capsys):
    plugin({"hello": "not_installed_package.cli:add_parser"})
    assert "hello" in cli.build_parser().format_help()  # listed, marked not available
    assert cli.main(["hello", "--times", "2"]) == 2
    err = capsys.readouterr().err
    assert "`hello` command cannot load" in err and "not_installed_package" in err and "pip install" in err


def test_a_checkout_pyproject_declares_commands_that_a_stale_install_lacks(plugin, tmp_path, capsys):
    pyproject = tmp_path / "checkout" / "pyproject.toml"
    pyproject.parent.mkdir()
    table = '[project.entry-points."crossdomainseg.commands"]\nhello = "fake_plugin:add_parser"\n'
    pyproject.write_text('[project]\nname = "another-project"\n\n' + table)
    assert "hello" not in cli.plugin_commands()  # another project's file is not ours
    pyproject.write_text('[project]\nname = "crossdomainseg"\n\n' + table)
    assert cli.plugin_commands() == {"hello": "fake_plugin:add_parser"}
    assert cli.main(["hello"]) == 7


def test_the_repository_registers_the_web_command_in_pyproject():
    """The `web` command reaches the engine's command line only through the entry point."""
    assert cli.plugin_commands().get("web") == "CrossDomainSegWeb.cli:add_parser"
    assert not any("CrossDomainSegWeb" in name for name in cli.COMMANDS)
