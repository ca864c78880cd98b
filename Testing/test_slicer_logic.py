"""The Slicer module's Logic driven headless against Slicer's real MRML (slicer-core wheel).

Volumes are loaded by Slicer's own reader, segmentations are read back with Slicer's own export,
and every geometric check compares MRML's IJK-to-RAS with SimpleITK's index-to-LPS, so a sign or
axis mix-up anywhere between MRML and the engine fails here.
"""

import contextlib
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import vtk

import slicer
import vtk.util.numpy_support
from slicer_shim import headless_slicer, install_module_stand_ins

from crossdomainseg import dciodvfy, imageio
from crossdomainseg.bundle import load_bundle, make_random_bundle, update_bundle
from crossdomainseg.engine import Engine, SegmentationCancelled
from crossdomainseg.errors import BundleError, InputError
from crossdomainseg.registry import ModelRegistry
from crossdomainseg.store import AcceptedCaseStore
from CrossDomainSegLib import nodes
from CrossDomainSegLib.logic import CrossDomainSegLogic, uncertainty_hint

LABELS = {"background": 0, "liver": 1, "kidney": 2}
MODULE_DIR = Path(__file__).resolve().parents[1] / "SlicerCrossDomainSeg"
BLOB_CENTER = (12, 20, 24)  # (z, y, x) voxel of the bright ball in the test image
BLOB_RADIUS = 7


def make_image() -> sitk.Image:
    """A ball on a noisy background, anisotropic voxels and an oblique direction."""
    rng = np.random.default_rng(1)
    z, y, x = np.ogrid[:24, :40, :48]
    ball = ((z - BLOB_CENTER[0]) ** 2 + (y - BLOB_CENTER[1]) ** 2 + (x - BLOB_CENTER[2]) ** 2
            <= BLOB_RADIUS ** 2)
    array = (100.0 * ball + rng.normal(0, 2.0, ball.shape)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.25, 2.5))
    image.SetOrigin((-31.0, 17.5, 42.0))
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return image


def ras_of_index(volume_node, index_xyz) -> np.ndarray:
    """Slicer's own IJK -> RAS of a voxel."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array(matrix.MultiplyPoint((*[float(i) for i in index_xyz], 1.0))[:3])


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A random-weight bundle (mixed labels), and a copy whose segmenter says background
    everywhere, so that clicks start from an empty segmentation."""
    root = tmp_path_factory.mktemp("bundles")
    mixed = make_random_bundle(root / "mixed", task="test-task", labels=LABELS)
    empty = make_random_bundle(root / "empty", task="test-empty", labels=LABELS)
    return {"mixed": mixed.path, "empty": background_everywhere(empty)}


def background_everywhere(bundle) -> Path:
    """Make the bundle's segmenter answer background for every voxel; returns its path."""
    state = bundle.network("segmenter").state_dict()
    last_bias = [k for k, v in state.items() if k.endswith("bias") and v.shape == (3,)][-1]
    state[last_bias] = torch.tensor([50.0, -50.0, -50.0])
    update_bundle(bundle.path, networks={"segmenter": state})
    return bundle.path


@pytest.fixture
def app():
    return headless_slicer()


@pytest.fixture
def volume(app, tmp_path):
    """The test image written to NRRD and loaded by Slicer's own volume reader."""
    image = make_image()
    path = tmp_path / "input.nrrd"
    sitk.WriteImage(image, str(path))
    node = app.volumes.AddArchetypeVolume(str(path), "input", 0)
    assert node is not None
    return node


def make_logic(app, tmp_path, bundle_path) -> CrossDomainSegLogic:
    logic = CrossDomainSegLogic(app.scene, app.segmentations, workspace=tmp_path / "workspace",
                                threads=1)
    logic.load_bundle(bundle_path)
    return logic


def segment_label_via_slicer(app, segmentation_node, volume_node, segment_ids) -> np.ndarray:
    """Slicer's own export of the segments (value i+1 for the i-th id) on the volume's grid."""
    label_node = app.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    for segment_id in segment_ids:
        ids.InsertNextValue(segment_id)
    assert app.segmentations.ExportSegmentsToLabelmapNode(segmentation_node, ids, label_node,
                                                          volume_node)
    return slicer.util.arrayFromVolume(label_node).copy()


def test_volume_node_converts_to_the_same_image_and_back(volume):
    image = make_image()
    converted = nodes.image_from_volume_node(volume)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(converted.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(converted.GetOrigin(), image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(converted.GetDirection(), image.GetDirection(), atol=1e-6)
    # a voxel's RAS position in Slicer is its LPS position in SimpleITK with x and y negated
    lps = image.TransformIndexToPhysicalPoint((5, 7, 3))
    np.testing.assert_allclose(ras_of_index(volume, (5, 7, 3)), nodes.lps_to_ras(lps), atol=1e-5)

    back = volume.GetScene().AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    nodes.update_volume_node(back, converted)
    np.testing.assert_allclose(ras_of_index(back, (5, 7, 3)), ras_of_index(volume, (5, 7, 3)), atol=1e-5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(back), slicer.util.arrayFromVolume(volume))


def test_non_scalar_empty_or_transformed_nodes_are_refused(app):
    with pytest.raises(InputError, match="select a scalar volume"):
        nodes.image_from_volume_node(None)
    empty = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="holds no voxels"):
        nodes.image_from_volume_node(empty)
    colour = app.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
    data = vtk.vtkImageData()
    data.SetDimensions(6, 5, 4)
    data.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    colour.SetAndObserveImageData(data)
    with pytest.raises(InputError, match="3 components per voxel"):
        nodes.image_from_volume_node(colour)
    volume = nodes.add_volume_node(app.scene, make_image(), "moved")
    transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InputError, match="harden it"):
        nodes.image_from_volume_node(volume)


def test_segment_puts_engine_results_on_the_input_grid(app, volume, bundles, tmp_path):
    logic = make_logic(app, tmp_path, bundles["mixed"])
    progress = []
    outcome = logic.segment(volume, progress=lambda f, m: progress.append(f))
    expected = Engine(bundles["mixed"], threads=1).segment(make_image())

    # segments: the bundle's names and colours, in label order
    segmentation = outcome.segmentation_node.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == \
        ["liver", "kidney"]
    colors = load_bundle(bundles["mixed"]).colors
    for name in ("liver", "kidney"):
        np.testing.assert_allclose(segmentation.GetSegment(name).GetColor(),
                                   np.asarray(colors[name]) / 255.0, atol=1e-6)
    # content: Slicer's own export on the input grid equals the engine's label
    exported = segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver", "kidney"])
    truth = sitk.GetArrayFromImage(expected.label)
    assert len(np.unique(truth)) == 3  # the check below compares something
    np.testing.assert_array_equal(exported, truth)

    # preview and heatmap: own volume nodes, same geometry as the input, engine's values (the
    # working grid follows the oblique scan's axes, which Slicer's RAS round trip carries with
    # float round-off: values agree to 1e-3, not to the last bit)
    for node, image in ((outcome.preview_node, expected.preview),
                        (outcome.heatmap_node, expected.uncertainty)):
        for index in ((0, 0, 0), (47, 39, 23), (10, 30, 5)):
            np.testing.assert_allclose(ras_of_index(node, index), ras_of_index(volume, index), atol=1e-5)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(image),
                                   rtol=1e-3, atol=1e-3)
    assert outcome.U == pytest.approx(expected.U, rel=1e-3)
    assert outcome.hint == uncertainty_hint(outcome.U, None)  # the test bundle has no calibrated bands
    assert outcome.model_version == "v0001"
    assert progress and progress[-1] == 1.0


def test_heatmap_overlay_and_flick_between_real_and_synthetic(app, volume, bundles, tmp_path):
    logic = make_logic(app, tmp_path, bundles["mixed"])
    outcome = logic.segment(volume)
    display = outcome.heatmap_node.GetDisplayNode()
    assert display.GetColorNode().GetName() == "CrossDomainSeg uncertainty"
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(outcome.heatmap_node)
    assert legend is not None and legend.GetTitleText() == "Uncertainty" and legend.GetVisibility()
    heat = slicer.util.arrayFromVolume(outcome.heatmap_node)
    assert heat.max() <= 1.0 and display.GetWindowLevelMax() == 1.0  # entropy / log C: one scale

    composites = [app.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(3)]
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundVolumeID() == outcome.heatmap_node.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    logic.show_layers(synthetic=True, heatmap=False)
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == outcome.preview_node.GetID()
        assert composite.GetForegroundVolumeID() is None
    logic.show_layers(synthetic=False, heatmap=True, heatmap_opacity=0.8)
    logic.set_heatmap_opacity(0.3)
    for composite in composites:
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.3)


def test_the_heatmap_is_clear_where_the_model_is_sure_in_a_rendered_slice(app):
    """Slicer's own slice pipeline (vtkMRMLSliceLogic) renders the heatmap layer: no colour at
    all below the clear fraction of the scale, so the segmentation under it stays visible."""
    from CrossDomainSegLib import display

    image = sitk.GetImageFromArray(np.full((3, 16, 16), 100, np.float32))
    background = nodes.add_volume_node(app.scene, image, "input")
    heat = np.zeros((3, 16, 16), np.float32)
    heat[:, :, 4:8] = 0.1  # sure
    heat[:, :, 8:] = np.linspace(0.2, 1.0, 8)  # unsure
    heat_image = sitk.GetImageFromArray(heat)
    heatmap = nodes.add_volume_node(app.scene, heat_image, "uncertainty")
    display.style_heatmap(app.scene, heatmap, heat)
    display.show_layers(app.scene, background, heatmap, 1.0)
    slice_logic = slicer.vtkMRMLSliceLogic()
    slice_logic.SetMRMLApplicationLogic(app.app_logic)
    slice_logic.SetMRMLScene(app.scene)
    slice_logic.SetSliceNode(app.scene.GetFirstNodeByClass("vtkMRMLSliceNode"))
    slice_logic.GetSliceNode().SetDimensions(16, 16, 1)
    slice_logic.FitSliceToAll()
    producer = slice_logic.GetForegroundLayer().GetImageDataConnection().GetProducer()
    producer.Update()
    rendered = producer.GetOutputDataObject(0)
    rgba = vtk.util.numpy_support.vtk_to_numpy(rendered.GetPointData().GetScalars()).reshape(16, 16, 4)
    # one row across the image's columns, which run right to left in the slice (RAS x = -LPS x)
    alpha = rgba[8, ::-1, 3]
    assert (alpha[:8] == 0).all() and (alpha[8:] == 255).all()
    assert rgba[8, 0, 1] < rgba[8, 7, 1]  # more uncertain: redder
    legend = display.heatmap_legend(heat)
    assert legend["high"] == 1.0 and legend["clear_below"] == pytest.approx(display.CLEAR_BELOW)


