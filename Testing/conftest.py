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
