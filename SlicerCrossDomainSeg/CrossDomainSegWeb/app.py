"""The trame application: Slicer's MRML core (trame-slicer) serving the cross-domain workflow."""

from __future__ import annotations

from pathlib import Path

from trame.app import TrameApp
from trame_slicer import module as trame_slicer_module
from trame_slicer.app.logic import SegmentEditorLogic
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from .pacs_panel import PacsWorkflow
from .ui import WebUI
from .workflow import WorkflowLogic

LAYOUT_ID = "Axial primary"


def _slice_layout() -> Layout:
    # no 3D view: volume rendering on a CPU-only server costs more than it shows here
    return Layout(
        LayoutDirection.Horizontal,
        [
            ViewLayoutDefinition.axial_view(),
            Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.coronal_view(),
                                              ViewLayoutDefinition.sagittal_view()]),
        ],
        flex_sizes=["2", "1"],
    )


class CrossDomainSegWebApp(TrameApp):
    def __init__(self, server=None, case: Path | None = None, bundle: Path | None = None,
                 workspace: Path | None = None, pacs: tuple | None = None):
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.server.state.trame__title = "CrossDomainSeg"
        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)

        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout(LAYOUT_ID, _slice_layout())
        self.layout_manager.set_layout(LAYOUT_ID)

        # trame-slicer's own segment editor (paint, erase, scissors, ... with undo) for hand edits
        self.segment_editor_logic = SegmentEditorLogic(self.server, self.slicer_app)
        self.workflow = WorkflowLogic(self.server, self.slicer_app, case=case, bundle=bundle,
                                      workspace=workspace)
        # pacs: (DICOMweb URL, user, password) of the PACS the page may open from and export to
        self.pacs = PacsWorkflow(self.server, self.workflow, *pacs) if pacs else None
        self.ui = WebUI(self.server, self.layout_manager)
        self.segment_editor_logic.set_ui(self.ui.segment_editor)
        self.workflow.set_ui(self.ui)
