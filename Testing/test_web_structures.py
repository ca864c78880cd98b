"""The web app's "New structure" buttons without a browser: the page's workflow on trame-slicer's
real MRML, a click or two box corners on a slice starting a new segment that the legend, the
segment picker, Undo, Accept and Export then carry."""

import importlib.util

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

pytestmark = pytest.mark.skipif(importlib.util.find_spec("trame_slicer") is None,
                                reason="needs the web extra: pip install '.[web]'")

from test_slicer_logic import (BLOB_CENTER, LABELS, _BrightIsObject, background_everywhere,  # noqa: E402
                               ball_mask, dice, make_image, ras_of_index)


def _web_app(tmp_path, name, prompt: bool = True):
    from trame.app import get_server

    from crossdomainseg.bundle import make_random_bundle, update_bundle
    from crossdomainseg.interactive.prompt_net import PROMPT_SPEC, PromptRefiner
    from crossdomainseg.networks import build_network
    from CrossDomainSegWeb.app import CrossDomainSegWebApp

    bundle = make_random_bundle(tmp_path / "bundle", task="test-web", labels=LABELS)
    background_everywhere(bundle)
    if prompt:
        update_bundle(bundle.path, networks={"prompt": build_network(PROMPT_SPEC)})
    image = tmp_path / "case.nrrd"
    sitk.WriteImage(make_image(), str(image))
    app = CrossDomainSegWebApp(get_server(name, client_type="vue3"), bundle=bundle.path,
                               workspace=tmp_path / "workspace")
    flow = app.workflow
    flow.logic.threads = 1
    flow.load_case(image)
    outcome = flow.logic.segment(flow.volume_node)
    with flow.state:
        flow._show_outcome(outcome)
    if prompt:
        flow.logic.session.structure_refiner = PromptRefiner(_BrightIsObject(), (24, 24, 24), (2.0, 2.0, 2.0),
                                                             "cpu")
    return flow


def _shown(flow, name) -> np.ndarray:
    return flow.logic._screen_label() == flow.logic.case_labels[name]


def test_new_structure_from_a_click_and_from_a_box_in_the_web_app(tmp_path):
    flow = _web_app(tmp_path, "structures-test")
    state, volume = flow.state, flow.volume_node
    state.cds_structure_name = "Lesion"
    flow.new_structure_mode("click")
    assert state.cds_structure_mode == "click" and state.cds_click_mode == "include" and state.cds_error == ""
    flow.on_click(tuple(ras_of_index(volume, BLOB_CENTER[::-1])), True)
    assert state.cds_error == "" and state.cds_structure_mode == ""
    assert state.cds_segment_names == ["liver", "kidney", "Lesion"] and state.cds_click_segment == "Lesion"
    assert "Lesion" in state.cds_segment_colors  # the legend's swatch
    assert any(s["name"] == "Lesion" and s["voxels"] > 0 for s in state.cds_segments)  # its voxel count
    assert dice(_shown(flow, "Lesion"), ball_mask()) > 0.9
    # the next click corrects it like any segment
    edge = (BLOB_CENTER[2] + 5, BLOB_CENTER[1], BLOB_CENTER[0])
    before = _shown(flow, "Lesion").sum()
    flow.on_click(tuple(ras_of_index(volume, edge)), False)
    assert 0 < _shown(flow, "Lesion").sum() < before

    # export (.seg.nrrd keeps the name) and accept (the case gains the value, the manifest its name)
    from crossdomainseg import imageio
    from crossdomainseg.store import AcceptedCaseStore

    seg, names = imageio.read_seg_nrrd(flow.logic.export(tmp_path / "out.seg.nrrd"))
    assert names == {"liver": 1, "kidney": 2, "Lesion": 3} and (sitk.GetArrayFromImage(seg) == 3).any()
    flow.accept()
    (case_id,) = AcceptedCaseStore(flow.logic.store_dir).cases()
    assert AcceptedCaseStore(flow.logic.store_dir).load(case_id).structures == {"Lesion": 3}

    # Undo twice: the correction, then the structure (picker and legend follow)
    flow.undo()
    flow.undo()
    assert state.cds_segment_names == ["liver", "kidney"] and state.cds_click_segment == "liver"

    # a box from two clicks on one slice (given a depth): the ball, in 3D
    state.cds_structure_name = ""
    flow.new_structure_mode("box")
    lo = [c - 7 for c in BLOB_CENTER]
    hi = [c + 7 for c in BLOB_CENTER]
    flow.on_click(tuple(ras_of_index(volume, (lo[2], lo[1], BLOB_CENTER[0]))), True)
    assert "opposite corner" in state.cds_status and flow.logic.label_names() == ["liver", "kidney"]
    flow.on_click(tuple(ras_of_index(volume, (hi[2], hi[1], BLOB_CENTER[0]))), True)
    assert state.cds_error == "" and state.cds_segment_names[-1] == "Structure 1"
    assert dice(_shown(flow, "Structure 1"), ball_mask()) > 0.8
    assert flow.logic.clicks == []  # a box is no click point
    # a prompt network without the box channel: "New: box" is refused at once
    from crossdomainseg.interactive.prompt_net import PromptRefiner

    refiner = flow.logic.session.structure_refiner
    flow.logic.session.structure_refiner = PromptRefiner(_BrightIsObject(), (24, 24, 24), (2.0, 2.0, 2.0), "cpu",
                                                         in_channels=4)
    flow.new_structure_mode("box")
    assert "takes clicks, not a box" in state.cds_error and state.cds_structure_mode == ""
    flow.logic.session.structure_refiner = refiner
    # leaving the mode disarms it
    flow.new_structure_mode("click")
    state.cds_click_mode = "off"
    flow._on_click_mode("off")
    assert flow.logic.armed_structure is None and state.cds_structure_mode == ""


def test_the_page_has_the_new_structure_buttons_and_refuses_bundles_without_a_prompt_network(tmp_path):
    flow = _web_app(tmp_path, "structures-refused", prompt=False)
    flow.new_structure_mode("click")
    assert "no prompt network" in flow.state.cds_error and "brain-t1-t2" in flow.state.cds_error
    assert flow.state.cds_structure_mode == "" and flow.logic.armed_structure is None
    flow.new_structure_mode("box")
    assert "no prompt network" in flow.state.cds_error and flow.state.cds_structure_mode == ""

    from trame.app import get_server

    from CrossDomainSegWeb.app import CrossDomainSegWebApp

    page = str(CrossDomainSegWebApp(get_server("structures-page", client_type="vue3")).ui.layout.html)
    for testid in ("structure-name", "new-structure-click", "new-structure-box"):
        assert f'data-testid="{testid}"' in page
    assert "trigger('cds_new_structure', ['box'])" in page
