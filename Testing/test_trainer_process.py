"""The trainer as an OS process: start, status, stop, resume, the CLI, and SIGKILL at random
moments (of the trainer and of case writers) leaving every accepted case and the model intact."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

from crossdomainseg.bundle import load_bundle, make_random_bundle, update_bundle
from crossdomainseg.curriculum import process
from crossdomainseg.registry import ModelRegistry
from crossdomainseg.store import AcceptedCaseStore

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "SlicerCrossDomainSeg"
FAST = {"tau_u0": 1.0, "lambda_u": 0.02, "tau_ts0": 1.0, "holdout_every": 2, "publish_every": 1, "n_strong": 1}


def _pair(seed):
    rng = np.random.default_rng(seed)
    array = rng.normal(0, 0.3, size=(16, 16, 16)).astype(np.float32)
    array[4:12, 5:12, 4:11] += 3
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((4.0, 4.0, 4.0))
    label = sitk.GetImageFromArray((array > 1.5).astype(np.uint8))
    label.CopyInformation(image)
    return image, label


def _setup(tmp_path, n_unlabelled=3, n_accepted=2):
    bundle = make_random_bundle(tmp_path / "bundle", spacing=4.0, roi=16, seed=1)
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for i in range(n_unlabelled):
        sitk.WriteImage(_pair(100 + i)[0], str(folder / f"u{i}.nii.gz"))
    store = AcceptedCaseStore(tmp_path / "store")
    for i in range(n_accepted):
        store.accept(*_pair(i), clicks=[{"point": [0.0, 0.0, 0.0], "positive": True}], model_version="random-0",
                     labels={"background": 0, "organ": 1})
    return bundle.path, folder, store


def _accept_with_lesion(store):
    """An accepted case holding a new structure ("Lesion", value 2) the model has no label for."""
    image, label = _pair(7)
    lesion = sitk.GetArrayFromImage(label)
    lesion[1:3, 1:3, 1:3] = 2
    with_lesion = sitk.GetImageFromArray(lesion)
    with_lesion.CopyInformation(label)
    store.accept(image, with_lesion, clicks=[], model_version="random-0",
                 labels={"background": 0, "organ": 1}, structures={"Lesion": 2})


@pytest.fixture(autouse=True)
def stop_trainers_afterwards(tmp_path):
    """A failing test must not leave its trainer running on the shared cores."""
    yield
    for pid_file in tmp_path.glob("**/trainer/trainer.pid"):
        process.stop(pid_file.parents[1], timeout=5)


# Generous: on a loaded 2-core machine a niced trainer needs a while to import torch.
def _wait(predicate, timeout=300.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_start_status_stop_resume(tmp_path):
    bundle, folder, store = _setup(tmp_path)
    update_bundle(bundle, metadata={"curriculum_params": {"strong_magnitude": 0.4, "n_strong": 2}})
    pid = process.start(store.root, tmp_path / "reg", bundle=bundle, unlabelled=folder,
                        params={**FAST, "epochs": 1000}, threads=1, nice=7)
    assert process.is_running(store.root)
    # the bundle's curriculum defaults apply, under the caller's overrides
    config = json.loads((store.root / "trainer" / "config.json").read_text())
    assert config["params"]["strong_magnitude"] == 0.4 and config["params"]["n_strong"] == 1
    with pytest.raises(Exception, match="already running"):
        process.start(store.root, tmp_path / "reg")
    status = _wait(lambda: (s := process.status(store.root)).get("epoch", 0) >= 2 and s, what="2 epochs")
    for key in ("epoch", "step", "losses", "confident", "tau_u", "tau_ts", "model_version",
                "confident_per_epoch", "consistently_confident"):
        assert key in status, key
    assert status["state"] == "training" and status["running"] and status["pid"] == pid
    assert status["nice"] >= 7 and status["threads"] == 1 and status["image_threads"] == 1
    assert psutil.Process(pid).nice() >= 7
    assert status["n_target"] == 3 and status["n_accepted"] == 2 and status["n_heldout"] == 1
    assert status["tau_u"] == pytest.approx(1.0 + status["epoch"] * 0.02)
    final = process.stop(store.root, timeout=60)
    assert final["state"] == "stopped" and not final["running"]
    assert not process.is_running(store.root)
    stopped_epoch = final["epoch"]
    assert ModelRegistry(tmp_path / "reg").versions()[0] == "v0001"
    # Restart: resumes from the checkpoint instead of epoch 0.
    process.start(store.root, tmp_path / "reg", params={**FAST, "epochs": stopped_epoch + 1}, nice=1)
    done = _wait(lambda: (s := process.status(store.root))["state"] in ("finished", "failed") and s,
                 what="finish")
    assert done["state"] == "finished" and done["epoch"] == stopped_epoch + 1
    log = (store.root / "trainer" / "trainer.log").read_text()
    assert f"resumed at epoch {stopped_epoch}" in log
    assert load_bundle(ModelRegistry(tmp_path / "reg").current_path())


@pytest.mark.slow
def test_cli_start_status_stop_rollback(tmp_path):
    bundle, folder, store = _setup(tmp_path, n_unlabelled=1)
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "crossdomainseg.cli", "trainer", *args],
                             capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    params = [f"--param={k}={v}" for k, v in {**FAST, "epochs": 2}.items()]
    started = cli("start", "--store", str(store.root), "--registry", str(tmp_path / "reg"),
                  "--bundle", str(bundle), "--unlabelled", str(folder), "--nice", "1", *params)
    assert started["started"] > 0
    _wait(lambda: process.status(store.root)["state"] == "finished", what="finish")
    assert cli("status", "--store", str(store.root))["state"] == "finished"
    registry = ModelRegistry(tmp_path / "reg")
    assert registry.current_version() != "v0001"  # the student passed the gate and was published
    before = registry.current_version()
    rolled = cli("rollback", "--registry", str(registry.root))
    assert rolled["from"] == before and rolled["current"] == registry.current_version() != before
    assert cli("stop", "--store", str(store.root))["running"] is False
    bad = subprocess.run([sys.executable, "-m", "crossdomainseg.cli", "trainer", "start", "--store",
                          str(tmp_path / "s2"), "--registry", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "not a model registry" in bad.stderr


def test_an_empty_unlabelled_folder_is_refused_unless_accepted_cases_can_train(tmp_path, capsys):
    from crossdomainseg.cli import main

    bundle, folder, store = _setup(tmp_path, n_unlabelled=0, n_accepted=0)
    _accept_with_lesion(store)  # the only accepted case: the trainer would leave it out too
    argv = ["trainer", "start", "--store", str(store.root), "--registry", str(tmp_path / "reg"),
            "--bundle", str(bundle), "--unlabelled", str(folder), "--nice", "1",
            *[f"--param={k}={v}" for k, v in {**FAST, "epochs": 1000}.items()]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"The unlabelled image folder {folder} holds no images" in err
    assert "no accepted case to train on" in err and "accept cases first" in err
    assert not process.is_running(store.root) and not (store.root / "trainer" / "config.json").exists()
    assert store.unlabelled_folder() is None  # nothing of the refused start was recorded

    # with an accepted case to train on, the trainer starts on it alone and says so
    store.accept(*_pair(8), clicks=[], model_version="random-0", labels={"background": 0, "organ": 1})
    assert main(argv) == 0
    assert "learns from the accepted cases alone" in capsys.readouterr().err
    assert process.is_running(store.root)
    assert process.stop(store.root, timeout=60)["state"] == "stopped"


WRITER = r"""
import sys
import numpy as np, SimpleITK as sitk
from crossdomainseg.store import AcceptedCaseStore
store = AcceptedCaseStore(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[2]))
while True:
    array = rng.normal(0, 0.3, size=(16, 16, 16)).astype(np.float32)
    array[4:12, 4:12, 4:12] += 3
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((4.0, 4.0, 4.0))
    label = sitk.GetImageFromArray((array > 1.5).astype(np.uint8))
    label.CopyInformation(image)
    print(store.accept(image, label, [], "v0001", labels={"background": 0, "organ": 1}), flush=True)
