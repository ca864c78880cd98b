"""The clinician's workflow on an MRML scene, without Qt: the Slicer module and the web app share it.

`CrossDomainSegLogic(scene)` works on any `vtkMRMLScene`: the one of a running Slicer, of
trame-slicer's `SlicerApp`, or a bare scene from the slicer-core wheel (tests). It never touches
widgets or `slicer.app`. Segmentation and click refinement run on a worker thread (`jobs.Job`);
everything that changes MRML happens on the calling thread, in the `finish...` methods.

The segmentation node is the truth: what the user sees there (clicks' results and edits made with
any Segment Editor effect) is what Accept and Export write. The click session of the engine
(crossdomainseg.interactive) holds the correction history; the Logic keeps no copy of it.

Coordinates: MRML speaks RAS, the engine LPS (both mm); points are converted here and nowhere else.
All nodes it makes live on the input volume's own grid.

API (stable; the web front end codes against it):
    logic = CrossDomainSegLogic(scene, segmentations_logic=None, workspace=None, threads=None)
    logic.load_bundle(path) -> metadata        bundle or registry folder; label_names()
        or job = logic.start_load_bundle(path); logic.finish_load_bundle(job) (Slicer's GUI)
    logic.load_volume(path) -> volume node     file or DICOM folder (Slicer has its own loaders)
    logic.segment(volume_node, progress=None, segmentation_node=None) -> SegmentOutcome
        or job = logic.start_segment(...); job.fraction/.message/.done/.cancel();
        logic.finish(job) -> SegmentOutcome (on the scene's thread)
    logic.show_layers(synthetic=False, heatmap=True, heatmap_opacity=None); set_heatmap_opacity(x)
    logic.click_nodes() -> (include, exclude) markups nodes; a point placed refines, a point
        moved or deleted moves or takes out its click (logic.active_label names the segment;
        logic.run_job(job, finish) runs clicks in the background; logic.on_error(message) hears
        what went wrong in an observer)
    logic.add_click(ras_point, positive, segment_name) -> {"changed_voxels", "seconds"}
        or job = logic.start_click(...); logic.finish_click(job)
    logic.new_structure(ras_point, name=None) -> {"segment", "changed_voxels", "seconds"}: a new
        segment (default "Structure N") outlined from one click by the bundle's prompt network;
        logic.new_structure_from_box(ras_a, ras_b, name=None) / new_structure_from_roi(roi, name)
        from a box; logic.arm_new_structure(name): the next include point starts one (the
        front ends' "New structure" mode); check_new_structure(name) -> the name it would get
        (refused at once without a prompt network); clicks then correct it like any segment;
        logic.case_labels: {segment name: value} of the case, new structures included
    logic.undo() / logic.redo() -> bool;  logic.lock_from_segmentation() -> locked voxel count
    logic.save_state_for_undo = hook(segmentation_node): called before every write into a
        segmentation (Slicer: the Segment Editor's saveStateForUndo), so the Segment Editor's
        Undo/Redo steps through clicks as through strokes; the Logic follows such a restore
    logic.accept() -> case id; logic.case_folder(case id) -> its folder;  logic.export(path) -> path (.seg.nrrd, .nii.gz, .nii, .nrrd, .dcm)
    logic.load_from_pacs(dicomweb_url, user, password) -> volume node; logic.export_to_pacs() -> SEG
    logic.trainer_status() -> dict; start_trainer(unlabelled_folder=None); stop_trainer(); rollback()
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import vtk

from crossdomainseg.errors import BundleError, InputError

# torch and MONAI are imported only when a model is loaded: the Slicer module must open (and offer
# to install them) in a Slicer that does not have them yet.
from . import display, nodes
from .click_points import ClickPoints
from .edit_watch import EditWatch
from .jobs import Job
from .structures import box_corners, require_prompt_network, structure_name
from .trainer import TrainerControl, safe_name

logger = logging.getLogger(__name__)

# What U means, against the bands the bundle's settings command calibrated on its own source
# validation images (metadata `uncertainty_hints`): confident up to their median U, unsure above
# their 90th percentile.
HINTS = {
    "confident": "The model is as confident on this image as on the images it was trained on: a quick "
                 "check should be enough.",
    "some": "Some regions are uncertain (bright in the heatmap): check those before accepting.",
    "unsure": "The model is unsure about this image, more than on nine in ten of the images it was "
              "validated on; it may differ from what it was trained on. Review it carefully and "
              "correct it with clicks.",
    "uncalibrated": "This model carries no calibration of its uncertainty: check the bright regions of "
                    "the heatmap before accepting.",
}

# How many steps of the session's history a segmentation restored by the Segment Editor's
# Undo/Redo is looked for in (the Segment Editor keeps 10 states)
HISTORY_SEARCH = 20

EXPORT_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".dcm")


def uncertainty_hint(u: float, bands: dict | None) -> str:
    """What the per-image uncertainty U means for the clinician, in one sentence; `bands`: the
    bundle's metadata `uncertainty_hints` (None: uncalibrated)."""
    if not bands:
        return HINTS["uncalibrated"]
    if u <= bands["confident_up_to"]:
        return HINTS["confident"]
    return HINTS["some"] if u <= bands["unsure_above"] else HINTS["unsure"]