def test_segments_take_their_colours_from_the_terminology(app, volume, tmp_path):
    """Liver and kidneys share a hue in the bundle's old colours; the terminology's are told apart,
    and the segments, the .seg.nrrd and the web swatches all use them."""
    from crossdomainseg.data import abdomen
    from crossdomainseg.terminology import color_distance, colors_for

    bundle = make_random_bundle(tmp_path / "abdomen", task="phantom-ct-mr", labels=abdomen.LABELS)
    logic = make_logic(app, tmp_path, bundle.path)
    segmentation = logic.segment(volume).segmentation_node.GetSegmentation()
    expected = colors_for(abdomen.LABELS, logic.metadata.get("terminology"), logic.metadata.get("colors"))
    assert logic.label_colors() == expected
    for name, rgb in expected.items():
        if name != "background":
            np.testing.assert_allclose(segmentation.GetSegment(name).GetColor(), np.divide(rgb, 255.0),
                                       atol=1e-6)
    assert color_distance(expected["liver"], expected["kidneys"]) > 20


def test_placed_points_refine_at_once_and_undo_redo_moves_them(app, volume, bundles, tmp_path):
    logic = make_logic(app, tmp_path, bundles["empty"])
    outcome = logic.segment(volume)
    assert not segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver"]).any()
    include, exclude = logic.click_nodes()
    assert (include.GetName(), exclude.GetName()) == ("CrossDomainSeg include", "CrossDomainSeg exclude")

    # a point placed in RAS at the ball's centre voxel, as the Markups place mode would
    center_xyz = BLOB_CENTER[::-1]
    ras = ras_of_index(volume, center_xyz)
    logic.active_label = "liver"
    include.AddControlPoint(vtk.vtkVector3d(*ras))
    assert logic.last_error == ""
    assert len(logic.clicks) == 1
    click = logic.clicks[0]
    np.testing.assert_allclose(click.point, (-ras[0], -ras[1], ras[2]), atol=1e-9)
    assert logic.session.index_of(click.point) == BLOB_CENTER  # RAS -> LPS -> the same voxel

    liver = segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver"])
    ball = sitk.GetArrayFromImage(make_image()) > 50
    assert liver[BLOB_CENTER] == 1
    # one click grew a region of the ball (the refiner leaves out its blurred rim), nothing outside
    assert (liver.astype(bool) & ball).sum() > 0.3 * ball.sum()
    assert not (liver.astype(bool) & ~ball).any()

    assert logic.undo()
    assert include.GetNumberOfControlPoints() == 0
    assert not segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver"]).any()
    assert logic.redo()
    assert include.GetNumberOfControlPoints() == 1
    np.testing.assert_allclose(include.GetNthControlPointPositionWorld(0), ras, atol=1e-6)
    np.testing.assert_array_equal(
        segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver"]), liver)
    assert not logic.redo()  # nothing left to redo
    logic.segment(volume)  # a new result starts a new case: no clicks, no points
    assert logic.clicks == [] and include.GetNumberOfControlPoints() == 0


def test_moving_or_deleting_a_point_moves_or_takes_out_its_click(app, volume, bundles, tmp_path):
    logic = make_logic(app, tmp_path, bundles["empty"])
    outcome = logic.segment(volume)
    include, exclude = logic.click_nodes()
    logic.active_label = "liver"
    outside_ras = ras_of_index(volume, (3, 3, 3))  # background, far from the ball
    include.AddControlPoint(vtk.vtkVector3d(*outside_ras))
    logic.active_label = "kidney"  # a later click, on another segment
    exclude.AddControlPoint(vtk.vtkVector3d(*ras_of_index(volume, (40, 35, 20))))
    assert len(logic.clicks) == 2 and logic.last_error == ""
    liver = segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver"]).astype(bool)
    ball = sitk.GetArrayFromImage(make_image()) > 50
    assert liver[3, 3, 3] and not (liver & ball).any()

    # dragged onto the ball: the click moves there, the later click stays in effect after it
    center_ras = ras_of_index(volume, BLOB_CENTER[::-1])
    include.SetNthControlPointPositionWorld(0, *center_ras)
    assert logic.last_error == ""
    assert len(logic.clicks) == 2 and logic.clicks[0].positive and not logic.clicks[1].positive
    np.testing.assert_allclose(logic.clicks[0].point, nodes.ras_to_lps(center_ras), atol=1e-6)
    liver = segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver"]).astype(bool)
    assert liver[BLOB_CENTER] and not liver[3, 3, 3]
    assert (liver & ball).sum() > 0.3 * ball.sum()
    np.testing.assert_array_equal(liver, np.asarray(logic.session.label) == 1)

    # deleted: its click is taken out, and with it what it added
    include.RemoveNthControlPoint(0)
    assert len(logic.clicks) == 1 and not logic.clicks[0].positive
    assert not segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver"]).any()
    assert logic.undo()  # Undo now takes back the remaining (exclude) click and its point
    logic.active_label = "liver"
    assert exclude.GetNumberOfControlPoints() == 0 and logic.clicks == []

    # a point dragged outside the image is refused with a message; nothing changes
    messages = []
    logic.on_error = messages.append
    include.AddControlPoint(vtk.vtkVector3d(*center_ras))
    before = np.asarray(logic.session.label).copy()
    include.SetNthControlPointPositionWorld(0, 500.0, 500.0, 500.0)
    assert messages and "outside" in messages[-1]
    np.testing.assert_array_equal(np.asarray(logic.session.label), before)


def test_clicks_run_on_a_worker_and_the_scene_changes_on_the_callers_thread(app, volume, bundles,
                                                                         tmp_path):
    """A front end's run_job gets the click's job; MRML changes only when it calls finish."""
    import threading

    logic = make_logic(app, tmp_path, bundles["empty"])
    outcome = logic.segment(volume)
    handed = []
    logic.run_job = lambda job, finish: handed.append((job, finish))
    include, _ = logic.click_nodes()
    logic.active_label = "kidney"
    include.AddControlPoint(vtk.vtkVector3d(*ras_of_index(volume, BLOB_CENTER[::-1])))
    ((job, finish),) = handed
    assert job._thread is not threading.current_thread()
    job.wait()
    assert not segment_label_via_slicer(app, outcome.segmentation_node, volume, ["kidney"]).any()
    # the GUI stays usable: a liver stroke painted into the ball while the click runs is kept
    stroke = np.zeros((24, 40, 48), bool)
    stroke[BLOB_CENTER[0], BLOB_CENTER[1] - 3:BLOB_CENTER[1] + 3, BLOB_CENTER[2] + 2:BLOB_CENTER[2] + 5] = True
    segment_editor_stroke(outcome.segmentation_node, "liver", stroke, volume)
    with pytest.raises(InputError, match="still being applied"):
        logic.add_click(ras_of_index(volume, (5, 5, 5)), True, "kidney")
    assert finish(job)["changed_voxels"] > 0
    shown = segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver", "kidney"])
    assert shown[BLOB_CENTER] == 2 and (shown[stroke] == 1).all() and logic.session.locked[stroke].all()
    np.testing.assert_array_equal(shown, np.asarray(logic.session.label))
    assert logic.undo() and include.GetNumberOfControlPoints() == 1  # the stroke is undone first
    assert logic.undo() and include.GetNumberOfControlPoints() == 0  # the point was tied to its click

    # the scene closes while a click is being refined: its result is refused, the next case works
    include.AddControlPoint(vtk.vtkVector3d(*ras_of_index(volume, BLOB_CENTER[::-1])))
    job, finish = handed[-1]
    app.scene.Clear(0)
    with pytest.raises(InputError, match="closed or replaced"):
        finish(job)
    volume = nodes.add_volume_node(app.scene, make_image(), "again")
    logic.segment(volume)
    logic.run_job = None
    assert logic.add_click(ras_of_index(volume, BLOB_CENTER[::-1]), True, "kidney")["changed_voxels"] > 0


def test_errors_in_observers_reach_the_user(app, volume, bundles, tmp_path, monkeypatch, caplog):
    logic = make_logic(app, tmp_path, bundles["empty"])
    logic.segment(volume)
    messages = []
    logic.on_error = messages.append

    def broken(*args, **kwargs):
        raise RuntimeError("refiner exploded")

    monkeypatch.setattr(logic.session, "add_click", broken)
    include, _ = logic.click_nodes()
    include.AddControlPoint(vtk.vtkVector3d(*ras_of_index(volume, BLOB_CENTER[::-1])))
    assert messages == ["The click failed: refiner exploded (details in the Python log)."]
    assert "refiner exploded" in caplog.text  # logged with its traceback
    assert include.GetNumberOfControlPoints() == 0 and logic.clicks == []


def test_scene_close_and_deleted_nodes_turn_the_case_off(app, volume, bundles, tmp_path):
    logic = make_logic(app, tmp_path, bundles["empty"])
    outcome = logic.segment(volume)
    logic.add_click(ras_of_index(volume, BLOB_CENTER[::-1]), True, "liver")
    app.scene.Clear(0)  # File > Close scene
    assert not logic.has_case
    for action in (logic.undo, logic.accept, lambda: logic.export(tmp_path / "x.nii.gz"),
                   logic.lock_from_segmentation):
        with pytest.raises(InputError, match="Segment a volume first"):
            action()
    # a new scene works again, with new point lists
    volume = nodes.add_volume_node(app.scene, make_image(), "again")
    outcome = logic.segment(volume)
    include, _ = logic.click_nodes()
    include.AddControlPoint(vtk.vtkVector3d(*ras_of_index(volume, BLOB_CENTER[::-1])))
    assert len(logic.clicks) == 1 and logic.last_error == ""

    messages = []
    logic.on_error = messages.append
    app.scene.RemoveNode(outcome.segmentation_node)  # deleted in the Data module
    assert not logic.has_case and "deleted" in messages[0]
    with pytest.raises(InputError, match="Segment a volume first"):
        logic.undo()


def test_a_deleted_preview_or_heatmap_is_not_shown_again_and_observer_errors_reach_the_user(
        app, volume, bundles, tmp_path, monkeypatch, caplog):
    logic = make_logic(app, tmp_path, bundles["mixed"])
    outcome = logic.segment(volume)
    app.scene.RemoveNode(outcome.heatmap_node)  # deleted in the Data module
    app.scene.RemoveNode(outcome.preview_node)
    logic.show_layers(synthetic=True, heatmap=True)  # the checkboxes as they were
    for i in range(3):
        composite = app.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundVolumeID() is None
    assert logic.has_case  # clicks, Accept and Export still work on the segmentation

    messages = []
    logic.on_error = messages.append

    def broken(*args, **kwargs):
        raise RuntimeError("point lists unreadable")

    monkeypatch.setattr(logic.points, "nodes", broken)
    app.scene.RemoveNode(app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "scratch"))
    assert messages == ["Handling a deleted node failed: point lists unreadable (details in the "
                        "Python log)."]
    assert "point lists unreadable" in caplog.text


