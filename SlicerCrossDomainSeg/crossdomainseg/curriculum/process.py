"""The background trainer as its own OS process: start, stop, status, and the process itself.

Everything lives in the store's `trainer/` folder:
    config.json     what to train (registry, bundle, source data, params, threads, nice, device)
    trainer.lock    held by the running trainer for its whole life (an OS file lock, filelock:
                    flock on POSIX, LockFileEx on Windows), so the OS drops it when the trainer
                    ends in any way; one trainer per store, and "running" means "the lock is held"
    start.lock      held by `start` and `stop` while they check, launch or stop the trainer
    trainer.pid     {"pid", "create_time"} of the lock's holder (psutil checks it is that process)
    stop.request    written by `stop`: the trainer stops cleanly after its current step
    status.json     state, epoch, step, losses, confident samples, tau_u, tau_ts, model version;
                    "prompt": the prompt network's stage (prompt_stage.py)
    checkpoint.pt   student, teacher, optimiser, memory bank, schedules: the trainer resumes here
    prompt_checkpoint.pt  the prompt stage's network, epoch and history
    trainer.log     its stdout and stderr
Files are replaced atomically, so status can be read at any moment and a kill at any moment leaves
the last checkpoint and the registry's current model loadable. `stop` asks through stop.request
(any OS), then terminates and last kills the process through psutil. Low priority (nice) and one
torch thread by default so the interactive side stays fast.
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

import psutil
from filelock import FileLock, Timeout

from ..errors import InputError
from ..store import AcceptedCaseStore, atomic_write_bytes, atomic_write_json, image_entries

DEFAULT_THREADS = 1
DEFAULT_NICE = 10
IDLE_POLL_S = 5.0
START_TIMEOUT_S = 300.0  # a niced trainer on a loaded machine may need a while to start
PROBE_WAIT_S = 0.2
ALREADY_RUNNING = 3  # exit status of a trainer process that found the lock held
_MODULE = "crossdomainseg.curriculum.process"
_children: dict[int, subprocess.Popen] = {}  # started from this process, reaped when polled


def trainer_dir(store_root: str | os.PathLike) -> Path:
    return Path(store_root) / "trainer"


def _lock(workdir: Path, name: str = "trainer.lock") -> FileLock:
    # Kept on disk (never unlinked) so two processes always lock the same file; no soft fallback:
    # a lock that outlives its holder would bring back the survivor problem.
    return FileLock(workdir / name, preserve_lock_file=True, fallback_to_soft=False)


def _reap() -> None:
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            _children.pop(pid, None)


def _lock_held(workdir: Path) -> bool:
    """Whether a trainer holds the store's trainer lock. Probing takes the lock for an instant,
    so a probe waits a little: another caller's probe lets go at once, a trainer never does."""
    _reap()
    if not (workdir / "trainer.lock").exists():
        return False
    probe = _lock(workdir)
    try:
        probe.acquire(timeout=PROBE_WAIT_S)
    except Timeout:
        return True
    probe.release()
    return False


def _holder(workdir: Path) -> psutil.Process | None:
    """The process that wrote trainer.pid, if it is still that process (pid reuse is checked
    through its start time)."""
    try:
        record = json.loads((workdir / "trainer.pid").read_text())
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["create_time"])) > 1.0:
            return None
        return proc
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None


def is_running(store_root: str | os.PathLike) -> bool:
    return _lock_held(trainer_dir(store_root).resolve())


