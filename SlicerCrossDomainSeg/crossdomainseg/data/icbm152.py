"""The ICBM152 2009c asymmetric brain templates: fetched from PyPI, checked, cached, read.

The templates ship inside the source archive of the PyPI package niworkflows==0.0.5 (an average of
152 real scans on one 2 mm grid). It is downloaded with pip (never installed), checked against
its sha256, and only the files this project uses are extracted into a per-user cache:
`CROSSDOMAINSEG_CACHE`, else the platform's cache folder. A user can also name the archive or an
extracted folder (`--templates PATH`); every extracted file is checked against its own sha256.

Only the T1 and T2 images are ours to use; the folder's other contrasts (PD, ...) are reserved
for independent evaluation and are never extracted or read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..bundle import sha256_file as sha256
from ..errors import InputError

PACKAGE = "niworkflows==0.0.5"
ARCHIVE_NAME = "niworkflows-0.0.5.tar.gz"
ARCHIVE_SHA256 = "7e2e7adba959921e6853c4aa7cca0bcacffb42d17026ae7050c66c67aef7fe6d"
ARCHIVE_BYTES = 55484810
MEMBER_DIR = "niworkflows-0.0.5/niworkflows/data/templates/mni_icbm152_nlin_asym_09c"
FOLDER = "mni_icbm152_nlin_asym_09c"
# The files used, with their sha256 in the archive above.
FILES = {
    "2mm_T1.nii.gz": "9d08f955e1a8f0e349f59e36afa905e78026814de539c5d4ab5820e549d4f5d3",
    "2mm_T2.nii.gz": "a9368c8a032978e02e58bbdeb635f348ff8b9f661363454c2a1af3ebcfab7c05",
    "2mm_parc.nii.gz": "0b391b2de9d32426f9dcde1b26ed6b6849190dea583f18c03c647bf0c932cb3d",
    "2mm_brainmask.nii.gz": "2b09ba9ae71e73b31c74c10555fa1e5a15e8a36c171a1d4aa3a99e02af176fe9",
    "2mm_tpm_csf.nii.gz": "7018b618603f51100e65311e09797db762af0cce2622381702ef9f2d55f4677c",
    "2mm_tpm_gm.nii.gz": "92d15546d1d5be828273b1890dd6b1659054464c37cfc5473037c8bd86ad33f0",
    "2mm_tpm_wm.nii.gz": "fefb73dac49d33363d2c804b8d550014a66acfb03df925c4e0a6ab6a4f4c9837",
}
PIP_COMMAND = f"python -m pip download --no-deps --no-binary :all: -d DIR {PACKAGE}"

NOTICE = """\
ICBM 2009c Nonlinear Asymmetric template (mni_icbm152_nlin_asym_09c)
Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
Institute, McGill University. Permission to use, copy, modify, and distribute this software and
its documentation for any purpose and without fee is hereby granted, provided that the above
copyright notice appear in all copies. The authors and McGill University make no representations
about the suitability of this software for any purpose. It is provided "as is" without express or
implied warranty. The authors are not responsible for any data loss, equipment damage, property
loss, or injury to subjects or patients resulting from the use or misuse of this software package.
References: V.S. Fonov, A.C. Evans, R.C. McKinstry, C.R. Almli, D.L. Collins, Unbiased nonlinear
average age-appropriate brain templates from birth to adulthood, NeuroImage 47 (2009) S102;
V.S. Fonov et al., Unbiased average age-appropriate atlases for pediatric studies, NeuroImage 54
(2011) 313-327.

The labels are derived from the template's tissue probability maps and from its parcellation
(2mm_parc), which niworkflows built from the Harvard-Oxford cortical and subcortical atlases
(distributed with FSL; FSL licence: free for non-commercial use only). Obtained from the PyPI
source archive niworkflows==0.0.5 (BSD-3-Clause).
"""


def cache_root() -> Path:
    """`CROSSDOMAINSEG_CACHE`, else the platform's per-user cache folder."""
    configured = os.environ.get("CROSSDOMAINSEG_CACHE")
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "crossdomainseg"


def check_archive(path: Path) -> None:
    """Refuse an archive that is not the expected niworkflows 0.0.5 source archive."""
    size = path.stat().st_size
    if size != ARCHIVE_BYTES or sha256(path) != ARCHIVE_SHA256:
        raise InputError(
            f"{path} is not the expected {PACKAGE} source archive (sha256 {ARCHIVE_SHA256}, "
            f"{ARCHIVE_BYTES} bytes; this file has {size} bytes): it is corrupt or another version. "
            f"Delete it and download it again with `{PIP_COMMAND}`.")


