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

# Imported by the engine; the versions of packages Slicer ships are never changed (constraints).
REQUIREMENTS = {"torch": "torch", "monai": "monai>=1.3", "SimpleITK": "SimpleITK",
                "scipy": "scipy", "pydicom": "pydicom", "tqdm": "tqdm"}


#
# CrossDomainSeg
#


class CrossDomainSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Cross-Domain Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations", "Markups"]
        self.parent.contributors = ["SlicerCrossDomainSeg developers"]
        self.parent.helpText = """
Segment images of a modality that has no labelled training data (e.g. X-ray or MR) with a model
trained on another modality (e.g. CT). Shows the synthetic-modality preview the model sees, an
uncertainty heatmap with a per-image uncertainty U, corrects the result with include/exclude
clicks, and fine-tunes the model in the background on the cases you accept.
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
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._loadedBundle = None
        self._jobTimer = None
        self._trainerTimer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CrossDomainSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CrossDomainSegLogic()
        self.logic.core.on_error = lambda message: slicer.util.errorDisplay(message)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self._fillBundleSelector()
        self.ui.bundleSelector.connect("currentIndexChanged(int)", self.onBundleSelected)
        self.ui.bundlePathEdit.connect("currentPathChanged(QString)", self.onBundlePathChanged)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.showSyntheticCheckBox.connect("toggled(bool)", lambda _: self.updateViews())
        self.ui.showHeatmapCheckBox.connect("toggled(bool)", lambda _: self.updateViews())
        self.ui.heatmapOpacitySlider.connect("valueChanged(double)", self.logic.core.set_heatmap_opacity)
        self.ui.legendCheckBox.connect("toggled(bool)", self.onLegendToggled)
        self.ui.segmentSelector.connect("currentTextChanged(QString)", self.onActiveSegmentChanged)
        self.ui.undoButton.connect("clicked(bool)", lambda: self._try(self.logic.core.undo))
        self.ui.redoButton.connect("clicked(bool)", lambda: self._try(self.logic.core.redo))
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
        self._jobTimer.setInterval(100)
        self._jobTimer.connect("timeout()", self.onPollJob)
        self._trainerTimer = qt.QTimer()
        self._trainerTimer.setInterval(2000)
        self._trainerTimer.connect("timeout()", self.updateTrainerPanel)

        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()
        for timer in (self._jobTimer, self._trainerTimer):
            if timer:
                timer.stop()
        if self.logic:
            self.logic.core.close()

    def enter(self):
        self.initializeParameterNode()
        self._trainerTimer.start()

    def exit(self):
        self._trainerTimer.stop()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

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
            self._try(self._loadBundle, path)

    def onBundlePathChanged(self, path):
        if path and Path(path).is_dir() and self._parameterNode:
            self._parameterNode.bundlePath = path
            self._try(self._loadBundle, path)

    def _loadBundle(self, path):
        """Load the bundle (first use: offers to install missing packages); True when loaded."""
        if not ensureDependencies():
            return False
        with slicer.util.WaitCursor():
            metadata = self.logic.core.load_bundle(path)
        self._loadedBundle = path
        self.ui.bundleInfoLabel.text = (
            f"{metadata['task']} (version {metadata['version']}): "
            f"{metadata['input_modality']} -> {metadata['output_modality']}")
        self.ui.segmentSelector.clear()
        for name in self.logic.core.label_names():
            self.ui.segmentSelector.addItem(name)
        self.updateTrainerPanel()
        self._updateButtons()
        return True

    # -- segment ----------------------------------------------------------------------------------
    def onSegment(self):
        path = self._selectedBundlePath()
        if path != self._loadedBundle and not self._try(self._loadBundle, path):
            return
        job = self._try(self.logic.core.start_segment, self._parameterNode.inputVolume)
        if job is None:
            return
        self._job = job
        self.ui.segmentProgressBar.value = 0
        self.ui.segmentProgressBar.show()
        self.ui.cancelButton.enabled = True
        self.ui.segmentButton.enabled = False
        self._jobTimer.start()

    def onCancel(self):
        if self._job:
            self._job.cancel()
            self.ui.segmentProgressBar.format = "cancelling..."

    def onPollJob(self):
        """Runs on the GUI thread: mirrors the worker's progress, then puts results in the scene."""
        job = self._job
        self.ui.segmentProgressBar.value = int(100 * job.fraction)
        self.ui.segmentProgressBar.format = f"{job.message} (%p%)"
        if not job.done:
            return
        self._jobTimer.stop()
        self._job = None
        self.ui.segmentProgressBar.hide()
        self.ui.cancelButton.enabled = False
        if job.cancelled:
            slicer.util.showStatusMessage("Segmentation cancelled.", 3000)
            self._updateButtons()
            return
        outcome = self._try(self.logic.core.finish, job)
        if outcome is not None:
            node = self._parameterNode
            node.segmentation = outcome.segmentation_node
            node.preview = outcome.preview_node
            node.heatmap = outcome.heatmap_node
            node.uncertainty = outcome.U if outcome.U is not None else -1.0
            node.hint = outcome.hint
            self._showOutcomeTexts()
            self._setupClickWidgets()
            self.updateViews()
        self._updateButtons()

    def _showOutcomeTexts(self):
        u = self._parameterNode.uncertainty
        self.ui.uncertaintyValueLabel.text = f"U = {u:.3f}" if u is not None and u >= 0 else "-"
        self.ui.hintLabel.text = self._parameterNode.hint or ""

    # -- views ------------------------------------------------------------------------------------
    def updateViews(self):
        if self.logic.core.volume_node is None:
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

    def onLockHandEdits(self):
        locked = self._try(self.logic.core.lock_from_segmentation)
        if locked is not None:
            self.ui.clickStatusLabel.text = f"{locked} voxels locked (edited by hand)."

    def onEditByHand(self):
        """Open the Segment Editor on this result; the next click or Lock takes the edits in."""
        core = self.logic.core
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(core.segmentation_node)
        editor.setSourceVolumeNode(core.volume_node)
        if core.active_label:
            editor.setCurrentSegmentID(core.active_label)

    # -- accept, export ---------------------------------------------------------------------------
    def onAccept(self):
        case_id = self._try(self.logic.core.accept)
        if case_id:
            slicer.util.showStatusMessage(f"Accepted: stored as case {case_id} for fine-tuning.", 5000)
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
        # the trainer finishes its current step first: wait for that off the GUI thread
        import threading

        self.ui.stopTrainerButton.enabled = False
        self.ui.trainerStateLabel.text = "stopping after the current step..."
        threading.Thread(target=self.logic.core.stop_trainer, daemon=True).start()

    def onRollback(self):
        if slicer.util.confirmOkCancelDisplay("Make the previous model version current again?"):
            version = self._try(self.logic.core.rollback)
            if version:
                slicer.util.showStatusMessage(f"Model {version} is current; segment again to use it.", 5000)
        self.updateTrainerPanel()

    def updateTrainerPanel(self):
        status = self._try(self.logic.core.trainer_status)
        if not status:
            return
        running = bool(status.get("running"))
        self.ui.trainerStateLabel.text = (
            f"{status['state']}; {status['accepted_cases']} accepted case(s)"
            + (f"; epoch {status['epoch']}" if status.get("epoch") is not None else ""))
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
        has_result = core.segmentation_node is not None
        for widget in (self.ui.undoButton, self.ui.redoButton, self.ui.lockButton, self.ui.editByHandButton,
                       self.ui.acceptButton, self.ui.exportButton, self.ui.includePlaceWidget,
                       self.ui.excludePlaceWidget):
            widget.enabled = has_result

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


