"""Model registry: every published model version kept side by side, one of them current.

Layout (the Engine follows it):
    CURRENT                  text file naming the current folder under versions/ (atomic)
    versions/<version>/      a full model bundle (configs/metadata.json, models/*.pt)
    registry.json            history of publish and rollback events, rolled-back versions
Versions are named v0001, v0002, ... in publication order; a version folder is complete before
CURRENT can name it, so a crash at any moment leaves CURRENT pointing at a loadable bundle.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import BundleError, InputError
from .store import atomic_write_bytes, atomic_write_json, fsync_dir

_VERSION = re.compile(r"^v(\d{4,})$")


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(path)
    fsync_dir(root)


def _check_bundle(path: Path) -> dict:
    """Validate a bundle with the bundle module; returns its metadata."""
    from .bundle import load_bundle

    return dict(load_bundle(path).metadata)


class ModelRegistry:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    # -- reading ----------------------------------------------------------------------------
    def is_initialised(self) -> bool:
        return (self.root / "CURRENT").is_file()

    def current_version(self) -> str:
        path = self.root / "CURRENT"
        if not path.is_file():
            raise InputError(
                f"{self.root} is not a model registry yet (no CURRENT file); create it with "
                "ModelRegistry(root).init_from(bundle) or `crossdomainseg trainer start --bundle`."
            )
        version = path.read_text().strip()
        if not (self.versions_dir / version).is_dir():
            raise BundleError(f"Registry {self.root}: CURRENT names '{version}', which is missing.")
        return version

    def current_path(self) -> Path:
        return self.versions_dir / self.current_version()

    def versions(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        names = [p.name for p in self.versions_dir.iterdir() if p.is_dir() and _VERSION.match(p.name)]
        return sorted(names, key=lambda v: int(_VERSION.match(v).group(1)))

    def history(self) -> dict:
        path = self.root / "registry.json"
        if path.is_file():
            return json.loads(path.read_text())
        return {"events": [], "rolled_back": []}

    # -- writing ----------------------------------------------------------------------------
    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def init_from(self, bundle_path: str | os.PathLike) -> str:
        """Make a new registry whose first version is a copy of `bundle_path`."""
        with self._locked():
            if self.is_initialised():
                raise InputError(
                    f"{self.root} already holds a model registry (current {self.current_version()})."
                )
            return self._add_version(Path(bundle_path), metrics={}, event="init")

    def publish(self, bundle_dir: str | os.PathLike, metrics: dict | None = None) -> str:
        """Copy a bundle in as the next version and make it current; returns the version."""
        with self._locked():
            if not self.is_initialised():
                raise InputError(f"{self.root} is not a model registry yet; init_from a bundle first.")
            return self._add_version(Path(bundle_dir), metrics=dict(metrics or {}), event="publish")

    def rollback(self) -> str:
        """Make the newest earlier version that was not itself rolled back current again."""
        with self._locked():
            current = self.current_version()
            history = self.history()
            rolled = set(history["rolled_back"]) | {current}
            earlier = [v for v in self.versions() if _num(v) < _num(current) and v not in rolled]
            if not earlier:
                raise InputError(f"No earlier model version to roll back to (current {current}).")
            target = earlier[-1]
            history["rolled_back"] = sorted(rolled, key=_num)
            history["events"].append({"event": "rollback", "from": current, "to": target, "time": time.time()})
            atomic_write_json(self.root / "registry.json", history)
            atomic_write_bytes(self.root / "CURRENT", (target + "\n").encode())
            return target

    def _add_version(self, source: Path, metrics: dict, event: str) -> str:
        if not (source / "configs" / "metadata.json").is_file():
            raise BundleError(f"{source} is not a model bundle (no configs/metadata.json).")
        previous = self.current_version() if self.is_initialised() else None
        existing = self.versions()
        version = f"v{(_num(existing[-1]) + 1) if existing else 1:04d}"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.versions_dir.glob(".staging-*"):  # a writer killed mid-copy
            shutil.rmtree(leftover, ignore_errors=True)
        staging = self.versions_dir / f".staging-{version}"
        shutil.copytree(source, staging)
        meta_path = staging / "configs" / "metadata.json"
        metadata = json.loads(meta_path.read_text())
        metadata["parent_version"] = metadata.get("version") if event == "init" else previous
        metadata["version"] = version
        if metrics:
            metadata.setdefault("metrics", {})["finetune"] = metrics
        atomic_write_json(meta_path, metadata)
        _check_bundle(staging)
        _fsync_tree(staging)
        os.replace(staging, self.versions_dir / version)
        fsync_dir(self.versions_dir)
        history = self.history()
        history["events"].append(
            {"event": event, "version": version, "from": previous, "metrics": metrics, "time": time.time()}
        )
        atomic_write_json(self.root / "registry.json", history)
        atomic_write_bytes(self.root / "CURRENT", (version + "\n").encode())
        return version


def _num(version: str) -> int:
    return int(_VERSION.match(version).group(1))
