"""The web app opens a series from a PACS (a real Orthanc) and exports the DICOM SEG back to it,
in a real browser; and the `--pacs` options' checks (fast)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pydicom
import pytest

from web_helpers import CHROMIUM, CHROMIUM_ARGS, selector, text, wait_for, web_server

from crossdomainseg import dciodvfy
from crossdomainseg.dicom_series import write_series
from crossdomainseg.errors import InputError
from crossdomainseg.imageio import read_image
from crossdomainseg.pacs.client import PASSWORD_VARIABLE, SeriesAddress, connect, list_series, pull_series, push
from crossdomainseg.pacs.orthanc import LocalOrthanc
from crossdomainseg.resources import DEMO_TASK, demo_case, shipped_bundle
from CrossDomainSegWeb.cli import pacs_login, web_arguments


def _args(**overrides) -> argparse.Namespace:
    values = {"case": None, "bundle": None, "workspace": None, "host": "127.0.0.1", "port": 8080,
              "pacs": None, "pacs_user": None}
    return argparse.Namespace(**{**values, **overrides})


def test_pacs_options_are_checked_before_the_server_starts(monkeypatch):
    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    assert pacs_login(_args()) is None
    with pytest.raises(InputError, match="DICOMweb root URL"):
        web_arguments(_args(pacs="ftp://pacs"))
    with pytest.raises(InputError, match=PASSWORD_VARIABLE):
        web_arguments(_args(pacs="http://pacs/dicom-web", pacs_user="me"))
    monkeypatch.setenv(PASSWORD_VARIABLE, "secret")
    argv = web_arguments(_args(pacs="http://pacs/dicom-web", pacs_user="me"))
    assert argv[argv.index("--pacs") + 1] == "http://pacs/dicom-web" and "secret" not in argv
    assert pacs_login(_args(pacs="http://pacs/dicom-web", pacs_user="me")) == ("http://pacs/dicom-web", "me", "secret")


@pytest.mark.web
@pytest.mark.slow
def test_open_from_pacs_segment_and_export_to_pacs_in_browser(tmp_path, monkeypatch):
    if not Path(CHROMIUM).exists() or importlib.util.find_spec("playwright") is None:
        pytest.skip("needs Debian's chromium and the web extra (scripts/install_browser.sh, '.[web]')")
    from playwright.sync_api import sync_playwright

    files = write_series(read_image(demo_case())[:, :, 20:36], tmp_path / "upload", patient_name="Web^Pacs")
    first = pydicom.dcmread(files[0])
    with LocalOrthanc(tmp_path / "orthanc") as server:
        client = connect(server.dicomweb_url, server.user, server.password)
        push(client, files)
        monkeypatch.setenv(PASSWORD_VARIABLE, server.password)
        args = ["--bundle", str(shipped_bundle("phantom-ct-mr")), "--workspace", str(tmp_path / "workspace"),
                "--pacs", server.dicomweb_url, "--pacs-user", server.user]
        log = tmp_path / "server.log"
        with web_server(args, log) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            try:
                page.goto(url)
                wait_for(lambda: page.query_selector(selector("pacs-refresh")), 60, "the PACS panel")
                opened = demo_case(DEMO_TASK).name.split(".")[0]  # what the app opens before the PACS series
                wait_for(lambda: opened in text(page, "case-name"), 60, "the demo case")
                page.click(selector("pacs-refresh"))
                wait_for(lambda: "1 series on the PACS" in text(page, "status"), 30, "the PACS list")
                page.click(f"{selector('pacs-series')} .v-field")
                page.click(".v-overlay-container .v-list-item:has-text('Web^Pacs')")
                page.click(selector("pacs-open"))
                wait_for(lambda: first.SeriesInstanceUID in text(page, "case-name"), 60, "the PACS series")
                page.click(selector("segment"))
                wait_for(lambda: "Segmented" in text(page, "status") or page.query_selector(selector("error")),
                         150, "the segmentation")
                assert not page.query_selector(selector("error")), text(page, "error")
                page.click(selector("pacs-export"))
                wait_for(lambda: "stored on the PACS" in text(page, "status") or page.query_selector(
                    selector("error")), 60, "the export to the PACS")
                assert not page.query_selector(selector("error")), text(page, "error")
            except Exception as error:
                raise AssertionError(f"{error}\n{log.read_text(errors='replace')[-3000:]}") from error
            finally:
                browser.close()
        segs = [s for s in list_series(client, first.StudyInstanceUID) if s["modality"] == "SEG"]
        assert len(segs) == 1
        (seg,) = pull_series(client, SeriesAddress(server.dicomweb_url, first.StudyInstanceUID, segs[0]["uid"]),
                             tmp_path / "back")
    assert dciodvfy.validate(seg).errors == []
    assert pydicom.dcmread(seg).ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
