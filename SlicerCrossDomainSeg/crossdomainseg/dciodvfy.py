"""Validation of DICOM objects with `dciodvfy` (dicom3tools), the standard's own IOD checker."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError


@dataclass
class Report:
    """dciodvfy's findings for one file: its "Error" and "Warning" lines."""

    errors: list[str]
    warnings: list[str]


def validate(path) -> Report:
    """Run dciodvfy on one DICOM file; InputError if dciodvfy is not installed."""
    program = shutil.which("dciodvfy")
    if program is None:
        raise InputError("dciodvfy is not installed (Debian/Ubuntu package dicom3tools; "
                         "scripts/install_system_deps.sh installs it).")
    run = subprocess.run([program, str(Path(path))], capture_output=True, text=True, timeout=120)
    lines = [line.strip() for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    return Report(errors=[line for line in lines if line.startswith("Error")],
                  warnings=[line for line in lines if line.startswith("Warning")])
