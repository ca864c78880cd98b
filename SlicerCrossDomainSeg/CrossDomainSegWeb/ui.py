"""The page: trame-slicer's viewer layout and segment editor, plus the cross-domain workflow panel.

Every control of the workflow carries a `data-testid` so the browser tests find it by meaning,
not by position.
"""

from __future__ import annotations

from trame.widgets import html
from trame.widgets.vuetify3 import (
    Template,
    VAlert,
    VBtn,
    VBtnToggle,
    VCard,
    VCardText,
    VCardTitle,
    VDivider,
    VProgressLinear,
    VSelect,
    VSwitch,
    VTextField,
)
from trame_slicer.app.ui import (
    ControlButton,
    LoadVolumeUI,
    SegmentEditorToolbarUI,
    SegmentEditorUI,
    SegmentEditorUndoRedoUI,
    ViewerLayout,
)
from trame_slicer.core import LayoutManager

from .legend import heatmap_legend
from .pacs_panel import pacs_panel

WORKFLOW_TOOL = "workflow"
EDITOR_TOOL = "editor"


def _testid(name: str) -> list[str]:
    return [f'data-testid="{name}"']


class WebUI:
    """Builds the page; the logic objects connect to the widgets it exposes."""

    def __init__(self, server, layout_manager: LayoutManager):
        state = server.state
        state.setdefault("active_tool", WORKFLOW_TOOL)
        state.is_drawer_visible = True

        with ViewerLayout(server, is_drawer_visible=True) as self.layout:
            self.layout.title.set_text("CrossDomainSeg")
            with self.layout.appbar, Template(v_slot_prepend=True):
                self.load_volume = LoadVolumeUI(raw_attrs=_testid("upload"))
                VBtn("Demo case", prepend_icon="mdi-flask", variant="text", click="trigger('cds_load_demo')",
                     disabled=("cds_busy || !cds_has_demo",), raw_attrs=_testid("load-demo"))

            with self.layout.drawer:
                with html.Div(v_if=(f"active_tool === '{WORKFLOW_TOOL}'",)):
                    self._workflow_panel()
                self.segment_editor = SegmentEditorUI(v_if=(f"active_tool === '{EDITOR_TOOL}'",))

            with self.layout.toolbar, html.Div(classes="d-flex flex-column align-center",
                                               raw_attrs=_testid("toolbar")):
                self._tool_button("Cross-domain workflow", "mdi-auto-fix", WORKFLOW_TOOL)
                self._tool_button("Segment editor", "mdi-palette-outline", EDITOR_TOOL)
                SegmentEditorToolbarUI(editor_ui=self.segment_editor)

            with self.layout.undo_redo:
                SegmentEditorUndoRedoUI(editor_ui=self.segment_editor)

            with self.layout.content:
                layout_manager.initialize_layout_grid(self.layout)

    def _tool_button(self, name: str, icon: str, tool: str) -> None:
        ControlButton(name=name, icon=icon, classes="mt-1", active=(f"active_tool === '{tool}'",),
                      click=f"active_tool = '{tool}'; is_drawer_visible = true",
                      disabled=("!cds_volume_loaded",))

    def _workflow_panel(self) -> None:
        with VCard(variant="flat"):
            VCardTitle("Cross-domain segmentation", classes="text-subtitle-1")
            with VCardText(classes="d-flex flex-column ga-2"):
                html.Div("Case: {{ cds_case_name || 'none loaded' }}", classes="text-caption",
                         raw_attrs=_testid("case-name"))
                html.Div("Model: {{ cds_model_version || '-' }}", classes="text-caption",
                         raw_attrs=_testid("model-version"))
                VAlert(v_if=("cds_error",), text=("cds_error",), type="error", density="compact",
                       closable=True, click_close="cds_error = ''", raw_attrs=_testid("error"))

                VBtn("Segment", prepend_icon="mdi-play", color="primary", block=True,
                     click="trigger('cds_segment')", disabled=("cds_busy || !cds_volume_loaded",),
                     raw_attrs=_testid("segment"))
                VProgressLinear(v_if=("cds_busy",), model_value=("cds_progress * 100",), height=18,
                                color="primary", raw_attrs=_testid("progress"))
                VBtn("Cancel", v_if=("cds_busy",), prepend_icon="mdi-stop", block=True, variant="tonal",
                     click="trigger('cds_cancel')", raw_attrs=_testid("cancel"))
                html.Div("{{ cds_status }}", classes="text-caption", raw_attrs=_testid("status"))

                VSwitch(v_model=("cds_show_preview", False), label="Synthetic preview", density="compact",
                        hide_details=True, color="primary", disabled=("!cds_segmented",),
                        raw_attrs=_testid("toggle-preview"))
                VSwitch(v_model=("cds_show_heatmap", False), label="Uncertainty heatmap", density="compact",
                        hide_details=True, color="primary", disabled=("!cds_segmented",),
                        raw_attrs=_testid("toggle-heatmap"))
                heatmap_legend()
                html.Div("Image uncertainty U = {{ cds_uncertainty }}. {{ cds_hint }}",
                         v_if=("cds_segmented",), classes="text-caption", raw_attrs=_testid("uncertainty"))
                VDivider()

                html.Div("Clicks in the slice views", classes="text-body-2")
                with VBtnToggle(v_model=("cds_click_mode", "off"), mandatory=True, density="compact",
                                divided=True, variant="outlined", disabled=("!cds_segmented || cds_busy",)):
                    VBtn("Off", value="off", raw_attrs=_testid("click-off"))
                    VBtn("Include", value="include", prepend_icon="mdi-plus-circle",
                         raw_attrs=_testid("click-include"))
                    VBtn("Exclude", value="exclude", prepend_icon="mdi-minus-circle",
                         raw_attrs=_testid("click-exclude"))
                VSelect(v_model=("cds_click_segment", ""), items=("cds_segment_names", []), label="Segment",
                        density="compact", hide_details=True, disabled=("!cds_segmented",),
                        raw_attrs=_testid("click-segment"))
                VTextField(v_model=("cds_structure_name", ""), label="New structure name", placeholder="Structure N",
                           density="compact", hide_details=True, disabled=("!cds_segmented || cds_busy",),
                           raw_attrs=_testid("structure-name"))
                with html.Div(classes="d-flex ga-1"):
                    for kind, label, icon in (("click", "New: click", "mdi-shape-plus"),
                                              ("box", "New: box", "mdi-selection-drag")):
                        VBtn(label, prepend_icon=icon, classes="flex-grow-1", density="compact", variant="tonal",
                             click=f"trigger('cds_new_structure', ['{kind}'])",
                             color=(f"cds_structure_mode === '{kind}' ? 'primary' : undefined",),
                             disabled=("!cds_segmented || cds_busy",), raw_attrs=_testid(f"new-structure-{kind}"))
                VBtn("Undo correction", prepend_icon="mdi-undo", block=True, click="trigger('cds_undo')",
                     disabled=("cds_busy || !cds_segmented",), raw_attrs=_testid("undo"))
                html.Div("Cursor: {{ cds_probe }}", classes="text-caption", raw_attrs=_testid("probe"))
                with html.Div(raw_attrs=_testid("voxel-counts"), classes="text-caption"):
                    with html.Div(v_for="item in cds_segments", key="item.name",
                                  classes="d-flex align-center ga-1",
                                  raw_attrs=[':data-testid="`voxels-${item.name}`"',
                                             ':data-voxels="item.voxels"']):
                        html.Span(style=("{ background: cds_segment_colors[item.name] || '#888', "
                                         "width: '10px', height: '10px', display: 'inline-block' }",),
                                  raw_attrs=[':data-testid="`swatch-${item.name}`"'])
                        html.Span("{{ item.name }}: {{ item.voxels }} voxels ({{ item.ml }} mL)")
                VDivider()

                VBtn("Accept", prepend_icon="mdi-check", color="success", block=True,
                     click="trigger('cds_accept')", disabled=("cds_busy || !cds_segmented",),
                     raw_attrs=_testid("accept"))
                with html.Div(classes="d-flex ga-2 align-center"):
                    VSelect(v_model=("cds_export_format",), items=("cds_export_formats",), density="compact",
                            hide_details=True, style="max-width: 130px;", raw_attrs=_testid("export-format"))
                    VBtn("Export labelmap", prepend_icon="mdi-download", classes="flex-grow-1",
                         click="utils.download(cds_export_name, trigger('cds_export'), "
                               "'application/octet-stream')",
                         disabled=("cds_busy || !cds_segmented",), raw_attrs=_testid("export"))
                pacs_panel(_testid)
                html.Div("Trainer: {{ cds_trainer_status }}", classes="text-caption",
                         raw_attrs=_testid("trainer-status"))
                VBtn("Start fine-tuning", prepend_icon="mdi-school", block=True, variant="tonal",
                     click="trigger('cds_start_trainer')", disabled=("cds_busy || !cds_model_version",),
                     raw_attrs=_testid("start-trainer"))