def test_mrml_holds_the_session_label_after_a_click_across_segments(app, volume, bundles, tmp_path):
    """Only the segments whose voxels changed are re-imported; a click may take voxels of
    another segment, and both must then match."""
    logic = make_logic(app, tmp_path, bundles["mixed"])
    outcome = logic.segment(volume)
    before = np.asarray(logic.session.label).copy()
    logic.add_click(ras_of_index(volume, BLOB_CENTER[::-1]), True, "kidney")
    assert (np.asarray(logic.session.label) != before).any()
    np.testing.assert_array_equal(
        segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver", "kidney"]),
        np.asarray(logic.session.label))


def test_a_point_outside_the_volume_is_dropped_with_a_message(app, volume, bundles, tmp_path):
    logic = make_logic(app, tmp_path, bundles["empty"])
    logic.segment(volume)
    messages = []
    logic.on_error = messages.append
    include, _ = logic.click_nodes()
    include.AddControlPoint(vtk.vtkVector3d(500.0, 500.0, 500.0))
    assert include.GetNumberOfControlPoints() == 0
    assert logic.clicks == []
    assert messages and "outside" in messages[0]
    with pytest.raises(InputError, match="Unknown segment"):
        logic.add_click(ras_of_index(volume, (24, 20, 12)), True, "spleen")


def segment_editor_stroke(segmentation_node, segment_id, mask, volume_node, erase=False) -> None:
    """Change a segment the way a Segment Editor effect does (vtkSlicerSegmentEditorLogic::
    ModifySegmentByLabelmap): a modifier labelmap on the source volume's geometry, cropped to the
    stroke, added with MODE_MERGE_MASK over the other segments (the editor's default "overwrite
    other segments: all") or erased with its inverse and MODE_MERGE_MIN, through
    vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment. This fires the segmentation's
    SourceRepresentationModified, not SegmentModified."""
    (zs, ys, xs) = ndimage_bounds(mask)
    crop = mask[zs, ys, xs].astype(np.uint8)
    modifier = slicer.vtkOrientedImageData()
    modifier.SetSpacing(volume_node.GetSpacing())
    modifier.SetOrigin(volume_node.GetOrigin())
    directions = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(directions)
    modifier.SetDirectionMatrix(directions)
    extent = [xs.start, xs.stop - 1, ys.start, ys.stop - 1, zs.start, zs.stop - 1]
    modifier.SetExtent(*extent)
    modifier.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    voxels = vtk.util.numpy_support.vtk_to_numpy(modifier.GetPointData().GetScalars())
    voxels[:] = ((1 - crop) * 255 if erase else crop).ravel()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    mode = logic.MODE_MERGE_MIN if erase else logic.MODE_MERGE_MASK
    segmentation = segmentation_node.GetSegmentation()
    others = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
              if segmentation.GetNthSegmentID(i) != segment_id]
    assert logic.SetBinaryLabelmapToSegment(modifier, segmentation_node, segment_id, mode, extent,
                                            False, others)


def ndimage_bounds(mask: np.ndarray) -> tuple:
    from scipy import ndimage

    return ndimage.find_objects(mask.astype(np.uint8))[0]


def test_segment_editor_strokes_survive_clicks_accept_and_export(app, volume, bundles, tmp_path):
    """The issue's target: paint and erase with the Segment Editor's own mechanism, click, accept
    and export; every painted voxel is in the exported label and every voxel the eraser removed
    stays erased."""
    logic = make_logic(app, tmp_path, bundles["mixed"])
    outcome = logic.segment(volume)
    node = outcome.segmentation_node
    events = []
    segmentation = node.GetSegmentation()
    for event in ("SegmentModified", "SourceRepresentationModified"):
        segmentation.AddObserver(getattr(segmentation, event), lambda *a, e=event: events.append(e))
    before = segment_label_via_slicer(app, node, volume, ["liver", "kidney"])
    ball = sitk.GetArrayFromImage(make_image()) > 50
    painted = np.zeros(ball.shape, bool)
    painted[2:5, 3:12, 30:44] = True  # kidney painted in the background, far from the ball
    erased = ball.copy()
    erased[BLOB_CENTER[0] - 2:] = False  # the ball's top cap erased from liver and kidney
    assert (before[erased] != 0).any() and (before[painted] != 2).any()  # the strokes change things
    segment_editor_stroke(node, "kidney", painted, volume)
    for name in ("liver", "kidney"):
        segment_editor_stroke(node, name, erased, volume, erase=True)
    assert "SourceRepresentationModified" in events and "SegmentModified" not in events

    logic.add_click(ras_of_index(volume, BLOB_CENTER[::-1]), True, "liver")  # grows over the ball
    logic.add_click(ras_of_index(volume, (37, 7, 3)), False, "kidney")  # inside the painted slab
    # what the strokes changed is locked (a painted voxel that was kidney already is not an edit)
    assert logic.session.locked.sum() == np.count_nonzero((painted & (before != 2)) | (erased & (before != 0)))

    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(logic.export(tmp_path / "out.nii.gz"))))
    assert (exported[painted] == 2).all()
    assert (exported[erased & (before != 0)] == 0).all()  # background the eraser passed over is no edit
    assert (exported[ball & ~erased] == 1).mean() > 0.3  # the click did work around the strokes
    case = AcceptedCaseStore(logic.store_dir).load(logic.accept())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.label), exported)
    # what is on screen, exactly: Slicer's own export of the segments
    np.testing.assert_array_equal(segment_label_via_slicer(app, node, volume, ["liver", "kidney"]), exported)


def segment_editor_logic(app, segmentation_node, volume_node):
    """The Segment Editor's own logic (vtkSlicerSegmentEditorLogic: what qMRMLSegmentEditorWidget's
    saveStateForUndo, undo and redo, and so Ctrl+Z and Ctrl+Y, call) editing `segmentation_node`,
    with the Segment Editor module's singleton parameter node, keeping 10 states as the module does."""
    editor_node = app.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor_node.SetSingletonTag("SegmentEditor")
    editor = slicer.vtkSlicerSegmentEditorLogic()
    editor.SetMRMLScene(app.scene)
    editor.SetSegmentationHistory(slicer.vtkSegmentationHistory())
    editor.SetSegmentEditorNode(editor_node)
    editor.SetSegmentationNode(segmentation_node)
    editor.SetSourceVolumeNode(volume_node)
    editor.SetMaximumNumberOfUndoStates(10)
    return editor


def editor_stroke(editor, segmentation_node, segment_id, mask, volume_node) -> None:
    """A paint stroke as an effect makes it: save the state for undo, then modify the segment
    through the editor logic's ModifySegmentByLabelmap."""
    (zs, ys, xs) = ndimage_bounds(mask)
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    extent = [xs.start, xs.stop - 1, ys.start, ys.stop - 1, zs.start, zs.stop - 1]
    modifier = nodes._oriented_image(mask[zs, ys, xs], matrix, extent)
    assert editor.SaveStateForUndo()
    editor.ModifySegmentByLabelmap(segmentation_node, segment_id, modifier,
                                   editor.ModificationModeAdd, False, True)


