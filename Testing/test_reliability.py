"""The reliability benchmark (issue 38) in CI: every probe of an attacker and of a careless user,
and the SIGKILL loops, end in a clear error or a correct result; nothing runs planted code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reliability_benchmark_finds_no_silent_wrong_result_and_no_code_execution(tmp_path):
    out = tmp_path / "reliability.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "SlicerCrossDomainSeg")}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reliability.py"), "--out", str(out),
                          "--kills", "2"], capture_output=True, text=True, env=env, timeout=1800)
    assert run.returncode == 0, run.stderr[-4000:]
    record = json.loads(out.read_text())
    for key in ("machine", "date", "command", "probes", "silent_wrong", "code_execution"):
        assert key in record, key
    expected = {"hostile_pickle_checkpoint", "hostile_pickle_bundle", "upload_path_traversal",
                "export_path_traversal", "padded_int16", "truncated_nii", "truncated_nii_gz", "nan_inf_nifti",
                "dicom_missing_slice", "tiny_volume", "hand_edited_metadata", "label_256_on_accept",
                "undefined_label_on_accept", "out_is_input", "preview_is_input", "memory_600_cubed",
                "unwritable_output", "trainer_concurrent_starts", "trainer_crash_of_holder", "gate_regressions",
                "gate_unchanged_drafts", "pruning", "sigkill_store", "sigkill_registry", "sigkill_trainer"}
    assert expected <= set(record["probes"])
    bad = {name: outcome for name, outcome in record["probes"].items() if outcome not in ("clear_error", "correct")}
    assert not bad, (bad, record.get("details"))
    assert record["silent_wrong"] == 0 and record["code_execution"] == 0