def _addModulePath():
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))


def missingRequirements() -> list:
    import importlib.util

    return [name for name in REQUIREMENTS if importlib.util.find_spec(name) is None]


def ensureDependencies(ask: bool = True) -> bool:
    """Install missing Python packages at first use, after asking. torch comes from Slicer's
    PyTorch extension when it is installed (it picks the build for this machine's GPU); pip is
    constrained to the versions already installed, so nothing Slicer ships is replaced."""
    missing = missingRequirements()
    if not missing:
        return True
    if ask and not slicer.util.confirmOkCancelDisplay(
            "Cross-Domain Segmentation needs these Python packages, which are not installed yet: "
            f"{', '.join(missing)}. Install them now? (This can take several minutes.)"):
        return False
    with slicer.util.WaitCursor():
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ImportError:
                PyTorchUtils = None
            if PyTorchUtils is not None:
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                    raise RuntimeError("PyTorch could not be installed; install it from the PyTorch extension.")
                missing.remove("torch")
        if missing:
            slicer.util.pip_install([REQUIREMENTS[name] for name in missing] + ["-c", _constraintsFile()])
    return not missingRequirements()


def _constraintsFile() -> str:
    """A pip constraints file pinning every distribution already installed."""
    from importlib.metadata import distributions

    pins = sorted({f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]})
    handle, path = tempfile.mkstemp(prefix="CrossDomainSeg-constraints-", suffix=".txt")
    with os.fdopen(handle, "w") as stream:
        stream.write("\n".join(pins) + "\n")
    return path


