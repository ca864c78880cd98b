"""Reading a task folder written by `make_task` (layout in docs/ARCHITECTURE.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..errors import InputError

SPLITS = ("train", "val", "test")
DOMAINS = ("source", "target")


class TaskDir:
    def __init__(self, path):
        self.path = Path(path)
        meta = self.path / "task.json"
        if not meta.is_file():
            raise InputError(f"{self.path} is not a task folder (no task.json); create one with "
                             "`crossdomainseg data make --task phantom-ct-mr --n 20 --seed 0 --out DIR`")
        try:
            self.meta = json.loads(meta.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"{meta} is not valid JSON ({error}); regenerate the task folder") from error

    @property
    def labels(self) -> dict[str, int]:
        return self.meta["labels"]

    @property
    def name(self) -> str:
        return self.meta["task"]

    def cases(self, split: str, domain: str) -> Iterator[tuple[str, Path, Path | None]]:
        """(case id, image path, label path or None) of `domain` cases in `split`, in id order.

        Target training cases have no label on purpose (unlabelled domain)."""
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if domain not in DOMAINS:
            raise InputError(f"unknown domain {domain!r}; use 'source' or 'target'")
        for case_id in self.meta["domain_splits"][domain][split]:
            image = self.path / domain / "images" / f"{case_id}.nii.gz"
            if not image.is_file():
                raise InputError(f"{image} is missing; the task folder is incomplete, regenerate it")
            label = self.path / domain / "labels" / f"{case_id}.nii.gz"
            yield case_id, image, label if label.is_file() else None

    def paired_source(self, case_id: str) -> Path | None:
        """Ground-truth source rendering of a target val/test case on its own grid, if written."""
        path = self.path / "target" / "paired_source" / f"{case_id}.nii.gz"
        return path if path.is_file() else None
