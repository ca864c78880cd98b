"""The page's colour keys: the uncertainty heatmap's legend (a gradient bar with its scale, clear
where the model is sure) and the segment colours, both taken from what the slice views show
(CrossDomainSegLib.display)."""

from __future__ import annotations

import SimpleITK as sitk
from trame.widgets import html

from CrossDomainSegLib import display, nodes


def heatmap_legend_state(heatmap_node) -> dict:
    """The page state behind the legend: the CSS gradient and the labels under the bar."""
    values = sitk.GetArrayFromImage(nodes.image_from_volume_node(heatmap_node, "heatmap"))
    legend = display.heatmap_legend(values)
    gradient = ", ".join(f"{color} {100 * fraction:g}%" for fraction, color in legend["stops"])
    return {"gradient": f"linear-gradient(to right, {gradient})",
            "low": f"{legend['low']:.2f}", "high": f"{legend['high']:.2f}",
            "clear": f"clear below {legend['clear_below']:.2f} (the model is sure there)"}


def segment_colors_state(colors: dict) -> dict:
    """Segment name -> CSS colour, for the swatches beside the voxel counts."""
    return {name: "rgb({}, {}, {})".format(*(int(c) for c in rgb)) for name, rgb in colors.items()}


def heatmap_legend(testid: str = "heatmap-legend") -> None:
    """The legend under the heatmap switch; shown while the heatmap is."""
    with html.Div(v_if=("cds_show_heatmap && cds_heatmap_legend",), classes="text-caption",
                  raw_attrs=[f'data-testid="{testid}"']):
        html.Div("Uncertainty", classes="font-weight-medium")
        html.Div(style=("{ background: cds_heatmap_legend.gradient, height: '12px', "
                        "border: '1px solid #888', borderRadius: '2px' }",),
                 raw_attrs=[f'data-testid="{testid}-bar"'])
        with html.Div(classes="d-flex justify-space-between"):
            html.Span("{{ cds_heatmap_legend.low }} sure")
            html.Span("{{ cds_heatmap_legend.high }} unsure")
        html.Div("{{ cds_heatmap_legend.clear }}")