#
# CrossDomainSegTest
#


class CrossDomainSegTest(ScriptedLoadableModuleTest):
    """The workflow inside Slicer on a synthetic volume and a tiny random-weight bundle: segment,
    preview and heatmap nodes on the input grid, a click in RAS, undo, hand-edit lock, export
    and reopen, accept."""

    def setUp(self):
        slicer.mrmlScene.Clear()
        self.workdir = Path(tempfile.mkdtemp(prefix="CrossDomainSegTest-"))

    def runTest(self):
        self.setUp()
        self.test_CrossDomainSeg_workflow()

    def test_CrossDomainSeg_workflow(self):
        import numpy as np
        import SimpleITK as sitk

        _addModulePath()
        from crossdomainseg import imageio
        from crossdomainseg.bundle import make_random_bundle
        from crossdomainseg.store import AcceptedCaseStore
        from CrossDomainSegLib import nodes

        self.delayDisplay("Making a test volume and a tiny model bundle")
        rng = np.random.default_rng(0)
        image = sitk.GetImageFromArray(rng.normal(0, 1, (24, 40, 48)).astype(np.float32))
        image.SetSpacing((1.5, 1.5, 2.5))
        image.SetOrigin((-30.0, 12.0, 40.0))
        image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))  # rotated in-plane: catches axis mix-ups
        volume = nodes.add_volume_node(slicer.mrmlScene, image, "CrossDomainSegTest input")
        bundle = make_random_bundle(self.workdir / "bundle", labels={"background": 0, "organ": 1})

        logic = CrossDomainSegLogic(workspace=self.workdir / "workspace").core
        logic.load_bundle(bundle.path)

        self.delayDisplay("Segmenting")
        outcome = logic.segment(volume)
        segments = outcome.segmentation_node.GetSegmentation()
        self.assertEqual(list(segments.GetSegmentIDs()), ["organ"])
        for node in (outcome.preview_node, outcome.heatmap_node):
            back = nodes.image_from_volume_node(node)
            self.assertEqual(back.GetSize(), image.GetSize())
            np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
            np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
        self.assertGreaterEqual(outcome.U, 0.0)
        self.assertTrue(outcome.hint)

        self.delayDisplay("Clicking: include point in the middle of the volume")
        include, _ = logic.click_nodes()
        middle = image.TransformIndexToPhysicalPoint((24, 20, 12))
        include.AddControlPoint(vtk.vtkVector3d(*nodes.lps_to_ras(middle)))
        self.assertEqual(len(logic.clicks), 1, logic.last_error)
        np.testing.assert_allclose(logic.clicks[0].point, middle, atol=1e-6)
        label = sitk.GetArrayFromImage(nodes.label_from_segmentation_node(
            logic.segmentation_node, volume, logic.metadata["labels"], logic.segmentations_logic))
        self.assertEqual(label[12, 20, 24], 1)
        self.assertTrue(logic.undo())
        self.assertEqual(include.GetNumberOfControlPoints(), 0)
        self.assertTrue(logic.redo())

        self.delayDisplay("Painting by hand, as the Segment Editor does, and locking it")
        slab = np.zeros(label.shape, bool)
        slab[:3] = True
        slicer.util.updateSegmentBinaryLabelmapFromArray(
            ((label == 1) | slab).astype(np.uint8), logic.segmentation_node, "organ", volume)
        self.assertEqual(logic.lock_from_segmentation(), np.count_nonzero(slab & (label != 1)))
        label[slab] = 1

        self.delayDisplay("Exporting and reopening")
        exported = logic.export(self.workdir / "out.seg.nrrd")
        reread, names = imageio.read_seg_nrrd(exported)
        self.assertEqual(names, {"organ": 1})
        np.testing.assert_array_equal(sitk.GetArrayFromImage(reread), label)

        self.delayDisplay("Accepting")
        case_id = logic.accept()
        self.assertIn(case_id, AcceptedCaseStore(logic.store_dir).cases())
        self.assertEqual(logic.trainer_status()["accepted_cases"], 1)
        logic.close()
        self.delayDisplay("Test passed")
