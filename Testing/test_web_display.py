"""The web app's colour keys, without a browser: the heatmap legend matches what the slice views
render (clear below the same value), and segment colours are told apart."""

import importlib.util

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = pytest.mark.skipif(importlib.util.find_spec("trame_slicer") is None,
                                reason="needs the web extra: pip install '.[web]'")


def test_heatmap_legend_state_follows_the_rendered_scale():
    from slicer_shim import headless_slicer

    from CrossDomainSegLib import display, nodes
    from CrossDomainSegWeb.legend import heatmap_legend_state

    app = headless_slicer(views=())
    heat = sitk.GetImageFromArray(np.linspace(0, 0.8, 4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8))
    state = heatmap_legend_state(nodes.add_volume_node(app.scene, heat, "uncertainty"))
    assert (state["low"], state["high"]) == ("0.00", "1.00")
    assert f"{display.CLEAR_BELOW:.2f}" in state["clear"]
    # transparent up to the clear value, opaque from it: the same edge the display threshold draws
    assert "rgba(255, 255, 26, 0) 0%" in state["gradient"]
    assert f", 1) {100 * display.CLEAR_BELOW:g}%" in state["gradient"]


def test_the_page_has_the_legend_and_segment_swatches():
    from trame.app import get_server

    from CrossDomainSegWeb.app import CrossDomainSegWebApp
    from CrossDomainSegWeb.legend import segment_colors_state

    app = CrossDomainSegWebApp(get_server("legend-test", client_type="vue3"))
    page = str(app.ui.layout.html)
    assert 'data-testid="heatmap-legend"' in page and "swatch-" in page
    assert segment_colors_state({"liver": (221, 130, 101)}) == {"liver": "rgb(221, 130, 101)"}
