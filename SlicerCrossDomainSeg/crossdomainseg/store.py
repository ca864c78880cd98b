"""Accepted-case store: every volume the clinician corrected and accepted, kept crash-safe.

Layout under the store root:
    cases/<case_id>/image.nii.gz  label.nii.gz  clicks.json  manifest.json
    labels.json                   {name: value} of the model whose cases the store holds
    unlabelled.json               {"folder": path} the user's folder of unlabelled target images
A case exists only once its manifest is on disk: the manifest is written last and names the sha256
of every other file, so a writer killed at any moment leaves either a whole case or none (a
half-written folder without a manifest is ignored and swept up by the next writer).
Every file is written to a temporary name, fsynced, renamed into place, and the folder fsynced
where the OS can open a folder (not Windows, whose NTFS journals the rename itself).
A label is checked against the model's label values before anything is written: values it does
not define (or above 255, which the uint8 label file cannot hold) are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .geometry import same_grid

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_FILES = ("image.nii.gz", "label.nii.gz", "clicks.json")
# A case folder without a manifest older than this is a dead writer's leftover.
_STALE_PARTIAL_S = 3600.0


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable where the OS lets a folder be opened and synced (POSIX);
    elsewhere (Windows) the rename alone is what the file system offers."""
    if os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a file system that refuses to open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (network shares) refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_image(image: sitk.Image, path: Path) -> None:
    path = Path(path)
    # SimpleITK picks the format from the extension, so the temporary name keeps it.
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(3)}{suffix}")
    sitk.WriteImage(image, str(tmp), useCompression=True)
    _fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class AcceptedCase:
    case_id: str
    image: sitk.Image
    label: sitk.Image
    clicks: list[dict]
    model_version: str | None
    accepted_at: float
    meta: dict
    structures: dict = dataclasses.field(default_factory=dict)  # new structures: {name: value}


def _click_to_dict(click: Any) -> dict:
    if dataclasses.is_dataclass(click) and not isinstance(click, type):
        click = dataclasses.asdict(click)
    elif hasattr(click, "to_dict"):
        click = click.to_dict()
    if not isinstance(click, dict):
        raise InputError(
            f"A click must be a mapping with a 'point' [x, y, z] in LPS mm, got {type(click).__name__}."
        )
    point = click.get("point")
    if point is None or len(point) != 3 or not all(np.isfinite(float(v)) for v in point):
        raise InputError(
            f"Each click needs a 'point' of three finite LPS coordinates in mm, got {point!r}."
        )
    out = json.loads(json.dumps(click, default=float))
    out["point"] = [float(v) for v in point]
    return out


def _check_pair(image: sitk.Image, label: sitk.Image) -> None:
    if not isinstance(image, sitk.Image) or not isinstance(label, sitk.Image):
        raise InputError("accept() takes the image and the corrected label as SimpleITK images.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("The accepted image must be a single-channel (scalar) volume.")
    if not same_grid(image, label):
        # A mismatched image/label pair poisons fine-tuning far more than noise (METHOD.md 3).
        raise InputError(
            "The corrected label does not lie on the image's grid (size, spacing, origin or "
            f"direction differ: image {image.GetSize()} vs label {label.GetSize()}). Resample the "
            "label onto the image before accepting."
        )
    values = sitk.GetArrayViewFromImage(label)
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.equal(np.mod(values, 1), 0)):
            raise InputError("The corrected label must hold integer label values.")
    if values.min() < 0:
        raise InputError("The corrected label holds negative values; label values start at 0.")


def undefined_label_values(label: sitk.Image, labels: dict) -> list[int]:
    """The values of `label` that neither the model's `labels` ({name: value}) nor background define."""
    present = {int(v) for v in np.unique(sitk.GetArrayViewFromImage(label))}
    return sorted(present - {int(v) for v in labels.values()} - {0})


