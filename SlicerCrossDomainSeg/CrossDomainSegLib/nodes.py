"""MRML nodes <-> SimpleITK images, and RAS <-> LPS points.

Slicer stores a volume as voxels plus an IJK-to-RAS matrix; the engine takes SimpleITK images in
LPS. The two differ only by the sign of the first two physical axes, so geometry converts exactly
(no resampling) in both directions. Needs only MRML (the slicer-core wheel or a running Slicer).
"""

import numpy as np
import SimpleITK as sitk
import vtk

from crossdomainseg.errors import InputError

_RAS_LPS = np.diag([-1.0, -1.0, 1.0])


def ras_to_lps(point) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in point)
    return (-x, -y, z)


lps_to_ras = ras_to_lps  # the flip is its own inverse


def _voxels(image_data) -> np.ndarray:
    from vtk.util.numpy_support import vtk_to_numpy

    dims = image_data.GetDimensions()
    scalars = image_data.GetPointData().GetScalars()
    components = scalars.GetNumberOfComponents()
    shape = (dims[2], dims[1], dims[0]) + ((components,) if components > 1 else ())
    return vtk_to_numpy(scalars).reshape(shape)


def image_from_volume_node(node, name: str = "input volume") -> sitk.Image:
    """The volume node's voxels and geometry as a SimpleITK image (LPS); a copy, never a view."""
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"{name}: select a scalar volume (a greyscale image) first.")
    image_data = node.GetImageData()
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise InputError(f"{name} '{node.GetName()}': the volume holds no voxels; load it again.")
    array = _voxels(image_data)
    if array.ndim != 3:
        raise InputError(
            f"{name} '{node.GetName()}': has {array.shape[-1]} components per voxel (colour or "
            "vector image); pick a single-channel greyscale volume.")
    if node.GetParentTransformNode() is not None:
        # results and clicks live in the volume's own voxel space: a transform would shift them
        raise InputError(f"{name} '{node.GetName()}' is under a transform; harden it (Data module, "
                         "right-click > Harden transform) or remove it first.")
    image = sitk.GetImageFromArray(np.array(array, copy=True))
    image.SetSpacing(node.GetSpacing())
    image.SetOrigin(ras_to_lps(node.GetOrigin()))
    directions = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(directions)
    ras = np.array([[directions.GetElement(r, c) for c in range(3)] for r in range(3)])
    image.SetDirection((_RAS_LPS @ ras).ravel().tolist())
    return image


def set_volume_node_geometry(node, image: sitk.Image) -> None:
    """Give `node` the geometry (spacing, origin, directions) of the LPS image `image`."""
    node.SetSpacing(image.GetSpacing())
    node.SetOrigin(lps_to_ras(image.GetOrigin()))
    ras = _RAS_LPS @ np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    directions = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            directions.SetElement(r, c, ras[r, c])
    node.SetIJKToRASDirectionMatrix(directions)


