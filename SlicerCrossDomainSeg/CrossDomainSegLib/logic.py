"""The clinician's workflow on an MRML scene, without Qt: the Slicer module and the web app share it.

`CrossDomainSegLogic(scene)` works on any `vtkMRMLScene`: the one of a running Slicer, of
trame-slicer's `SlicerApp`, or a bare scene from the slicer-core wheel (tests). It never touches
widgets or `slicer.app`; long work runs off the calling thread (`start_segment`) and reports
progress through a callback, and everything that changes MRML happens on the calling thread.

Coordinates: MRML speaks RAS, the engine LPS (both mm); points are converted here and nowhere else.
All nodes it makes live on the input volume's own grid.

API (stable; the web front end codes against it):
    logic = CrossDomainSegLogic(scene, segmentations_logic=None, workspace=None, threads=None)
    logic.load_bundle(path) -> metadata        bundle or registry folder; label_names()
    logic.load_volume(path) -> volume node     file or DICOM folder (Slicer has its own loaders)
    logic.segment(volume_node, progress=None) -> SegmentOutcome
        or job = logic.start_segment(volume_node, progress); job.fraction/.message/.done/.cancel();
        logic.finish(job) -> SegmentOutcome (on the scene's thread)
    logic.show_layers(synthetic=False, heatmap=True, heatmap_opacity=None); set_heatmap_opacity(x)
    logic.click_nodes() -> (include, exclude) markups nodes; a placed point refines at once
        (logic.active_label names the segment; logic.on_error(message) hears rejected points)
    logic.add_click(ras_point, positive, segment_name) -> {"changed_voxels", "seconds"}
    logic.undo() / logic.redo() -> bool;  logic.lock_from_segmentation() -> locked voxel count
    logic.accept() -> case id;  logic.export(path) -> path (.seg.nrrd, .nii.gz, .nii, .nrrd, .dcm)
    logic.trainer_status() -> dict; start_trainer(unlabelled_folder=None); stop_trainer(); rollback()
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import vtk

from crossdomainseg.errors import BundleError, InputError

# torch and MONAI are imported only when a model is loaded: the Slicer module must open (and offer
# to install them) in a Slicer that does not have them yet.
from . import nodes
from .trainer import TrainerControl, safe_name

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

INCLUDE_NODE_NAME = "CrossDomainSeg include"
EXCLUDE_NODE_NAME = "CrossDomainSeg exclude"
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


@dataclass
class Click:
    point_lps: tuple[float, float, float]
    positive: bool
    label: str
    markups_id: str = ""  # control point ID in its markups node, to remove it on undo

    def to_dict(self) -> dict:
        return {"point": list(self.point_lps), "positive": self.positive, "label": self.label}


HAND_EDIT = "hand edit"  # an entry of the correction history that is not a click


class SegmentJob:
    """A segmentation running on a worker thread; poll `done`, then `CrossDomainSegLogic.finish`."""

    def __init__(self, volume_node, run: Callable, progress: Callable | None):
        self.volume_node = volume_node
        self.fraction = 0.0
        self.message = "starting"
        self.result = None
        self.error: BaseException | None = None
        self._progress = progress
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(run,), daemon=True,
                                        name="CrossDomainSeg segmentation")
        self._thread.start()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the engine to stop at its next stage; `finish` then raises SegmentationCancelled."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.done

    def report(self, fraction: float, message: str) -> None:
        self.fraction, self.message = float(fraction), str(message)
        if self._progress is not None:
            self._progress(self.fraction, self.message)

    def _work(self, run: Callable) -> None:
        try:
            self.result = run(self.report, self._cancel.is_set)
        except BaseException as error:  # handed over to the calling thread by `finish`
            self.error = error


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
        self.on_error: Callable[[str], None] | None = None  # errors of clicks placed in a view
        # DICOM instance UID -> file (Slicer: slicer.dicomDatabase.fileForInstance)
        self.dicom_file_for_instance: Callable[[str], str] | None = None
        self.last_error = ""
        self._clear_case()
        self._observations: list[tuple[object, int]] = []
        self._placing_from_logic = False

    # -- model -------------------------------------------------------------------------------
    def load_bundle(self, path) -> dict:
        """Use the model bundle (or model registry) at `path`; returns its metadata.

        A plain bundle is copied into a registry of this workspace on first use, so
        fine-tuned versions can be published and rolled back beside it; the engine follows the
        registry and picks up new versions on the next segmentation.
        """
        from crossdomainseg.bundle import load_bundle
        from crossdomainseg.engine import Engine
        from crossdomainseg.registry import ModelRegistry

        path = Path(path).expanduser()
        if (path / "CURRENT").is_file():
            registry_dir = path
        else:
            metadata = load_bundle(path).metadata  # raises BundleError with the reason
            # keyed by the weights too: a bundle rebuilt under the same version gets its own registry
            weights = hashlib.sha256(json.dumps(metadata["weights"], sort_keys=True).encode())
            registry_dir = self.workspace / "models" / safe_name(
                f"{metadata['task']}-{metadata['version']}-{weights.hexdigest()[:8]}")
            registry = ModelRegistry(registry_dir)
            if not registry.is_initialised():
                registry.init_from(path)
        current = load_bundle(ModelRegistry(registry_dir).current_path())
        self.metadata = dict(current.metadata)
        # the engine follows each version's own segmenter input (raw image or synthetic preview);
        # a bundle without a generator still segments the raw image, just without a preview
        self.engine = Engine(registry_dir, threads=self.threads)
        self.bundle_path = registry_dir
        self.trainer.registry_dir, self.trainer.task = registry_dir, self.metadata["task"]
        self.active_label = self.label_names()[0] if self.label_names() else None
        return self.metadata

    def label_names(self) -> list[str]:
        """Foreground label names of the loaded bundle, in label-value order."""
        labels = self.metadata.get("labels", {})
        return [n for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if int(v) != 0]

    def _require_engine(self):
        if self.engine is None:
            raise BundleError("No model loaded: pick a model bundle first.")
        return self.engine

    # -- segmentation ------------------------------------------------------------------------
    def start_segment(self, volume_node, progress: Callable | None = None) -> SegmentJob:
        """Start segmenting `volume_node` on a worker thread; returns the job to poll and cancel.

        `progress(fraction, message)` is called from the worker thread: a GUI must hand it over
        to its own thread rather than touch widgets there.
        """
        engine = self._require_engine()
        image = nodes.image_from_volume_node(volume_node)  # read MRML here, on the caller's thread

        def run(report, cancel):
            result = engine.segment(image, preview=True, uncertainty=True, progress=report,
                                    cancel=cancel)
            report(1.0, "preparing click correction")
            return result, _new_session(engine, image, result)  # also off the caller's thread

        return SegmentJob(volume_node, run, progress)

    def finish(self, job: SegmentJob) -> SegmentOutcome:
        """Put a finished job's results into the scene (call on the thread that owns the scene).
        Raises the job's error, or crossdomainseg.engine.SegmentationCancelled after `cancel`."""
        from crossdomainseg.engine import SegmentationCancelled

        job.wait()
        if job.error is not None:
            raise job.error
        if job.cancelled:
            raise SegmentationCancelled("segmentation cancelled")
        return self._show_result(job.volume_node, *job.result)

    def segment(self, volume_node, progress: Callable | None = None) -> SegmentOutcome:
        """Segment and wait: `start_segment` then `finish`."""
        return self.finish(self.start_segment(volume_node, progress))

    def _show_result(self, volume_node, result, session) -> SegmentOutcome:
        self._clear_case()
        for name in (INCLUDE_NODE_NAME, EXCLUDE_NODE_NAME):  # points of the previous case
            for node in _nodes_of(self.scene, "vtkMRMLMarkupsFiducialNode"):
                if node.GetName() == name:
                    node.RemoveAllControlPoints()
        self.volume_node = volume_node
        self.result = result
        self.session = session
        self.image = session.image
        self.metadata = dict(self.engine.bundle.metadata)  # the version that made this result
        base = volume_node.GetName()

        segmentation_node = self._node("vtkMRMLSegmentationNode", f"{base} segmentation")
        segmentation_node.CreateDefaultDisplayNodes()
        self.segmentation_node = segmentation_node
        self._write_label()
        segmentation = segmentation_node.GetSegmentation()
        self._segmentation_observer = (segmentation, [
            segmentation.AddObserver(event, self._on_segmentation_changed)
            for event in (segmentation.SegmentModified, segmentation.SegmentAdded,
                          segmentation.SegmentRemoved)])

        preview_node = None
        if result.preview is not None:
            preview_node = self._node("vtkMRMLScalarVolumeNode",
                                      f"{base} synthetic {self.metadata.get('output_modality', '')}".strip())
            nodes.update_volume_node(preview_node, sitk.Cast(result.preview, sitk.sitkFloat32))
            preview_node.CreateDefaultDisplayNodes()
            preview_node.GetDisplayNode().AutoWindowLevelOn()
        heatmap_node = None
        if result.uncertainty is not None:
            heatmap_node = self._node("vtkMRMLScalarVolumeNode", f"{base} uncertainty")
            nodes.update_volume_node(heatmap_node, sitk.Cast(result.uncertainty, sitk.sitkFloat32))
            self._style_heatmap(heatmap_node)
        self.preview_node, self.heatmap_node = preview_node, heatmap_node
        self.show_layers(synthetic=False)

        u = None if result.U is None else float(result.U)
        outcome = SegmentOutcome(segmentation_node, preview_node, heatmap_node, u,
                                 uncertainty_hint(u, self.metadata.get("uncertainty_hints"))
                                 if u is not None else "",
                                 getattr(result, "model_version", None),
                                 dict(getattr(result, "timings", {}) or {}))
        self.outcome = outcome
        return outcome

    def _node(self, class_name: str, name: str):
        """The node of that class and name made by an earlier run (reused), else a new one."""
        for node in _nodes_of(self.scene, class_name):
            if node.GetName() == name and node.GetClassName() == class_name:
                return node
        return self.scene.AddNewNodeByClass(class_name, name)

    def _style_heatmap(self, node) -> None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(self._heatmap_colors().GetID())
        values = _array(self.result.uncertainty)
        high = float(values.max()) if values.size and values.max() > 0 else 1.0
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, high)
        legend = _add_color_legend(node)
        if legend is not None:
            legend.SetVisibility(True)
            legend.SetTitleText("Uncertainty")
            legend.SetLabelFormat("%.2f")

    def _heatmap_colors(self):
        """Transparent where the model is sure, through yellow to red where it is not."""
        table = self._node("vtkMRMLColorTableNode", "CrossDomainSeg uncertainty")
        if table.GetNumberOfColors() != 256:
            table.SetTypeToUser()
            table.SetNumberOfColors(256)
            for i in range(256):
                t = i / 255.0
                table.SetColor(i, f"{t:.2f}", 1.0, 1.0 - 0.85 * t, 0.1 * (1 - t), min(1.0, 2 * t))
        return table

    # -- views ---------------------------------------------------------------------------------
    def show_layers(self, synthetic: bool = False, heatmap: bool = True,
                    heatmap_opacity: float | None = None) -> None:
        """Show the input (or its synthetic preview) with the heatmap over it in every slice view.

        All slice views change together, so the clinician flicks between real and synthetic on
        the same grid without losing their place.
        """
        background = self.preview_node if synthetic and self.preview_node else self.volume_node
        foreground = self.heatmap_node if heatmap else None
        for composite in _nodes_of(self.scene, "vtkMRMLSliceCompositeNode"):
            was_modifying = composite.StartModify()
            composite.SetBackgroundVolumeID(background.GetID() if background else None)
            composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
            if heatmap_opacity is not None:
                composite.SetForegroundOpacity(float(heatmap_opacity))
            elif foreground is not None and composite.GetForegroundOpacity() == 0.0:
                composite.SetForegroundOpacity(0.5)
            composite.EndModify(was_modifying)

    def set_heatmap_opacity(self, opacity: float) -> None:
        for composite in _nodes_of(self.scene, "vtkMRMLSliceCompositeNode"):
            composite.SetForegroundOpacity(float(np.clip(opacity, 0.0, 1.0)))

    # -- clicks --------------------------------------------------------------------------------
    def click_nodes(self):
        """The include and exclude point lists (made on first call); points placed in them
        refine the segmentation as soon as they are placed."""
        pair = []
        for name, color, positive in ((INCLUDE_NODE_NAME, (0.2, 0.9, 0.2), True),
                                      (EXCLUDE_NODE_NAME, (0.95, 0.2, 0.2), False)):
            node = self._node("vtkMRMLMarkupsFiducialNode", name)
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*color)
            node.GetDisplayNode().SetColor(*color)
            node.SetMarkupLabelFormat("+" if positive else "-")
            if not any(observed is node for observed, _ in self._observations):
                tag = node.AddObserver(node.PointPositionDefinedEvent,
                                       lambda caller, event, positive=positive:
                                       self._on_point_placed(caller, positive))
                self._observations.append((node, tag))
            pair.append(node)
        return tuple(pair)

    def _on_point_placed(self, markups_node, positive: bool) -> None:
        if self._placing_from_logic or self.segmentation_node is None:
            return
        index = markups_node.GetNumberOfControlPoints() - 1
        point_id = markups_node.GetNthControlPointID(index)
        try:
            self.add_click(markups_node.GetNthControlPointPositionWorld(index), positive,
                           self.active_label, markups_id=point_id)
        except InputError as error:  # observers cannot raise to the user: drop the point, report
            markups_node.RemoveNthControlPoint(index)
            self.last_error = str(error)
            if self.on_error is not None:
                self.on_error(str(error))

    def add_click(self, ras_point, positive: bool, segment_name: str | None = None,
                  markups_id: str = "") -> dict:
        """Refine around one click at `ras_point` (RAS mm): positive adds to `segment_name`,
        negative removes from it. Hand edits made since the last update are locked first.
        Returns {"changed_voxels", "seconds"}."""
        self._require_case()
        label = segment_name or self.active_label
        if label not in self.label_names():
            raise InputError(f"Unknown segment {label!r}: choose one of {', '.join(self.label_names())}.")
        started = time.perf_counter()
        self.lock_from_segmentation()
        result = self.session.add_click(nodes.ras_to_lps(ras_point), positive,
                                        int(self.metadata["labels"][label]))
        self._actions.append(Click(nodes.ras_to_lps(ras_point), bool(positive), label, markups_id))
        self._undone.clear()
        self._write_label()
        return {"changed_voxels": int(result.changed), "seconds": time.perf_counter() - started}

    @property
    def clicks(self) -> list[Click]:
        """The clicks in effect, oldest first (LPS mm)."""
        return [action for action in self._actions if isinstance(action, Click)]

    def undo(self) -> bool:
        """Take back the last correction, a click (its point disappears too) or a hand edit;
        False when there is none."""
        self._require_case()
        self.lock_from_segmentation()
        if not self._actions or self.session.undo() is None:
            return False
        action = self._actions.pop()
        self._undone.append(action)
        if isinstance(action, Click):
            self._remove_point(action)
        self._write_label()
        return True

    def redo(self) -> bool:
        """Apply again the last correction undone; False when there is none."""
        self._require_case()
        if not self._undone or self.session.redo() is None:
            return False
        action = self._undone.pop()
        if isinstance(action, Click):
            action.markups_id = self._restore_point(action)
        self._actions.append(action)
        self._write_label()
        return True

    def lock_from_segmentation(self) -> int:
        """Take in the user's hand edits (e.g. Segment Editor strokes) made since the logic last
        wrote the segmentation, and lock those voxels: clicks never change them again. Returns
        how many voxels are locked in all."""
        self._require_case()
        if not self._edited_by_hand:  # nothing but the logic wrote the segmentation since
            return int(self.session.locked.sum())
        current = self._current_label()
        self._edited_by_hand = False
        edited = current != self._written
        if edited.any():
            for value in np.unique(current[edited]):
                self.session.paint(edited & (current == value), int(value), lock=True)
                self._actions.append(HAND_EDIT)
            self._undone.clear()
            self._written = current
        return int(self.session.locked.sum())

    def _current_label(self) -> np.ndarray:
        label = nodes.label_from_segmentation_node(self.segmentation_node, self.volume_node,
                                                   self.metadata["labels"], self.segmentations_logic)
        return _array(label).astype(np.uint16)

    def _write_label(self) -> None:
        """Put the session's label into the segmentation node (when it changed)."""
        new = np.asarray(self.session.label).astype(np.uint16)
        only = None
        if self._written is not None:
            changed = new != self._written
            values = set(np.unique(new[changed]).tolist()) | set(np.unique(self._written[changed]).tolist())
            only = {name for name, value in self.metadata["labels"].items()
                    if value in values and value != 0}
        if only is None or only:
            self._writing = True
            try:
                nodes.fill_segmentation_node(self.segmentation_node, self._like(new),
                                             self.metadata["labels"], self.metadata.get("colors", {}),
                                             self.segmentations_logic, self.volume_node, only)
            finally:
                self._writing = False
        self._written = new

    def _on_segmentation_changed(self, caller, event) -> None:
        if not self._writing:
            self._edited_by_hand = True

    def _remove_point(self, click: Click) -> None:
        for node in self.click_nodes():
            index = node.GetNthControlPointIndexByID(click.markups_id) if click.markups_id else -1
            if index >= 0:
                node.RemoveNthControlPoint(index)

    def _restore_point(self, click: Click) -> str:
        node = self.click_nodes()[0 if click.positive else 1]
        self._placing_from_logic = True
        try:
            index = node.AddControlPoint(vtk.vtkVector3d(*nodes.lps_to_ras(click.point_lps)))
        finally:
            self._placing_from_logic = False
        return node.GetNthControlPointID(index)

    # -- accept and export ---------------------------------------------------------------------
    def accept(self) -> str:
        """Store the corrected case (image, label, clicks, model version) in the accepted-case
        store the trainer learns from; returns the case id."""
        from crossdomainseg.store import AcceptedCaseStore

        self._require_case()
        self.lock_from_segmentation()
        label = self._like(self._written)
        store = AcceptedCaseStore(self.store_dir)
        case_id = store.accept(
            self.image, label, clicks=[c.to_dict() for c in self.clicks],
            model_version=self.outcome.model_version,
            meta={"volume": self.volume_node.GetName(), "task": self.metadata.get("task"),
                  "U": self.outcome.U, "locked_voxels": int(self.session.locked.sum()),
                  "source": self.volume_node.GetAttribute("CrossDomainSeg.source") or ""})
        return case_id  # a running trainer reads new cases from the store at its next epoch

    def export(self, path) -> Path:
        """Write the current label map on the input's grid: .seg.nrrd (with the segment names and
        colours), .nii.gz/.nii/.nrrd (label values), or .dcm (DICOM SEG referencing the source
        series; only for an input loaded from DICOM). Returns the path written."""
        from crossdomainseg import imageio

        self._require_case()
        path = Path(path).expanduser()
        name = path.name.lower()
        suffix = next((s for s in EXPORT_SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            raise InputError(f"{path}: choose a name ending in one of {', '.join(EXPORT_SUFFIXES)}.")
        self.lock_from_segmentation()
        label = self._like(self._written)
        if suffix == ".seg.nrrd":
            in_value_order = dict(sorted(self.metadata["labels"].items(), key=lambda kv: kv[1]))
            return imageio.write_seg_nrrd(label, path, in_value_order, self.metadata.get("colors", {}))
        if suffix == ".dcm":
            from .dicom_seg import write_dicom_seg

            algorithm = f"CrossDomainSeg {self.metadata.get('task')} {self.outcome.model_version}"
            return write_dicom_seg(label, self._dicom_source_files(), path, self.metadata["labels"],
                                   self.metadata.get("colors", {}), algorithm,
                                   manual_edits=bool(self._actions))
        return imageio.write_image(sitk.Cast(label, sitk.sitkUInt8 if label_max(label) < 256
                                             else sitk.sitkUInt16), path)

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
        from .dicom_seg import dicom_files

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

    # -- internals ----------------------------------------------------------------------------
    def _clear_case(self) -> None:
        if getattr(self, "_segmentation_observer", None):
            segmentation, tags = self._segmentation_observer
            for tag in tags:
                segmentation.RemoveObserver(tag)
        self._segmentation_observer = None
        self._writing = self._edited_by_hand = False
        self.volume_node = self.segmentation_node = self.preview_node = self.heatmap_node = None
        self.result = self.image = self.outcome = None
        self.session = None
        self._actions: list = []  # Click or HAND_EDIT, mirroring the session's history
        self._undone: list = []
        self._written = None  # the label the logic last put into the segmentation node

    def _require_case(self) -> None:
        if self.segmentation_node is None:
            raise InputError("Segment a volume first.")

    def _like(self, array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(self.image)
        return image

    def close(self) -> None:
        """Stop observing the scene's nodes (the trainer process, if running, keeps going)."""
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations.clear()
        self._clear_case()


def _new_session(engine, image: sitk.Image, result):
    """A click session on the input grid, fed what the engine computed (pure numpy: any thread)."""
    from crossdomainseg.interactive import InteractiveSession
    from crossdomainseg.interactive.refiner import click_refiner

    bundle = engine.bundle
    features = bundle.normalize(_array(image).astype(np.float32), "target")
    preview = None
    if result.preview is not None:
        preview = bundle.normalize(_array(result.preview).astype(np.float32), "source")
    return InteractiveSession(image, result.label, probabilities=result.probabilities,
                              image_features=features, preview=preview,
                              refiner=click_refiner(bundle, engine.device),
                              label_values=[int(v) for v in result.labels.values()])


def _segmentations_logic(scene):
    import slicer

    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    return logic


def _add_color_legend(node):
    try:
        from slicer import vtkSlicerColorLogic
    except ImportError:
        return None
    return vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(node)


def _nodes_of(scene, class_name: str) -> list:
    return [scene.GetNthNodeByClass(i, class_name)
            for i in range(scene.GetNumberOfNodesByClass(class_name))]


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
