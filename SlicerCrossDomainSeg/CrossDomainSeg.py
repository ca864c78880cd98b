"""Cross-Domain Segmentation: segment a modality the model has no labels for, see the synthetic
preview and the uncertainty, correct with clicks, accept, export, and fine-tune in the background.

The Module, Widget, Logic and Test classes of a Slicer scripted module. All the work is done by
CrossDomainSegLib.logic (Qt-free, shared with the web app); this file holds the GUI around it.
"""

import logging
import os
import sys
import tempfile
from pathlib import Path

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent
# A built extension has the bundles in the module's own Resources folder (see CMakeLists.txt);
# a source checkout keeps them in the repository's Resources folder, the engine's default.
if (MODULE_DIR / "Resources" / "bundles").is_dir():
    os.environ.setdefault("CROSSDOMAINSEG_RESOURCES", str(MODULE_DIR / "Resources"))

JOB_POLL_MS = 100
SEGMENT_EDITOR_TAG = "SegmentEditor"  # singleton tag of the Segment Editor module's parameter node

#
# CrossDomainSeg
#


class CrossDomainSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Cross-Domain Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "Markups"]
        self.parent.contributors = ["SlicerCrossDomainSeg developers (SlicerCrossDomainSeg project)"]
        self.parent.helpText = """
Segment images of a modality that has no labelled training data (e.g. X-ray or MR) with a model
trained on another modality (e.g. CT). Shows the synthetic-modality preview the model sees, an
uncertainty heatmap with a per-image uncertainty U, corrects the result with include/exclude
clicks, and fine-tunes the model in the background on the cases you accept.
Edits made with any Segment Editor effect are kept: clicks never change painted or erased voxels,
and Accept and Export take what the segmentation shows. Accepted cases (the image and its label)
are stored on this computer, in the folder shown under "Accept and export".
See <a href="https://github.com/SlicerCrossDomainSeg/SlicerCrossDomainSeg">the documentation</a>.
"""
        self.parent.acknowledgementText = """
Method after US patent 12,394,185 B2 (uncertainty-guided cross-domain curriculum) and click
correction after MONAI DeepEdit/DeepGrow and nnInteractive. Built on 3D Slicer, MONAI and PyTorch.
"""


#
# Parameter node: the GUI state, saved with the scene
#


@parameterNodeWrapper
class CrossDomainSegParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    bundlePath: str
    segmentation: slicer.vtkMRMLSegmentationNode
    preview: slicer.vtkMRMLScalarVolumeNode
    heatmap: slicer.vtkMRMLScalarVolumeNode
    showSynthetic: bool = False
    showHeatmap: bool = True
    heatmapOpacity: float = 0.5
    activeSegment: str
    uncertainty: float = -1.0  # per-image U of the last result; negative: none yet
    hint: str


#
# CrossDomainSegWidget
#


class CrossDomainSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module's panel. Long work (segmentation, clicks, package installs) runs on the Logic's
    worker threads; a QTimer polls each job here, on the GUI thread, so Slicer stays responsive."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # the running segmentation or install
        self._jobDone = None  # what to do on the GUI thread when it ends
        self._clickJobs = []  # (job, finish) of clicks being refined
        self._loadedBundle = None
        self._jobTimer = None
        self._trainerTimer = None
        self._stopJob = None  # the trainer being stopped
        self._segmentNames = []  # what the segment selector lists

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CrossDomainSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CrossDomainSegLogic()
        core = self.logic.core
        core.on_error = self.onLogicError
        core.run_job = self.runClickJob
        core.save_state_for_undo = self.saveStateForUndo

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneRestored)

        self._fillBundleSelector()
        self.ui.bundleSelector.connect("currentIndexChanged(int)", self.onBundleSelected)
        self.ui.bundlePathEdit.connect("currentPathChanged(QString)", self.onBundlePathChanged)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.showSyntheticCheckBox.connect("toggled(bool)", lambda _: self.updateViews())
        self.ui.showHeatmapCheckBox.connect("toggled(bool)", lambda _: self.updateViews())
        self.ui.heatmapOpacitySlider.connect("valueChanged(double)", core.set_heatmap_opacity)
        self.ui.legendCheckBox.connect("toggled(bool)", self.onLegendToggled)
        self.ui.segmentSelector.connect("currentTextChanged(QString)", self.onActiveSegmentChanged)
        self.ui.newStructureButton.connect("clicked(bool)", self.onNewStructure)
        self.ui.newStructureFromRoiButton.connect("clicked(bool)", self.onNewStructureFromRoi)
        self.ui.undoButton.connect("clicked(bool)", lambda: self._try(core.undo) and self._showSegmentNames())
        self.ui.redoButton.connect("clicked(bool)", lambda: self._try(core.redo) and self._showSegmentNames())
        self.ui.lockButton.connect("clicked(bool)", self.onLockHandEdits)
        self.ui.editByHandButton.connect("clicked(bool)", self.onEditByHand)
        self.ui.acceptButton.connect("clicked(bool)", self.onAccept)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.startTrainerButton.connect("clicked(bool)", self.onStartTrainer)
        self.ui.stopTrainerButton.connect("clicked(bool)", self.onStopTrainer)
        self.ui.rollbackButton.connect("clicked(bool)", self.onRollback)
        self.ui.cancelButton.enabled = False
        self.ui.segmentProgressBar.hide()

        self._jobTimer = qt.QTimer()
        self._jobTimer.setInterval(JOB_POLL_MS)
        self._jobTimer.connect("timeout()", self.onPollJobs)
        self._trainerTimer = qt.QTimer()
        self._trainerTimer.setInterval(2000)
        self._trainerTimer.connect("timeout()", self.updateTrainerPanel)

        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()
        for timer in (self._jobTimer, self._trainerTimer):
            if timer:
                timer.stop()
        if self._job:
            self._job.cancel()
        if self.logic:
            self.logic.core.close()

    def enter(self):
        self.initializeParameterNode()
        self._trainerTimer.start()
        if self.logic.core.has_case and not self._clickJobs:
            # take in what was done in the Segment Editor meanwhile (strokes are locked; an Undo
            # there of a click takes the click and its point out here too)
            self._try(self.logic.core.lock_from_segmentation)

    def exit(self):
        self._trainerTimer.stop()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    # -- scene life -------------------------------------------------------------------------------
    def onSceneStartClose(self, caller, event):
        # the Logic forgets the case itself (it observes the scene); a segmentation still running
        # would put its result into a scene that no longer has its volume
        if self._job:
            self._job.cancel()
        self._clickJobs.clear()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()
        self.ui.clickStatusLabel.text = ""
        self._updateButtons()

    def onSceneRestored(self, caller, event):
        """A saved scene brings back the result's nodes but no click session: say so."""
        if not self._parameterNode:
            self.initializeParameterNode()
        if self._parameterNode.segmentation and not self.logic.core.has_case:
            self.ui.clickStatusLabel.text = (
                "This result was restored from a saved scene: clicks, Undo, Accept and Export are "
                "off until you press Segment again (what you painted by hand stays in the "
                "segmentation; choose it as Output segmentation to keep its other segments).")
        self._updateButtons()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._showBundleChoice(self._parameterNode.bundlePath)
            self._showOutcomeTexts()
        self._updateButtons()

    # -- model bundle ---------------------------------------------------------------------------
    def _fillBundleSelector(self):
        from crossdomainseg.resources import shipped_bundles

        self.ui.bundleSelector.clear()
        for name, path in shipped_bundles().items():
            self.ui.bundleSelector.addItem(name, str(path))
        self.ui.bundleSelector.addItem("Other folder...", "")

    def _showBundleChoice(self, path):
        """Select `path` (from a saved scene) in the bundle selector or the folder field."""
        index = self.ui.bundleSelector.findData(path) if path else -1
        if index < 0 and path:
            index = self.ui.bundleSelector.count - 1  # "Other folder..."
            self.ui.bundlePathEdit.currentPath = path
        if index >= 0:
            self.ui.bundleSelector.currentIndex = index
        self.ui.bundlePathEdit.setVisible(not self._selectedBundlePath() or
                                          self.ui.bundleSelector.currentIndex == self.ui.bundleSelector.count - 1)

    def _selectedBundlePath(self):
        shipped = self.ui.bundleSelector.itemData(self.ui.bundleSelector.currentIndex)
        return shipped or self.ui.bundlePathEdit.currentPath

    def onBundleSelected(self, index):
        path = self.ui.bundleSelector.itemData(index)
        self.ui.bundlePathEdit.setVisible(not path)
        if path and self._parameterNode:
            self._parameterNode.bundlePath = path
            self._withDependencies(lambda: self._loadBundle(path))

    def onBundlePathChanged(self, path):
        if path and Path(path).is_dir() and self._parameterNode:
            self._parameterNode.bundlePath = path
            self._withDependencies(lambda: self._loadBundle(path))

    def _loadBundle(self, path, then=None):
        """Open the model on a worker thread (importing torch and reading the weights take
        seconds), then fill the panel and call `then`."""
        if self._job is not None:
            slicer.util.errorDisplay("Wait for the running job to finish (or cancel it) first.")
            return
        core = self.logic.core

        def loaded(job):
            metadata = core.finish_load_bundle(job)
            self._loadedBundle = path
            self.ui.bundleInfoLabel.text = (
                f"{metadata['task']} (version {metadata['version']}): "
                f"{metadata['input_modality']} -> {metadata['output_modality']}")
            self._showSegmentNames()
            self.ui.storageLabel.text = (
                f"Accepted cases (image and label, patient data) are stored on this computer in "
                f"{core.store_dir}; model versions in {core.bundle_path}. "
                "Set CROSSDOMAINSEG_HOME before starting Slicer to store them elsewhere.")
            self.updateTrainerPanel()
            if then is not None:
                then()

        self._startJob(core.start_load_bundle(path), loaded, "loading the model")

    # -- packages ---------------------------------------------------------------------------------
    def _withDependencies(self, then):
        """Call `then` now if the engine's packages are installed; else offer to install them in
        the background (Slicer stays usable) and call it once they are."""
        from CrossDomainSegLib import dependencies

        missing = dependencies.missing()
        if not missing:
            then()
            return
        if self._job is not None:
            slicer.util.errorDisplay("Wait for the running job to finish (or cancel it) first.")
            return
        if not slicer.util.confirmOkCancelDisplay(
                "Cross-Domain Segmentation needs these Python packages: "
                f"{dependencies.describe(missing)}. Install them now, in the background? (This "
                "can take several minutes; torch is picked for this computer's GPU.)"):
            return

        def installed(job):
            job.outcome()  # raises the installer's error
            dependencies.check_installed(missing)
            slicer.util.showStatusMessage("Python packages installed.", 5000)
            then()

        self._startJob(dependencies.start_install(missing), installed, "installing packages")

    # -- jobs ---------------------------------------------------------------------------------------
    def _startJob(self, job, whenDone, message):
        self._job, self._jobDone = job, whenDone
        self.ui.segmentProgressBar.value = 0
        self.ui.segmentProgressBar.format = f"{message}..."
        self.ui.segmentProgressBar.show()
        self.ui.cancelButton.enabled = True
        self._updateButtons()
        self._jobTimer.start()

    def runClickJob(self, job, finish):
        """The Logic's hook for clicks: poll the click's job here, finish it on the GUI thread."""
        self._clickJobs.append((job, finish))
        self.ui.clickStatusLabel.text = "Refining..."
        self._updateButtons()
        self._jobTimer.start()

    def onPollJobs(self):
        """Runs on the GUI thread: mirrors the worker's progress, then hands over its result."""
        for job, finish in [pair for pair in self._clickJobs if pair[0].done]:
            self._clickJobs.remove((job, finish))
            change = self._try(finish, job)
            if change is not None:
                self.ui.clickStatusLabel.text = (
                    f"{change['changed_voxels']} voxels changed in {change['seconds']:.2f} s.")
                self._showSegmentNames()  # a click may have started a new structure
            self._updateButtons()
        job = self._job
        if job is not None:
            self.ui.segmentProgressBar.value = int(100 * job.fraction)
            self.ui.segmentProgressBar.format = f"{job.message[:80]} (%p%)"
            if job.done:
                self._job, whenDone = None, self._jobDone
                self.ui.segmentProgressBar.hide()
                self.ui.cancelButton.enabled = False
                if job.cancelled:
                    slicer.util.showStatusMessage("Cancelled.", 3000)
                else:
                    self._try(whenDone, job)
                self._updateButtons()
        if self._job is None and not self._clickJobs:
            self._jobTimer.stop()

    def onCancel(self):
        if self._job:
            self._job.cancel()
            self.ui.segmentProgressBar.format = "cancelling..."

    # -- segment ----------------------------------------------------------------------------------
    def onSegment(self):
        self._withDependencies(self._segment)

    def _segment(self):
        path = self._selectedBundlePath()
        if path != self._loadedBundle:
            self._loadBundle(path, then=self._segment)
            return
        node = self._parameterNode
        job = self._try(self.logic.core.start_segment, node.inputVolume, None, node.outputSegmentation)
        if job is not None:
            self._startJob(job, self._showOutcome, "segmenting")

    def _showOutcome(self, job):
        outcome = self.logic.core.finish(job)
        node = self._parameterNode
        node.segmentation = outcome.segmentation_node
        node.outputSegmentation = outcome.segmentation_node
        node.preview = outcome.preview_node
        node.heatmap = outcome.heatmap_node
        node.uncertainty = outcome.U if outcome.U is not None else -1.0
        node.hint = outcome.hint
        self.ui.clickStatusLabel.text = ""
        self._showOutcomeTexts()
        self._showSegmentNames()  # the last case's new structures are gone
        self._setupClickWidgets()
        self.updateViews()

    def _showOutcomeTexts(self):
        u = self._parameterNode.uncertainty
        self.ui.uncertaintyValueLabel.text = f"U = {u:.3f}" if u is not None and u >= 0 else "-"
        self.ui.hintLabel.text = self._parameterNode.hint or ""

    # -- views ------------------------------------------------------------------------------------
    def updateViews(self):
        if not self.logic.core.has_case:
            return
        self.logic.core.show_layers(synthetic=self.ui.showSyntheticCheckBox.checked,
                                    heatmap=self.ui.showHeatmapCheckBox.checked,
                                    heatmap_opacity=self.ui.heatmapOpacitySlider.value)

    def onLegendToggled(self, visible):
        heatmap = self._parameterNode.heatmap
        legend = slicer.modules.colors.logic().GetColorLegendDisplayNode(heatmap) if heatmap else None
        if legend:
            legend.SetVisibility(visible)

    # -- clicks -----------------------------------------------------------------------------------
    def _setupClickWidgets(self):
        include, exclude = self.logic.core.click_nodes()
        for widget, node in ((self.ui.includePlaceWidget, include), (self.ui.excludePlaceWidget, exclude)):
            widget.setMRMLScene(slicer.mrmlScene)
            widget.setCurrentNode(node)
            widget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.onActiveSegmentChanged(self.ui.segmentSelector.currentText)

    def onActiveSegmentChanged(self, name):
        if name:
            self.logic.core.active_label = name
            if self._parameterNode:
                self._parameterNode.activeSegment = name

    def onNewStructure(self):
        """"From a click": the next include point starts a new segment (a structure the model has
        no label for), named as typed (default "Structure N")."""
        name = self._try(self.logic.core.arm_new_structure, self.ui.structureNameEdit.text)
        if name:
            self.ui.clickStatusLabel.text = f"Place an include point on the structure: it becomes segment '{name}'."
            self.ui.includePlaceWidget.setPlaceModeEnabled(True)

    def onNewStructureFromRoi(self):
        """"From the ROI": a new segment outlined inside the ROI picked beside the button."""
        roi = self.ui.structureRoiSelector.currentNode()
        if roi is None:
            slicer.util.errorDisplay("Place an ROI around the structure (Markups, ROI) and pick it here.")
            return
        outcome = self._try(self.logic.core.new_structure_from_roi, roi, self.ui.structureNameEdit.text)
        if outcome:
            self.ui.clickStatusLabel.text = (f"Segment '{outcome['segment']}': {outcome['changed_voxels']} "
                                             f"voxels in {outcome['seconds']:.2f} s.")
            self._showSegmentNames()

    def _showSegmentNames(self):
        """The segment selector lists the case's segments (new structures included), the active one
        selected."""
        core = self.logic.core
        names = core.label_names()
        if names != self._segmentNames:
            active = core.active_label
            self._segmentNames = names
            self.ui.segmentSelector.clear()
            for name in names:
                self.ui.segmentSelector.addItem(name)
            core.active_label = active
        self.ui.segmentSelector.setCurrentText(core.active_label or "")

    def onLockHandEdits(self):
        locked = self._try(self.logic.core.lock_from_segmentation)
        if locked is not None:
            self.ui.clickStatusLabel.text = f"{locked} voxels locked (edited by hand)."

    def onEditByHand(self):
        """Open the Segment Editor on this result; its strokes are locked at the next click."""
        core = self.logic.core
        slicer.util.selectModule("SegmentEditor")
        editor = _segmentEditor()
        editor.setSegmentationNode(core.segmentation_node)
        editor.setSourceVolumeNode(core.volume_node)
        if core.active_label:
            editor.setCurrentSegmentID(core.active_label)

    def saveStateForUndo(self, segmentationNode):
        """The Logic's hook before it writes into a segmentation: when the Segment Editor is
        editing that segmentation, its undo history gets the state, so Ctrl+Z there takes back a
        click (or this module's Undo) exactly as a stroke, and the Logic follows the restore."""
        editorNode = slicer.mrmlScene.GetSingletonNode(SEGMENT_EDITOR_TAG, "vtkMRMLSegmentEditorNode")
        if editorNode is None or segmentationNode is None:
            return  # the Segment Editor was never opened in this scene: it has no history
        edited = editorNode.GetSegmentationNode()
        if edited is not None and edited.GetID() == segmentationNode.GetID():
            _segmentEditor().saveStateForUndo()

    def onLogicError(self, message):
        """What went wrong in one of the Logic's observers (a point placed, moved or deleted; a
        result's node deleted)."""
        self.ui.clickStatusLabel.text = message
        self._updateButtons()
        slicer.util.errorDisplay(message)

    # -- accept, export ---------------------------------------------------------------------------
    def onAccept(self):
        """Store the case as shown and say where it went (it stays shown under the clicks)."""
        core = self.logic.core
        case_id = self._try(core.accept)
        if case_id:
            message = (f"Accepted as case {case_id}: its image and label (patient data) are stored "
                       f"on this computer in {core.case_folder(case_id)} for fine-tuning.")
            self.ui.clickStatusLabel.text = message
            slicer.util.showStatusMessage(message, 8000)
            self.updateTrainerPanel()

    def onExport(self):
        filters = "Slicer segmentation (*.seg.nrrd);;NIfTI label map (*.nii.gz);;NRRD label map (*.nrrd)"
        if self.logic.core.came_from_dicom():
            filters += ";;DICOM SEG (*.dcm)"
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export label map", "", filters)
        if path:
            written = self._try(self.logic.core.export, path)
            if written:
                slicer.util.showStatusMessage(f"Exported {written}", 5000)

    # -- trainer ----------------------------------------------------------------------------------
    def onStartTrainer(self):
        folder = self.ui.unlabelledFolderEdit.currentPath or None
        self._try(self.logic.core.start_trainer, folder)
        self.updateTrainerPanel()

    def onStopTrainer(self):
        """The trainer finishes its current step first: wait for that on a worker thread; the
        trainer panel's timer shows the outcome (an error too) when it is done."""
        from CrossDomainSegLib.jobs import Job

        self.ui.stopTrainerButton.enabled = False
        self.ui.trainerStateLabel.text = "stopping after the current step..."
        core = self.logic.core
        self._stopJob = Job(lambda report, cancelled: core.stop_trainer(), name="CrossDomainSeg stop")

    def onRollback(self):
        if slicer.util.confirmOkCancelDisplay("Make the previous model version current again?"):
            version = self._try(self.logic.core.rollback)
            if version:
                slicer.util.showStatusMessage(f"Model {version} is current; segment again to use it.", 5000)
        self.updateTrainerPanel()

    def updateTrainerPanel(self):
        if self._stopJob is not None and self._stopJob.done:
            job, self._stopJob = self._stopJob, None
            self._try(job.outcome)  # shows why stopping failed
        status = self._try(self.logic.core.trainer_status)
        if not status:
            return
        running = bool(status.get("running"))
        self.ui.trainerStateLabel.text = (
            f"{status['state']}; {status['accepted_cases']} accepted case(s)"
            + (f"; epoch {status['epoch']}" if status.get("epoch") is not None else "")
            + (f"; {status['message']}" if status.get("message") else ""))
        self.ui.trainerProgressBar.value = int(100 * status.get("progress", 0.0))
        versions = status.get("versions") or []
        self.ui.modelVersionsLabel.text = (
            f"current {status['current_version']} of {', '.join(versions)}" if versions else "-")
        self.ui.startTrainerButton.enabled = not running and self.logic.core.engine is not None
        self.ui.stopTrainerButton.enabled = running
        self.ui.rollbackButton.enabled = len(versions) > 1

    # -- helpers ----------------------------------------------------------------------------------
    def _updateButtons(self, caller=None, event=None):
        core = self.logic.core
        ready = bool(self._parameterNode and self._parameterNode.inputVolume and self._selectedBundlePath())
        self.ui.segmentButton.enabled = ready and self._job is None
        self.ui.segmentButton.toolTip = "Segment the input volume" if ready else \
            "Select an input volume and a model bundle"
        # a case that was closed with the scene, deleted, or restored from a file has no session
        editable = core.has_case and not self._clickJobs
        for widget in (self.ui.undoButton, self.ui.redoButton, self.ui.lockButton, self.ui.editByHandButton,
                       self.ui.acceptButton, self.ui.exportButton, self.ui.includePlaceWidget,
                       self.ui.excludePlaceWidget, self.ui.newStructureButton, self.ui.newStructureFromRoiButton):
            widget.enabled = editable

    def _try(self, function, *args):
        """Run `function`; show an InputError's message as it is, anything else with details."""
        from crossdomainseg.errors import InputError

        try:
            return function(*args)
        except InputError as error:
            slicer.util.errorDisplay(str(error))
        except Exception as error:
            logging.exception("CrossDomainSeg failed")
            slicer.util.errorDisplay(f"Failed: {error}", detailedText=repr(error))
        return None


