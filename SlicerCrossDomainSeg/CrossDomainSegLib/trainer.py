"""The trainer panel's side of background fine-tuning: start, stop, status, model versions,
rollback. The training itself runs in its own OS process (crossdomainseg.curriculum.process), never
in the GUI's; this class only starts it, reads its status and talks to the model registry.
"""

from __future__ import annotations

import json
from pathlib import Path

from crossdomainseg.errors import BundleError


def safe_name(text: str) -> str:
    """`text` as one folder name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


class TrainerControl:
    """workspace: the folder of stores and registries; registry_dir and task: the loaded model's
    registry and task (set when a bundle is loaded)."""

    def __init__(self, workspace: Path, registry_dir: Path | None = None, task: str | None = None):
        self.workspace = Path(workspace)
        self.registry_dir = registry_dir
        self.task = task

    @property
    def store_dir(self) -> Path | None:
        """The accepted cases of the loaded model's task: one store per task, so cases of one
        task never train a model of another, and model versions of a task share them."""
        if self.task is None:
            return None
        return self.workspace / "store" / safe_name(self.task)

    def _registry(self):
        from crossdomainseg.registry import ModelRegistry

        if self.registry_dir is None:
            raise BundleError("Load a model bundle first: the trainer fine-tunes the loaded model.")
        return ModelRegistry(self.registry_dir)

    def _process(self):
        from crossdomainseg.curriculum import process

        return process

    def status(self) -> dict:
        """The trainer process's status (crossdomainseg.curriculum.process.status) plus
        "progress" (0-1, epochs done), "message", "current_version", "versions" and
        "accepted_cases"."""
        from crossdomainseg.store import AcceptedCaseStore

        status = {"state": "not started", "running": False, "progress": 0.0, "message": "",
                  "current_version": None, "versions": [], "accepted_cases": 0}
        if self.store_dir is not None and self.store_dir.is_dir():
            status["accepted_cases"] = len(AcceptedCaseStore(self.store_dir).cases())
            status.update(self._process().status(self.store_dir))
            epochs = self._configured_epochs()
            if epochs:
                status["progress"] = min(1.0, float(status.get("epoch") or 0) / epochs)
        if self.registry_dir is not None:
            registry = self._registry()
            if registry.is_initialised():
                status["current_version"] = registry.current_version()
                status["versions"] = registry.versions()
        return status

    def _configured_epochs(self) -> int | None:
        config = self._process().trainer_dir(self.store_dir) / "config.json"
        try:
            return int(json.loads(config.read_text())["params"]["epochs"])
        except (OSError, KeyError, TypeError, ValueError):
            return None

    def start(self, unlabelled=None, threads: int = 1) -> dict:
        """Start fine-tuning the loaded model in a low-priority process. It trains on the accepted
        cases (and on the images of `unlabelled`, a folder, when given) and publishes a new model
        version only when it does no worse on held-out accepted cases."""
        self._registry()  # a model must be loaded
        self._process().start(self.store_dir, self.registry_dir, unlabelled=unlabelled,
                              threads=threads)
        return self.status()

    def stop(self) -> dict:
        """Stop after the current step (a checkpoint is kept, start resumes from it)."""
        if self.store_dir is not None and self.store_dir.is_dir():
            self._process().stop(self.store_dir)
        return self.status()

    def rollback(self) -> str:
        """Make the previous model version current; returns it."""
        return self._registry().rollback()
