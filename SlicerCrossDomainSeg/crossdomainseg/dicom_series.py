"""DICOM series: the checks a series passes before it is read as one volume, and writing one.

A volume is a stack of equally spaced parallel slices. ITK reads any set of files of one series
as such a stack, averaging the spacing over a missing slice (slices then sit up to a spacing away
from where they were acquired) and taking the first slice's orientation for all: `check_series`
refuses, naming the slice positions, a series with a gap, irregular spacing, two slices at one
position, slices of different orientation or size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

ORIENTATION_TOLERANCE = 1e-4   # direction cosines
SPACING_TOLERANCE = 0.01       # relative, between neighbouring slices
POSITION_TOLERANCE_MM = 1e-3


def check_series(files, where: str) -> None:
    """Raise InputError naming the problem if the files of one series are not one regular stack."""
    import pydicom

    headers = []
    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception as error:  # a damaged file inside the series
            raise InputError(f"{where}: {Path(file).name} is not a readable DICOM file ({error}).") from None
        headers.append((Path(file).name, ds))
    if len(headers) < 2:
        return
    missing = [name for name, ds in headers
               if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds]
    if missing:
        raise InputError(f"{where}: {len(missing)} file(s) have no image position or orientation "
                         f"(e.g. {missing[0]}); the series cannot be placed in patient space.")
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if len(sizes) > 1:
        raise InputError(f"{where}: the series mixes slice sizes {sorted(sizes)}; it is not one volume.")
    orientations = [np.array([float(v) for v in ds.ImageOrientationPatient]) for _, ds in headers]
    different = [name for (name, _), o in zip(headers, orientations)
                 if np.abs(o - orientations[0]).max() > ORIENTATION_TOLERANCE]
    if different:
        raise InputError(
            f"{where}: the series mixes slice orientations ({headers[0][0]}: "
            f"{_fmt(orientations[0])}; {different[0]}: "
            f"{_fmt(orientations[[n for n, _ in headers].index(different[0])])}; {len(different)} "
            "slice(s) differ), e.g. a localizer stored with the scan. Load the slices of one "
            "orientation as their own series.")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    along = sorted(float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))
                   for _, ds in headers)
    steps = np.diff(along)
    if (steps < POSITION_TOLERANCE_MM).any():
        at = along[int(np.argmin(steps))]
        raise InputError(f"{where}: two slices lie at the same position ({at:.2f} mm along the "
                         "slice normal): the folder holds a repeated acquisition or duplicate files.")
    spacing = float(np.median(steps))
    irregular = np.flatnonzero(np.abs(steps - spacing) > SPACING_TOLERANCE * spacing)
    if irregular.size:
        k = int(irregular[0])
        gap = steps[k] / spacing
        what = (f"{int(round(gap)) - 1} missing slice(s)" if gap > 1.5 and abs(gap - round(gap)) < 0.1
                else "irregular slice spacing")
        raise InputError(
            f"{where}: {what} between the slices at {along[k]:.2f} and {along[k + 1]:.2f} mm along "
            f"the slice normal ({steps[k]:.2f} mm apart where the series' spacing is {spacing:.2f} "
            f"mm; {irregular.size} such place(s)). Reading it as one volume would misplace slices; "
            "export the complete series again.")


def write_series(image: sitk.Image, folder, modality: str = "MR", patient_name: str = "Anonymous^",
                 patient_id: str = "CDS-0", uids: dict | None = None) -> list[Path]:
    """Write a 3D image as a DICOM series, one file per slice, with its geometry (for demos and
    benchmarks that need a DICOM series; intensities are rounded to int16). `uids` may give
    "study", "series" and "frame" UIDs; new ones are made otherwise."""
    import pydicom.uid

    sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}[modality]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uids = {key: (uids or {}).get(key) or pydicom.uid.generate_uid() for key in ("study", "series", "frame")}
    volume = sitk.Cast(sitk.Round(sitk.Cast(image, sitk.sitkFloat64)), sitk.sitkInt16)
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.9f}" for v in (*direction[0::3], *direction[1::3]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(volume.GetDepth()):
        plane = volume[:, :, k]
        position = "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in (("0010|0010", patient_name), ("0010|0020", patient_id),
                           ("0008|0060", modality), ("0020|000d", uids["study"]),
                           ("0020|000e", uids["series"]), ("0020|0052", uids["frame"]),
                           ("0008|0016", sop_class), ("0008|0018", pydicom.uid.generate_uid()),
                           ("0020|0010", "1"), ("0020|0011", "1"), ("0020|0013", str(k + 1)), ("0020|0037", orientation),
                           ("0020|0032", position), ("0018|0050", f"{image.GetSpacing()[2]:.6f}")):
            plane.SetMetaData(tag, value)
        files.append(folder / f"slice{k:04d}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(plane)
    return files


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
