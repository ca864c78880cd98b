"""Model registry: every published model version kept side by side, one of them current.

Layout (the Engine follows it):
    CURRENT                  text file naming the current folder under versions/ (atomic)
    versions/<version>/      a full model bundle (configs/metadata.json, models/*.pt)
    registry.json            history of publish, rollback and prune events, rolled-back versions,
                             the best version by the promotion gate's last scores
Versions are named v0001, v0002, ... in publication order; a version folder is complete before
CURRENT can name it, so a crash at any moment leaves CURRENT pointing at a loadable bundle.
Writers take an OS file lock (filelock: flock on POSIX, LockFileEx on Windows) that the OS drops
with its holder. Each publication prunes old versions: kept are the first (the shipped model),
the current one, the best, the one rollback would go to, any the caller protects, and the last
`keep_last`; a pruned folder is renamed aside first, so a crash never leaves half a version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import BundleError, InputError
from .store import atomic_write_bytes, atomic_write_json, fsync_dir

_VERSION = re.compile(r"^v(\d{4,})$")
DEFAULT_KEEP_LAST = 3
LOCK_TIMEOUT_S = 600.0


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
    def __init__(self, root: str | os.PathLike, keep_last: int = DEFAULT_KEEP_LAST):
        if keep_last < 1:
            raise InputError("A model registry keeps at least the last version (keep_last >= 1).")
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.keep_last = int(keep_last)

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

    def best_version(self) -> str | None:
        """The version the promotion gate last scored best, if it is still there."""
        best = self.history().get("best")
        return best if best in self.versions() else None

    def rollback_target(self) -> str | None:
        """The version `rollback` would make current, or None."""
        if not self.is_initialised():
            return None
        current = self.current_version()
        rolled = set(self.history()["rolled_back"]) | {current}
        earlier = [v for v in self.versions() if _num(v) < _num(current) and v not in rolled]
        return earlier[-1] if earlier else None

    # -- writing ----------------------------------------------------------------------------
    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        # kept on disk and never a "soft" lock file: the OS must drop it with a killed writer
        lock = FileLock(self.root / ".lock", preserve_lock_file=True, fallback_to_soft=False)
        try:
            lock.acquire(timeout=LOCK_TIMEOUT_S)
        except Timeout:
            raise InputError(f"The model registry {self.root} has been busy for {LOCK_TIMEOUT_S:.0f} s "
                             "(another program is publishing); try again.") from None
        try:
            yield
        finally:
            lock.release()

    def init_from(self, bundle_path: str | os.PathLike) -> str:
        """Make a new registry whose first version is a copy of `bundle_path`."""
        with self._locked():
            if self.is_initialised():
                raise InputError(
                    f"{self.root} already holds a model registry (current {self.current_version()})."
                )
            return self._add_version(Path(bundle_path), metrics={}, event="init")

    def publish(self, bundle_dir: str | os.PathLike, metrics: dict | None = None,
                best: bool = False, protect: tuple[str, ...] = ()) -> str:
        """Copy a bundle in as the next version and make it current; returns the version.
        best: the promotion gate scored it best of all versions. Old versions are then pruned
        (see the module's docstring); `protect` names versions a caller still needs."""
        with self._locked():
            if not self.is_initialised():
                raise InputError(f"{self.root} is not a model registry yet; init_from a bundle first.")
            version = self._add_version(Path(bundle_dir), metrics=dict(metrics or {}), event="publish")
            if best:
                self._set_best(version)
            self._prune(protect)
            return version

    def set_best(self, version: str) -> None:
        """Record the version the promotion gate scored best (kept by pruning)."""
        with self._locked():
            self._set_best(version)

    def _set_best(self, version: str) -> None:
        if version not in self.versions():
            raise InputError(f"No model version {version!r} in {self.root}.")
        history = self.history()
        if history.get("best") != version:
            history["best"] = version
            atomic_write_json(self.root / "registry.json", history)

    def kept_versions(self, protect: tuple[str, ...] = ()) -> list[str]:
        """The versions the retention rule keeps now."""
        versions = self.versions()
        keep = set(versions[-self.keep_last:]) | set(protect)
        history = self.history()
        first = [e["version"] for e in history["events"] if e.get("event") == "init"]
        keep |= set(first or versions[:1])
        keep |= {v for v in (self.current_version(), self.best_version(), self.rollback_target()) if v}
        return [v for v in versions if v in keep]

    def _prune(self, protect: tuple[str, ...] = ()) -> list[str]:
        kept = set(self.kept_versions(protect))
        pruned = [v for v in self.versions() if v not in kept]
        if pruned:  # recorded before the folders go: a writer killed in between leaves no version unaccounted for
            history = self.history()
            history["events"].append({"event": "prune", "versions": pruned, "time": time.time()})
            atomic_write_json(self.root / "registry.json", history)
        for version in pruned:
            os.replace(self.versions_dir / version, self.versions_dir / f".trash-{version}")
        if pruned:
            fsync_dir(self.versions_dir)
        self._sweep()
        return pruned

    def _sweep(self) -> None:
        """Remove what a writer killed mid-copy or mid-prune left aside."""
        if self.versions_dir.is_dir():
            for leftover in [*self.versions_dir.glob(".staging-*"), *self.versions_dir.glob(".trash-*")]:
                shutil.rmtree(leftover, ignore_errors=True)

    def rollback(self) -> str:
        """Make the newest earlier version that was not itself rolled back current again."""
        with self._locked():
            current = self.current_version()
            target = self.rollback_target()
            if target is None:
                raise InputError(f"No earlier model version to roll back to (current {current}).")
            history = self.history()
            history["rolled_back"] = sorted(set(history["rolled_back"]) | {current}, key=_num)
            history["events"].append({"event": "rollback", "from": current, "to": target, "time": time.time()})
            atomic_write_json(self.root / "registry.json", history)
            atomic_write_bytes(self.root / "CURRENT", (target + "\n").encode())
            return target

    def _add_version(self, source: Path, metrics: dict, event: str) -> str:
        from .bundle import check_metadata_digest, read_metadata, write_metadata

        if not (source / "configs" / "metadata.json").is_file():
            raise BundleError(f"{source} is not a model bundle (no configs/metadata.json).")
        previous = self.current_version() if self.is_initialised() else None
        existing = self.versions()
        version = f"v{(_num(existing[-1]) + 1) if existing else 1:04d}"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self._sweep()
        staging = self.versions_dir / f".staging-{version}"
        shutil.copytree(source, staging)
        metadata = read_metadata(staging)
        check_metadata_digest(metadata, source)  # never re-sign a hand-edited bundle
        metadata["parent_version"] = metadata.get("version") if event == "init" else previous
        metadata["version"] = version
        if metrics:
            metadata.setdefault("metrics", {})["finetune"] = metrics
        write_metadata(staging, metadata)  # signed again: version and metrics changed
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
