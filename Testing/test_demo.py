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
