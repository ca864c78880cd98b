"""PACS over DICOMweb against a real Orthanc (started on a free loopback port, throwaway storage):
list, pull, segment, push the DICOM SEG back, read it back; authentication; bad addresses."""

import pydicom
import pytest
import SimpleITK as sitk
import numpy as np

from crossdomainseg import dciodvfy
from crossdomainseg.cli import main
from crossdomainseg.dicom_seg import read_dicom_seg
from crossdomainseg.dicom_series import write_series
from crossdomainseg.engine import Engine
from crossdomainseg.errors import InputError
from crossdomainseg.imageio import read_image
from crossdomainseg.pacs.client import (PASSWORD_VARIABLE, SeriesAddress, check_uid, connect,
                                        list_studies, parse_url)
from crossdomainseg.pacs.orthanc import LocalOrthanc
from crossdomainseg.pacs.roundtrip import local_roundtrip
from crossdomainseg.resources import demo_case, shipped_bundle


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LocalOrthanc(tmp_path_factory.mktemp("orthanc")) as orthanc:
        yield orthanc
    assert orthanc.process is None


@pytest.fixture
def series(tmp_path, server, monkeypatch):
    """A part of the demo case pushed to the PACS; its image, files and dicomweb:// address."""
    image = read_image(demo_case())[:, :, 20:36]
    files = write_series(image, tmp_path / "upload", patient_name="Test^Pacs", patient_id="PACS-1")
    monkeypatch.setenv(PASSWORD_VARIABLE, server.password)
    assert main(["pacs", "push", "--url", server.dicomweb_url, "--user", server.user, *map(str, files)]) == 0
    first = pydicom.dcmread(files[0])
    address = (f"dicomweb://127.0.0.1:{server.port}/dicom-web/studies/{first.StudyInstanceUID}"
               f"/series/{first.SeriesInstanceUID}")
    return image, files, address, first


def test_cli_lists_pulls_segments_and_pushes_the_seg_back(server, series, tmp_path, capsys):
    image, files, address, first = series
    login = ["--user", server.user]
    assert main(["pacs", "list", "--url", server.dicomweb_url, *login]) == 0
    assert first.StudyInstanceUID in capsys.readouterr().out
    assert main(["pacs", "pull", address, "--out", str(tmp_path / "pulled"), *login]) == 0
    pulled = read_image(tmp_path / "pulled")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(pulled), sitk.GetArrayFromImage(
        sitk.Cast(sitk.Round(sitk.Cast(image, sitk.sitkFloat64)), sitk.sitkInt16)))
    np.testing.assert_allclose(pulled.GetOrigin(), image.GetOrigin(), atol=1e-5)

    assert main(["pacs", "segment", address, "--bundle", "phantom-ct-mr", "--out", str(tmp_path / "case"),
                 "--accepted-by", "Doe^John", "--threads", "1", *login]) == 0
    assert "stored on the PACS" in capsys.readouterr().out
    assert main(["pacs", "list", "--url", server.dicomweb_url, "--study", first.StudyInstanceUID, *login]) == 0
    listed = capsys.readouterr().out
    seg_lines = [line for line in listed.splitlines() if " SEG " in line]
    assert len(seg_lines) == 1 and "MR" in listed
    seg_uid = seg_lines[0].split()[0]
    back_address = address.rsplit("/series/", 1)[0] + f"/series/{seg_uid}"
    assert main(["pacs", "pull", back_address, "--out", str(tmp_path / "seg_back"), *login]) == 0
    (seg_file,) = list((tmp_path / "seg_back").iterdir())
    assert dciodvfy.validate(seg_file).errors == []
    seg = pydicom.dcmread(seg_file)
    assert str(seg.ContentCreatorName) == "Doe^John" and seg.StudyInstanceUID == first.StudyInstanceUID
    labels = Engine(shipped_bundle("phantom-ct-mr")).bundle.labels
    back, _ = read_dicom_seg(seg_file, sorted((tmp_path / "case" / "series").iterdir()), labels)
    written = read_image(tmp_path / "case" / "label.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(written))
    assert sitk.GetArrayFromImage(written).any()


def test_wrong_password_and_unreachable_server_are_clear_errors(server):
    with pytest.raises(InputError, match="HTTP 401.*password"):
        list_studies(connect(server.dicomweb_url, server.user, "wrong"))
    with pytest.raises(InputError, match="HTTP 401"):
        list_studies(connect(server.dicomweb_url))
    with pytest.raises(InputError, match="Could not reach"):
        list_studies(connect("http://127.0.0.1:9/dicom-web"))


def test_cli_without_password_says_where_to_put_it(server, monkeypatch, capsys):
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    assert main(["pacs", "list", "--url", server.dicomweb_url, "--user", "x"]) == 2
    assert PASSWORD_VARIABLE in capsys.readouterr().err


@pytest.mark.parametrize("text", [
    "http://host/dicom-web/studies/1.2/series/3.4",
    "dicomweb://host/dicom-web/studies/1.2/series/../../etc",
    "dicomweb://host/dicom-web/studies/1.2",
])
def test_bad_series_addresses_are_refused(text):
    with pytest.raises(InputError):
        parse_url(text)


def test_parse_url_and_uid_check():
    assert parse_url("dicomweb://pacs:8042/dicom-web/studies/1.2.3/series/4.5") == SeriesAddress(
        "http://pacs:8042/dicom-web", "1.2.3", "4.5")
    assert parse_url("dicomwebs://pacs/studies/1/series/2").url == "https://pacs"
    for bad in ("../1.2", "1.2/3", "1." * 40, "", "1..2"):
        with pytest.raises(InputError):
            check_uid(bad, "SOP")


@pytest.mark.slow
def test_local_roundtrip_reads_back_every_segment_exactly(tmp_path):
    engine = Engine(shipped_bundle("phantom-ct-mr"), threads=1)
    out = local_roundtrip(read_image(demo_case())[:, :, 10:50], engine, tmp_path)
    assert out["series_pulled"] == out["series_pushed"] == 40 and out["seg_pushed"] == 1
    assert out["seg_read_back_dice"] and set(out["seg_read_back_dice"].values()) == {1.0}
    assert out["dciodvfy"]["objects"] == 2 and out["dciodvfy"]["errors"] == []