"""


@pytest.mark.slow
def test_sigkill_trainer_and_writers_at_random_moments(tmp_path):
    bundle, folder, store = _setup(tmp_path)
    rng = random.Random(99)
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    accepted = set(store.cases())
    registry = ModelRegistry(tmp_path / "reg")
    for round_ in range(2):
        pid = process.start(store.root, registry.root, bundle=bundle, unlabelled=folder,
                            params={**FAST, "epochs": 1000}, nice=1)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store.root), str(round_)],
                                  stdout=subprocess.PIPE, text=True, env=env)
        accepted.add(writer.stdout.readline().strip())
        _wait(lambda: process.status(store.root).get("step", 0) > 0, what="a training step")
        time.sleep(rng.uniform(0.0, 3.0))
        os.kill(pid, signal.SIGKILL)
        os.kill(writer.pid, signal.SIGKILL)
        accepted.update(writer.stdout.read().split())
        writer.wait()
        _wait(lambda: not process.is_running(store.root), what="trainer death")
        assert process.status(store.root)["state"] == "crashed"
        assert set(accepted) <= set(store.cases())
        for case_id in store.cases():
            store.load(case_id)  # checksums verified
        current = load_bundle(registry.current_path())
        current.network("segmenter")
    # And it resumes after the crashes.
    process.start(store.root, registry.root, params={**FAST, "epochs": 1000}, nice=1)
    _wait(lambda: process.status(store.root).get("state") == "training", what="resume")
    assert process.stop(store.root)["state"] == "stopped"


def _trainers(workdir: Path) -> list[psutil.Process]:
    """Trainer processes of this store, found without /proc (psutil)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "crossdomainseg.curriculum.process" in cmdline and str(workdir) in cmdline:
            found.append(proc)
    return found


