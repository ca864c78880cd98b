"""Page state <-> the module's shared Logic (CrossDomainSegLib.logic), on trame-slicer's scene.

The Logic does the work (segment, clicks, undo, accept, export, trainer); this class loads
volumes, hands clicks from the slice views to the Logic's include/exclude point lists (the same
path as a click placed in Slicer), and keeps the page's state current. Segmentation runs on the
Logic's worker thread; the event loop only polls it, so the page keeps rendering meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

import numpy as np
import vtk
from trame_server.utils.asynchronous import create_task

from CrossDomainSegLib.logic import CrossDomainSegLogic
from crossdomainseg.engine import SegmentationCancelled
from crossdomainseg.errors import InputError

from .click_effect import ClickEffect
from .legend import heatmap_legend_state, segment_colors_state
from .security import export_file_name, write_uploads

logger = logging.getLogger(__name__)

TRAINER_POLL_S = 2.0
JOB_POLL_S = 0.1
EXPORT_FORMATS = [".nii.gz", ".seg.nrrd", ".nrrd"]


class WorkflowLogic:
    def __init__(self, server, slicer_app, *, case=None, bundle=None, workspace=None):
        self.server = server
        self.state = server.state
        self.slicer_app = slicer_app
        self.editor = slicer_app.segmentation_editor
        self.case = Path(case) if case else None
        self.logic = CrossDomainSegLogic(slicer_app.scene, slicer_app.segmentations_logic,
                                         workspace=workspace)
        self.logic.on_error = self._show_error
        self.volume_node = None
        self._job = None
        self._demo_loaded = False
        self._poll_task = None

        self.click_effect: ClickEffect = self.editor.get_effect(ClickEffect)
        self.click_effect.clicked.connect(self.on_click)
        self.editor.active_effect_name_changed.connect(self._on_effect_changed)
        self.editor.segmentation_modified.connect(self._update_segment_counts)
        crosshair = slicer_app.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        crosshair.AddObserver(crosshair.CursorPositionModifiedEvent, self._on_cursor_moved)

        self.state.update({
            "cds_case_name": "", "cds_model_version": "", "cds_error": "", "cds_busy": False,
            "cds_progress": 0.0, "cds_status": "Load a volume, then Segment.", "cds_volume_loaded": False,
            "cds_segmented": False, "cds_uncertainty": "", "cds_hint": "", "cds_segment_names": [],
            "cds_segments": [], "cds_click_segment": "", "cds_probe": "-", "cds_trainer_status": "-",
            "cds_has_demo": self.case is not None, "cds_export_formats": EXPORT_FORMATS,
            "cds_export_format": EXPORT_FORMATS[0], "cds_export_name": "segmentation" + EXPORT_FORMATS[0],
            "cds_heatmap_legend": None, "cds_segment_colors": {}, "cds_structure_name": "",
            "cds_structure_mode": "",
        })
        self._box_corner = None  # the first corner (RAS) of a box being drawn for a new structure
        self.state.change("cds_show_preview", "cds_show_heatmap")(self._update_layers)
        self.state.change("cds_click_mode")(self._on_click_mode)
        self.state.change("cds_export_format")(self._update_export_name)
        controller = server.controller
        for name, handler in (("cds_load_demo", self.load_demo), ("cds_segment", self.segment),
                              ("cds_cancel", self.cancel), ("cds_undo", self.undo),
                              ("cds_accept", self.accept), ("cds_export", self.export),
                              ("cds_new_structure", self.new_structure_mode),
                              ("cds_start_trainer", self.start_trainer)):
            controller.trigger(name)(handler)
        controller.on_client_connected.add(self._on_client_connected)

        self.model_error = ""  # shown again after each new case: nothing can be segmented without it
        if bundle is not None:
            try:
                metadata = self.logic.load_bundle(bundle)
                self.state.cds_model_version = str(metadata.get("version", ""))
            except InputError as error:
                self.model_error = f"The model could not be loaded: {error}"
        self.state.cds_error = self.model_error

    def set_ui(self, ui) -> None:
        ui.load_volume.on_load_volume.connect(self.load_uploaded)

    def _show_error(self, message: str) -> None:
        with self.state:
            self.state.cds_error = message

    # -- loading ---------------------------------------------------------------------------------

    def _on_client_connected(self, *_args, **_kwargs) -> None:
        # trame-slicer's effects need a connected view before data arrives (paint otherwise fails)
        if self.case is not None and not self._demo_loaded:
            self.load_demo()
        if self._poll_task is None:
            self._poll_task = create_task(self._poll_trainer())

    def load_demo(self) -> None:
        if self.case is not None:
            self._demo_loaded = True
            self.load_case(self.case)

    def load_uploaded(self, files: list[dict]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            try:  # the client names the files: only plain names, written inside `folder`
                paths = write_uploads(files, Path(folder))
            except InputError as error:
                self._show_error(str(error))
                return
            # several files are the slices of one DICOM series: the Logic reads the folder
            self.load_case(paths[0] if len(paths) == 1 else Path(folder))

    def load_case(self, path: Path | None, loader=None) -> None:
        """Load the volume at `path`, or the one `loader()` returns (a volume node)."""
        with self.state:
            if self.state.cds_busy:
                self.state.cds_error = ("Wait for the segmentation to finish (or cancel it), "
                                        "then load the volume.")
                return
            self._reset_case_state()
            self.editor.deactivate_effect()
            self.slicer_app.scene.Clear()
            try:
                node = loader() if loader else self.logic.load_volume(path, name=None)
            except InputError as error:
                self.volume_node = None
                self.state.cds_error = str(error)
                return
            self.volume_node = node
            display = self.slicer_app.display_manager
            display.show_volume_in_slice_background(node)
            display.show_volume_in_slice_foreground(None)
            display.reset_views()
            self.state.cds_case_name = node.GetName()
            self.state.cds_volume_loaded = True
            self.state.cds_status = "Volume loaded: press Segment."

    def _reset_case_state(self) -> None:
        self.state.update({
            "cds_error": self.model_error, "cds_segmented": False, "cds_show_preview": False,
            "cds_show_heatmap": False,
            "cds_click_mode": "off", "cds_segments": [], "cds_segment_names": [], "cds_uncertainty": "",
            "cds_hint": "", "cds_progress": 0.0, "cds_volume_loaded": False, "cds_case_name": "",
            "cds_heatmap_legend": None, "cds_segment_colors": {}, "cds_structure_mode": "",
        })
        self._box_corner = None

    # -- segmentation ----------------------------------------------------------------------------

    def segment(self) -> None:
        # a task, not an awaited handler: the page's next messages (cancel, toggles, view
        # interaction) are served while the segmentation runs
        if self.volume_node is not None and not self.state.cds_busy:
            self.state.cds_busy = True
            create_task(self._segment())

    async def _segment(self) -> None:
        loop = asyncio.get_running_loop()

        def progress(fraction: float, message: str) -> None:  # called on the worker thread
            loop.call_soon_threadsafe(self._set_progress, fraction, message)

        with self.state:
            self.state.cds_error = ""
            self.state.cds_click_mode = "off"
            self._set_progress(0.0, "Segmenting...")
        try:
            self._job = self.logic.start_segment(self.volume_node, progress)
            while not self._job.done:
                await asyncio.sleep(JOB_POLL_S)
            with self.state:
                outcome = self.logic.finish(self._job)
                self._show_outcome(outcome)
        except SegmentationCancelled:
            self._set_progress(0.0, "Segmentation cancelled.")
        except InputError as error:
            self._show_error(str(error))
            self._set_progress(0.0, "Segmentation failed.")
        except Exception as error:  # the page must say so rather than spin forever
            logger.exception("segmentation failed")
            self._show_error(f"Segmentation failed: {error}")
            self._set_progress(0.0, "Segmentation failed.")
        finally:
            self._job = None
            with self.state:
                self.state.cds_busy = False

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._set_progress(self.state.cds_progress, "Cancelling after the current stage...")

    def _set_progress(self, fraction: float, message: str) -> None:
        with self.state:
            self.state.cds_progress = float(np.clip(fraction, 0.0, 1.0))
            if message:
                self.state.cds_status = message

    def _show_outcome(self, outcome) -> None:
        self.editor.set_active_segmentation(outcome.segmentation_node, self.volume_node)
        self._show_segment_names()
        self.state.cds_structure_mode = ""
        self.state.cds_segmented = True
        self.state.cds_uncertainty = "-" if outcome.U is None else f"{outcome.U:.3f}"
        self.state.cds_hint = outcome.hint
        self.state.cds_heatmap_legend = (heatmap_legend_state(outcome.heatmap_node)
                                         if outcome.heatmap_node is not None else None)
        self.state.cds_model_version = str(outcome.model_version or self.logic.metadata.get("version", ""))
        total = outcome.timings.get("total") or sum(v for v in outcome.timings.values()
                                                    if isinstance(v, (int, float)))
        self.state.cds_status = f"Segmented in {total:.1f} s."
        self.state.cds_progress = 1.0
        self._update_export_name()
        self._update_layers()
        self._update_segment_counts()

    def _show_segment_names(self) -> None:
        """The segment picker, legend colours and the segment clicks correct: the case's segments,
        new structures included (call inside `with self.state`)."""
        names = self.logic.label_names()
        self.state.cds_segment_names = names
        self.state.cds_segment_colors = segment_colors_state(self.logic.label_colors())
        if self.logic.active_label in names:
            self.state.cds_click_segment = self.logic.active_label
        elif self.state.cds_click_segment not in names:
            self.state.cds_click_segment = names[0] if names else ""

    def _update_layers(self, **_kwargs) -> None:
        if not self.state.cds_segmented:  # the Logic's layers belong to the segmented case only
            return
        self.logic.show_layers(synthetic=bool(self.state.cds_show_preview),
                               heatmap=bool(self.state.cds_show_heatmap))

    def _update_segment_counts(self, *_args) -> None:
        if not self.state.cds_segmented or self.volume_node is None:
            return
        voxel_ml = float(np.prod(self.volume_node.GetSpacing())) / 1000.0
        counts = []
        for segment_id in self.editor.get_segment_ids():
            voxels = int(np.count_nonzero(self.editor.get_segment_labelmap(segment_id, as_numpy_array=True)))
            counts.append({"name": self.editor.get_segment_properties(segment_id).name, "voxels": voxels,
                           "ml": f"{voxels * voxel_ml:.1f}"})
        with self.state:
            self.state.cds_segments = counts

    # -- clicks and undo -------------------------------------------------------------------------

    def _on_click_mode(self, cds_click_mode: str, **_kwargs) -> None:
        if cds_click_mode != "include" and self.state.cds_structure_mode:  # "New structure" given up
            self.state.cds_structure_mode = ""
            self.logic.armed_structure, self._box_corner = None, None
        if cds_click_mode in ("include", "exclude") and self.state.cds_segmented:
            self.click_effect.positive = cds_click_mode == "include"
            self.editor.set_active_effect(self.click_effect)
        elif self.editor.active_effect is self.click_effect:
            self.editor.deactivate_effect()

    def _on_effect_changed(self, _name: str) -> None:
        # picking paint, erase, ... in the segment editor ends click mode
        if self.editor.active_effect is not self.click_effect and self.state.cds_click_mode != "off":
            with self.state:
                self.state.cds_click_mode = "off"

    def new_structure_mode(self, kind: str) -> None:
        """"New structure": the next click on a slice starts a segment named as typed (default
        "Structure N"), outlined by the model's prompt network (`kind` "click"); or two clicks
        give the opposite corners of a box around it ("box"; corners on one slice get a depth).
        Refused at once when the model cannot outline new structures."""
        with self.state:
            self.state.cds_error = ""
            try:
                if kind == "click":
                    name = self.logic.arm_new_structure(self.state.cds_structure_name)
                    message = f"Click on the structure: it becomes segment '{name}'."
                elif kind == "box":
                    name = self.logic.check_new_structure(self.state.cds_structure_name, box=True)
                    message = f"Click one corner of a box around the structure ('{name}'), then the opposite one."
                else:
                    raise InputError(f"Start a new structure from a 'click' or a 'box', not {kind!r}.")
            except InputError as error:
                self.state.cds_error = str(error)
                return
            self._box_corner = None
            self.state.cds_structure_mode = kind
            self.state.cds_click_mode = "include"  # the click effect on, positive
            self.state.cds_status = message

    def _box_click(self, ras: tuple) -> None:
        if self._box_corner is None:
            self._box_corner = ras
            self.state.cds_status = "Now click the opposite corner of the box."
            return
        corner, self._box_corner = self._box_corner, None
        self.state.cds_structure_mode = ""
        outcome = self.logic.new_structure_from_box(corner, ras, self.state.cds_structure_name)
        self.state.cds_status = f"New segment '{outcome['segment']}': {outcome['changed_voxels']} voxels."

    def on_click(self, ras: tuple, positive: bool) -> None:
        """A click in a slice view becomes a point of the Logic's include or exclude list,
        which refines at once (the Logic observes its point lists); in "New structure" mode it
        starts the new segment (a box: this click and the next are its corners)."""
        with self.state:
            self.state.cds_error = ""
            if self.state.cds_structure_mode == "box":
                try:
                    self._box_click(ras)
                except InputError as error:
                    self.state.cds_error = str(error)
                self._show_segment_names()
                self._update_segment_counts()
                return
            self.state.cds_structure_mode = ""  # an armed structure starts at this point
            self.logic.active_label = self.state.cds_click_segment or None
            include, exclude = self.logic.click_nodes()
            before = len(self.logic.clicks)
            (include if positive else exclude).AddControlPoint(vtk.vtkVector3d(*ras))
            if len(self.logic.clicks) > before:
                kind = "Include" if positive else "Exclude"
                self.state.cds_status = f"{kind} click at R {ras[0]:.1f} A {ras[1]:.1f} S {ras[2]:.1f}."
            self._show_segment_names()  # the click may have started a new structure
            self._update_segment_counts()

    def undo(self) -> None:
        with self.state:
            try:
                undone = self.logic.undo()
            except InputError as error:
                self.state.cds_error = str(error)
                return
            self.state.cds_status = "Last correction undone." if undone else "Nothing to undo."
            self._show_segment_names()  # undone: a new structure goes
            self._update_segment_counts()

    def _on_cursor_moved(self, crosshair, _event) -> None:
        ras = [0.0, 0.0, 0.0]
        if crosshair.GetCursorPositionRAS(ras):
            with self.state:
                self.state.cds_probe = f"R {ras[0]:.1f} A {ras[1]:.1f} S {ras[2]:.1f}"

    # -- accept, export, trainer -----------------------------------------------------------------

    def accept(self) -> None:
        with self.state:
            try:
                case_id = self.logic.accept()
            except InputError as error:
                self.state.cds_error = str(error)
                return
            self.state.cds_status = f"Accepted as case {case_id}: stored for fine-tuning."
            self.state.cds_trainer_status = self._trainer_status()

    def start_trainer(self) -> None:
        with self.state:
            try:
                self.logic.start_trainer()
            except InputError as error:
                self.state.cds_error = str(error)
            self.state.cds_trainer_status = self._trainer_status()

    def _export_name(self) -> str:
        base = self.volume_node.GetName() if self.volume_node is not None else None
        return export_file_name(base, self.state.cds_export_format, EXPORT_FORMATS)

    def _update_export_name(self, **_kwargs) -> None:
        try:
            self.state.cds_export_name = self._export_name()
        except InputError as error:
            self._show_error(str(error))

    def export(self):
        # the file name is made here from the volume and an offered format; the page's
        # cds_export_name (a client-settable value) only names the browser's download
        with tempfile.TemporaryDirectory() as folder:
            try:
                path = self.logic.export(Path(folder) / self._export_name())
            except InputError as error:
                self._show_error(str(error))
                return None
            self._set_progress(self.state.cds_progress, f"Exported {path.name}.")
            return self.server.protocol.addAttachment(Path(path).read_bytes())

    def _trainer_status(self) -> str:
        try:
            status = self.logic.trainer_status()
        except Exception as error:  # a status line must not take the page down (e.g. a half-written file)
            return f"status unavailable ({error})"
        parts = [str(status.get("state", "unknown"))]
        if status.get("running"):
            parts.append(f"{100 * float(status.get('progress') or 0.0):.0f}%")
        if status.get("message"):
            parts.append(str(status["message"]))
        parts.append(f"{int(status.get('accepted_cases') or 0)} accepted case(s)")
        if status.get("current_version"):
            parts.append(f"model {status['current_version']}")
        return " - ".join(parts)

    async def _poll_trainer(self) -> None:
        while True:
            text = self._trainer_status()
            if text != self.state.cds_trainer_status:
                with self.state:
                    self.state.cds_trainer_status = text
            await asyncio.sleep(TRAINER_POLL_S)
