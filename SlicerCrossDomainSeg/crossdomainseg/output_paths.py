"""Checks on where results will be written, made before any work: an output never replaces an
input or another output, and an output that cannot be written is refused with one line instead
of a traceback after the segmentation has run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import InputError


def same_path(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name one file or folder (links, `..`, case-insensitive file systems)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(str(a.resolve())) == os.path.normcase(str(b.resolve()))


def _writable_folder(folder: Path, flag: str, shown: Path) -> None:
    """`folder`, or the nearest folder above it that exists (the rest would be created), must be a
    folder this process can create files in."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{flag} {shown}: cannot be written there, {existing} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise InputError(f"{flag} {shown}: cannot write in {existing} ({error.strerror or error}); "
                         "choose a folder you can write to.") from None


def check_output_file(flag: str, path: Path, suffixes: tuple[str, ...]) -> None:
    """`path` must end in one of `suffixes`, not be a folder or a read-only file, and lie in a
    folder that exists or can be created and is writable."""
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a folder; give a file name such as {path / 'label.nii.gz'}.")
    if not path.name.lower().endswith(suffixes):
        raise InputError(f"{flag} {path}: the file name must end in one of {', '.join(suffixes)}.")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{flag} {path}: the file exists and is read-only; choose another name.")
    _writable_folder(path.parent, flag, path)


def check_output_folder(flag: str, folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{flag} {folder}: is a file; in batch mode give a folder.")
    _writable_folder(folder, flag, folder)


def check_distinct(inputs: list[Path], outputs: dict[str, Path]) -> None:
    """No output is an input, and no two outputs are the same ({flag: path})."""
    flags = list(outputs)
    for flag in flags:
        for source in inputs:
            if same_path(outputs[flag], source):
                raise InputError(f"{flag} {outputs[flag]} is the input {source}: it would be "
                                 "overwritten with the result. Write the result to another file.")
    for i, first in enumerate(flags):
        for second in flags[i + 1:]:
            if same_path(outputs[first], outputs[second]):
                raise InputError(f"{first} and {second} are the same ({outputs[first]}); one would "
                                 "overwrite the other. Give each its own name.")
