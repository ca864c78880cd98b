"""Pull a series from a PACS, segment it, push the DICOM SEG back; and the whole round trip
against a local Orthanc (the `pacs demo` command and benchmarks/dicom.py)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pydicom
import SimpleITK as sitk

from .. import dciodvfy
from ..dicom_seg import Provenance, read_dicom_seg, write_dicom_seg
from ..errors import InputError
from ..imageio import write_image
from ..metrics import dice_per_label
from .client import SeriesAddress, connect, list_series, pull_series, push


def segment_series(client, address: SeriesAddress, engine, workdir, push_seg: bool = True,
                   accepted_by: str | None = None) -> dict:
    """Pull `address` into workdir/series, segment it with `engine`, write workdir/label.nii.gz and
    workdir/seg.dcm (DICOM SEG on the series), and store the SEG on the PACS if `push_seg`."""
    workdir = Path(workdir)
    files = pull_series(client, address, workdir / "series")
    result = engine.segment(workdir / "series", preview=False, uncertainty=False)
    metadata = engine.bundle.metadata
    provenance = Provenance(result.model_version, accepted_by=accepted_by)
    seg = write_dicom_seg(result.label, files, workdir / "seg.dcm", result.labels, provenance,
                          metadata.get("terminology"), metadata.get("colors"))
    label = write_image(sitk.Cast(result.label, sitk.sitkUInt8), workdir / "label.nii.gz")
    if push_seg:
        push(client, [seg])
    return {"files": files, "label": label, "seg": seg, "result": result}


def local_roundtrip(image: sitk.Image, engine, workdir=None) -> dict:
    """Start a local Orthanc, push `image` as a DICOM series, pull and segment it, push the SEG,
    pull the SEG back and compare it with the label map (Dice per segment); both SEG objects (as
    written and as pulled back) are checked with dciodvfy."""
    from ..dicom_series import write_series
    from .orthanc import LocalOrthanc

    with tempfile.TemporaryDirectory(prefix="cds-pacs-") as scratch:
        workdir = Path(workdir or scratch)
        with LocalOrthanc(Path(scratch) / "orthanc") as server:
            client = connect(server.dicomweb_url, server.user, server.password)
            files = write_series(image, Path(scratch) / "upload", patient_name="Demo^Phantom")
            start = time.perf_counter()
            pushed = push(client, files)
            first = pydicom.dcmread(files[0], stop_before_pixels=True)
            study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
            done = segment_series(client, SeriesAddress(server.dicomweb_url, study, series), engine,
                                  workdir / "case")
            segs = [s for s in list_series(client, study) if s["modality"] == "SEG"]
            if len(segs) != 1:
                raise InputError(f"Expected one SEG series on the PACS after the push, found {len(segs)}.")
            back = pull_series(client, SeriesAddress(server.dicomweb_url, study, segs[0]["uid"]),
                               workdir / "seg_back")
            label, values = read_dicom_seg(back[0], done["files"], done["result"].labels)
            scores = dice_per_label(label, done["result"].label, values.values())
            names = {value: name for name, value in values.items()}
            reports = [dciodvfy.validate(path) for path in (done["seg"], back[0])]
            return {"orthanc_version": server.version, "series_pushed": pushed,
                    "series_pulled": len(done["files"]), "seg_pushed": 1,
                    "seg_read_back_dice": {names[v]: round(d, 6) for v, d in scores.items()},
                    "seconds": round(time.perf_counter() - start, 2),
                    "dciodvfy": {"objects": len(reports),
                                 "errors": [e for r in reports for e in r.errors],
                                 "warnings": sorted({w for r in reports for w in r.warnings})}}