def test_segment_editor_undo_and_redo_step_through_clicks_as_through_strokes(app, volume, bundles,
                                                                            tmp_path):
    """The Logic saves the segmentation's state into the Segment Editor's history before each
    write, so the editor's Undo (Ctrl+Z) takes back a click exactly as a stroke; the Logic follows
    such a restore (the click and its point go, nothing is locked) and keeps every painted voxel."""
    logic = make_logic(app, tmp_path, bundles["empty"])
    node = logic.segment(volume).segmentation_node
    editor = segment_editor_logic(app, node, volume)
    logic.save_state_for_undo = lambda segmentation_node: editor.SaveStateForUndo()
    screen = lambda: segment_label_via_slicer(app, node, volume, ["liver", "kidney"])  # noqa: E731
    painted = np.zeros((24, 40, 48), bool)
    painted[2:5, 3:12, 30:44] = True  # kidney, far from the ball
    editor_stroke(editor, node, "kidney", painted, volume)
    before_click = screen()
    assert (before_click[painted] == 2).all()

    include, _ = logic.click_nodes()
    include.AddControlPoint(vtk.vtkVector3d(*ras_of_index(volume, BLOB_CENTER[::-1])))
    after_click = screen()
    assert logic.last_error == "" and (after_click != before_click).sum() > 50
    assert logic.session.locked.sum() == painted.sum()  # the stroke, taken in at the click

    editor.Undo()  # Ctrl+Z in the Segment Editor
    np.testing.assert_array_equal(screen(), before_click)  # the stroke is still there
    assert logic.lock_from_segmentation() == painted.sum()  # the restore locks nothing more
    assert logic.clicks == [] and include.GetNumberOfControlPoints() == 0
    np.testing.assert_array_equal(logic.session.label, before_click)

    editor.Redo()  # Ctrl+Y
    logic.lock_from_segmentation()
    assert len(logic.clicks) == 1 and include.GetNumberOfControlPoints() == 1
    np.testing.assert_array_equal(screen(), after_click)
    np.testing.assert_array_equal(logic.session.label, after_click)

    assert logic.undo()  # the module's own Undo saves a state too: Ctrl+Z takes it back
    editor.Undo()
    assert logic.lock_from_segmentation() == painted.sum() and len(logic.clicks) == 1
    np.testing.assert_array_equal(screen(), after_click)

    editor.Undo()  # back through the click
    editor.Undo()  # and the stroke: the session's hand edit is undone, not locked as erased
    np.testing.assert_array_equal(screen(), 0)
    assert logic.lock_from_segmentation() == 0 and logic.clicks == []

    # a restore mixed with a new stroke is no state the session had: what is shown is locked
    editor.Redo()
    slab = np.zeros_like(painted)
    slab[20] = True
    editor_stroke(editor, node, "liver", slab, volume)
    shown = screen()
    logic.add_click(ras_of_index(volume, BLOB_CENTER[::-1]), True, "liver")
    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(logic.export(tmp_path / "out.nii.gz"))))
    assert (exported[painted] == 2).all() and (exported[20] == 1).all()
    assert (exported[shown != 0] == shown[shown != 0]).all()


def test_the_widget_saves_undo_states_in_the_segment_editor_editing_that_segmentation(
        module_file, app, volume, bundles, tmp_path, monkeypatch):
    """The Widget's hook, called by the Logic before each write, goes to the Segment Editor only
    when it edits that segmentation; then the editor's Undo restores the state before a click."""
    import types

    saved = []
    widget = module_file.CrossDomainSegWidget()
    widget.saveStateForUndo(None)  # no Segment Editor opened yet: nothing to save into
    logic = module_file.CrossDomainSegLogic(workspace=tmp_path / "workspace").core
    logic.threads = 1
    logic.load_bundle(bundles["empty"])
    node = logic.segment(volume).segmentation_node
    other = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other")
    editor = segment_editor_logic(app, other, volume)

    def save():
        saved.append(editor.GetSegmentationNode().GetID())
        return editor.SaveStateForUndo()

    qt_editor = types.SimpleNamespace(saveStateForUndo=save)
    monkeypatch.setattr(slicer.modules, "segmenteditor", types.SimpleNamespace(
        widgetRepresentation=lambda: types.SimpleNamespace(self=lambda: types.SimpleNamespace(
            editor=qt_editor))), raising=False)
    logic.save_state_for_undo = widget.saveStateForUndo
    logic.add_click(ras_of_index(volume, BLOB_CENTER[::-1]), True, "liver")
    assert saved == []  # the editor edits another segmentation: its history is not this one's

    editor.SetSegmentationNode(node)
    before = segment_label_via_slicer(app, node, volume, ["liver"])
    logic.add_click(ras_of_index(volume, (37, 7, 3)), True, "liver")
    assert saved == [node.GetID()]
    assert (segment_label_via_slicer(app, node, volume, ["liver"]) != before).any()
    editor.Undo()
    np.testing.assert_array_equal(segment_label_via_slicer(app, node, volume, ["liver"]), before)
    logic.lock_from_segmentation()
    assert len(logic.clicks) == 1


def test_an_edit_made_with_events_off_is_still_taken_in(app, volume, bundles, tmp_path):
    """A script that writes into a segment's labelmap without any event: the fingerprint sees it."""
    logic = make_logic(app, tmp_path, bundles["empty"])
    outcome = logic.segment(volume)
    logic.add_click(ras_of_index(volume, BLOB_CENTER[::-1]), True, "liver")
    segment = outcome.segmentation_node.GetSegmentation().GetSegment("liver")
    labelmap = segment.GetRepresentation("Binary labelmap")
    voxels = vtk.util.numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    extent = labelmap.GetExtent()
    voxels[:] = np.where(voxels == segment.GetLabelValue(), 0, voxels)  # liver erased in place
    labelmap.Modified()
    assert extent == labelmap.GetExtent()
    assert logic.lock_from_segmentation() > 0
    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(logic.export(tmp_path / "out.nii.gz"))))
    assert not (exported == 1).any()


def test_clicks_write_only_their_box_and_keep_the_users_other_segments(app, volume, bundles, tmp_path):
    """Results go into the user's own segmentation; a click changes only the voxels in its box,
    other segments (and the 3D surface) stay."""
    mine = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my segmentation")
    mine.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    mine.GetSegmentation().AddEmptySegment("notes", "notes", (0.1, 0.2, 0.9))
    notes = np.zeros((24, 40, 48), bool)
    notes[20:23, 30:38, 2:9] = True
    segment_editor_stroke(mine, "notes", notes, volume)
    logic = make_logic(app, tmp_path, bundles["mixed"])
    outcome = logic.segment(volume, segmentation_node=mine)
    assert outcome.segmentation_node is mine
    mine.CreateClosedSurfaceRepresentation()
    before = segment_label_via_slicer(app, mine, volume, ["liver", "kidney"])
    written = []
    original = nodes.write_segments_in_box
    nodes.write_segments_in_box = lambda *a, **k: written.append(a[2]) or original(*a, **k)
    try:
        logic.add_click(ras_of_index(volume, BLOB_CENTER[::-1]), True, "kidney")
    finally:
        nodes.write_segments_in_box = original
    (box,) = written
    after = segment_label_via_slicer(app, mine, volume, ["liver", "kidney"])
    outside = np.ones(after.shape, bool)
    outside[box] = False
    assert outside.any() and (after != before)[box].any()
    np.testing.assert_array_equal(after[outside], before[outside])
    np.testing.assert_array_equal(after, np.asarray(logic.session.label))
    np.testing.assert_array_equal(segment_label_via_slicer(app, mine, volume, ["notes"]).astype(bool), notes)
    assert mine.GetSegmentation().GetSegment("kidney").GetRepresentation("Closed surface") is not None


def test_hand_edits_in_the_segmentation_stay_locked(app, volume, bundles, tmp_path):
    logic = make_logic(app, tmp_path, bundles["empty"])
    outcome = logic.segment(volume)
    # the user paints liver by hand on the top cap of the ball, with a Segment Editor stroke
    ball = sitk.GetArrayFromImage(make_image()) > 50
    cap = ball.copy()
    cap[BLOB_CENTER[0] - 2:] = False
    segment_editor_stroke(outcome.segmentation_node, "liver", cap, volume)
    center_ras = ras_of_index(volume, BLOB_CENTER[::-1])
    logic.add_click(center_ras, True, "liver")  # grows liver over the whole ball
    assert logic.session.locked.sum() == cap.sum()
    liver = segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver"]).astype(bool)
    grown = (liver & ~cap).sum()
    assert grown > 0.2 * ball.sum()
    logic.add_click(center_ras, False, "liver")  # removes most of the ball again, never what was painted
    liver = segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver"]).astype(bool)
    assert (liver & cap).sum() == cap.sum() and (liver & ~cap).sum() < 0.1 * grown