def extract(archive: Path, folder: Path) -> Path:
    """Extract the used files (and nothing else) from a checked archive into `folder`."""
    check_archive(archive)
    folder.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in FILES:
                member = tar.getmember(f"{MEMBER_DIR}/{name}")
                source = tar.extractfile(member)
                with open(partial / name, "wb") as out:
                    shutil.copyfileobj(source, out)
        (partial / "NOTICE.txt").write_text(NOTICE)
        for path in partial.iterdir():
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def download(folder: Path) -> Path:
    """The archive downloaded with pip into `folder` and checked; InputError when offline."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-d", str(folder), PACKAGE]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        failed = done.returncode != 0
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] if failed else []
    except (OSError, subprocess.TimeoutExpired) as error:
        failed, reason = True, [str(error)]
    archive = folder / ARCHIVE_NAME
    if failed or not archive.is_file():
        raise InputError(
            f"Could not download the ICBM152 brain templates ({PACKAGE} from PyPI): "
            f"{reason[0] if reason else 'pip wrote no archive'}. On a machine with internet access run "
            f"`{PIP_COMMAND}` and pass the archive with --templates PATH.")
    try:
        check_archive(archive)
    except InputError:
        archive.unlink()
        raise
    return archive


def _checked_folder(folder: Path) -> bool:
    """True when `folder` holds every used file with its expected checksum."""
    return all((folder / name).is_file() and sha256(folder / name) == digest
               for name, digest in FILES.items())


def _find_folder(path: Path) -> Path | None:
    """The template folder at or below `path` (the extracted archive or the folder itself)."""
    for candidate in (path, path / FOLDER, path / MEMBER_DIR, path / MEMBER_DIR.split("/", 1)[1]):
        if (candidate / "2mm_T1.nii.gz").is_file():
            return candidate
    return None


def locate(templates: str | Path | None = None) -> Path:
    """A checked folder holding the used template files.

    `templates`: the niworkflows archive, or a folder holding the extracted templates; None
    fetches the archive through PyPI into the cache (once)."""
    if templates is not None:
        path = Path(templates).expanduser()
        if path.is_file():
            return _cached_extract(path)
        if not path.is_dir():
            raise InputError(f"--templates {path} does not exist; name the {ARCHIVE_NAME} archive or "
                             f"the folder {FOLDER} extracted from it.")
        folder = _find_folder(path)
        if folder is None or not _checked_folder(folder):
            raise InputError(
                f"{path} does not hold the ICBM152 2009c files {', '.join(FILES)} of {PACKAGE} "
                f"(missing or altered); name the {ARCHIVE_NAME} archive instead.")
        return folder
    folder = cache_root() / "icbm152_2009c"
    if _checked_folder(folder):
        return folder
    archive = cache_root() / "downloads" / ARCHIVE_NAME
    if not (archive.is_file() and archive.stat().st_size == ARCHIVE_BYTES):
        archive = download(archive.parent)
    return extract(archive, folder)


def _cached_extract(archive: Path) -> Path:
    folder = cache_root() / "icbm152_2009c"
    if _checked_folder(folder):
        check_archive(archive)
        return folder
    return extract(archive, folder)


class Templates:
    """The template arrays (z, y, x) on the template grid, and that grid's geometry."""

    def __init__(self, folder: Path):
        self.folder = folder
        t1 = sitk.ReadImage(str(folder / "2mm_T1.nii.gz"))
        self.origin = np.array(t1.GetOrigin())
        self.spacing = np.array(t1.GetSpacing())
        self.direction = np.array(t1.GetDirection()).reshape(3, 3)
        self.shape = t1.GetSize()[::-1]
        self.t1 = sitk.GetArrayFromImage(t1).astype(np.float32)
        self.t2 = self._read("2mm_T2")
        self.parc = self._read("2mm_parc").astype(np.int32)
        self.brainmask = self._read("2mm_brainmask") > 0
        self.tpm = np.stack([self._read(f"2mm_tpm_{t}") for t in ("csf", "gm", "wm")])

    def _read(self, name: str) -> np.ndarray:
        image = sitk.ReadImage(str(self.folder / f"{name}.nii.gz"))
        if image.GetSize()[::-1] != tuple(self.shape):
            raise InputError(f"{self.folder / name} is not on the T1 template's grid")
        return sitk.GetArrayFromImage(image).astype(np.float32)

    @property
    def centre(self) -> np.ndarray:
        """LPS mm of the middle of the template grid."""
        half = (np.array(self.shape[::-1]) - 1) / 2 * self.spacing
        return self.origin + self.direction @ half

    def index_of(self, x, y, z) -> np.ndarray:
        """Continuous array indices (z, y, x) of LPS points (arrays of any one shape)."""
        inverse = np.linalg.inv(self.direction * self.spacing)
        d = [np.asarray(c, np.float32) - np.float32(o) for c, o in zip((x, y, z), self.origin)]
        ijk = [sum(np.float32(inverse[r, c]) * d[c] for c in range(3)) for r in range(3)]
        return np.stack(ijk[::-1])


@lru_cache(maxsize=2)
def _load(folder: str) -> Templates:
    return Templates(Path(folder))


def load_templates(templates: str | Path | None = None) -> Templates:
    """The checked templates (fetched and cached on first use when `templates` is None)."""
    return _load(str(locate(templates).resolve()))
