"""scripts/train_default_bundles.sh runs end to end (every stage, every task) in a tiny
configuration: the shipped bundles' recipes, with a few steps, on tiny generated task folders."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossdomainseg.bundle import load_bundle
from crossdomainseg.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_bundle_script_runs_every_stage(tmp_path, icbm152_templates):
    data, out = tmp_path / "data", tmp_path / "bundles"
    for task in ("brain-t1-t2", "phantom-ct-mr", "xray-drr"):  # present, so the script does not make 30-60 cases
        assert main(["data", "make", "--task", task, "--n", "5", "--seed", "0", "--out", str(data / task)]) == 0
    env = {**os.environ, "PYTHON": sys.executable, "DATA_ROOT": str(data), "OUT_ROOT": str(out),
           "THREADS": "1", "SOURCE_EXTRA": "--epochs 1 --steps 1", "TRANSLATOR_EXTRA": "--epochs 1 --steps 1",
           "REFINER_EXTRA": "--steps 1 --batch 1", "PROMPT_EXTRA": "--steps 1 --batch 1", "CHOOSE_EXTRA": "--max-clicks 2"}
    run = subprocess.run(["bash", str(ROOT / "scripts" / "train_default_bundles.sh")], cwd=ROOT, env=env,
                         capture_output=True, encoding="utf-8", errors="replace", timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    shipped = {task: load_bundle(ROOT / "Resources" / "bundles" / task)
               for task in ("brain-t1-t2", "phantom-ct-mr", "xray-drr")}
    for task, reference in shipped.items():
        bundle = load_bundle(out / task)
        assert bundle.version == reference.version  # the script's version line is what ships
        assert bundle.has_network("segmenter") and bundle.has_network("generator")
        assert len(bundle.metadata["training"]["translator"]["history"]) == 1
        assert not (out / f"{task}.ckpt").exists()
    assert load_bundle(out / "phantom-ct-mr").has_network("refiner")
    for task in ("brain-t1-t2", "xray-drr"):  # the tasks that ship a prompt network
        prompt = load_bundle(out / task).metadata["prompt"]["training"]
        assert prompt["fine_tuned"] and prompt["fine_tuned_from"]["steps"] == 1
    brain = load_bundle(out / "brain-t1-t2").metadata["training"]
    assert brain["translator"]["config"]["lambda_identity"] == 0
    # the brain reference is fine-tuned with domain randomisation three times, each run from the one
    # before, and the budget counts the plain run and all three
    assert brain["source"]["config"]["domain_randomize"] == 0.8 and brain["start"]["config"]["domain_randomize"] == 0.8
    assert brain["source"]["config"]["lr"] == 2.5e-4 and brain["start"]["config"]["lr"] == 5e-4
    assert brain["budget_steps"] == 4 and not list(out.glob("brain-t1-t2.randomize*.ckpt"))
    for task, reference in shipped.items():
        bundle = load_bundle(out / task)
        # the settings given by hand are the shipped ones; the chosen ones come from the source
        # validation split of the (tiny) task folder
        assert bundle.metadata.get("curriculum_params") == reference.metadata.get("curriculum_params"), task
        assert bundle.metadata["postprocess_choice"]["split"] == "source val"
        assert bundle.metadata["uncertainty_hints"]["split"] == "source val"
    for task in shipped:  # the choose stage named the click method front ends use
        assert load_bundle(out / task).metadata["click_refiner"]["split"] == "source val"
    assert load_bundle(out / "xray-drr").metadata["training"]["translator"]["config"]["seg_detached"] is True
