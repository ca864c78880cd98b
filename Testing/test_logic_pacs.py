"""The Slicer Logic opens a series from a DICOMweb PACS (a real Orthanc) and stores the corrected
segmentation back on it as a DICOM SEG."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from slicer_shim import headless_slicer

from crossdomainseg import dciodvfy
from crossdomainseg.dicom_seg import read_dicom_seg
from crossdomainseg.dicom_series import write_series
from crossdomainseg.errors import InputError
from crossdomainseg.imageio import read_image
from crossdomainseg.pacs.client import SeriesAddress, connect, list_series, pull_series, push
from crossdomainseg.pacs.orthanc import LocalOrthanc
from crossdomainseg.resources import demo_case, shipped_bundle
from CrossDomainSegLib.logic import CrossDomainSegLogic


def test_open_from_pacs_segment_click_and_export_to_pacs(tmp_path):
    app = headless_slicer()
    logic = CrossDomainSegLogic(app.scene, app.segmentations, workspace=tmp_path / "workspace", threads=1)
    logic.load_bundle(shipped_bundle("phantom-ct-mr"))
    files = write_series(read_image(demo_case())[:, :, 20:36], tmp_path / "upload")
    first = pydicom.dcmread(files[0])
    with LocalOrthanc(tmp_path / "orthanc") as server:
        client = connect(server.dicomweb_url, server.user, server.password)
        push(client, files)
        url = (f"dicomweb://127.0.0.1:{server.port}/dicom-web/studies/{first.StudyInstanceUID}"
               f"/series/{first.SeriesInstanceUID}")
        with pytest.raises(InputError, match="HTTP 401"):
            logic.load_from_pacs(url, server.user, "wrong")
        volume = logic.load_from_pacs(url, server.user, server.password)
        outcome = logic.segment(volume)
        assert outcome.segmentation_node is not None
        seg_file = logic.export_to_pacs()
        assert dciodvfy.validate(seg_file).errors == []

        segs = [s for s in list_series(client, first.StudyInstanceUID) if s["modality"] == "SEG"]
        assert len(segs) == 1
        back = pull_series(client, SeriesAddress(server.dicomweb_url, first.StudyInstanceUID, segs[0]["uid"]),
                           tmp_path / "back")
    series_files = sorted(Path(volume.GetAttribute("CrossDomainSeg.source")).iterdir())
    label, _ = read_dicom_seg(back[0], series_files, logic.metadata["labels"])
    on_screen = read_image(logic.export(tmp_path / "on_screen.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(on_screen))
    assert sitk.GetArrayFromImage(label).any()


def test_export_to_pacs_needs_an_image_from_a_pacs(tmp_path):
    app = headless_slicer()
    logic = CrossDomainSegLogic(app.scene, app.segmentations, workspace=tmp_path / "workspace", threads=1)
    logic.load_bundle(shipped_bundle("phantom-ct-mr"))
    logic.segment(logic.load_volume(demo_case()))
    with pytest.raises(InputError, match="not opened from a PACS"):
        logic.export_to_pacs()
