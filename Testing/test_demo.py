"""The README's demo command runs end to end (without serving) and can be run again."""

import json
from pathlib import Path

from crossdomainseg import cli


def test_demo_writes_outputs_and_reruns(tmp_path):
    out = tmp_path / "demo"
    for _ in range(2):
        assert cli.main(["demo", "--out", str(out), "--no-serve"]) == 0
    summary = json.loads((out / "demo_summary.json").read_text())
    for path in summary["outputs"].values():
        assert Path(path).exists()
    assert 0.0 <= summary["U"] <= 1.0
    assert set(summary["dice_vs_ground_truth"]) == {"liver", "kidneys", "spleen", "lesion"}
    assert (out / "phantom-ct-mr" / "task.json").exists()