def test_erasing_everything_by_hand_locks_every_erased_voxel(app, volume, bundles, tmp_path,
                                                            monkeypatch):
    install_module_stand_ins(app, monkeypatch)
    logic = make_logic(app, tmp_path, bundles["mixed"])
    outcome = logic.segment(volume)
    before = segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver", "kidney"])
    assert logic.lock_from_segmentation() == 0  # nothing edited by hand yet
    for name in ("liver", "kidney"):
        slicer.util.updateSegmentBinaryLabelmapFromArray(np.zeros(before.shape, np.uint8),
                                                         outcome.segmentation_node, name, volume)
    assert logic.lock_from_segmentation() == np.count_nonzero(before)
    assert not np.asarray(logic.session.label).any()
    assert logic.undo()  # the module's Undo takes back a hand edit like a click
    np.testing.assert_array_equal(
        segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver", "kidney"]), before)
    assert logic.session.locked.sum() == 0


def test_exports_reopen_with_the_same_labels_and_geometry(app, volume, bundles, tmp_path):
    logic = make_logic(app, tmp_path, bundles["mixed"])
    outcome = logic.segment(volume)
    expected = segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver", "kidney"])
    image = make_image()

    seg_path = logic.export(tmp_path / "out" / "case.seg.nrrd")
    reread, names = imageio.read_seg_nrrd(seg_path)
    assert names == {"liver": 1, "kidney": 2}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reread), expected)
    np.testing.assert_allclose(reread.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(reread.GetOrigin(), image.GetOrigin(), atol=1e-4)
    # Slicer itself reads it back as a segmentation with the same segments and voxels
    reopened = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = app.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(seg_path))
    assert storage.ReadData(reopened)
    segmentation = reopened.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [segmentation.GetSegment(i).GetName() for i in ids] == ["liver", "kidney"]
    np.testing.assert_array_equal(segment_label_via_slicer(app, reopened, volume, ids), expected)

    nii_path = logic.export(tmp_path / "out" / "case.nii.gz")
    nii = sitk.ReadImage(str(nii_path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(nii), expected)
    np.testing.assert_allclose(nii.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(nii.GetDirection(), image.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(nii.GetOrigin(), image.GetOrigin(), atol=1e-4)

    with pytest.raises(InputError, match="choose a name ending"):
        logic.export(tmp_path / "out" / "case.png")


def test_accept_stores_the_corrected_case_with_its_clicks(app, volume, bundles, tmp_path):
    logic = make_logic(app, tmp_path, bundles["empty"])
    outcome = logic.segment(volume)
    center_ras = ras_of_index(volume, BLOB_CENTER[::-1])
    logic.add_click(center_ras, True, "kidney")
    case_id = logic.accept()
    store = AcceptedCaseStore(tmp_path / "workspace" / "store" / "test-empty")
    assert logic.store_dir == store.root
    assert store.cases() == [case_id]
    case = store.load(case_id)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(case.label),
        segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver", "kidney"]))
    assert sitk.GetArrayFromImage(case.label)[BLOB_CENTER] == 2
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.image), sitk.GetArrayFromImage(make_image()))
    assert case.clicks == [{"point": [-center_ras[0], -center_ras[1], center_ras[2]],
                            "positive": True, "label": "kidney"}]
    assert case.model_version == "v0001"
    assert logic.trainer_status()["accepted_cases"] == 1


def test_cancel_stops_a_running_segmentation(app, volume, bundles, tmp_path):
    logic = make_logic(app, tmp_path, bundles["mixed"])
    job = logic.start_segment(volume)
    job.cancel()
    with pytest.raises(SegmentationCancelled):
        logic.finish(job)
    assert logic.segmentation_node is None


def test_a_2d_image_segments_and_refines_as_a_single_slice(app, tmp_path):
    bundle = background_everywhere(make_random_bundle(tmp_path / "xray", task="test-2d",
                                                      spatial_dims=2, labels=LABELS, spacing=1.0))
    y, x = np.ogrid[:64, :80]
    disc = (y - 30) ** 2 + (x - 40) ** 2 <= 12 ** 2
    rng = np.random.default_rng(2)
    image = sitk.GetImageFromArray((100.0 * disc + rng.normal(0, 2, disc.shape)).astype(np.float32)[None])
    image.SetSpacing((0.8, 0.8, 1.0))
    node = nodes.add_volume_node(app.scene, image, "xray")
    logic = make_logic(app, tmp_path, bundle)
    outcome = logic.segment(node)
    assert slicer.util.arrayFromVolume(outcome.preview_node).shape == (1, 64, 80)
    logic.add_click(ras_of_index(node, (40, 30, 0)), True, "kidney")
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(logic.export(tmp_path / "xray.nii.gz"))))
    assert label.shape == (1, 64, 80) and label[0, 30, 40] == 2
    assert not label[0][~disc].any()  # grew inside the disc only


def test_a_bundle_without_generator_segments_without_a_preview(app, volume, tmp_path):
    bundle = make_random_bundle(tmp_path / "plain", labels=LABELS, with_generator=False)
    logic = make_logic(app, tmp_path, bundle.path)
    outcome = logic.segment(volume)
    assert outcome.preview_node is None and outcome.heatmap_node is not None
    logic.show_layers(synthetic=True)  # nothing to flick to: the real image stays
    composite = app.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite.GetBackgroundVolumeID() == volume.GetID()


def test_bad_bundles_and_missing_steps_say_what_to_do(app, volume, tmp_path):
    logic = CrossDomainSegLogic(app.scene, app.segmentations, workspace=tmp_path / "ws")
    with pytest.raises(BundleError, match="pick a model bundle"):
        logic.start_segment(volume)
    with pytest.raises(BundleError, match="metadata.json is missing"):
        logic.load_bundle(tmp_path)
    with pytest.raises(InputError, match="Segment a volume first"):
        logic.accept()
    with pytest.raises(BundleError, match="Load a model bundle"):
        logic.rollback()


def test_model_versions_and_rollback_follow_the_registry(app, volume, bundles, tmp_path):
    logic = make_logic(app, tmp_path, bundles["mixed"])
    registry = ModelRegistry(logic.bundle_path)
    assert logic.trainer_status()["versions"] == ["v0001"]
    registry.publish(bundles["empty"])  # as the trainer does with a better student
    status = logic.trainer_status()
    assert (status["current_version"], status["versions"]) == ("v0002", ["v0001", "v0002"])
    assert logic.segment(volume).model_version == "v0002"  # picked up without a restart
    assert logic.rollback() == "v0001"
    assert logic.segment(volume).model_version == "v0001"
    assert logic.trainer_status()["state"] == "not started"


def test_a_bundle_rebuilt_under_the_same_version_gets_its_own_registry(app, bundles, tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(bundles["mixed"], path)
    logic = CrossDomainSegLogic(app.scene, app.segmentations, workspace=tmp_path / "ws", threads=1)
    logic.load_bundle(path)
    first = logic.bundle_path
    logic.load_bundle(path)
    assert logic.bundle_path == first  # the same bundle keeps its versions
    make_random_bundle(path, task="test-task", labels=LABELS, seed=1)  # same version, new weights
    logic.load_bundle(path)
    assert logic.bundle_path != first
    assert load_bundle(ModelRegistry(logic.bundle_path).current_path()).metadata["weights"] == \
        load_bundle(path).metadata["weights"]


@pytest.fixture
def module_file(app, monkeypatch):
    """CrossDomainSeg.py imported with Qt's pieces stood in (all undone after the test)."""
    install_module_stand_ins(app, monkeypatch)
    # importing the module may point CROSSDOMAINSEG_RESOURCES at its own Resources folder: the
    # set-then-delete makes the teardown remove whatever it set, for the tests after this one
    monkeypatch.setenv("CROSSDOMAINSEG_RESOURCES", "")
    monkeypatch.delenv("CROSSDOMAINSEG_RESOURCES")
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    monkeypatch.delitem(sys.modules, "CrossDomainSeg", raising=False)
    module = importlib.import_module("CrossDomainSeg")
    monkeypatch.setitem(sys.modules, "CrossDomainSeg", module)
    return module


def test_module_file_imports_and_its_slicer_self_test_passes(module_file, tmp_path, monkeypatch):
    """The module's Logic and its ScriptedLoadableModuleTest (the same workflow a real Slicer
    runs) on the wheel's MRML, with only what an installed extension has: its own Resources
    folder holding the shipped phantom bundle and demo case (nothing from this test suite)."""
    module = module_file
    parameters = module.CrossDomainSegLogic(workspace=tmp_path).getParameterNode()
    assert parameters.heatmapOpacity == 0.5 and parameters.showHeatmap is True
    parameters.heatmapOpacity = 0.25
    assert parameters.parameterNode.GetParameter("heatmapOpacity") == "0.25"

    shipped = MODULE_DIR.parent / "Resources"
    installed = tmp_path / "extension" / "Resources"
    shutil.copytree(shipped / "bundles" / "phantom-ct-mr", installed / "bundles" / "phantom-ct-mr")
    (installed / "demo").mkdir()
    shutil.copy(shipped / "demo" / "phantom-ct-mr_target.nii.gz", installed / "demo")
    monkeypatch.setenv("CROSSDOMAINSEG_RESOURCES", str(installed))
    test = module.CrossDomainSegTest()
    test.runTest()
    assert not test.workdir.exists()  # its temporary workspace is removed
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


class StandInWidget:
    """Keeps what is set on it (text, value, enabled, ...); any method call does nothing."""

    def __init__(self):
        self.text, self.value, self.enabled, self.checked = "", 0, False, False

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def widget_with_stand_in_ui(module, logic):
    """The module's Widget around `logic` (its `core`), its ui widgets and job timer stood in."""
    import re
    import types

    widget = module.CrossDomainSegWidget()
    widget.logic = types.SimpleNamespace(core=logic)
    names = set(re.findall(r"self\.ui\.(\w+)", (MODULE_DIR / "CrossDomainSeg.py").read_text()))
    widget.ui = types.SimpleNamespace(**{name: StandInWidget() for name in names})
    widget._jobTimer = StandInWidget()
    return widget


def test_the_widget_opens_a_model_without_blocking_and_then_segments(module_file, volume, bundles,
                                                                       tmp_path, monkeypatch):
    """Opening a model (importing torch, copying the bundle, reading weights) runs on a worker
    thread; the Widget fills its panel when the job is done, and Segment with a model not yet
    open opens it first, then segments."""
    import threading
    import types

    from crossdomainseg import engine as engine_module

    threads = []
    original = engine_module.Engine.__init__

    def recording(self, *args, **kwargs):
        threads.append(threading.current_thread())
        original(self, *args, **kwargs)

    monkeypatch.setattr(engine_module.Engine, "__init__", recording)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **k: errors.append(text),
                        raising=False)
    monkeypatch.setattr(slicer, "qSlicerMarkupsPlaceWidget", types.SimpleNamespace(
        ForcePlaceMultipleMarkups=2), raising=False)  # a Qt widget class: the point-place buttons
    core = module_file.CrossDomainSegLogic(workspace=tmp_path / "workspace").core
    core.threads = 1
    widget = widget_with_stand_in_ui(module_file, core)
    widget._parameterNode = core_parameters = module_file.CrossDomainSegLogic(
        workspace=tmp_path / "workspace").getParameterNode()
    core_parameters.inputVolume = volume
    monkeypatch.setattr(widget, "_selectedBundlePath", lambda: str(bundles["mixed"]))
    widget._segment()
    assert widget._job is not None and core.engine is None  # returned at once, still opening
    while widget._job is not None:
        widget._job.wait(60)
        widget.onPollJobs()  # the GUI thread's timer: the model, then the segmentation
    assert errors == []
    assert threads and threading.current_thread() not in threads
    assert widget._loadedBundle == str(bundles["mixed"])
    assert widget.ui.bundleInfoLabel.text.startswith("test-task")
    assert core.has_case and core_parameters.segmentation is core.segmentation_node