@pytest.mark.slow
def test_concurrent_starts_run_one_trainer(tmp_path):
    """Two `trainer start` at the same moment: one trainer runs, the other start is refused."""
    bundle, folder, store = _setup(tmp_path, n_unlabelled=1)
    registry = ModelRegistry(tmp_path / "reg")
    registry.init_from(bundle)
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    params = [f"--param={k}={v}" for k, v in {**FAST, "epochs": 1000}.items()]
    command = [sys.executable, "-m", "crossdomainseg.cli", "trainer", "start", "--store", str(store.root),
               "--registry", str(registry.root), "--unlabelled", str(folder), "--nice", "1", *params]
    starts = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in starts]
    assert sorted(r[0] for r in results) == [0, 2], results
    assert "already running" in next(r[2] for r in results if r[0] == 2)
    workdir = process.trainer_dir(store.root).resolve()
    time.sleep(2.0)  # a second trainer, had one been launched, would be up by now
    trainers = _trainers(workdir)
    assert len(trainers) == 1
    assert process.status(store.root)["running"]
    assert process.stop(store.root, timeout=60)["state"] == "stopped"
    assert not _trainers(workdir) and not process.is_running(store.root)


@pytest.mark.slow
def test_a_second_trainer_process_leaves_the_running_one_alone(tmp_path):
    """A trainer process launched beside a running one ends at once without touching its pid or
    status, so `status` and `stop` still see and stop the one that runs (no survivor)."""
    bundle, folder, store = _setup(tmp_path, n_unlabelled=1)
    pid = process.start(store.root, tmp_path / "reg", bundle=bundle, unlabelled=folder,
                        params={**FAST, "epochs": 1000}, nice=1)
    workdir = process.trainer_dir(store.root).resolve()
    _wait(lambda: process.status(store.root).get("state") == "training", what="training")
    pid_record = (workdir / "trainer.pid").read_text()
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    rogue = subprocess.run([sys.executable, "-m", "crossdomainseg.curriculum.process", "--workdir", str(workdir)],
                           capture_output=True, text=True, env=env, timeout=120)
    assert rogue.returncode == process.ALREADY_RUNNING, rogue.stdout + rogue.stderr
    assert (workdir / "trainer.pid").read_text() == pid_record
    state = process.status(store.root)
    assert state["running"] and state["state"] == "training" and state["pid"] == pid
    assert process.stop(store.root, timeout=60)["state"] == "stopped"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_killed_trainer_reads_crashed_and_frees_the_store(tmp_path):
    """Killed without warning: the OS drops its lock, status says crashed, start works again."""
    bundle, folder, store = _setup(tmp_path, n_unlabelled=1)
    pid = process.start(store.root, tmp_path / "reg", bundle=bundle, unlabelled=folder,
                        params={**FAST, "epochs": 1000}, nice=1)
    _wait(lambda: process.status(store.root).get("state") == "training", what="training")
    psutil.Process(pid).kill()
    _wait(lambda: not process.is_running(store.root), timeout=30, what="lock released")
    assert process.status(store.root)["state"] == "crashed"
    second = process.start(store.root, tmp_path / "reg", params={**FAST, "epochs": 1000}, nice=1)
    assert second != pid and process.status(store.root)["running"]
    assert process.stop(store.root, timeout=60)["state"] == "stopped"


def test_an_accepted_case_with_a_new_structure_is_left_out_saying_why(tmp_path):
    """A structure the model has no label for (a lesion outlined from clicks) cannot be learnt as
    any of its labels: the trainer leaves the case out, names the structure, and keeps the rest."""
    bundle_path, folder, store = _setup(tmp_path, n_unlabelled=1, n_accepted=1)
    _accept_with_lesion(store)
    store.set_unlabelled_folder(folder)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({}))
    run = process._Run(workdir)
    target, accepted = run.data(load_bundle(bundle_path), store, {})
    assert len(accepted) == 1 and len(target) == 1
    (reason,) = run.status["skipped"].values()
    assert "Lesion" in reason and "stays in the store" in reason