def default_workspace() -> Path:
    """Where accepted cases and model versions live (env CROSSDOMAINSEG_HOME, else ~/.crossdomainseg)."""
    return Path(os.environ.get("CROSSDOMAINSEG_HOME") or Path.home() / ".crossdomainseg")


@dataclass
class SegmentOutcome:
    segmentation_node: object
    preview_node: object | None
    heatmap_node: object | None
    U: float | None
    hint: str
    model_version: str | None
    timings: dict = field(default_factory=dict)


class CrossDomainSegLogic:
    """Segment, preview, show uncertainty, correct with clicks, accept, export, steer the trainer.

    scene: the vtkMRMLScene to work in. segmentations_logic: a vtkSlicerSegmentationsModuleLogic
    registered with that scene (one is made if omitted). workspace: folder for accepted cases and
    model versions (default `default_workspace()`). threads: torch threads for inference.
    """

    def __init__(self, scene, segmentations_logic=None, workspace=None, threads: int | None = None):
        self.scene = scene
        self.segmentations_logic = segmentations_logic or _segmentations_logic(scene)
        self.workspace = Path(workspace) if workspace else default_workspace()
        self.threads = threads
        self.bundle_path: Path | None = None
        self.metadata: dict = {}
        self.engine = None
        self.trainer = TrainerControl(self.workspace)
        self.active_label: str | None = None
        self.on_error: Callable[[str], None] | None = None  # what went wrong in an observer
        # run_job(job, finish): how a front end waits for a click's job without blocking its GUI
        # (poll job.done, then call finish(job) on its own thread); None: wait here
        self.run_job: Callable | None = None
        # DICOM instance UID -> file (Slicer: slicer.dicomDatabase.fileForInstance)
        self.dicom_file_for_instance: Callable[[str], str] | None = None
        # save_state_for_undo(segmentation_node), called before the Logic writes into it: a front
        # end with an undo history of segmentations (Slicer's Segment Editor) saves the state there
        self.save_state_for_undo: Callable | None = None
        self.last_error = ""
        self.points = ClickPoints(scene, weakly(self._on_point_placed), weakly(self._on_point_moved),
                                  weakly(self._on_point_removed))
        self._watch: EditWatch | None = None
        self._pacs_login: tuple[str | None, str | None] = (None, None)
        self._clear_case()
        # weakly, and taken off when the Logic goes: a scene that is being deleted fires these too
        tags = [scene.AddObserver(scene.StartCloseEvent, weakly(self._on_scene_closing)),
                scene.AddObserver(scene.NodeRemovedEvent, weakly(self._on_node_removed))]
        self._unobserve_scene = weakref.finalize(self, _remove_observers, scene, tags)

    # -- model -------------------------------------------------------------------------------
    def load_bundle(self, path) -> dict:
        """Use the model bundle (or model registry) at `path`; returns its metadata.

        A plain bundle is copied into a registry of this workspace on first use, so
        fine-tuned versions can be published and rolled back beside it; the engine follows the
        registry and picks up new versions on the next segmentation.
        """
        return self.finish_load_bundle(self.start_load_bundle(path))

    def start_load_bundle(self, path) -> Job:
        """Start `load_bundle`'s work (importing torch, copying the bundle, reading the weights:
        seconds) on a worker thread; finish with `finish_load_bundle` on the scene's thread."""
        path, workspace, threads = Path(path).expanduser(), self.workspace, self.threads
        return Job(lambda report, cancelled: _open_model(path, workspace, threads),
                   name="CrossDomainSeg model")

    def finish_load_bundle(self, job: Job) -> dict:
        """Use the model a finished `start_load_bundle` job opened; returns its metadata (raises
        the job's error, a BundleError with the reason for a bad bundle)."""
        registry_dir, metadata, engine = job.outcome()
        self.metadata, self.engine, self.bundle_path = dict(metadata), engine, registry_dir
        self.trainer.registry_dir, self.trainer.task = registry_dir, self.metadata["task"]
        names = self.label_names()
        self.active_label = names[0] if names else None
        return self.metadata

    def label_names(self) -> list[str]:
        """Foreground segment names: the loaded bundle's labels, then the case's new structures,
        in label-value order."""
        return [n for n, v in sorted(self.case_labels.items(), key=lambda kv: kv[1]) if int(v) != 0]

    @property
    def case_labels(self) -> dict:
        """{segment name: label value} of the case on screen: the bundle's labels and the new
        structures in effect (started and not undone)."""
        labels = dict(self.metadata.get("labels", {}))
        if self.session is not None:
            labels.update({n: v for n, v in self.structures.items() if v in self.session.label_values})
        return labels

    def label_colors(self) -> dict:
        """{segment name: [r, g, b]} (0-255) from the bundle's terminology (distinct within a task;
        a new structure gets a colour far from the others)."""
        from crossdomainseg.terminology import colors_for

        return colors_for(self.case_labels, self.metadata.get("terminology"), self.metadata.get("colors"))

    def _require_engine(self):
        if self.engine is None:
            raise BundleError("No model loaded: pick a model bundle first.")
        return self.engine

    # -- segmentation ------------------------------------------------------------------------
    def start_segment(self, volume_node, progress: Callable | None = None,
                      segmentation_node=None) -> Job:
        """Start segmenting `volume_node` on a worker thread; returns the job to poll and cancel.

        segmentation_node: where the result goes (the user's own segmentation: its segments of
        other names are kept); None: "<volume> segmentation", made or reused. `progress(fraction,
        message)` is called from the worker thread.
        """
        engine = self._require_engine()
        image = nodes.image_from_volume_node(volume_node)  # read MRML here, on the caller's thread
        if segmentation_node is not None and not segmentation_node.IsA("vtkMRMLSegmentationNode"):
            raise InputError("The output must be a segmentation; pick one or leave it empty.")

        def run(report, cancel):
            result = engine.segment(image, preview=True, uncertainty=True, progress=report,
                                    cancel=cancel)
            report(1.0, "preparing click correction")
            return result, _new_session(engine, image, result)  # also off the caller's thread

        job = Job(run, progress, "CrossDomainSeg segmentation")
        job.volume_node, job.segmentation_node = volume_node, segmentation_node
        return job

    def finish(self, job: Job) -> SegmentOutcome:
        """Put a finished job's results into the scene (call on the thread that owns the scene).
        Raises the job's error, or crossdomainseg.engine.SegmentationCancelled after `cancel`."""
        from crossdomainseg.engine import SegmentationCancelled

        result = job.outcome()
        if job.cancelled:
            raise SegmentationCancelled("segmentation cancelled")
        for node in (job.volume_node, job.segmentation_node):
            if node is not None and not self.scene.IsNodePresent(node):
                raise InputError("The volume or segmentation was deleted while it was being "
                                 "segmented; load it again and press Segment.")
        return self._show_result(job.volume_node, job.segmentation_node, *result)

    def segment(self, volume_node, progress: Callable | None = None,
                segmentation_node=None) -> SegmentOutcome:
        """Segment and wait: `start_segment` then `finish`."""
        return self.finish(self.start_segment(volume_node, progress, segmentation_node))

    def _show_result(self, volume_node, segmentation_node, result, session) -> SegmentOutcome:
        self._clear_case()
        self.points.clear()  # points of the previous case
        self.volume_node, self.session = volume_node, session
        self.metadata = dict(self.engine.bundle.metadata)  # the version that made this result
        if self.active_label not in self.label_names():  # a new structure of the last case
            self.active_label = next(iter(self.label_names()), None)
        base = volume_node.GetName()

        if segmentation_node is None:
            segmentation_node = display.find_or_add(self.scene, "vtkMRMLSegmentationNode",
                                                    f"{base} segmentation")
        segmentation_node.CreateDefaultDisplayNodes()
        self.segmentation_node = segmentation_node
        self._save_state_for_undo()
        nodes.fill_segmentation_node(segmentation_node, session.label_image(), self.metadata["labels"],
                                     self.label_colors(), self.segmentations_logic, volume_node)
        self._watch = EditWatch(segmentation_node)

        preview_node = None
        if result.preview is not None:
            preview_node = display.find_or_add(
                self.scene, "vtkMRMLScalarVolumeNode",
                f"{base} synthetic {self.metadata.get('output_modality', '')}".strip())
            nodes.update_volume_node(preview_node, sitk.Cast(result.preview, sitk.sitkFloat32))
            preview_node.CreateDefaultDisplayNodes()
            preview_node.GetDisplayNode().AutoWindowLevelOn()
        heatmap_node = None
        if result.uncertainty is not None:
            heatmap_node = display.find_or_add(self.scene, "vtkMRMLScalarVolumeNode", f"{base} uncertainty")
            nodes.update_volume_node(heatmap_node, sitk.Cast(result.uncertainty, sitk.sitkFloat32))
            display.style_heatmap(self.scene, heatmap_node, _array(result.uncertainty))
        self.preview_node, self.heatmap_node = preview_node, heatmap_node
        self.show_layers(synthetic=False)

        u = None if result.U is None else float(result.U)
        self.draft = result.label  # the model's label before any correction (the store counts edits)
        self.outcome = SegmentOutcome(segmentation_node, preview_node, heatmap_node, u,
                                      uncertainty_hint(u, self.metadata.get("uncertainty_hints"))
                                      if u is not None else "",
                                      getattr(result, "model_version", None),
                                      dict(getattr(result, "timings", {}) or {}))
        return self.outcome

    # -- views ---------------------------------------------------------------------------------
    def show_layers(self, synthetic: bool = False, heatmap: bool = True,
                    heatmap_opacity: float | None = None) -> None:
        """Show the input (or its synthetic preview) with the heatmap over it in every slice view."""
        background = self.preview_node if synthetic and self.preview_node else self.volume_node
        display.show_layers(self.scene, background, self.heatmap_node if heatmap else None,
                            heatmap_opacity)

    def set_heatmap_opacity(self, opacity: float) -> None:
        display.set_foreground_opacity(self.scene, opacity)

    # -- clicks --------------------------------------------------------------------------------
    def click_nodes(self):
        """The include and exclude point lists (made on first call)."""
        return self.points.nodes()

    @property
    def clicks(self) -> list:
        """The clicks in effect, oldest first: the session's (`point` in LPS mm, `positive`,
        `label` value)."""
        return list(self.session.clicks) if self.session is not None else []

    def start_click(self, ras_point, positive: bool, segment_name: str | None = None) -> Job:
        """Start refining around a click at `ras_point` (RAS mm) on a worker thread: positive
        adds to `segment_name`, negative removes from it. Hand edits made since the last update
        are locked first (here, on the caller's thread). Finish with `finish_click`."""
        self._require_clicks()
        label = segment_name or self.active_label
        if label not in self.label_names():
            raise InputError(f"Unknown segment {label!r}: choose one of {', '.join(self.label_names())}.")
        point = nodes.ras_to_lps(ras_point)
        self.session.index_of(point)  # a point outside the image is refused before any work
        self.lock_from_segmentation()
        value = int(self.case_labels[label])
        session = self.session
        return self._start_session_job(lambda: session.add_click(point, positive, value))

    # -- new structures ------------------------------------------------------------------------
    def arm_new_structure(self, name: str | None = None) -> str:
        """The next include point placed starts a new structure `name` (default "Structure N")
        instead of adding to the active segment; returns the name it will get. Refused at once
        when the model cannot outline new structures."""
        self.armed_structure = self.check_new_structure(name)
        return self.armed_structure

    def check_new_structure(self, name: str | None = None, box: bool = False) -> str:
        """The name a new structure `name` would get (default "Structure N"); BundleError when the
        model cannot outline new structures (`box`: from a box; saying which can), InputError for a
        taken name."""
        self._require_clicks()
        require_prompt_network(self.session, self.metadata.get("task"), box)
        return self._structure_name(name)

    def start_new_structure(self, ras_point, name: str | None = None, point=None) -> Job:
        """Start a new segment `name` (default "Structure N") outlined by the prompt network from
        one click at `ras_point` (RAS mm), on a worker thread; finish with `finish_click`. It gets
        a colour of its own and becomes the active segment; clicks then correct it, Undo takes it
        out. `point`: (markups node, point id) of the point placed for it (else one is added)."""
        name, value = self._prepare_structure(name)
        point_lps = nodes.ras_to_lps(ras_point)
        self.session.index_of(point_lps)  # a point outside the image is refused before any work
        self.lock_from_segmentation()
        session = self.session
        job = self._start_session_job(lambda: session.new_structure(point_lps, value)[1])

        def started():
            self._structure_started(name, value)
            if point is None:
                self.points.restore(self.session.clicks[-1])
            else:
                self.points.bind(point[0], point[1], self.session.clicks[-1])

        job.then, job.structure = started, name
        return job

    def new_structure(self, ras_point, name: str | None = None) -> dict:
        """`start_new_structure` and wait; returns {"segment", "changed_voxels", "seconds"}."""
        job = self.start_new_structure(ras_point, name)
        return {"segment": job.structure, **self.finish_click(job)}

    def new_structure_from_box(self, ras_a, ras_b, name: str | None = None) -> dict:
        """A new segment outlined by the prompt network inside the box with opposite corners
        `ras_a` and `ras_b` (RAS mm; a box drawn on one slice is given a depth, see
        `structures.box_corners`); the box goes with the clicks that correct it. Returns
        {"segment", "changed_voxels", "seconds"}."""
        name, value = self._prepare_structure(name, box=True)
        corners = box_corners(self.session.image, nodes.ras_to_lps(ras_a), nodes.ras_to_lps(ras_b))
        for corner in corners:
            self.session.index_of(corner)  # outside the image: refused before any work
        self.lock_from_segmentation()
        session = self.session
        job = self._start_session_job(lambda: session.new_structure_from_box(*corners, value)[1])
        job.then, job.structure = (lambda: self._structure_started(name, value)), name
        return {"segment": name, **self.finish_click(job)}

    def new_structure_from_roi(self, roi_node, name: str | None = None) -> dict:
        """`new_structure_from_box` with the box of a markups ROI node (its RAS bounds)."""
        bounds = [0.0] * 6
        roi_node.GetRASBounds(bounds)
        if not all(np.isfinite(bounds)) or bounds[0] > bounds[1]:
            raise InputError("The ROI has no box yet: place it around the structure first.")
        return self.new_structure_from_box(bounds[0::2], bounds[1::2], name)

    def _structure_name(self, name: str | None) -> str:
        segmentation = self.segmentation_node.GetSegmentation()
        others = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        return structure_name(name, [*self.case_labels, *others])

    def _prepare_structure(self, name: str | None, box: bool = False) -> tuple[str, int]:
        """(name, label value) for a new structure; refused before any work when the model cannot
        outline one (from a box), the name is taken or the case has no label value left."""
        name = self.check_new_structure(name, box)
        value = max(self.session.label_values + [0]) + 1
        if value > 255:
            raise InputError("This case has as many segments as can be stored (255); accept it first.")
        return name, value

    def _structure_started(self, name: str, value: int) -> None:
        # a structure undone earlier cannot come back (its redo is gone): its name is free again
        self.structures = {n: v for n, v in self.structures.items() if v in self.session.label_values
                           and v != value}
        self.structures[name] = value
        self.active_label = name
        self.armed_structure = None

    def _sync_structure_segments(self) -> None:
        """Give each new structure in effect its segment (its name, a colour of its own) and take
        out the segments of structures undone."""
        segmentation = self.segmentation_node.GetSegmentation()
        live, colors = self.case_labels, self.label_colors()
        with self._watch.writing():
            for name in self.structures:
                present = segmentation.GetSegment(name) is not None
                if name in live and not present:
                    segmentation.AddEmptySegment(name, name, [c / 255.0 for c in colors[name]])
                elif name not in live and present:
                    segmentation.RemoveSegment(name)
        if self.active_label not in live:  # the active structure was undone
            self.active_label = next(iter(self.label_names()), None)

    def _start_session_job(self, change: Callable) -> Job:
        started = time.perf_counter()
        # the label before the change (copied before the worker starts): the GUI stays usable
        # meanwhile, and a stroke painted then is told apart from the click's own change by it
        before = self.session.label.copy()
        job = Job(lambda report, cancelled: change(), name="CrossDomainSeg click")
        job.started, job.session, job.before = started, self.session, before
        job.then = None  # what ties the points to the session's clicks once the change is shown
        self._click_job = job
        return job

    def finish_click(self, job: Job) -> dict:
        """Show a finished click's change (the changed box of each segment only; call on the
        scene's thread). Returns {"changed_voxels", "seconds"}."""
        try:
            result = job.outcome()
        finally:
            if self._click_job is job:
                self._click_job = None
        if job.session is not self.session:  # the case was closed or replaced meanwhile
            raise InputError("The segmentation was closed or replaced while the click was being "
                             "applied; place the point again.")
        painted_meanwhile = self._screen_label() if self._watch.edited else None
        if job.then is not None:
            job.then()
        # strokes made while the click ran are on screen too: then every segment is rewritten
        self._show_change(result, job.before if painted_meanwhile is None else None)
        if painted_meanwhile is not None:  # and win over the click (one undo state for both)
            for change in self._take_edits(painted_meanwhile != job.before, painted_meanwhile):
                self._show_change(change, save_state=False)
        return {"changed_voxels": int(result.changed), "seconds": time.perf_counter() - job.started}

    def add_click(self, ras_point, positive: bool, segment_name: str | None = None) -> dict:
        """Refine around one click and wait: `start_click` then `finish_click`."""
        return self.finish_click(self.start_click(ras_point, positive, segment_name))

    def _on_point_placed(self, markups_node, index: int, positive: bool) -> None:
        point_id = markups_node.GetNthControlPointID(index)

        def drop_point():
            index = markups_node.GetNthControlPointIndexByID(point_id)
            if index >= 0:
                markups_node.RemoveNthControlPoint(index)

        def place():
            ras = markups_node.GetNthControlPointPositionWorld(index)
            if positive and self.armed_structure is not None:
                self._run(self.start_new_structure(ras, self.armed_structure, (markups_node, point_id)),
                          drop_point)
                return
            job = self.start_click(ras, positive, self.active_label)
            job.then = lambda: self.points.bind(markups_node, point_id, self.session.clicks[-1])
            self._run(job, drop_point)

        self._guarded("The click", place, drop_point)

    def _run(self, job: Job, on_failure: Callable) -> None:
        """Finish `job` now, or hand it to the front end's `run_job`; a failure undoes the point."""
        def finish(job):
            try:
                return self.finish_click(job)
            except BaseException:
                on_failure()
                raise

        if self.run_job is None:
            finish(job)
        else:
            self.run_job(job, finish)

    def _on_point_moved(self, click, ras) -> None:
        def move():
            self._require_clicks()
            self.lock_from_segmentation()
            index = next((i for i, c in enumerate(self.session.clicks) if c is click), None)
            if index is None:
                raise InputError("That point's click is no longer in effect; place a new point.")
            session, point = self.session, nodes.ras_to_lps(ras)
            job = self._start_session_job(lambda: session.revise_click(click, point))
            job.then = lambda: self.points.rebind(click, self.session.clicks[index])
            self._run(job, lambda: None)

        self._guarded("Moving the point", move)

    def _on_point_removed(self, click) -> None:
        def remove():
            self._require_clicks()
            self.lock_from_segmentation()
            session = self.session
            self._run(self._start_session_job(lambda: session.revise_click(click, None)), lambda: None)

        self._guarded("Deleting the point", remove)

    def _guarded(self, what: str, action: Callable, on_failure: Callable | None = None) -> None:
        """Run an observer's work: observers cannot raise to the user, so an InputError is shown
        as it is and anything else is logged with its traceback and shown too."""
        try:
            action()
        except InputError as error:
            message = str(error)
        except Exception as error:
            logger.exception("%s failed", what)
            message = f"{what} failed: {error} (details in the Python log)."
        else:
            return
        if on_failure is not None:
            on_failure()
        self._report(message)

    def _report(self, message: str) -> None:
        self.last_error = message
        if self.on_error is not None:
            self.on_error(message)

    def undo(self) -> bool:
        """Take back the last correction, a click (its point disappears too) or a hand edit;
        False when there is none."""
        self._require_clicks()
        self.lock_from_segmentation()
        clicks, before = list(self.session.clicks), self.session.label.copy()
        result = self.session.undo()
        if result is None:
            return False
        if len(self.session.clicks) < len(clicks):
            self.points.remove(clicks[-1])
        self._show_change(result, before)
        return True

    def redo(self) -> bool:
        """Apply again the last correction undone; False when there is none."""
        self._require_clicks()
        self.lock_from_segmentation()
        clicks, before = len(self.session.clicks), self.session.label.copy()
        result = self.session.redo()
        if result is None:
            return False
        if len(self.session.clicks) > clicks:
            self.points.restore(self.session.clicks[-1])
        self._show_change(result, before)
        return True

    def lock_from_segmentation(self) -> int:
        """Take in the user's hand edits (strokes of any Segment Editor effect, or a script) made
        since the Logic last wrote the segmentation, and lock those voxels: clicks never change
        them again. Returns how many voxels are locked in all.

        A segmentation restored by the Segment Editor's Undo or Redo (the Logic saves a state
        there before each write; a restore replaces every segment's labelmap) that shows exactly
        a state the session had a few steps back or ahead: the session steps there too, points
        included, and nothing is locked. Anything else (strokes, a restore mixed with new
        strokes, one past the session's start) is taken as made by hand and locked as shown, so
        nothing on screen is lost."""
        self._require_clicks()
        if self._watch.edited:
            current = self._screen_label()
            if not (self._watch.restored and self._follow_restored_state(current)):
                self._take_edits(current != self.session.label, current)
            self._watch.mark_clean()
        return int(self.session.locked.sum())

    def _follow_restored_state(self, current: np.ndarray) -> bool:
        """Step the session back or forth (at most HISTORY_SEARCH steps) to the state whose
        label is `current`; False, with the session unchanged, when there is none."""
        session, clicks = self.session, list(self.session.clicks)
        if np.array_equal(current, session.label):
            return True
        for step, back in ((session.undo, session.redo), (session.redo, session.undo)):
            taken = 0
            while taken < HISTORY_SEARCH and step() is not None:
                taken += 1
                if np.array_equal(current, session.label):
                    for click in clicks:
                        if not any(click is now for now in session.clicks):
                            self.points.remove(click)
                    for click in session.clicks:
                        if not any(click is was for was in clicks):
                            self.points.restore(click)
                    return True
            for _ in range(taken):
                back()
        return False

    def _take_edits(self, edited: np.ndarray, current: np.ndarray) -> list:
        """Paint the voxels `edited` by hand into the session with their values in `current`,
        locked (one undoable step per value); returns the session's changes."""
        return [self.session.paint(edited & (current == value), int(value), lock=True)
                for value in np.unique(current[edited])]

    def _screen_label(self) -> np.ndarray:
        """What the segmentation node holds now, as bundle label values on the input grid."""
        label = nodes.label_from_segmentation_node(self.segmentation_node, self.volume_node,
                                                   self.case_labels, self.segmentations_logic)
        return _array(label).astype(np.int16)

    def _show_change(self, result, before: np.ndarray | None = None, save_state: bool = True) -> None:
        """Put the session's label into the segmentation inside the box that changed (`before`:
        what the segmentation shows now, when known: only segments that changed are written),
        after saving the segmentation's state for the Segment Editor's Undo (`save_state`)."""
        if result.box is None:
            return
        if save_state:
            self._save_state_for_undo()
        self._sync_structure_segments()
        with self._watch.writing():
            nodes.write_segments_in_box(self.segmentation_node, self.session.label, result.box.slices,
                                        self.case_labels, self.volume_node, before)

    def _save_state_for_undo(self) -> None:
        if self.save_state_for_undo is not None:
            self.save_state_for_undo(self.segmentation_node)

    # -- accept and export ---------------------------------------------------------------------
    def accept(self) -> str:
        """Store what the segmentation shows now (image, label, clicks, model version) in the
        accepted-case store the trainer learns from; returns the case id."""
        from crossdomainseg.store import AcceptedCaseStore

        label = self._label_on_screen()
        labels = self.case_labels
        names = {int(v): n for n, v in labels.items()}
        clicks = [{"point": list(c.point), "positive": c.positive, "label": names[c.label]}
                  for c in self.clicks]
        store = AcceptedCaseStore(self.store_dir)
        case_id = store.accept(
            nodes.image_from_volume_node(self.volume_node), label, clicks=clicks,
            model_version=self.outcome.model_version,
            labels=self.metadata["labels"], draft=self.draft,
            structures={n: v for n, v in labels.items() if n not in self.metadata["labels"]},
            meta={"volume": self.volume_node.GetName(), "task": self.metadata.get("task"),
                  "U": self.outcome.U, "locked_voxels": int(self.session.locked.sum()),
                  "source": self.volume_node.GetAttribute("CrossDomainSeg.source") or ""})
        return case_id  # a running trainer reads new cases from the store at its next epoch

    def case_folder(self, case_id: str) -> Path:
        """The folder on this computer that holds accepted case `case_id` (image, label, manifest)."""
        from crossdomainseg.store import AcceptedCaseStore

        return AcceptedCaseStore(self.store_dir).image_path(case_id).parent

    def export(self, path) -> Path:
        """Write what the segmentation shows now, on the input's grid: .seg.nrrd (with the segment
        names and colours), .nii.gz/.nii/.nrrd (label values), or .dcm (DICOM SEG referencing the
        source series; only for an input loaded from DICOM). Returns the path written."""
        from crossdomainseg import imageio

        path = Path(path).expanduser()
        name = path.name.lower()
        suffix = next((s for s in EXPORT_SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            raise InputError(f"{path}: choose a name ending in one of {', '.join(EXPORT_SUFFIXES)}.")
        label = self._label_on_screen()
        labels = self.case_labels
        if suffix == ".seg.nrrd":
            in_value_order = dict(sorted(labels.items(), key=lambda kv: kv[1]))
            return imageio.write_seg_nrrd(label, path, in_value_order, self.label_colors(),
                                          self.metadata.get("terminology"))
        if suffix == ".dcm":
            from crossdomainseg.dicom_seg import Provenance, write_dicom_seg

            provenance = Provenance(self.outcome.model_version, clicks=len(self.clicks),
                                    corrected=bool(self.clicks) or bool(self.session.locked.any()))
            return write_dicom_seg(label, self._dicom_source_files(), path, labels,
                                   provenance, self.metadata.get("terminology"),
                                   self.metadata.get("colors"))
        return imageio.write_image(sitk.Cast(label, sitk.sitkUInt8 if label_max(label) < 256
                                             else sitk.sitkUInt16), path)

    def _label_on_screen(self) -> sitk.Image:
        """The segmentation node's content now, with its hand edits locked into the session."""
        self.lock_from_segmentation()
        label = sitk.GetImageFromArray(self._screen_label())
        label.CopyInformation(self.session.image)
        return label

    # -- loading volumes (front ends without Slicer's own loaders) -------------------------------
    def load_volume(self, path, name: str | None = None):
        """Read an image file or DICOM series folder into a new volume node (remembers the
        source, which decides whether DICOM SEG export is offered)."""
        from crossdomainseg import imageio

        path = Path(path).expanduser()
        image = imageio.read_image(path)
        node = nodes.add_volume_node(self.scene, image, name or _stem(path))
        node.SetAttribute("CrossDomainSeg.source", str(path.resolve()))
        return node

    # -- PACS (DICOMweb) -------------------------------------------------------------------------
    def load_from_pacs(self, series_url: str, user: str | None = None, password: str | None = None,
                       name: str | None = None):
        """Pull a series from a DICOMweb PACS (dicomweb://HOST:PORT/PATH/studies/S/series/R) into
        the workspace and load it as a new volume node; `export_to_pacs` stores the SEG back."""
        import tempfile

        from crossdomainseg.pacs.client import connect, parse_url, pull_series

        address = parse_url(series_url)
        (self.workspace / "pacs").mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="series-", dir=self.workspace / "pacs"))
        pull_series(connect(address.url, user, password), address, folder)
        node = self.load_volume(folder, name or f"PACS series {address.series}")
        node.SetAttribute("CrossDomainSeg.pacs", series_url)
        self._pacs_login = (user, password)
        return node

    def export_to_pacs(self) -> Path:
        """Write what the segmentation shows as a DICOM SEG (see `export`) and store it on the PACS
        the volume was pulled from; returns the SEG file kept in the workspace."""
        from crossdomainseg.pacs.client import connect, parse_url, push

        self._require_clicks()
        series_url = self.volume_node.GetAttribute("CrossDomainSeg.pacs")
        if not series_url:
            raise InputError("This image was not opened from a PACS; export it to a file instead.")
        source = Path(self.volume_node.GetAttribute("CrossDomainSeg.source"))
        seg = self.export(source.parent / f"{source.name}-seg-{time.strftime('%Y%m%d-%H%M%S')}.dcm")
        push(connect(parse_url(series_url).url, *self._pacs_login), [seg])
        return seg

    def came_from_dicom(self, volume_node=None) -> bool:
        """Whether the volume was loaded from DICOM (so DICOM SEG export is possible)."""
        node = volume_node or self.volume_node
        if node is None:
            return False
        if node.GetAttribute("DICOM.instanceUIDs"):  # set by Slicer's DICOM loader
            return True
        source = Path(node.GetAttribute("CrossDomainSeg.source") or "")
        return bool(source.name) and (source.is_dir() or source.suffix.lower() == ".dcm")

    def _dicom_source_files(self) -> list[Path]:
        from crossdomainseg.dicom_seg import dicom_files

        if not self.came_from_dicom():
            raise InputError("DICOM SEG export needs an image loaded from DICOM; export this one "
                             "as .seg.nrrd or .nii.gz.")
        uids = (self.volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()
        if uids and self.dicom_file_for_instance is not None:
            return [Path(self.dicom_file_for_instance(uid)) for uid in uids]
        source = self.volume_node.GetAttribute("CrossDomainSeg.source")
        if not source:
            raise InputError("The DICOM files this volume came from are not known here; load the "
                             "series again (from its folder or the DICOM database) and export.")
        return dicom_files(source)

    # -- trainer ------------------------------------------------------------------------------
    @property
    def store_dir(self) -> Path | None:
        """Where the loaded model's task keeps its accepted cases (None before a model is loaded)."""
        return self.trainer.store_dir

    def trainer_status(self) -> dict:
        """The trainer process's state, "running", "progress" (0-1), "current_version",
        "versions" and "accepted_cases" (see TrainerControl.status)."""
        return self.trainer.status()

    def start_trainer(self, unlabelled_folder=None) -> dict:
        """Start background fine-tuning of the loaded model (its own low-priority process)."""
        if self.bundle_path is None:
            raise BundleError("Load a model bundle before starting the trainer.")
        return self.trainer.start(unlabelled_folder)

    def stop_trainer(self) -> dict:
        return self.trainer.stop()

    def rollback(self) -> str:
        """Make the previous model version current again; the next segmentation uses it."""
        if self.bundle_path is None:
            raise BundleError("Load a model bundle first.")
        return self.trainer.rollback()

    # -- case and scene life ------------------------------------------------------------------
    @property
    def has_case(self) -> bool:
        """Whether a result is on screen that clicks, Undo, Accept and Export can work on."""
        return self.session is not None

    def _clear_case(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self._watch = None
        self.volume_node = self.segmentation_node = self.preview_node = self.heatmap_node = None
        self.outcome = self.session = self.draft = None
        self.structures: dict[str, int] = {}  # the case's new structures, name -> label value
        self.armed_structure: str | None = None  # the next include point starts this structure
        self._click_job = None  # a click still running belongs to the case gone (finish_click says so)

    def _require_clicks(self) -> None:
        if self.session is None:
            raise InputError("Segment a volume first (a result restored from a saved scene or "
                             "closed with the scene has no click session: press Segment again).")
        if self._click_job is not None:
            raise InputError("The previous click is still being applied; try again when it is done.")

    def _on_scene_closing(self, caller, event) -> None:
        # the case's nodes and the point lists are about to be deleted: forget them first
        def forget():
            self.points.close()
            self._clear_case()

        self._guarded("Closing the case with the scene", forget)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _on_node_removed(self, caller, event, node) -> None:
        if node is not None:
            self._guarded("Handling a deleted node", lambda: self._forget_node(node))

    def _forget_node(self, node) -> None:
        """`node` left the scene: drop every reference to it (a kept one would be shown again)."""
        node_id = node.GetID()
        if any(node_id == points.GetID() for points in self.points.nodes(create=False)):
            self.points.close()  # a point list deleted: its clicks stay, new points make new lists
        if self.preview_node is not None and node_id == self.preview_node.GetID():
            self.preview_node = None  # the views show the input instead
        if self.heatmap_node is not None and node_id == self.heatmap_node.GetID():
            self.heatmap_node = None
        if self.session is not None and node_id in (self.volume_node.GetID(),
                                                    self.segmentation_node.GetID()):
            self._clear_case()
            self._report(f"'{node.GetName()}' was deleted: clicks, Undo, Accept and Export are off "
                         "until you press Segment again.")

    def close(self) -> None:
        """Stop observing the scene and its nodes (the trainer process, if running, keeps going)."""
        self._unobserve_scene()
        self.points.close()
        self._clear_case()


def weakly(method) -> Callable:
    """`method` called while its object lives, for VTK observers: a VTK object holds its observers
    strongly, so a bound method there would keep (or, collected in a cycle, half-clear) a Logic
    that its front end has dropped."""
    reference = weakref.WeakMethod(method)

    def observer(*args):
        bound = reference()
        if bound is not None:
            bound(*args)

    if hasattr(method, "CallDataType"):
        observer.CallDataType = method.CallDataType
    return observer


def _remove_observers(vtk_object, tags) -> None:
    for tag in tags:
        vtk_object.RemoveObserver(tag)


def _open_model(path: Path, workspace: Path, threads: int | None) -> tuple:
    """(registry folder, current version's metadata, engine) for the bundle or registry at
    `path`; a plain bundle is copied into a registry of `workspace` keyed by its task, version
    and weights, so a bundle rebuilt under the same version gets its own. No MRML: any thread."""
    from crossdomainseg.bundle import load_bundle
    from crossdomainseg.engine import Engine
    from crossdomainseg.registry import ModelRegistry

    if (path / "CURRENT").is_file():
        registry_dir = path
    else:
        metadata = load_bundle(path).metadata  # raises BundleError with the reason
        weights = hashlib.sha256(json.dumps(metadata["weights"], sort_keys=True).encode())
        registry_dir = workspace / "models" / safe_name(
            f"{metadata['task']}-{metadata['version']}-{weights.hexdigest()[:8]}")
        registry = ModelRegistry(registry_dir)
        if not registry.is_initialised():
            registry.init_from(path)
    current = load_bundle(ModelRegistry(registry_dir).current_path())
    # the engine follows each version's own segmenter input (raw image or synthetic preview);
    # a bundle without a generator still segments the raw image, just without a preview
    return registry_dir, current.metadata, Engine(registry_dir, threads=threads)


def _new_session(engine, image: sitk.Image, result):
    """A click session on the input grid, fed what the engine computed (pure numpy: any thread)."""
    from crossdomainseg.interactive import InteractiveSession
    from crossdomainseg.interactive.prompt_net import NETWORK_NAME, PromptRefiner
    from crossdomainseg.interactive.refiner import click_refiner

    structures = (PromptRefiner.from_bundle(engine.bundle, engine.device)
                  if engine.bundle.has_network(NETWORK_NAME) else None)
    return InteractiveSession.from_result(image, result, engine.bundle,
                                          click_refiner(engine.bundle, engine.device),
                                          structure_refiner=structures)


def _segmentations_logic(scene):
    import slicer

    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    return logic


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def label_max(image: sitk.Image) -> int:
    values = sitk.GetArrayViewFromImage(image)
    return int(values.max()) if values.size else 0


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