def test_accept_in_the_widget_says_which_folder_the_case_went_to(module_file, volume, bundles,
                                                                  tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(slicer.util, "showStatusMessage", lambda text, ms=0: shown.append(text),
                        raising=False)
    core = module_file.CrossDomainSegLogic(workspace=tmp_path / "workspace").core
    core.threads = 1
    core.load_bundle(bundles["empty"])
    core.segment(volume)
    widget = widget_with_stand_in_ui(module_file, core)
    widget.onAccept()
    (case_id,) = AcceptedCaseStore(core.store_dir).cases()
    folder = core.case_folder(case_id)
    assert (folder / "image.nii.gz").is_file() and (folder / "label.nii.gz").is_file()
    assert str(folder) in widget.ui.clickStatusLabel.text and case_id in widget.ui.clickStatusLabel.text
    assert shown == [widget.ui.clickStatusLabel.text]
    assert widget.ui.trainerStateLabel.text.endswith("1 accepted case(s)")


def test_a_failing_trainer_stop_is_shown_to_the_user(module_file, tmp_path, monkeypatch):
    """Stopping waits on a worker thread; its error reaches the user at the panel's next update
    (a bare thread's error would only reach the console)."""
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **k: errors.append(text),
                        raising=False)
    core = module_file.CrossDomainSegLogic(workspace=tmp_path / "workspace").core

    def stop():
        raise RuntimeError("trainer process not answering")

    monkeypatch.setattr(core, "stop_trainer", stop)
    widget = widget_with_stand_in_ui(module_file, core)
    widget.onStopTrainer()
    assert widget.ui.trainerStateLabel.text.startswith("stopping")
    widget._stopJob.wait(10)
    widget.updateTrainerPanel()
    assert errors == ["Failed: trainer process not answering"]
    widget.updateTrainerPanel()  # shown once
    assert len(errors) == 1


def test_every_widget_the_module_uses_is_in_the_ui_file(module_file):
    import re
    import xml.etree.ElementTree as ET

    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "CrossDomainSeg.ui")
    names = {w.get("name") for w in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE_DIR / "CrossDomainSeg.py").read_text()))
    assert used and used <= names, sorted(used - names)
    parameters = {p.find("string").text for p in ui.iter("property")
                  if p.get("name") == "SlicerParameterName"}
    assert parameters == {"inputVolume", "outputSegmentation", "showSynthetic", "showHeatmap",
                          "heatmapOpacity"}
    wrapped = set(module_file.CrossDomainSegParameterNode.fields)
    assert parameters <= wrapped, sorted(parameters - wrapped)


STUB_SLICER_CONFIG = r"""
# Records what the extension asks of Slicer's build macros, for the test to read.
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/GenerateConfig.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer/qt-scripted-modules)
set(BUILD_TESTING ON)
"""
STUB_USE_SLICER = r"""
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  file(APPEND ${CMAKE_BINARY_DIR}/record.txt "NAME=${MY_NAME}\nGENERIC=${MY_WITH_GENERIC_TESTS}\n")
  foreach(f ${MY_SCRIPTS})
    file(APPEND ${CMAKE_BINARY_DIR}/record.txt "SCRIPT=${CMAKE_CURRENT_SOURCE_DIR}/${f}\n")
  endforeach()
  foreach(f ${MY_RESOURCES})
    file(APPEND ${CMAKE_BINARY_DIR}/record.txt "RESOURCE=${CMAKE_CURRENT_SOURCE_DIR}/${f}\n")
  endforeach()
endmacro()
macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT" "" ${ARGN})
  file(APPEND ${CMAKE_BINARY_DIR}/record.txt "UNITTEST=${MY_SCRIPT}\n")
endmacro()
"""
STUB_GENERATE_CONFIG = r"""
foreach(key HOMEPAGE CATEGORY CONTRIBUTORS DESCRIPTION ICONURL SCREENSHOTURLS DEPENDS)
  file(APPEND ${CMAKE_BINARY_DIR}/record.txt "EXTENSION_${key}=${EXTENSION_${key}}\n")
endforeach()
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_lists_declare_the_extension_and_every_module_file(tmp_path):
    stub = tmp_path / "slicer"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB_SLICER_CONFIG)
    (stub / "UseSlicer.cmake").write_text(STUB_USE_SLICER)
    (stub / "GenerateConfig.cmake").write_text(STUB_GENERATE_CONFIG)
    (stub / "Empty.cmake").write_text("")
    build = tmp_path / "build"
    done = subprocess.run(["cmake", "-S", str(MODULE_DIR.parent), "-B", str(build),
                           f"-DSlicer_DIR={stub}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    record = {}
    for line in (build / "record.txt").read_text().splitlines():
        key, _, value = line.partition("=")
        record.setdefault(key, []).append(value)

    assert record["NAME"] == ["CrossDomainSeg"] and record["GENERIC"] == ["TRUE"]
    assert record["UNITTEST"] == ["CrossDomainSeg.py"]
    assert record["EXTENSION_CATEGORY"] == ["Segmentation"]
    for key in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert record[f"EXTENSION_{key}"][0], key
    import re

    assert re.fullmatch(r"[^,()]+ \([^()]+\)(, [^,()]+ \([^()]+\))*", record["EXTENSION_CONTRIBUTORS"][0])
    repository = "https://raw.githubusercontent.com/SlicerCrossDomainSeg/SlicerCrossDomainSeg/main/"
    icon = record["EXTENSION_ICONURL"][0]
    assert icon.startswith(repository) and (MODULE_DIR.parent / icon[len(repository):]).is_file()
    screenshot = record["EXTENSION_SCREENSHOTURLS"][0]
    assert screenshot.startswith(repository) and "web" not in screenshot  # the Slicer module, not the web app
    assert (MODULE_DIR.parent / "LICENSE").read_text().split()[:3] == ["Apache", "License", "Version"]
    scripts = {Path(p).resolve() for p in record["SCRIPT"]}
    wanted = {MODULE_DIR / "CrossDomainSeg.py"} | set(MODULE_DIR.glob("CrossDomainSegLib/*.py")) \
        | set(MODULE_DIR.glob("crossdomainseg/**/*.py"))
    assert wanted <= scripts, sorted(map(str, wanted - scripts))
    resources = [Path(p) for p in record["RESOURCE"]]
    assert {p.name for p in resources} == {"CrossDomainSeg.png", "CrossDomainSeg.ui"}
    assert all(p.is_file() for p in resources)


def test_what_only_a_real_slicer_can_provide_is_on_the_submission_checklist():
    """The screenshot CMakeLists.txt names cannot be taken here: until it exists, the Extension
    Index checklist in docs/INSTALL_SLICER.md must say how to take it, along with the
    contributors' names and the self-test run in Slicer."""
    import re

    root = MODULE_DIR.parent
    screenshot = re.search(r"/main/(docs/screenshots/[\w.-]+\.png)",
                           (root / "CMakeLists.txt").read_text()).group(1)
    guide = (root / "docs" / "INSTALL_SLICER.md").read_text()
    checklist = guide[guide.index("## Before submitting to the Extension Index"):]
    if not (root / screenshot).is_file():
        assert screenshot in checklist
    for item in ("**Contributors.**", "Name (Organisation)", "**Self-test.**", "Test passed"):
        assert item in checklist, item


def write_dicom_series(image: sitk.Image, folder: Path) -> None:
    """The image as an MR DICOM series, one file per slice (as a scanner would send it)."""
    import pydicom.uid

    folder.mkdir(parents=True)
    volume = sitk.Cast(sitk.Round(image), sitk.sitkInt16)
    direction = image.GetDirection()
    series, study, frame = (pydicom.uid.generate_uid() for _ in range(3))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        plane = volume[:, :, k]
        for tag, value in (("0010|0010", "Test^Patient"), ("0010|0020", "CDS-1"),
                           ("0008|0060", "MR"), ("0020|000e", series), ("0020|000d", study),
                           ("0020|0052", frame), ("0008|0016", "1.2.840.10008.5.1.4.1.1.4"),
                           ("0008|0018", pydicom.uid.generate_uid()), ("0020|0013", str(k + 1)),
                           ("0020|0037", "\\".join(f"{v:.9f}" for v in (*direction[0::3], *direction[1::3]))),
                           ("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
                           ("0018|0050", str(image.GetSpacing()[2]))):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)