#
# CrossDomainSegLogic
#


class CrossDomainSegLogic(ScriptedLoadableModuleLogic):
    """The module's logic for Slicer's module machinery; the work is done by `self.core`
    (CrossDomainSegLib.logic.CrossDomainSegLogic) on `slicer.mrmlScene`."""

    def __init__(self, workspace=None):
        ScriptedLoadableModuleLogic.__init__(self)
        _addModulePath()
        from CrossDomainSegLib.logic import CrossDomainSegLogic as Core

        self.core = Core(slicer.mrmlScene, slicer.modules.segmentations.logic(), workspace)
        if getattr(slicer, "dicomDatabase", None) is not None:
            self.core.dicom_file_for_instance = slicer.dicomDatabase.fileForInstance

    def getParameterNode(self):
        return CrossDomainSegParameterNode(super().getParameterNode())


def _segmentEditor():
    """The Segment Editor module's qMRMLSegmentEditorWidget."""
    return slicer.modules.segmenteditor.widgetRepresentation().self().editor


def _addModulePath():
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))


#
# CrossDomainSegTest
#


class CrossDomainSegTest(ScriptedLoadableModuleTest):
    """The workflow inside Slicer, through the module's Logic, on what the extension ships (the
    phantom-ct-mr demo case and model bundle; nothing from the repository's test suite): segment,
    preview and heatmap on the input grid, the label equal to the engine's own, a click placed in
    RAS, undo and redo, a Segment Editor stroke kept through a click, the Segment Editor's undo
    history taking back a click, export and reopen, accept, and a scene close that turns the case
    off. Accepted cases and model versions go to a temporary workspace, removed at the end."""

    TASK = "phantom-ct-mr"

    def setUp(self):
        slicer.mrmlScene.Clear()
        self.workdir = Path(tempfile.mkdtemp(prefix="CrossDomainSegTest-"))

    def tearDown(self):
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)

    def runTest(self):
        self.setUp()
        try:
            self.test_CrossDomainSeg_workflow()
        finally:
            self.tearDown()

    def _installMissingPackages(self):
        """A fresh Slicer (the Extension Index's test machines too) lacks torch and MONAI: install
        them first, waiting here (a test may block)."""
        _addModulePath()
        from CrossDomainSegLib import dependencies

        missing = dependencies.missing()
        if missing:
            self.delayDisplay(f"Installing {dependencies.describe(missing)} (first run only)")
            dependencies.start_install(missing).outcome()
            self.assertEqual(dependencies.missing(), [])

    def _screenLabel(self, logic):
        import SimpleITK as sitk
        from CrossDomainSegLib import nodes

        return sitk.GetArrayFromImage(nodes.label_from_segmentation_node(
            logic.segmentation_node, logic.volume_node, logic.metadata["labels"],
            logic.segmentations_logic))

    def test_CrossDomainSeg_workflow(self):
        import numpy as np

        self._installMissingPackages()
        import SimpleITK as sitk
        from crossdomainseg import imageio
        from crossdomainseg.errors import InputError
        from crossdomainseg.resources import demo_case, shipped_bundle
        from crossdomainseg.store import AcceptedCaseStore
        from CrossDomainSegLib import nodes

        self.delayDisplay(f"Loading the shipped {self.TASK} demo case and model")
        logic = CrossDomainSegLogic(workspace=self.workdir / "workspace").core
        logic.load_bundle(shipped_bundle(self.TASK))
        volume = logic.load_volume(demo_case(self.TASK))
        image = nodes.image_from_volume_node(volume)

        self.delayDisplay("Segmenting")
        outcome = logic.segment(volume)
        segments = outcome.segmentation_node.GetSegmentation()
        self.assertEqual(list(segments.GetSegmentIDs()), logic.label_names())
        for node in (outcome.preview_node, outcome.heatmap_node):
            back = nodes.image_from_volume_node(node)
            self.assertEqual(back.GetSize(), image.GetSize())
            np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
        label = self._screenLabel(logic)
        np.testing.assert_array_equal(label, sitk.GetArrayFromImage(logic.engine.segment(image).label))
        self.assertGreater(np.count_nonzero(label), 0)
        self.assertGreaterEqual(outcome.U, 0.0)
        self.assertTrue(outcome.hint)

        self.delayDisplay("Clicking: an exclude point on a voxel of the first structure")
        first = logic.label_names()[0]
        value = logic.metadata["labels"][first]
        z, y, x = np.argwhere(label == value)[len(np.argwhere(label == value)) // 2]
        _, exclude = logic.click_nodes()
        point = image.TransformIndexToPhysicalPoint((int(x), int(y), int(z)))
        logic.active_label = first
        exclude.AddControlPoint(vtk.vtkVector3d(*nodes.lps_to_ras(point)))
        self.assertEqual(len(logic.clicks), 1, logic.last_error)
        np.testing.assert_allclose(logic.clicks[0].point, point, atol=1e-6)
        self.assertEqual(self._screenLabel(logic)[z, y, x], 0)
        self.assertTrue(logic.undo())
        self.assertEqual(exclude.GetNumberOfControlPoints(), 0)
        np.testing.assert_array_equal(self._screenLabel(logic), label)
        self.assertTrue(logic.redo())

        self.delayDisplay("Painting a slab with the Segment Editor's mechanism, then clicking")
        before = self._screenLabel(logic)
        modifier = slicer.vtkOrientedImageData()
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        modifier.SetImageToWorldMatrix(matrix)
        size = image.GetSize()
        extent = [0, size[0] - 1, 0, size[1] - 1, 0, 1]  # the first two slices
        modifier.SetExtent(*extent)
        modifier.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        modifier.GetPointData().GetScalars().Fill(1)
        segmentations = slicer.vtkSlicerSegmentationsModuleLogic
        # the Segment Editor's default: overwrite all other segments
        self.assertTrue(segmentations.SetBinaryLabelmapToSegment(
            modifier, logic.segmentation_node, first, segmentations.MODE_MERGE_MASK, extent, False,
            logic.label_names()[1:]))
        slab = np.zeros(before.shape, bool)
        slab[:2] = True
        logic.add_click(nodes.lps_to_ras(image.TransformIndexToPhysicalPoint((int(x), int(y), 1))),
                        False, first)
        self.assertEqual(int(logic.session.locked.sum()), int(np.count_nonzero(slab & (before != value))))
        self.assertTrue((self._screenLabel(logic)[slab] == value).all())

        self.delayDisplay("Taking a click back with the Segment Editor's undo history")
        history = slicer.vtkSegmentationHistory()
        history.SetSegmentation(logic.segmentation_node.GetSegmentation())
        history.SetMaximumNumberOfStates(10)
        logic.save_state_for_undo = lambda node: history.SaveState()
        before = self._screenLabel(logic)
        clicks = len(logic.clicks)
        logic.add_click(nodes.lps_to_ras(point), True, first)
        self.assertTrue(history.RestorePreviousState())
        np.testing.assert_array_equal(self._screenLabel(logic), before)
        logic.lock_from_segmentation()
        self.assertEqual(len(logic.clicks), clicks)
        logic.save_state_for_undo = None

        self.delayDisplay("Exporting and reopening")
        exported = logic.export(self.workdir / "out.seg.nrrd")
        reread, names = imageio.read_seg_nrrd(exported)
        self.assertEqual(set(names), set(logic.label_names()))
        self.assertTrue((sitk.GetArrayFromImage(reread)[slab] == names[first]).all())

        self.delayDisplay("Accepting")
        case_id = logic.accept()
        self.assertIn(case_id, AcceptedCaseStore(logic.store_dir).cases())
        self.assertEqual(logic.trainer_status()["accepted_cases"], 1)

        self.delayDisplay("Closing the scene")
        slicer.mrmlScene.Clear()
        self.assertFalse(logic.has_case)
        with self.assertRaises(InputError):
            logic.undo()
        logic.close()
        self.delayDisplay("Test passed")