def check_label_values(label: sitk.Image, labels: dict) -> None:
    """Refuse label values the model does not define (`labels`: {name: value}); the stored label
    file is uint8, so values above 255 would wrap (256 would become background)."""
    unknown = undefined_label_values(label, labels)
    defined = {int(v) for v in labels.values()} | {0}
    if unknown:
        names = ", ".join(f"{name} = {value}" for name, value in sorted(labels.items(), key=lambda kv: kv[1]))
        raise InputError(
            f"The corrected label holds values {unknown[:10]} that the model does not define "
            f"(its labels: {names}). Relabel those voxels with one of the model's labels before accepting."
        )
    if max(defined) > 255:
        raise InputError(f"Label values above 255 cannot be stored (model labels {labels}).")


def _check_structures(structures: dict | None, labels: dict) -> dict:
    """{name: value} of added structures, checked against the model's labels (no name or value
    of theirs, values 1-255)."""
    structures = dict(structures or {})
    for name, value in structures.items():
        if (not isinstance(name, str) or not name or not isinstance(value, int) or isinstance(value, bool)
                or not 0 < value <= 255 or name in labels or value in labels.values()):
            raise InputError(f"A new structure needs a name and a label value (1-255) of its own, not one "
                             f"of the model's labels {labels}; got {name!r} = {value!r}.")
    if len(set(structures.values())) < len(structures):
        raise InputError(f"Two new structures share a label value: {structures}.")
    return structures