def update_volume_node(node, image: sitk.Image) -> None:
    """Replace the voxels and geometry of a scalar or labelmap volume node by `image`'s."""
    from vtk.util.numpy_support import numpy_to_vtk

    array = np.ascontiguousarray(sitk.GetArrayFromImage(image))
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_to_vtk(array.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image_data.GetPointData().SetScalars(scalars)
    was_modifying = node.StartModify()
    set_volume_node_geometry(node, image)
    node.SetAndObserveImageData(image_data)
    node.EndModify(was_modifying)


def add_volume_node(scene, image: sitk.Image, name: str, node_class="vtkMRMLScalarVolumeNode"):
    """A new volume node (with display node) in `scene` holding `image`."""
    node = scene.AddNewNodeByClass(node_class, name)
    update_volume_node(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def _rgb(colors: dict, name: str, index: int) -> list[float]:
    rgb = np.asarray(colors.get(name, _PALETTE[index % len(_PALETTE)]), dtype=float)
    return (rgb / 255.0 if rgb.max() > 1.0 else rgb).tolist()


_PALETTE = [(0.85, 0.35, 0.25), (0.3, 0.7, 0.3), (0.25, 0.45, 0.85), (0.95, 0.85, 0.2)]


def fill_segmentation_node(segmentation_node, label: sitk.Image, labels: dict, colors: dict,
                           segmentations_logic, reference_volume_node=None, only=None) -> None:
    """Set the segment of each non-background label to that label's voxels in `label`.

    Every label of the bundle gets a segment, even when empty, so the clinician can add to a
    structure the network missed. Segment IDs are the label names; other segments are left alone.
    `only`: names of the labels whose voxels changed (a click's update); the rest are not touched.
    """
    ordered = [name for name, value in sorted(labels.items(), key=lambda kv: int(kv[1]))
               if int(value) != 0]
    segmentation = segmentation_node.GetSegmentation()
    names = [name for name in ordered
             if only is None or name in only or segmentation.GetSegment(name) is None]
    if not names:
        return
    # with explicit segment IDs, Slicer gives the i-th segment the voxels of label value i+1
    values = sitk.GetArrayViewFromImage(label)
    consecutive = np.zeros(values.shape, np.uint16)
    for index, name in enumerate(names, start=1):
        consecutive[values == int(labels[name])] = index
    scene = segmentation_node.GetScene()
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "_cds_import")
    try:
        update_volume_node(label_node, _like(consecutive, label))
        was_modifying = segmentation_node.StartModify()
        if reference_volume_node is not None:
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
        segment_ids = vtk.vtkStringArray()
        for name in names:
            # existing segments are updated in place, so their display settings and the Segment
            # Editor's selection survive every refinement
            if segmentation.GetSegment(name) is None:
                segmentation.AddEmptySegment(name, name, _rgb(colors, name, ordered.index(name)))
            segment_ids.InsertNextValue(name)
        imported = segmentations_logic.ImportLabelmapToSegmentationNode(
            label_node, segmentation_node, segment_ids)
        segmentation_node.EndModify(was_modifying)
        if not imported:
            raise RuntimeError("Slicer could not import the label map into the segmentation.")
    finally:
        scene.RemoveNode(label_node)


def write_segments_in_box(segmentation_node, label: np.ndarray, box_slices, labels: dict,
                          reference_volume_node, before: np.ndarray | None = None) -> None:
    """Make every bundle segment equal `label` (z, y, x, bundle values) inside the voxel box
    `box_slices` of the reference volume's grid, leaving the segments outside it untouched.
    `before`: the label the segments show now; then only segments that lose voxels are erased
    from and only those that gain voxels are painted (each call rescans the segment's labelmap).

    Uses the Segment Editor's own mechanism (vtkSlicerSegmentationsModuleLogic.
    SetBinaryLabelmapToSegment: erase as MODE_MERGE_MIN with the inverted mask, paint as
    MODE_MERGE_MASK), so shared labelmap layers, other representations (the 3D surface) and
    segments of other names are kept. All erasing comes first: a voxel moving from one segment to
    another never overlaps both.
    """
    import slicer

    matrix = vtk.vtkMatrix4x4()
    reference_volume_node.GetIJKToRASMatrix(matrix)
    z, y, x = box_slices
    extent = [x.start, x.stop - 1, y.start, y.stop - 1, z.start, z.stop - 1]
    crop = label[box_slices]
    old = None if before is None else before[box_slices]
    segmentation = segmentation_node.GetSegmentation()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    targets = [(name, crop == int(value), None if old is None else old == int(value))
               for name, value in labels.items()
               if int(value) != 0 and segmentation.GetSegment(name) is not None]
    for mode, fill, needed in (
            (logic.MODE_MERGE_MIN, lambda inside: 255 * inside, lambda now, was: (was & ~now).any()),
            (logic.MODE_MERGE_MASK, lambda inside: inside, lambda now, was: (now & ~was).any())):
        for name, inside, was in targets:
            if was is not None and not needed(inside, was):
                continue
            modifier = _oriented_image(fill(inside.astype(np.uint8)), matrix, extent)
            if not logic.SetBinaryLabelmapToSegment(modifier, segmentation_node, name, mode, extent):
                raise RuntimeError(f"Slicer could not update segment {name!r}.")


def _oriented_image(array: np.ndarray, ijk_to_ras, extent) -> object:
    """A vtkOrientedImageData holding `array` (z, y, x) at `extent` of the grid `ijk_to_ras`."""
    import slicer
    from vtk.util.numpy_support import numpy_to_vtk

    image = slicer.vtkOrientedImageData()
    image.SetExtent(*extent)
    image.SetImageToWorldMatrix(ijk_to_ras)
    scalars = numpy_to_vtk(np.ascontiguousarray(array, np.uint8).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def segment_fingerprint(segmentation_node) -> tuple:
    """What identifies the segments' current content cheaply: each segment's ID and the address
    and modification time of its source representation. Any edit, with or without an event,
    changes it."""
    segmentation = segmentation_node.GetSegmentation()
    name = segmentation.GetSourceRepresentationName()
    prints = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        representation = segmentation.GetSegment(segment_id).GetRepresentation(name)
        prints.append((segment_id, None if representation is None else (
            representation.GetAddressAsString("vtkDataObject"), representation.GetMTime())))
    return tuple(prints)


def label_from_segmentation_node(segmentation_node, reference_volume_node, labels: dict,
                                 segmentations_logic) -> sitk.Image:
    """The segmentation as a label image on the reference volume's grid, with the bundle's values.

    Segments are matched to labels by name (ID or display name); segments of other names are
    ignored. Overlaps resolve to the later label, as in Slicer's own export.
    """
    scene = segmentation_node.GetScene()
    segmentation = segmentation_node.GetSegmentation()
    by_name = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        by_name.setdefault(segmentation.GetSegment(segment_id).GetName(), segment_id)
        by_name.setdefault(segment_id, segment_id)
    pairs = [(by_name[name], int(value)) for name, value in labels.items()
             if int(value) != 0 and name in by_name]
    reference = image_from_volume_node(reference_volume_node, "reference volume")
    out = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint16)
    if pairs:
        before = _node_ids(scene)
        label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "_cds_export")
        try:
            segment_ids = vtk.vtkStringArray()
            for segment_id, _ in pairs:
                segment_ids.InsertNextValue(segment_id)
            if not segmentations_logic.ExportSegmentsToLabelmapNode(
                    segmentation_node, segment_ids, label_node, reference_volume_node):
                raise RuntimeError("Slicer could not export the segmentation to a label map.")
            image_data = label_node.GetImageData()
            if image_data is not None and image_data.GetPointData().GetScalars() is not None:
                exported = _voxels(image_data)  # no scalars when every segment is empty
                for index, (_, value) in enumerate(pairs, start=1):
                    out[exported == index] = value
        finally:
            # the export adds a display node and a colour table: leave the scene as it was
            for node_id in _node_ids(scene) - before:
                if scene.GetNodeByID(node_id) is not None:
                    scene.RemoveNode(scene.GetNodeByID(node_id))
    return _like(out, reference)


def _node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image
