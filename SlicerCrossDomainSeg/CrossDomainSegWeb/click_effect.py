"""Include/exclude clicks in the slice views, as a segment editor effect.

Registered with trame-slicer's segmentation editor like its own effects (paint, islands), so it is
mutually exclusive with them and gets the picked RAS position of a left click in any slice view.
"""

from __future__ import annotations

from slicer import vtkMRMLAbstractViewNode, vtkMRMLInteractionEventData, vtkMRMLNode, vtkMRMLSliceNode
from trame_slicer.segmentation import SegmentationEffect, SegmentationEffectPipeline
from undo_stack import Signal
from vtkmodules.vtkCommonCore import vtkCommand


class ClickEffect(SegmentationEffect):
    """Emits `clicked(ras, positive)` for each left click in a slice view while active."""

    clicked = Signal(tuple, bool)

    def __init__(self) -> None:
        super().__init__()
        self.positive = True

    def _create_pipeline(self, view_node: vtkMRMLAbstractViewNode, _parameter: vtkMRMLNode):
        return ClickPipeline() if isinstance(view_node, vtkMRMLSliceNode) else None


class ClickPipeline(SegmentationEffectPipeline[ClickEffect]):
    def CanProcessInteractionEvent(self, event_data: vtkMRMLInteractionEventData) -> tuple[bool, float]:
        return bool(self.IsActive()) and event_data.GetType() == int(vtkCommand.LeftButtonPressEvent), 0

    def ProcessInteractionEvent(self, event_data: vtkMRMLInteractionEventData) -> bool:
        if event_data.GetType() != int(vtkCommand.LeftButtonPressEvent):
            return False
        ras = tuple(float(v) for v in event_data.GetWorldPosition())
        self._effect.clicked(ras, self._effect.positive)
        return True
