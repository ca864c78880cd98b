"""The background trainer as its own OS process: start, stop, status, and the process itself.

Everything lives in the store's `trainer/` folder:
    config.json     what to train (registry, bundle, source data, params, threads, nice, device)
    trainer.pid     pid of the running trainer
    status.json     state, epoch, step, losses, confident samples, tau_u, tau_ts, model version
    checkpoint.pt   student, teacher, optimiser, memory bank, schedules: the trainer resumes here
    trainer.log     its stdout and stderr
Files are replaced atomically, so status can be read at any moment and a SIGKILL at any moment
leaves the last checkpoint and the registry's current model loadable. SIGTERM stops cleanly after
the current step (with a checkpoint). Low priority (nice) and one torch thread by default so the
interactive side stays fast.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from ..errors import InputError
from ..store import AcceptedCaseStore, atomic_write_bytes, atomic_write_json

DEFAULT_THREADS = 1
DEFAULT_NICE = 10
IDLE_POLL_S = 5.0
_MODULE = "crossdomainseg.curriculum.process"
_children: dict[int, subprocess.Popen] = {}  # started from this process, reaped in is_running


def trainer_dir(store_root: str | os.PathLike) -> Path:
    return Path(store_root) / "trainer"


def _read_pid(workdir: Path) -> int | None:
    try:
        return int((workdir / "trainer.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int, workdir: Path) -> bool:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X") and _MODULE in cmdline and str(workdir) in cmdline


def is_running(store_root: str | os.PathLike) -> bool:
    workdir = trainer_dir(store_root).resolve()
    pid = _read_pid(workdir)
    return pid is not None and _alive(pid, workdir)


def start(store_root, registry_root, bundle=None, source=None, unlabelled=None,
          params: dict | None = None, threads: int = DEFAULT_THREADS, nice: int = DEFAULT_NICE,
          device: str | None = None) -> int:
    """Start the trainer process (returns its pid); it resumes from a checkpoint if there is one.

    registry_root: model registry (created from `bundle` when it does not exist yet).
    source: optional labelled source data for replay (folder with images/ and labels/).
    unlabelled: optional folder of unlabelled target images to register with the store.
    params: CurriculumParams overrides (dict), over the defaults the bundle's metadata names.
    """
    from ..bundle import read_metadata
    from ..registry import ModelRegistry
    from .params import CurriculumParams

    store = AcceptedCaseStore(store_root)
    workdir = trainer_dir(store_root).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if is_running(store_root):
        raise InputError(f"The trainer for {store_root} is already running (pid {_read_pid(workdir)}).")
    registry = ModelRegistry(registry_root)
    if not registry.is_initialised() and bundle is None:
        raise InputError(f"{registry_root} is not a model registry yet: give the bundle to start from.")
    if source is not None and not (Path(source) / "images").is_dir():
        raise InputError(f"Source data folder {source} must hold images/ and labels/ subfolders.")
    if unlabelled is not None:
        store.set_unlabelled_folder(unlabelled)
    base = Path(bundle) if not registry.is_initialised() else registry.current_path()
    checked = CurriculumParams.for_bundle(read_metadata(base), params)
    config = {
        "store": str(Path(store_root).resolve()),
        "registry": str(Path(registry_root).resolve()),
        "bundle": str(Path(bundle).resolve()) if bundle is not None else None,
        "source": str(Path(source).resolve()) if source is not None else None,
        "params": checked.to_dict(),
        "threads": int(threads),
        "nice": int(nice),
        "device": device,
    }
    atomic_write_json(workdir / "config.json", config)
    previous = status(store_root)
    previous.pop("running", None)
    atomic_write_json(workdir / "status.json", {**previous, "state": "starting", "started_at": time.time()})
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(threads)
    env["CROSSDOMAINSEG_THREADS"] = str(threads)
    with open(workdir / "trainer.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", _MODULE, "--workdir", str(workdir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    atomic_write_bytes(workdir / "trainer.pid", f"{proc.pid}\n".encode())
    return proc.pid


def stop(store_root, timeout: float = 120.0) -> dict:
    """SIGTERM the trainer and wait until it has stopped after its current step; SIGKILL after
    `timeout` seconds. Returns the final status."""
    workdir = trainer_dir(store_root).resolve()
    pid = _read_pid(workdir)
    if pid is None or not _alive(pid, workdir):
        return status(store_root)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid, workdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid, workdir):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid, workdir):
            time.sleep(0.05)
    return status(store_root)


def status(store_root) -> dict:
    """The trainer's last status plus `running`; a trainer that died mid-run reads "crashed"."""
    workdir = trainer_dir(store_root).resolve()
    try:
        state = json.loads((workdir / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        state = {"state": "not started"}
    pid = _read_pid(workdir)
    state["running"] = pid is not None and _alive(pid, workdir)
    if not state["running"] and state.get("state") in ("starting", "training", "idle"):
        state["state"] = "crashed"
    return state


# -- the process itself ---------------------------------------------------------------------
class _Run:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.config = json.loads((workdir / "config.json").read_text())
        self.stop_requested = False
        self.status = {"state": "starting", "pid": os.getpid(), "started_at": time.time()}
        self.gate_cache: dict = {}

    def write_status(self, **values) -> None:
        self.status.update(values, updated_at=time.time())
        atomic_write_json(self.workdir / "status.json", self.status)

    def save_checkpoint(self, trainer) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save(trainer.state_dict(), buffer)
        atomic_write_bytes(self.workdir / "checkpoint.pt", buffer.getvalue())

    def load_checkpoint(self):
        from ..training.loops import load_checkpoint

        path = self.workdir / "checkpoint.pt"
        return load_checkpoint(path) if path.is_file() else None

    def data(self, bundle, store, known: dict):
        """Volumes of every unlabelled image and accepted case, prepared once and kept."""
        from ..imageio import read_image
        from .trainer import prepare

        skipped = self.status.setdefault("skipped", {})
        for path in store.unlabelled_images():
            key = f"unlabelled:{path.name}"
            if key not in known and key not in skipped:
                try:
                    known[key] = prepare(bundle, read_image(path), key)
                except InputError as error:  # one bad file must not stop the others
                    skipped[key] = str(error)
        for case_id in store.cases():
            key = f"accepted:{case_id}"
            if key not in known and key not in skipped:
                try:
                    case = store.load(case_id)
                    known[key] = prepare(bundle, case.image, key, label=case.label)
                except InputError as error:
                    skipped[key] = str(error)
        target = [v for k, v in known.items() if k.startswith("unlabelled:")]
        accepted = [known[k] for k in sorted(k for k in known if k.startswith("accepted:"))]
        return target, accepted

    def source(self, bundle):
        from ..imageio import read_image
        from .trainer import prepare

        folder = self.config.get("source")
        if not folder:
            return []
        volumes = []
        for path in sorted((Path(folder) / "images").iterdir()):
            label = Path(folder) / "labels" / path.name
            if label.is_file():
                volumes.append(prepare(bundle, read_image(path), f"source:{path.name}", "source",
                                       read_image(label)))
        return volumes

    def gate(self, trainer, registry) -> dict:
        from .promotion import promote_if_not_worse

        return promote_if_not_worse(trainer, registry, self.workdir / "candidate", self.gate_cache)

    def main(self) -> int:
        import torch

        from ..bundle import load_bundle
        from ..device import configure, pick_device
        from ..registry import ModelRegistry
        from .params import CurriculumParams
        from .trainer import CurriculumTrainer

        config = self.config
        os.nice(config["nice"])
        configure(config["threads"])
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        atomic_write_bytes(self.workdir / "trainer.pid", f"{os.getpid()}\n".encode())
        import SimpleITK as sitk

        self.write_status(state="starting", nice=os.nice(0), threads=torch.get_num_threads(),
                          image_threads=sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
        params = CurriculumParams.from_dict(config["params"])
        registry = ModelRegistry(config["registry"])
        if not registry.is_initialised():
            registry.init_from(config["bundle"])
        checkpoint = self.load_checkpoint()
        base_version = checkpoint["base_version"] if checkpoint else registry.current_version()
        base_path = registry.versions_dir / base_version
        if not base_path.is_dir():  # the checkpoint's base was removed: start afresh from current
            checkpoint, base_version = None, registry.current_version()
            base_path = registry.versions_dir / base_version
        bundle = load_bundle(base_path)
        store = AcceptedCaseStore(config["store"])
        known: dict = {}
        target, accepted = self.data(bundle, store, known)
        trainer = CurriculumTrainer(bundle, params, target, accepted, self.source(bundle),
                                    device=pick_device(config.get("device")))
        if checkpoint is not None:
            trainer.load_state_dict(checkpoint)
            print(f"resumed at epoch {trainer.epoch}, step {trainer.step}", flush=True)
        self.write_status(state="training", base_version=base_version, **self._summary(trainer, registry))
        ran = 0
        while trainer.epoch < params.epochs and not self.stop_requested:
            trainer.target, trainer.accepted = self.data(bundle, store, known)
            if not trainer.target and not trainer.train_accepted():
                self.write_status(state="idle", message="waiting for unlabelled images or accepted cases")
                time.sleep(IDLE_POLL_S)
                continue
            summary = trainer.run_epoch(stop=lambda: self.stop_requested, on_step=self._on_step)
            if summary is None:
                break
            ran += 1
            gate = self.gate(trainer, registry) if trainer.epoch % params.publish_every == 0 else None
            self.save_checkpoint(trainer)
            self.write_status(state="training", last_epoch=summary,
                              **({"last_gate": gate} if gate else {}), **self._summary(trainer, registry))
            print(json.dumps({"epoch": summary, "gate": gate}, default=float), flush=True)
        finished = trainer.epoch >= params.epochs
        if finished and ran and trainer.epoch % params.publish_every:  # the last epochs still get a chance
            self.write_status(last_gate=self.gate(trainer, registry))
        self.save_checkpoint(trainer)
        self.write_status(state="finished" if finished else "stopped", **self._summary(trainer, registry))
        (self.workdir / "trainer.pid").unlink(missing_ok=True)
        return 0

    def _summary(self, trainer, registry) -> dict:
        return {
            "epoch": trainer.epoch, "step": trainer.step,
            "confident_per_epoch": [h["confident"] for h in trainer.history],
            "consistently_confident": trainer.bank.n_consistently_confident(),
            "n_target": len(trainer.target), "n_accepted": len(trainer.accepted),
            "n_heldout": len(trainer.heldout_accepted()),
            "model_version": registry.current_version(), **trainer.thresholds(),
        }

    def _on_step(self, info: dict) -> None:
        self.write_status(state="training", **{k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                                               for k, v in info.items()})

    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Background curriculum trainer (started by `trainer start`).")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    run = _Run(Path(args.workdir))
    try:
        return run.main()
    except Exception as error:  # recorded for `trainer status`, then the process ends
        traceback.print_exc()
        run.write_status(state="failed", error=f"{type(error).__name__}: {error}")
        (run.workdir / "trainer.pid").unlink(missing_ok=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
