"""The README's demo command runs end to end (without serving) and can be run again."""

import json
from pathlib import Path

from crossdomainseg import cli
from crossdomainseg.data.brain import LABELS


def test_demo_writes_outputs_and_reruns(tmp_path):
    out = tmp_path / "demo"
    for _ in range(2):
        assert cli.main(["demo", "--out", str(out), "--no-serve"]) == 0
    summary = json.loads((out / "demo_summary.json").read_text())
    for path in summary["outputs"].values():
        assert Path(path).exists()
    assert 0.0 <= summary["U"] <= 1.0
    assert summary["model_version"].startswith("brain-t1-t2")
    dice = summary["dice_vs_ground_truth"]
    assert set(dice) == set(LABELS) - {"background"}
    assert all(0.0 <= d <= 1.0 for d in dice.values())


def test_demo_hands_the_web_app_a_complete_command_line(tmp_path, monkeypatch):
    """`make demo` serves after the outputs through the `web` command that the web app registers
    as an entry point: the web app gets every one of its options (the server itself is started by
    Testing/test_web_e2e.py)."""
    import importlib.metadata

    from CrossDomainSegWeb import cli as web_cli

    web = importlib.metadata.EntryPoint("web", "CrossDomainSegWeb.cli:add_parser", cli.PLUGIN_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [web] if group == cli.PLUGIN_GROUP else [])
    monkeypatch.setattr(cli, "CHECKOUT_PYPROJECT", tmp_path / "no-checkout" / "pyproject.toml")
    seen = []
    monkeypatch.setattr(web_cli, "run", lambda args: seen.append(web_cli.web_arguments(args)) or 0)
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--port", "0"]) == 0
    (argv,) = seen
    assert argv[argv.index("--port") + 1] == "0" and "--pacs" not in argv
    assert Path(argv[argv.index("--case") + 1]).name.startswith("brain-t1-t2")
    assert Path(argv[argv.index("--workspace") + 1]) == (tmp_path / "demo" / "workspace").resolve()