class _Exclusive:
    """`start` and `stop` of one store, one at a time (across processes)."""

    def __init__(self, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.lock = _lock(workdir, "start.lock")

    def __enter__(self):
        try:
            self.lock.acquire(timeout=START_TIMEOUT_S)
        except Timeout:
            raise InputError("Another start or stop of this trainer is still in progress; try again.") from None
        return self

    def __exit__(self, *exc):
        self.lock.release()


def _popen_options() -> dict:
    """Detached from the caller's terminal and console signals, on each OS."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def start(store_root, registry_root, bundle=None, source=None, unlabelled=None,
          params: dict | None = None, threads: int = DEFAULT_THREADS, nice: int = DEFAULT_NICE,
          device: str | None = None) -> int:
    """Start the trainer process (returns its pid once it holds the store's trainer lock); it
    resumes from a checkpoint if there is one.

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
    with _Exclusive(workdir):
        if _lock_held(workdir):
            holder = _holder(workdir)
            raise InputError(f"The trainer for {store_root} is already running"
                             f"{f' (pid {holder.pid})' if holder else ''}; stop it first.")
        registry = ModelRegistry(registry_root)
        if not registry.is_initialised() and bundle is None:
            raise InputError(f"{registry_root} is not a model registry yet: give the bundle to start from.")
        if source is not None and not (Path(source) / "images").is_dir():
            raise InputError(f"Source data folder {source} must hold images/ and labels/ subfolders.")
        base = Path(bundle) if not registry.is_initialised() else registry.current_path()
        checked = CurriculumParams.for_bundle(read_metadata(base), params)
        if unlabelled is not None:
            _check_something_to_learn(store, Path(unlabelled), checked.holdout_every)
            store.set_unlabelled_folder(unlabelled)
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
        (workdir / "stop.request").unlink(missing_ok=True)
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
        env["OMP_NUM_THREADS"] = str(threads)
        env["CROSSDOMAINSEG_THREADS"] = str(threads)
        with open(workdir / "trainer.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", _MODULE, "--workdir", str(workdir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, **_popen_options(),
            )
        _children[proc.pid] = proc
        _wait_until_locked(workdir, proc)
        return proc.pid


def _check_something_to_learn(store: AcceptedCaseStore, unlabelled: Path, holdout_every: int) -> None:
    """An unlabelled folder without images is refused unless the store has an accepted case the
    trainer trains on (not held out for the gate, not left out): it would run on nothing."""
    from .trainer import is_heldout, left_out

    if not unlabelled.is_dir() or image_entries(unlabelled):
        return  # a missing folder is refused by set_unlabelled_folder with its own message
    kept = [case for case in store.cases() if left_out(store.manifest(case)) is None]
    if any(not is_heldout(i, holdout_every) for i in range(len(kept))):
        return
    raise InputError(f"The unlabelled image folder {unlabelled} holds no images (NIfTI, NRRD, MHA files or "
                     f"DICOM series folders) and the store {store.root} has no accepted case to train on, "
                     "so the trainer would have nothing to learn from. Put the target images in that "
                     "folder (or give the folder that holds them), or accept cases first.")


def _wait_until_locked(workdir: Path, proc: subprocess.Popen) -> None:
    """Hold `start` until the new trainer holds the lock (so a second start sees it running)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        holder = _holder(workdir)
        if holder is not None and holder.pid == proc.pid and _lock_held(workdir):
            return
        if proc.poll() is not None:
            _children.pop(proc.pid, None)
            raise InputError(f"The trainer process ended at start (exit status {proc.returncode}); "
                             f"see {workdir / 'trainer.log'}.")
        time.sleep(0.05)
    proc.kill()
    raise InputError(f"The trainer process did not start within {START_TIMEOUT_S:.0f} s; "
                     f"see {workdir / 'trainer.log'}.")


def stop(store_root, timeout: float = 120.0) -> dict:
    """Ask the trainer to stop after its current step (checkpointed) and wait; after `timeout`
    seconds terminate it, then kill it (psutil, on any OS). Returns the final status."""
    workdir = trainer_dir(store_root).resolve()
    if not _lock_held(workdir):
        return status(store_root)
    with _Exclusive(workdir):
        holder = _holder(workdir)
        atomic_write_bytes(workdir / "stop.request", b"stop\n")
        if _wait_for_release(workdir, timeout):
            _wait_for_exit(holder)
            return status(store_root)
        for action in ("terminate", "kill"):
            if holder is None:
                break
            try:
                getattr(holder, action)()
                holder.wait(timeout=10)
            except psutil.NoSuchProcess:
                break
            except psutil.TimeoutExpired:
                continue
            break
        if not _wait_for_release(workdir, 30.0):
            raise InputError(f"The trainer for {store_root} does not stop (pid "
                             f"{holder.pid if holder else 'unknown'}); end that process by hand.")
        current = status(store_root)
        current.pop("running", None)
        atomic_write_json(workdir / "status.json", {**current, "state": "killed", "updated_at": time.time()})
    return status(store_root)


def _wait_for_exit(proc: psutil.Process | None, timeout: float = 30.0) -> None:
    """The trainer lets go of its lock as it ends; wait for its interpreter to finish too."""
    if proc is not None:
        try:
            proc.wait(timeout=timeout)
        except (psutil.Error, psutil.TimeoutExpired):
            pass


def _wait_for_release(workdir: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _lock_held(workdir):
            return True
        time.sleep(0.1)
    return not _lock_held(workdir)


def status(store_root) -> dict:
    """The trainer's last status plus `running`; a trainer that died mid-run reads "crashed"."""
    workdir = trainer_dir(store_root).resolve()
    # the lock first: a trainer writes its last status before it lets go, so a file read after a
    # free lock is final (read before, a trainer ending in between would read "crashed")
    running = _lock_held(workdir)
    try:
        state = json.loads((workdir / "status.json").read_text())
    except (OSError, json.JSONDecodeError):
        state = {"state": "not started"}
    state["running"] = running
    if not state["running"] and state.get("state") in ("starting", "training", "idle"):
        state["state"] = "crashed"
    return state


def _lower_priority(increment: int) -> int:
    """Lower this process's priority by `increment` (POSIX niceness; on Windows a priority class
    below normal); returns the niceness now (POSIX) or the priority class (Windows)."""
    me = psutil.Process()
    if increment > 0:
        if os.name == "nt":
            me.nice(psutil.IDLE_PRIORITY_CLASS if increment >= 15 else psutil.BELOW_NORMAL_PRIORITY_CLASS)
        else:
            me.nice(min(19, me.nice() + increment))
    return me.nice()


# -- the process itself ---------------------------------------------------------------------
class _Run:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.config = json.loads((workdir / "config.json").read_text())
        self.stop_requested = False  # set by SIGTERM / Ctrl+C; stop.request is read beside it
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
        from .trainer import left_out, prepare

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
                manifest = store.manifest(case_id)
                reason = left_out(manifest)
                if reason:
                    skipped[key] = reason
                    continue
                try:
                    case = store.load(case_id)
                    known[key] = prepare(bundle, case.image, key, label=case.label)
                    if manifest.get("edited_voxels") == 0:
                        known[key].unchanged_draft_of = case.model_version
                except InputError as error:
                    skipped[key] = str(error)
        target = [v for k, v in known.items() if k.startswith("unlabelled:")]
        accepted = [known[k] for k in sorted(k for k in known if k.startswith("accepted:"))]
        return target, accepted

    def source(self, bundle):
        from ..imageio import read_image
        from .trainer import labelled_pairs, prepare

        return [prepare(bundle, read_image(image), f"source:{image.name}", "source", read_image(label))
                for image, label in labelled_pairs(self.config.get("source"))]

    def gate(self, trainer, registry) -> dict:
        from .promotion import promote_if_best

        return promote_if_best(trainer, registry, self.workdir / "candidate", self.gate_cache)

    def main(self) -> int:
        import torch

        from ..bundle import load_bundle
        from ..device import configure, pick_device
        from ..registry import ModelRegistry
        from .params import CurriculumParams
        from .trainer import CurriculumTrainer

        config = self.config
        niceness = _lower_priority(config["nice"])
        configure(config["threads"])
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        import SimpleITK as sitk

        self.write_status(state="starting", nice=niceness, threads=torch.get_num_threads(),
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
        self.write_status(state="training", stage="segmenter", base_version=base_version,
                          **self._summary(trainer, registry))
        ran = 0
        while trainer.epoch < params.epochs and not self.stopping():
            trainer.target, trainer.accepted = self.data(bundle, store, known)
            if not trainer.target and not trainer.train_accepted():
                self.write_status(state="idle", message="waiting for unlabelled images or accepted cases")
                deadline = time.monotonic() + IDLE_POLL_S
                while time.monotonic() < deadline and not self.stopping():
                    time.sleep(0.2)
                continue
            summary = trainer.run_epoch(stop=self.stopping, on_step=self._on_step)
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
        if finished and not self.stopping():  # then the prompt network (prompt_stage.py)
            from .prompt_stage import PromptStage

            self.write_status(stage="prompt")
            finished = PromptStage(self, params, registry, store).run()
        self.write_status(state="finished" if finished else "stopped", **self._summary(trainer, registry))
        return 0

    def stopping(self) -> bool:
        return self.stop_requested or (self.workdir / "stop.request").exists()

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
    workdir = Path(args.workdir)
    lock = _lock(workdir)
    try:
        lock.acquire(timeout=5.0)  # waits out other callers' status probes, not a running trainer
    except Timeout:  # another trainer runs on this store: leave its files alone
        print(f"another trainer holds {workdir / 'trainer.lock'}; this one ends", flush=True)
        return ALREADY_RUNNING
    me = psutil.Process()
    atomic_write_json(workdir / "trainer.pid", {"pid": me.pid, "create_time": me.create_time()})
    run = _Run(workdir)
    try:
        return run.main()
    except Exception as error:  # recorded for `trainer status`, then the process ends
        traceback.print_exc()
        run.write_status(state="failed", error=f"{type(error).__name__}: {error}")
        return 1
    finally:
        (workdir / "stop.request").unlink(missing_ok=True)
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
