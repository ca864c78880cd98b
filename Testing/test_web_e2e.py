"""The web app end to end in a real browser: `crossdomainseg web` on 127.0.0.1 driven through
Debian's chromium by Playwright. Loads the demo case, segments, toggles the synthetic preview and
the uncertainty heatmap, adds an include click where the segment misses voxels and checks that
it grows, undoes it, paints with the segment editor, accepts, exports, compares the exported
file with what the page showed, and uploads a volume. Writes a screenshot per step and
benchmarks/results/web_e2e.json. Also the `web` command's argument checks (fast)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from web_helpers import (CHROMIUM, CHROMIUM_ARGS, ROOT, fit_view_plane, largest_view_box,
                         missed_voxel_ras, ras_to_screen, save_screenshot, segment_voxels, selector,
                         text, wait_for, wait_view_change, web_server)


RESULTS = ROOT / "benchmarks" / "results"
SHOTS = RESULTS / "web"
SEGMENT_TIMEOUT_S = 150
STEPS = ["load", "cancel", "segment", "preview", "heatmap", "click", "undo", "paint", "accept", "export",
         "compare", "upload"]


def _benchmark_common():
    spec = importlib.util.spec_from_file_location("benchmarks_common", ROOT / "benchmarks" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _requirements():
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (scripts/install_browser.sh)")
    if importlib.util.find_spec("playwright") is None or importlib.util.find_spec("trame_slicer") is None:
        pytest.skip("needs the web extra: pip install '.[web]'")


def _case_and_bundle(tmp_path: Path) -> tuple[Path, Path, Path, str]:
    """Demo case, its reference label, and the bundle: the shipped ones, with stand-ins while
    they are missing or unusable (a generated case, a random bundle)."""
    from crossdomainseg import resources
    from crossdomainseg.bundle import load_bundle, make_random_bundle
    from crossdomainseg.data import abdomen, generate_case
    from crossdomainseg.errors import InputError

    case = resources.demo_case()
    reference = case.with_name(case.name.replace(".nii.gz", "_label.nii.gz"))
    if not (case.exists() and reference.exists()):
        demo = generate_case("phantom-ct-mr", 1, "target")
        case, reference = tmp_path / "demo.nii.gz", tmp_path / "demo_label.nii.gz"
        sitk.WriteImage(demo.image, str(case))
        sitk.WriteImage(demo.label, str(reference))
    try:
        bundle = resources.shipped_bundle("phantom-ct-mr")
        if not load_bundle(bundle).has_network("generator"):
            raise InputError("no generator (synthetic preview) yet")
        return case, reference, bundle, "shipped"
    except InputError as error:
        bundle = tmp_path / "random-bundle"
        make_random_bundle(bundle, task="phantom-ct-mr", labels=abdomen.LABELS, spacing=3.0, roi=32)
        return case, reference, bundle, f"random (shipped bundle unusable: {error})"


def _download(page, testid_name: str, folder: Path) -> Path:
    with page.expect_download(timeout=60_000) as info:
        page.click(selector(testid_name))
    path = folder / info.value.suggested_filename
    info.value.save_as(path)
    return path


def _choose_segment(page, name: str) -> None:
    page.click(f"{selector('click-segment')} .v-field")
    page.click(f".v-overlay-container .v-list-item:has-text('{name}')")
    wait_for(lambda: name in text(page, "click-segment"), 10, f"segment {name} selected")


def _diagnostics(page, log: Path) -> str:
    """What the page and the server said, for a failure message."""
    lines = []
    for name in ("status", "error", "voxel-counts", "probe"):
        if page.query_selector(selector(name)):
            lines.append(f"page {name}: {text(page, name)!r}")
    server = [line for line in log.read_text(errors="replace").splitlines()
              if "Error" in line or "Traceback" in line or line.startswith(("  ", "E "))]
    return "\n".join(lines + ["server log (errors):", *server[-30:]])


def _drive(page, url, case, reference, labels, started, passed, record, tmp_path):
    """The workflow steps; each ends with `passed(step, page)` (a screenshot). Figures go to `record`."""
    timings = record["timings_s"]
    page.goto(url)
    # the page fills in over a websocket: wait for content, not for the load event
    wait_for(lambda: page.query_selector(selector("case-name")) and case.name.split(".")[0] in
             text(page, "case-name"), 60, "the demo case to load")
    timings["page_ready_s"] = round(time.monotonic() - started, 1)
    assert not page.query_selector(selector("error")), text(page, "error")
    passed("load", page)

    # the page keeps answering while the model runs: cancel a first run
    page.click(selector("segment"))
    wait_for(lambda: page.query_selector(selector("progress")), 10, "the progress bar")
    page.click(selector("cancel"))
    wait_for(lambda: "Segmentation cancelled" in text(page, "status"), SEGMENT_TIMEOUT_S, "the cancellation")
    assert not segment_voxels(page)
    passed("cancel", page)

    t0 = time.monotonic()
    page.click(selector("segment"))
    wait_for(lambda: page.query_selector(selector("progress")), 10, "the progress bar")
    wait_for(lambda: "Segmented" in text(page, "status") or page.query_selector(selector("error")),
             SEGMENT_TIMEOUT_S, "the segmentation")
    assert not page.query_selector(selector("error")), text(page, "error")
    timings["segment_s"] = round(time.monotonic() - t0, 1)
    draft_counts = wait_for(lambda: segment_voxels(page), 10, "the voxel counts")
    foreground = [n for n, v in labels.items() if int(v) != 0]
    assert sorted(draft_counts) == sorted(foreground)
    assert "U = " in text(page, "uncertainty")
    passed("segment", page)

    # each toggle must change what the axial view shows
    box = largest_view_box(page)
    segmented = wait_view_change(page, box, b"", "the segmented view")
    page.click(f"{selector('toggle-preview')} input")
    preview = wait_view_change(page, box, segmented, "the synthetic preview")
    passed("preview", page)
    page.click(f"{selector('toggle-preview')} input")
    wait_view_change(page, box, preview, "the input again")
    page.click(f"{selector('toggle-heatmap')} input")
    wait_view_change(page, box, segmented, "the uncertainty heatmap")
    passed("heatmap", page)

    # where to click: export the draft, map the axial view's pixels to RAS with the cursor
    # probe, and pick the voxel deepest in what a segment misses compared with the reference
    draft = sitk.ReadImage(str(_download(page, "export", tmp_path / "draft")))
    matrix = fit_view_plane(page, box)
    truth = sitk.ReadImage(str(reference))
    for name in foreground:
        try:
            target = missed_voxel_ras(truth, draft, int(labels[name]), matrix)
            break
        except AssertionError:
            continue
    else:
        pytest.fail("the draft misses no voxel of any segment on the axial view's plane")
    image = sitk.ReadImage(str(case))
    x, y = ras_to_screen(matrix, target)
    assert box["x"] < x < box["x"] + box["width"] and box["y"] < y < box["y"] + box["height"]
    _choose_segment(page, name)
    page.click(selector("click-include"))
    before = segment_voxels(page)[name]
    t0 = time.monotonic()
    page.mouse.click(x, y)
    grown = wait_for(lambda: segment_voxels(page)[name] > before and segment_voxels(page)[name],
                     30, f"segment {name} to grow after an include click")
    timings["click_to_update_s"] = round(time.monotonic() - t0, 2)
    record.update(clicked_segment=name, grown_voxels=int(grown - before))
    assert "Include click" in text(page, "status")
    passed("click", page)

    page.click(selector("click-off"))
    page.click(selector("undo"))
    wait_for(lambda: segment_voxels(page)[name] == before, 30, "undo to restore the count")
    assert segment_voxels(page) == draft_counts
    passed("undo", page)

    # hand edit with trame-slicer's segment editor: paint the same segment next to the click
    page.click(f"{selector('toolbar')} button:has(.mdi-brush)")
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 0.1 * box["width"], y, steps=10)
    page.mouse.up()
    painted = wait_for(lambda: segment_voxels(page)[name] > before and segment_voxels(page)[name],
                       30, f"segment {name} to grow by painting")
    page.click(f"{selector('toolbar')} button:has(.mdi-cursor-default)")
    passed("paint", page)

    page.click(selector("accept"))
    wait_for(lambda: "Accepted as case" in text(page, "status"), 30, "the case to be accepted")
    wait_for(lambda: "1 accepted case" in text(page, "trainer-status"), 10, "the trainer to be told")
    passed("accept", page)

    exported_path = _download(page, "export", tmp_path / "final")
    passed("export", page)

    exported = sitk.ReadImage(str(exported_path))
    assert exported.GetSize() == image.GetSize()
    assert np.allclose(exported.GetSpacing(), image.GetSpacing(), atol=1e-4)
    assert np.allclose(exported.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert np.allclose(exported.GetDirection(), image.GetDirection(), atol=1e-4)
    values = sitk.GetArrayFromImage(exported)
    assert {n: int((values == int(labels[n])).sum()) for n in foreground} == segment_voxels(page)
    # the click was undone: the export is the draft plus the painted voxels, all of segment `name`
    changed = values != sitk.GetArrayFromImage(draft)
    assert np.all(values[changed] == int(labels[name]))
    assert int((values == int(labels[name])).sum()) == painted
    passed("compare", page)

    # upload through the page's file input: the uploaded volume replaces the case
    page.locator(f"{selector('upload')} input[type=file]").first.set_input_files(str(exported_path))
    wait_for(lambda: exported_path.name.split(".")[0] in text(page, "case-name"), 60, "the uploaded volume")
    assert not segment_voxels(page) and not page.query_selector(selector("error"))
    passed("upload", page)


def _web_args(**overrides) -> argparse.Namespace:
    values = {"case": None, "bundle": None, "workspace": None, "host": "127.0.0.1", "port": 8080,
              "pacs": None, "pacs_user": None}
    return argparse.Namespace(**{**values, **overrides})


def test_web_command_checks_its_arguments(tmp_path):
    from crossdomainseg.errors import InputError
    from CrossDomainSegWeb.cli import web_arguments

    with pytest.raises(InputError, match="no such file"):
        web_arguments(_web_args(case=tmp_path / "missing.nii.gz"))
    with pytest.raises(InputError, match="between 1 and 65535"):
        web_arguments(_web_args(port=70000))
    case = tmp_path / "case.nii.gz"
    case.write_bytes(b"")
    argv = web_arguments(_web_args(case=case, port=0, workspace=tmp_path / "new"))
    assert argv[argv.index("--case") + 1] == str(case.resolve())
    assert argv[argv.index("--port") + 1] == "0"
    assert argv[argv.index("--workspace") + 1] == str((tmp_path / "new").resolve())


def test_cli_web_reports_bad_input_without_a_traceback(tmp_path, capsys):
    from crossdomainseg.cli import main

    assert main(["web", "--case", str(tmp_path / "missing.nii.gz")]) == 2
    assert "missing.nii.gz: no such file" in capsys.readouterr().err


def test_engine_cli_does_not_import_trame():
    """Building the command line registers the web command (from its entry point) without
    importing trame or the web app's modules."""
    code = ("import sys, crossdomainseg.cli as c; p = c.build_parser(); "
            "print('web' in p._subparsers._group_actions[0].choices, sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('trame', 'trame_slicer') or m in ('CrossDomainSegWeb.app', "
            "'CrossDomainSegWeb.__main__')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "SlicerCrossDomainSeg")}).stdout
    assert out.strip() == "True []"


@pytest.mark.web
@pytest.mark.slow
def test_web_workflow_in_browser(tmp_path):
    _requirements()
    from playwright.sync_api import sync_playwright

    # screenshots move under benchmarks/results at the end: a killed run leaves the last results
    shots_dir = tmp_path / "web"
    shots_dir.mkdir()
    case, reference, bundle, bundle_kind = _case_and_bundle(tmp_path)
    labels = json.loads((bundle / "configs" / "metadata.json").read_text())["labels"]
    steps, shots = [], []
    record = {"steps": steps, "screenshots": shots, "bundle": bundle_kind, "timings_s": {},
              "timings_note": "measured while other work shared the 2 cores: inflated"}

    def passed(step: str, page) -> None:
        name = f"{len(steps) + 1:02d}-{step}.png"
        save_screenshot(page, shots_dir / name)
        steps.append(step)
        shots.append(str((SHOTS / name).relative_to(ROOT)))

    args = ["--case", str(case), "--bundle", str(bundle), "--workspace", str(tmp_path / "workspace")]
    started = time.monotonic()
    log = tmp_path / "server.log"
    try:
        with web_server(args, log) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
            try:
                _drive(page, url, case, reference, labels, started, passed, record, tmp_path)
            except Exception as error:
                raise AssertionError(f"{error}\n{_diagnostics(page, log)}") from error
            finally:
                browser.close()
    finally:
        # benchmarks/web_e2e.sh records the steps that passed (also when one failed) under
        # benchmarks/results; a plain test run leaves tracked files alone
        if os.environ.get("CROSSDOMAINSEG_RECORD_WEB") == "1":
            shutil.rmtree(SHOTS, ignore_errors=True)
            shutil.copytree(shots_dir, SHOTS)
            _benchmark_common().write_result("web_e2e", record, 1)
    assert steps == STEPS