def test_dicom_input_exports_a_dicom_seg_on_its_series(app, bundles, tmp_path):
    import pydicom

    series = tmp_path / "series"
    write_dicom_series(make_image(), series)
    logic = make_logic(app, tmp_path, bundles["empty"])
    volume = logic.load_volume(series)
    assert logic.came_from_dicom(volume)
    outcome = logic.segment(volume)
    with pytest.raises(InputError, match="empty"):
        logic.export(tmp_path / "empty.dcm")
    logic.add_click(ras_of_index(volume, BLOB_CENTER[::-1]), True, "kidney")
    expected = segment_label_via_slicer(app, outcome.segmentation_node, volume, ["liver", "kidney"])
    assert expected.any()

    exported = logic.export(tmp_path / "out" / "case.dcm")
    assert dciodvfy.validate(exported).errors == []  # the standard's own checker (dicom3tools)
    seg = pydicom.dcmread(exported)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["kidney"]
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    sources = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in series.iterdir()}
    assert seg.StudyInstanceUID == next(iter(sources.values())).StudyInstanceUID
    # rebuild the label from the frames: each frame's source instance gives its slice
    rebuilt = np.zeros_like(expected)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source = sources[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_allclose([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in source.ImagePositionPatient], atol=1e-3)
        rebuilt[int(source.InstanceNumber) - 1][frame.astype(bool)] = 2
    np.testing.assert_array_equal(rebuilt, expected)

    # loaded by Slicer's DICOM module instead: instance UIDs on the node, files from its database
    by_uid = {uid: series / f"slice{int(ds.InstanceNumber) - 1:03d}.dcm" for uid, ds in sources.items()}
    volume.RemoveAttribute("CrossDomainSeg.source")
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(by_uid))
    logic.dicom_file_for_instance = lambda uid: str(by_uid[uid])
    again = pydicom.dcmread(logic.export(tmp_path / "out" / "again.dcm"))
    assert again.pixel_array.tobytes() == seg.pixel_array.tobytes()

    logic_nrrd = make_logic(app, tmp_path / "other", bundles["empty"])
    nrrd = tmp_path / "input.nrrd"
    sitk.WriteImage(make_image(), str(nrrd))
    logic_nrrd.segment(logic_nrrd.load_volume(nrrd))
    with pytest.raises(InputError, match="needs an image loaded from DICOM"):
        logic_nrrd.export(tmp_path / "x.dcm")


@pytest.mark.slow
def test_trainer_panel_starts_and_stops_the_background_process(app, volume, bundles, tmp_path):
    import time

    logic = make_logic(app, tmp_path, bundles["empty"])
    logic.segment(volume)
    logic.add_click(ras_of_index(volume, BLOB_CENTER[::-1]), True, "liver")
    logic.accept()
    status = logic.start_trainer()
    try:
        assert status["running"] and status["accepted_cases"] == 1
        deadline = time.monotonic() + 240  # it imports torch and loads the model first
        while logic.trainer_status()["state"] == "starting" and time.monotonic() < deadline:
            time.sleep(0.5)
        running = logic.trainer_status()
        # this tiny case's epochs may all be done already (a few seconds on an idle machine)
        assert running["state"] in ("training", "idle", "finished") and running["epoch"] >= 1, running
    finally:
        status = logic.stop_trainer()
    assert not status["running"] and status["state"] in ("stopped", "finished")
    assert status["current_version"] == "v0001" and 0.0 <= status["progress"] <= 1.0


def test_missing_packages_install_in_the_background_and_never_replace_shipped_ones(monkeypatch):
    """The install commands (torch through light-the-torch, the rest pinned to what is installed)
    run on a worker thread that reports each output line and can be cancelled."""
    import threading
    from importlib.metadata import version

    from CrossDomainSegLib import dependencies

    monkeypatch.setitem(dependencies.REQUIREMENTS, "cds_not_installed_pkg", "cds-not-installed-pkg>=1")
    assert dependencies.missing() == ["cds_not_installed_pkg"]
    monkeypatch.setattr(dependencies, "torch_version", lambda: (1, 13))
    assert dependencies.missing() == ["torch", "cds_not_installed_pkg"]  # too old counts as missing
    assert "installed 1.13, needs >=2.0" in dependencies.describe(["torch"])

    constraints = dependencies.constraints_file()
    pins = constraints.read_text().lower().splitlines()  # pip names are case-blind
    assert f"numpy=={version('numpy')}" in pins and f"simpleitk=={version('SimpleITK')}" in pins
    assert not any(pin.startswith("torch==") for pin in pins)  # torch may be upgraded
    commands = dependencies.install_commands(["torch", "cds_not_installed_pkg"], "PY", constraints)
    assert commands == [["PY", "-m", "pip", "install", "light-the-torch>=0.5"],
                        ["PY", "-m", "light_the_torch", "install", "torch>=2.0"],
                        ["PY", "-m", "pip", "install", "cds-not-installed-pkg>=1", "-c", str(constraints)]]

    lines, threads = [], set()

    def report(fraction, message):
        lines.append((fraction, message))
        threads.add(threading.current_thread())

    ok = [[sys.executable, "-c", "print('step one')"], [sys.executable, "-c", "print('step two')"]]
    job = dependencies.Job(lambda r, c: dependencies.run_commands(ok, r, c), report)
    job.outcome()
    assert lines == [(0.0, "step one"), (0.5, "step two"), (1.0, "installed")]
    assert threading.current_thread() not in threads
    failing = [[sys.executable, "-c", "print('no such package'); raise SystemExit(1)"]]
    with pytest.raises(RuntimeError, match="no such package"):
        dependencies.Job(lambda r, c: dependencies.run_commands(failing, r, c)).outcome()
    slow = [[sys.executable, "-c", "import time\nfor i in range(600): print(i, flush=True); time.sleep(0.1)"]]
    job = dependencies.Job(lambda r, c: dependencies.run_commands(slow, r, c))
    job.cancel()
    with pytest.raises(InterruptedError):
        job.outcome()


def test_after_an_install_a_torch_replaced_under_a_loaded_one_asks_for_a_restart(monkeypatch):
    from CrossDomainSegLib import dependencies

    assert "torch" in sys.modules  # loaded here, as another Slicer module may have done
    dependencies.check_installed(["tqdm"])  # nothing missing, torch untouched: go on
    with pytest.raises(InputError, match=r"torch \d+\.\d+ is installed, but Slicer still runs "
                                         r"the older torch .*restart Slicer"):
        dependencies.check_installed(["torch", "monai"])
    monkeypatch.setitem(dependencies.REQUIREMENTS, "cds_not_installed_pkg", "cds-not-installed-pkg>=1")
    with pytest.raises(InputError, match="Still missing after installing: cds_not_installed_pkg"):
        dependencies.check_installed(["cds_not_installed_pkg"])


def test_uncertainty_hint_reads_u_against_the_bundles_source_bands():
    from CrossDomainSegLib.logic import HINTS

    bands = {"confident_up_to": 0.1, "unsure_above": 0.2}
    assert uncertainty_hint(0.05, bands) == HINTS["confident"]
    assert uncertainty_hint(0.15, bands) == HINTS["some"]
    assert uncertainty_hint(0.25, bands) == HINTS["unsure"]
    # the same U reads otherwise against another bundle's bands: no fixed numbers
    assert uncertainty_hint(0.25, {"confident_up_to": 0.3, "unsure_above": 0.5}) == HINTS["confident"]
    assert uncertainty_hint(0.05, None) == HINTS["uncalibrated"]


# -- new structures (a segment the model has no label for) ----------------------------------------

class _BrightIsObject(torch.nn.Module):
    """Stand-in prompt network: "object" where the image channel is bright, so what the Logic
    does with the answer can be checked exactly."""

    def forward(self, x):
        return torch.where(x[:, 0:1] > 0.5, 10.0, -10.0)


def structure_logic(app, volume, tmp_path):
    """A Logic on a bundle with a prompt network (segmenter: background everywhere), segmented,
    its prompt network stood in by _BrightIsObject."""
    from crossdomainseg.interactive.prompt_net import PROMPT_SPEC, PromptRefiner
    from crossdomainseg.networks import build_network

    bundle = make_random_bundle(tmp_path / "prompt-bundle", task="test-prompt", labels=LABELS)
    background_everywhere(bundle)
    update_bundle(bundle.path, networks={"prompt": build_network(PROMPT_SPEC)},
                  metadata={"prompt": {"size": [24, 24, 24], "spacing": [2.0, 2.0, 2.0]}})
    logic = make_logic(app, tmp_path, bundle.path)
    outcome = logic.segment(volume)
    assert logic.session.structure_refiner is not None  # the bundle's prompt network
    logic.session.structure_refiner = PromptRefiner(_BrightIsObject(), (24, 24, 24), (2.0, 2.0, 2.0), "cpu")
    return logic, outcome.segmentation_node


def ball_mask() -> np.ndarray:
    z, y, x = np.ogrid[:24, :40, :48]
    return ((z - BLOB_CENTER[0]) ** 2 + (y - BLOB_CENTER[1]) ** 2 + (x - BLOB_CENTER[2]) ** 2
            <= BLOB_RADIUS ** 2)


def dice(a, b) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


