"""How results look in the slice views: the uncertainty heatmap's colours, transparency and
legend, and which volume is in the background (label colours come from the terminology).

Shared by the Slicer module and the web app (both render through Slicer's slice logic).
"""

from __future__ import annotations

import numpy as np

HEATMAP_TABLE_NAME = "CrossDomainSeg uncertainty"
# Below this fraction of the heatmap's scale a voxel shows nothing: the model is sure there, and
# the segmentation under it must stay visible. Slice views take a volume layer's transparency
# from its display threshold, not from the colour table's alpha, so the threshold does it.
CLEAR_BELOW = 0.15


def heatmap_rgba(t: float) -> tuple[float, float, float, float]:
    """The heatmap colour at fraction `t` of its scale: clear, then yellow through red."""
    t = float(np.clip(t, 0.0, 1.0))
    return 1.0, 1.0 - 0.85 * t, 0.1 * (1.0 - t), 0.0 if t < CLEAR_BELOW else 1.0


def heatmap_scale(values: np.ndarray) -> float:
    """The value shown as the top of the scale: 1 for maps normalised to [0, 1] (the engine's
    entropy / log C), so the same colour means the same uncertainty on every image; else the max."""
    high = float(values.max()) if values.size else 0.0
    return 1.0 if high <= 1.0 else high


def heatmap_legend(values: np.ndarray) -> dict:
    """What a legend shows: the scale's ends, the value below which voxels are clear, and colour
    stops (fraction of the bar, CSS rgba) for a gradient with a hard edge at the clear part."""
    high = heatmap_scale(values)
    stops = []
    for t in (0.0, CLEAR_BELOW - 1e-3, CLEAR_BELOW, 0.4, 0.7, 1.0):
        r, g, b, a = heatmap_rgba(t)
        stops.append((round(float(t), 3), f"rgba({round(255 * r)}, {round(255 * g)}, {round(255 * b)}, {a:g})"))
    return {"low": 0.0, "high": high, "clear_below": CLEAR_BELOW * high, "stops": stops}


def style_heatmap(scene, node, values: np.ndarray) -> None:
    """Colour `node` (the heatmap volume) yellow to red over its scale, clear below CLEAR_BELOW of
    it (display threshold), and show Slicer's colour legend."""
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(_heatmap_table(scene).GetID())
    high = heatmap_scale(values)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, high)
    display.AutoThresholdOff()
    display.SetThreshold(CLEAR_BELOW * high, max(high, float(values.max()) if values.size else high))
    display.ApplyThresholdOn()
    legend = _add_color_legend(node)
    if legend is not None:
        legend.SetVisibility(True)
        legend.SetTitleText("Uncertainty")
        legend.SetLabelFormat("%.2f")


def _heatmap_table(scene):
    table = find_or_add(scene, "vtkMRMLColorTableNode", HEATMAP_TABLE_NAME)
    if table.GetNumberOfColors() != 256:
        table.SetTypeToUser()
        table.SetNumberOfColors(256)
        for i in range(256):
            table.SetColor(i, f"{i / 255:.2f}", *heatmap_rgba(i / 255))
    return table


def show_layers(scene, background, foreground, opacity: float | None = None) -> None:
    """`background` (the input or its synthetic preview) with `foreground` (the heatmap, or None)
    over it in every slice view, all views together so the user keeps their place."""
    for composite in nodes_of(scene, "vtkMRMLSliceCompositeNode"):
        was_modifying = composite.StartModify()
        composite.SetBackgroundVolumeID(background.GetID() if background else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
        if opacity is not None:
            composite.SetForegroundOpacity(float(np.clip(opacity, 0.0, 1.0)))
        elif foreground is not None and composite.GetForegroundOpacity() == 0.0:
            composite.SetForegroundOpacity(0.5)
        composite.EndModify(was_modifying)


def set_foreground_opacity(scene, opacity: float) -> None:
    for composite in nodes_of(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetForegroundOpacity(float(np.clip(opacity, 0.0, 1.0)))


def find_or_add(scene, class_name: str, name: str):
    """The node of that class and name made by an earlier run (reused), else a new one."""
    for node in nodes_of(scene, class_name):
        if node.GetName() == name and node.GetClassName() == class_name:
            return node
    return scene.AddNewNodeByClass(class_name, name)


def nodes_of(scene, class_name: str) -> list:
    return [scene.GetNthNodeByClass(i, class_name)
            for i in range(scene.GetNumberOfNodesByClass(class_name))]


def _add_color_legend(node):
    try:
        from slicer import vtkSlicerColorLogic
    except ImportError:
        return None
    return vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(node)
