"""Image I/O keeps geometry and refuses bad input with InputError."""

import math
import shutil
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
import SimpleITK as sitk

from crossdomainseg import imageio
from crossdomainseg.errors import InputError


def oblique_image(dtype=np.int16, shape=(7, 9, 11)):
    rng = np.random.default_rng(3)
    image = sitk.GetImageFromArray(rng.integers(-500, 900, size=shape).astype(dtype))
    image.SetSpacing((0.7, 1.3, 2.9))
    image.SetOrigin((-12.5, 40.25, 103.0))
    a, b = math.radians(17), math.radians(-8)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    image.SetDirection((rz @ rx).ravel().tolist())
    return image


def assert_same_geometry(a, b, tol):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=tol)


@pytest.mark.parametrize("suffix,tol", [(".nii.gz", 1e-4), (".nii", 1e-4), (".nrrd", 1e-9),
                                        (".mha", 1e-9)])
def test_round_trip_keeps_oblique_anisotropic_geometry(tmp_path, suffix, tol):
    image = oblique_image()
    path = imageio.write_image(image, tmp_path / f"volume{suffix}")
    back = imageio.read_image(path)
    assert_same_geometry(image, back, tol)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert [p.name for p in tmp_path.iterdir()] == [f"volume{suffix}"]  # no temporary left over


def test_seg_nrrd_round_trip_keeps_names_values_and_geometry(tmp_path):
    label = sitk.Cast(oblique_image() > 300, sitk.sitkUInt8) + sitk.Cast(
        oblique_image() > 700, sitk.sitkUInt8) * 2
    label.CopyInformation(oblique_image())
    path = imageio.write_seg_nrrd(label, tmp_path / "case.seg.nrrd",
                                  {"background": 0, "liver": 1, "lesion": 3},
                                  {"liver": (200, 100, 50)})
    back, labels = imageio.read_seg_nrrd(path)
    assert labels == {"liver": 1, "lesion": 3}
    assert back.GetMetaData("Segment0_Color").split()[0] == "0.784314"
    assert_same_geometry(label, back, 1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(label))


def test_reads_dicom_series_folder_and_single_file(tmp_path):
    source = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(source, folder / "IM0001.dcm")
    from_folder = imageio.read_image(folder)
    from_file = imageio.read_image(source)
    assert from_folder.GetSize() == (128, 128, 1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_folder), sitk.GetArrayFromImage(from_file))
    imageio.validate_image(from_folder)


def test_2d_image_becomes_single_slice_volume(tmp_path):
    plane = sitk.GetImageFromArray(np.arange(20, dtype=np.float32).reshape(4, 5))
    plane.SetSpacing((0.5, 0.25))
    plane.SetOrigin((3.0, 4.0))
    sitk.WriteImage(plane, str(tmp_path / "xray.mha"))
    volume = imageio.read_image(tmp_path / "xray.mha")
    assert volume.GetSize() == (5, 4, 1)
    assert volume.GetSpacing()[:2] == (0.5, 0.25)
    assert volume.GetOrigin()[:2] == (3.0, 4.0)


def image_from(array, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


@pytest.mark.parametrize("make,message", [
    (lambda: sitk.Image([4, 4, 4, 3], sitk.sitkFloat32), "4D"),
    (lambda: image_from(np.where(np.eye(8)[None].repeat(3, 0) > 0, np.nan, 1.0).astype(np.float32)),
     "NaN"),
    (lambda: image_from(np.full((3, 4, 5), np.inf, np.float32)), "NaN or infinite"),
    (lambda: image_from(np.full((3, 4, 5), 7, np.int16)), "same value"),
    (lambda: sitk.Image([4, 4, 3], sitk.sitkVectorFloat32, 3), "components"),
])
def test_validate_refuses_bad_images(make, message):
    with pytest.raises(InputError, match=message):
        imageio.validate_image(make())


def test_files_without_spacing_are_refused(tmp_path):
    import struct

    import nibabel as nib
    nib.save(nib.Nifti1Image(np.random.rand(4, 5, 6).astype(np.float32), np.eye(4)), tmp_path / "a.nii")
    raw = bytearray((tmp_path / "a.nii").read_bytes())
    raw[80:92] = struct.pack("<3f", 0, 0, 0)  # pixdim[1..3]: what a broken exporter writes
    (tmp_path / "a.nii").write_bytes(bytes(raw))
    with pytest.raises(InputError, match="no voxel spacing"):
        imageio.read_image(tmp_path / "a.nii")
    header = b"NRRD0004\ntype: float\ndimension: 3\nsizes: 2 2 2\nendian: little\nencoding: raw\n\n"
    (tmp_path / "b.nrrd").write_bytes(header + np.arange(8, dtype="<f4").tobytes())
    with pytest.raises(InputError, match="no voxel spacing"):
        imageio.read_image(tmp_path / "b.nrrd")


def test_unreadable_and_missing_files_give_input_error(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(InputError, match="could not be read"):
        imageio.read_image(bad)
    with pytest.raises(InputError, match="no such file"):
        imageio.read_image(tmp_path / "absent.nrrd")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no DICOM"):
        imageio.read_image(empty)
    with pytest.raises(InputError, match="cannot write"):
        imageio.write_image(oblique_image(), tmp_path / "x.png")