def test_a_new_structure_from_a_click_gets_its_segment_colour_undo_accept_and_export(app, volume, tmp_path):
    logic, node = structure_logic(app, volume, tmp_path)
    editor = segment_editor_logic(app, node, volume)
    logic.save_state_for_undo = lambda segmentation_node: editor.SaveStateForUndo()
    segmentation = node.GetSegmentation()
    outcome = logic.new_structure(ras_of_index(volume, BLOB_CENTER[::-1]))
    assert outcome["segment"] == "Structure 1" and outcome["changed_voxels"] > 500
    assert logic.label_names() == ["liver", "kidney", "Structure 1"] and logic.active_label == "Structure 1"
    assert logic.case_labels["Structure 1"] == 3
    segment = segmentation.GetSegment("Structure 1")
    assert segment is not None and segment.GetName() == "Structure 1"
    colors = logic.label_colors()
    assert np.allclose(np.array(segment.GetColor()) * 255, colors["Structure 1"], atol=1)
    assert colors["Structure 1"] not in (colors["liver"], colors["kidney"])
    shown = segment_label_via_slicer(app, node, volume, ["liver", "kidney", "Structure 1"])
    assert dice(shown == 3, ball_mask()) > 0.9 and set(np.unique(shown)) == {0, 3}
    include, _ = logic.click_nodes()
    assert include.GetNumberOfControlPoints() == 1  # its click is a point like any other
    # clicks correct it like any segment
    edge = (BLOB_CENTER[2] + 5, BLOB_CENTER[1], BLOB_CENTER[0])
    assert logic.add_click(ras_of_index(volume, edge), False, "Structure 1")["changed_voxels"] > 0
    corrected = segment_label_via_slicer(app, node, volume, ["liver", "kidney", "Structure 1"])
    assert 0 < (corrected == 3).sum() < (shown == 3).sum()

    # export keeps its name (seg.nrrd) and value (NIfTI); accept stores its value and name
    seg, names = imageio.read_seg_nrrd(logic.export(tmp_path / "out" / "case.seg.nrrd"))
    assert names == {"liver": 1, "kidney": 2, "Structure 1": 3}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), corrected)
    nii = sitk.GetArrayFromImage(sitk.ReadImage(str(logic.export(tmp_path / "out" / "case.nii.gz"))))
    np.testing.assert_array_equal(nii, corrected)
    case_id = logic.accept()
    store = AcceptedCaseStore(logic.store_dir)
    case = store.load(case_id)
    assert case.structures == {"Structure 1": 3} and store.labels() == LABELS
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.label), corrected)
    assert [c["label"] for c in case.clicks] == ["Structure 1", "Structure 1"]

    # Undo takes the correction, then the structure out (segment and point too); Redo brings it back
    assert logic.undo() and logic.undo()
    assert segmentation.GetSegment("Structure 1") is None and include.GetNumberOfControlPoints() == 0
    assert logic.label_names() == ["liver", "kidney"] and logic.active_label == "liver"
    assert logic.redo()
    assert segmentation.GetSegment("Structure 1") is not None and include.GetNumberOfControlPoints() == 1
    np.testing.assert_array_equal(segment_label_via_slicer(app, node, volume, ["liver", "kidney", "Structure 1"]),
                                  shown)
    # the Segment Editor's Undo steps back through it as through a stroke: nothing gets locked
    editor.Undo()
    assert logic.lock_from_segmentation() == 0 and logic.label_names() == ["liver", "kidney"]
    assert not segment_label_via_slicer(app, node, volume, ["liver", "kidney"]).any()

    # names: a given one, and a taken one refused before any work
    assert logic.new_structure(ras_of_index(volume, BLOB_CENTER[::-1]), "Cyst")["segment"] == "Cyst"
    with pytest.raises(InputError, match="already exists"):
        logic.new_structure(ras_of_index(volume, BLOB_CENTER[::-1]), "kidney")


def test_new_structure_mode_box_and_roi(app, volume, tmp_path):
    logic, node = structure_logic(app, volume, tmp_path)
    ball = ball_mask()
    screen = lambda names: segment_label_via_slicer(app, node, volume, names)  # noqa: E731
    # "New structure" mode: the next include point starts it, and the point stays bound to its click
    assert logic.arm_new_structure("Lesion") == "Lesion"
    include, _ = logic.click_nodes()
    include.AddControlPoint(vtk.vtkVector3d(*ras_of_index(volume, BLOB_CENTER[::-1])))
    assert logic.last_error == "" and logic.label_names()[-1] == "Lesion" and logic.armed_structure is None
    assert dice(screen(["Lesion"]) == 1, ball) > 0.9
    assert logic.undo() and include.GetNumberOfControlPoints() == 0
    # a box around the ball (RAS corners of its bounding box)
    lo = [c - BLOB_RADIUS for c in BLOB_CENTER]
    hi = [c + BLOB_RADIUS for c in BLOB_CENTER]
    corners = [ras_of_index(volume, corner[::-1]) for corner in (lo, hi)]
    outcome = logic.new_structure_from_box(*corners)
    assert outcome["segment"] == "Structure 1" and dice(screen(["Structure 1"]) == 1, ball) > 0.9
    assert logic.clicks == [] and include.GetNumberOfControlPoints() == 0  # a box is no point
    assert logic.undo() and node.GetSegmentation().GetSegment("Structure 1") is None
    # a box drawn on one slice is given a depth: the ball is outlined in 3D
    flat = [ras_of_index(volume, (x, y, BLOB_CENTER[0])) for x, y in ((lo[2], lo[1]), (hi[2], hi[1]))]
    logic.new_structure_from_box(*flat, name="Flat")
    flat_label = screen(["Flat"]) == 1
    assert dice(flat_label, ball) > 0.8 and len(np.unique(np.nonzero(flat_label)[0])) > 5
    assert logic.undo()
    # a markups ROI (Slicer's box)
    roi = app.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    centre = ras_of_index(volume, BLOB_CENTER[::-1])
    roi.SetXYZ(*centre)
    roi.SetRadiusXYZ(12.0, 12.0, 20.0)
    assert logic.new_structure_from_roi(roi, "Boxed")["segment"] == "Boxed"
    assert dice(screen(["Boxed"]) == 1, ball) > 0.9
    with pytest.raises(InputError, match="outside the image"):
        logic.new_structure_from_box([400.0, 400.0, 400.0], [500.0, 500.0, 500.0])
    # a box reaching past the image is cut to it
    far = ras_of_index(volume, (hi[2], hi[1], 60))
    assert logic.new_structure_from_box(corners[0], far, "Past")["segment"] == "Past"
    assert dice(screen(["Past"]) == 1, ball) > 0.9
    # a prompt network without the box channel: a box is refused before any work, clicks still start one
    from crossdomainseg.interactive.prompt_net import PromptRefiner

    logic.session.structure_refiner = PromptRefiner(_BrightIsObject(), (24, 24, 24), (2.0, 2.0, 2.0), "cpu",
                                                    in_channels=4)
    segments = node.GetSegmentation().GetNumberOfSegments()
    with pytest.raises(BundleError, match="takes clicks, not a box"):
        logic.new_structure_from_box(*corners)
    assert node.GetSegmentation().GetNumberOfSegments() == segments
    assert logic.new_structure(ras_of_index(volume, BLOB_CENTER[::-1]), "Clicked")["segment"] == "Clicked"


def test_new_structures_need_a_prompt_network_and_say_which_bundles_have_one(app, volume, bundles, tmp_path,
                                                                           monkeypatch):
    monkeypatch.delenv("CROSSDOMAINSEG_RESOURCES", raising=False)  # the checkout's shipped bundles
    logic = make_logic(app, tmp_path, bundles["empty"])
    node = logic.segment(volume).segmentation_node
    before = segment_label_via_slicer(app, node, volume, ["liver", "kidney"])
    for attempt in (lambda: logic.new_structure(ras_of_index(volume, BLOB_CENTER[::-1])),
                    lambda: logic.arm_new_structure(),
                    lambda: logic.new_structure_from_box([0, 0, 0], [1, 1, 1])):
        with pytest.raises(BundleError, match=r"no prompt network\. Models that can: brain-t1-t2"):
            attempt()
    assert node.GetSegmentation().GetNumberOfSegments() == 2 and logic.clicks == []
    np.testing.assert_array_equal(segment_label_via_slicer(app, node, volume, ["liver", "kidney"]), before)


def test_a_new_structure_goes_into_the_dicom_seg_with_its_name(app, tmp_path):
    import pydicom

    series = tmp_path / "series"
    write_dicom_series(make_image(), series)
    from crossdomainseg.interactive.prompt_net import PROMPT_SPEC, PromptRefiner
    from crossdomainseg.networks import build_network

    bundle = make_random_bundle(tmp_path / "prompt-bundle", task="test-prompt", labels=LABELS)
    background_everywhere(bundle)
    update_bundle(bundle.path, networks={"prompt": build_network(PROMPT_SPEC)})
    logic = make_logic(app, tmp_path, bundle.path)
    volume = logic.load_volume(series)
    logic.segment(volume)
    logic.session.structure_refiner = PromptRefiner(_BrightIsObject(), (24, 24, 24), (2.0, 2.0, 2.0), "cpu")
    logic.new_structure(ras_of_index(volume, BLOB_CENTER[::-1]), "Cyst")
    exported = logic.export(tmp_path / "out" / "case.dcm")
    assert dciodvfy.validate(exported).errors == []
    seg = pydicom.dcmread(exported)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Cyst"]
    item = seg.SegmentSequence[0]
    assert item.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
    assert item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Cyst"
    assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "99CDS"
    assert int(seg.NumberOfFrames) > 5


def test_the_widgets_new_structure_buttons_call_the_logic(app, module_file, volume, bundles, tmp_path,
                                                          monkeypatch):
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **k: errors.append(text), raising=False)
    core = module_file.CrossDomainSegLogic(workspace=tmp_path / "workspace").core
    core.threads = 1
    core.load_bundle(bundles["empty"])
    core.segment(volume)
    widget = widget_with_stand_in_ui(module_file, core)
    widget.ui.structureNameEdit.text = "Lesion"
    widget.onNewStructure()  # a bundle without a prompt network: said at once, nothing armed
    assert len(errors) == 1 and "no prompt network" in errors[0] and core.armed_structure is None
    widget.onNewStructureFromRoi()  # no ROI picked
    assert "ROI" in errors[1]

    logic, _ = structure_logic(app, volume, tmp_path / "p")
    widget = widget_with_stand_in_ui(module_file, logic)
    widget.ui.structureNameEdit.text = "Lesion"
    widget.onNewStructure()
    assert logic.armed_structure == "Lesion" and "Lesion" in widget.ui.clickStatusLabel.text
    roi = logic.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetXYZ(*ras_of_index(volume, BLOB_CENTER[::-1]))
    roi.SetRadiusXYZ(12.0, 12.0, 20.0)
    widget.ui.structureRoiSelector.currentNode = lambda: roi
    widget.onNewStructureFromRoi()
    assert len(errors) == 2 and widget.ui.clickStatusLabel.text.startswith("Segment 'Lesion'")
    assert logic.label_names()[-1] == "Lesion" and widget._segmentNames == logic.label_names()
