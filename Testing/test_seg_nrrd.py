""".seg.nrrd written by slicerio: Slicer's own storage node reads names, colours, codes, geometry."""

import numpy as np
import SimpleITK as sitk

from crossdomainseg import imageio, terminology

LABELS = {"background": 0, "liver": 1, "kidneys": 2, "my organ": 5}


def label_map():
    array = np.zeros((5, 9, 7), dtype=np.uint8)
    array[1:3, 2:5, 1:4] = 1
    array[3, 6:8, 4:6] = 2
    array[4, 0, 0] = 5
    label = sitk.GetImageFromArray(array)
    label.SetSpacing((0.8, 0.9, 2.5))
    label.SetOrigin((-5.0, 7.5, 11.0))
    label.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return label


def terminology_tag(segment) -> str:
    """The segment's TerminologyEntry tag, as Slicer's Segmentations module reads it."""
    import vtk

    holder = vtk.reference("")
    assert segment.GetTag("TerminologyEntry", holder)
    return str(holder)


def test_slicer_reads_names_colours_terminology_and_voxels(tmp_path):
    from slicer import vtkMRMLScene, vtkMRMLSegmentationNode, vtkMRMLSegmentationStorageNode

    label = label_map()
    path = imageio.write_seg_nrrd(label, tmp_path / "case.seg.nrrd", LABELS, {"my organ": [10, 200, 30]})
    scene = vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    for name, value in (("liver", 1), ("kidneys", 2), ("my organ", 5)):
        segment = segmentation.GetSegment(f"Segment_{value}")
        assert segment.GetName() == name
        expected = [10, 200, 30] if name == "my organ" else terminology.term_for(name).color
        np.testing.assert_allclose(segment.GetColor(), np.asarray(expected) / 255.0, atol=1e-5)
        term = terminology.term_for(name)
        assert f"{term.type.scheme}^{term.type.value}^{term.type.meaning}" in terminology_tag(segment)
    assert "SCT^51440002^Right and left" in terminology_tag(segmentation.GetSegment("Segment_2"))

    back, names = imageio.read_seg_nrrd(path)
    assert names == {"liver": 1, "kidneys": 2, "my organ": 5}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(label))
    np.testing.assert_allclose(back.GetDirection(), label.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(back.GetOrigin(), label.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetSpacing(), label.GetSpacing(), atol=1e-9)