def image_entries(folder: Path) -> list[Path]:
    """Image files (and non-empty DICOM series folders) directly in `folder`, sorted."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES):
            found.append(path)
        elif path.is_dir() and any(path.iterdir()):
            found.append(path)
    return found


class AcceptedCaseStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.cases_dir = self.root / "cases"
        self.cases_dir.mkdir(parents=True, exist_ok=True)

    # -- accepted cases ---------------------------------------------------------------------
    def accept(
        self,
        image: sitk.Image,
        label: sitk.Image,
        clicks: Iterable[Any] = (),
        model_version: str | None = None,
        meta: dict | None = None,
        labels: dict | None = None,
        draft: sitk.Image | None = None,
        structures: dict | None = None,
    ) -> str:
        """Store one accepted case; returns its id once every byte of it is durable.

        labels: {name: value} of the model the case was corrected with; the first accept records
        them in the store (labels.json) and later cases are checked against them. draft: the
        model's label before the clinician's corrections; the manifest records how many voxels
        differ (`edited_voxels`, None without a draft), so the promotion gate can tell a draft
        accepted unchanged from a corrected one. structures: {name: value} of structures the
        clinician added that the model has no label for (a lesion); the label may hold their
        values and the manifest keeps their names.
        """
        _check_pair(image, label)
        labels = self._labels_for(labels)
        structures = _check_structures(structures, labels)
        check_label_values(label, {**labels, **structures})
        edited = None
        if draft is not None:
            _check_pair(image, draft)
            edited = int(np.count_nonzero(sitk.GetArrayViewFromImage(draft).astype(np.int64)
                                          != sitk.GetArrayViewFromImage(label).astype(np.int64)))
        click_list = [_click_to_dict(c) for c in clicks or ()]
        try:
            meta_json = json.loads(json.dumps(meta or {}))
        except TypeError as error:
            raise InputError(f"Case metadata must be JSON-serialisable: {error}") from None
        if self.labels() is None:
            atomic_write_json(self.root / "labels.json", labels)
        self._sweep_partials()
        accepted_at = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(accepted_at))
        micros = int(accepted_at * 1e6) % 1_000_000
        case_id = f"{stamp}.{micros:06d}-{secrets.token_hex(3)}"
        folder = self.cases_dir / case_id
        folder.mkdir()
        fsync_dir(self.cases_dir)
        atomic_write_image(image, folder / "image.nii.gz")
        atomic_write_image(sitk.Cast(label, sitk.sitkUInt8), folder / "label.nii.gz")
        atomic_write_json(folder / "clicks.json", {"coordinates": "LPS mm", "clicks": click_list})
        manifest = {
            "case_id": case_id,
            "model_version": model_version,
            "accepted_at": accepted_at,
            "accepted_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(accepted_at)),
            "meta": meta_json,
            "edited_voxels": edited,
            "structures": structures,
            "sha256": {name: sha256_file(folder / name) for name in _FILES},
        }
        atomic_write_json(folder / "manifest.json", manifest)
        return case_id

    def labels(self) -> dict | None:
        """{name: value} the store's cases are labelled with, or None before the first accept."""
        path = self.root / "labels.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def _labels_for(self, labels: dict | None) -> dict:
        recorded = self.labels()
        if labels is None:
            if recorded is None:
                raise InputError("Accepting a case needs the model's labels ({name: value}) so that "
                                 "its label values can be checked.")
            return recorded
        if not isinstance(labels, dict) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                   for v in labels.values()):
            raise InputError(f"Labels must map names to integer values, got {labels!r}.")
        labels = {str(k): int(v) for k, v in labels.items()}
        if recorded is not None and recorded != labels:
            raise InputError(
                f"This store holds cases labelled {recorded}, but the model's labels are {labels}; "
                "accepted cases of another model or task belong in another store."
            )
        return labels

    def cases(self) -> list[str]:
        """Ids of complete cases, oldest first."""
        ids = [p.parent.name for p in self.cases_dir.glob("*/manifest.json")]
        return sorted(ids)

    def manifest(self, case_id: str) -> dict:
        path = self.cases_dir / case_id / "manifest.json"
        if not path.is_file():
            raise InputError(f"No accepted case '{case_id}' in {self.root}.")
        return json.loads(path.read_text())

    def verify(self, case_id: str) -> None:
        """Raise InputError when a stored file no longer matches its manifest checksum."""
        manifest = self.manifest(case_id)
        for name, digest in manifest["sha256"].items():
            path = self.cases_dir / case_id / name
            if not path.is_file() or sha256_file(path) != digest:
                raise InputError(f"Accepted case '{case_id}' is damaged: {name} fails its checksum.")

    def load(self, case_id: str, verify: bool = True) -> AcceptedCase:
        if verify:
            self.verify(case_id)
        manifest = self.manifest(case_id)
        folder = self.cases_dir / case_id
        clicks = json.loads((folder / "clicks.json").read_text())["clicks"]
        return AcceptedCase(
            case_id=case_id,
            image=sitk.ReadImage(str(folder / "image.nii.gz")),
            label=sitk.ReadImage(str(folder / "label.nii.gz")),
            clicks=clicks,
            model_version=manifest["model_version"],
            accepted_at=manifest["accepted_at"],
            meta=manifest["meta"],
            structures=manifest.get("structures", {}),
        )

    def image_path(self, case_id: str) -> Path:
        return self.cases_dir / case_id / "image.nii.gz"

    def label_path(self, case_id: str) -> Path:
        return self.cases_dir / case_id / "label.nii.gz"

    def _sweep_partials(self) -> None:
        now = time.time()
        for folder in self.cases_dir.iterdir():
            if folder.is_dir() and not (folder / "manifest.json").exists():
                if now - folder.stat().st_mtime > _STALE_PARTIAL_S:
                    shutil.rmtree(folder, ignore_errors=True)

    # -- unlabelled target images ---------------------------------------------------------
    def set_unlabelled_folder(self, folder: str | os.PathLike) -> None:
        folder = Path(folder).expanduser().resolve()
        if not folder.is_dir():
            raise InputError(f"Unlabelled image folder {folder} does not exist or is not a folder.")
        atomic_write_json(self.root / "unlabelled.json", {"folder": str(folder)})

    def unlabelled_folder(self) -> Path | None:
        path = self.root / "unlabelled.json"
        if not path.is_file():
            return None
        return Path(json.loads(path.read_text())["folder"])

    def unlabelled_images(self) -> list[Path]:
        """Image files (and DICOM series folders) in the unlabelled folder, sorted."""
        folder = self.unlabelled_folder()
        if folder is None:
            return []
        if not folder.is_dir():
            raise InputError(
                f"The unlabelled image folder {folder} has gone; point the store at it again."
            )
        return image_entries(folder)
