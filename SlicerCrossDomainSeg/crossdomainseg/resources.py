"""Where the shipped model bundles and the embedded demo case are.

In a source checkout they are under the repository's Resources/; an installed extension or a
packaged copy points CROSSDOMAINSEG_RESOURCES at its own copy.
"""

import os
from pathlib import Path

from .errors import InputError


def resources_dir() -> Path:
    configured = os.environ.get("CROSSDOMAINSEG_RESOURCES")
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "Resources"


def shipped_bundles() -> dict[str, Path]:
    """Task name -> bundle folder, for every bundle shipped in Resources/bundles."""
    root = resources_dir() / "bundles"
    return {p.name: p for p in sorted(root.iterdir()) if (p / "configs" / "metadata.json").exists()} \
        if root.is_dir() else {}


DEMO_TASK = "brain-t1-t2"  # the headline task: what `crossdomainseg demo` and the web app open


def shipped_bundle(task: str = "phantom-ct-mr") -> Path:
    bundles = shipped_bundles()
    if task not in bundles:
        raise InputError(f"No shipped model bundle for task '{task}' (shipped: "
                         f"{', '.join(bundles) or 'none'}) under {resources_dir() / 'bundles'}.")
    return bundles[task]


def demo_case(task: str = "phantom-ct-mr") -> Path:
    """The embedded target case of `task` (scripts/make_demo_case.py); its ground truth lies beside
    it as `<task>_target_label.nii.gz`."""
    return resources_dir() / "demo" / f"{task}_target.nii.gz"
