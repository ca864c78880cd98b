"""DICOM series reading: exact geometry on a round trip; gaps, irregular spacing, duplicates,
mixed orientations and several series refused with a message naming the problem."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from crossdomainseg import imageio
from crossdomainseg.dicom_series import write_series
from crossdomainseg.errors import InputError


def oblique_image(depth=8):
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.integers(-500, 1500, (depth, 12, 10)).astype(np.int16))
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-12.25, 30.5, -101.75))
    angle = np.deg2rad(17)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    image.SetDirection(rotation.ravel().tolist())
    return image


def test_series_round_trip_keeps_geometry_and_voxels_exact(tmp_path):
    image = oblique_image()
    write_series(image, tmp_path / "s")
    back = imageio.read_image(tmp_path / "s")
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_missing_slice_is_refused_naming_the_positions(tmp_path):
    files = write_series(oblique_image(), tmp_path / "s")
    files[4].unlink()
    with pytest.raises(InputError, match=r"1 missing slice\(s\) between the slices at -98\.72 and -93\.72 mm .*5\.00 mm apart where the series' spacing is 2\.50 mm"):
        imageio.read_image(tmp_path / "s")


def test_irregular_spacing_is_refused(tmp_path):
    files = write_series(oblique_image(), tmp_path / "s")
    ds = pydicom.dcmread(files[3])
    ds.ImagePositionPatient = [float(v) + 0.4 * d for v, d in
                               zip(ds.ImagePositionPatient, oblique_image().GetDirection()[2::3])]
    ds.save_as(files[3])
    with pytest.raises(InputError, match="irregular slice spacing"):
        imageio.read_image(tmp_path / "s")


def test_duplicate_slice_is_refused(tmp_path):
    files = write_series(oblique_image(), tmp_path / "s")
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "s" / "copy.dcm")
    with pytest.raises(InputError, match="same position"):
        imageio.read_image(tmp_path / "s")


def test_mixed_orientations_are_refused(tmp_path):
    files = write_series(oblique_image(), tmp_path / "s")
    ds = pydicom.dcmread(files[5])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(files[5])
    with pytest.raises(InputError, match=r"mixes slice orientations.*slice0005\.dcm"):
        imageio.read_image(tmp_path / "s")


def test_several_series_in_one_folder_are_named(tmp_path):
    first = write_series(oblique_image(), tmp_path / "s")
    second = write_series(oblique_image(4), tmp_path / "other")
    series = {pydicom.dcmread(first[0]).SeriesInstanceUID, pydicom.dcmread(second[0]).SeriesInstanceUID}
    for k, file in enumerate(second):
        file.rename(tmp_path / "s" / f"other{k}.dcm")
    with pytest.raises(InputError, match="2 DICOM series") as error:
        imageio.read_image(tmp_path / "s")
    assert all(uid in str(error.value) for uid in series)
    chosen = imageio.read_image(tmp_path / "s", series_uid=pydicom.dcmread(first[0]).SeriesInstanceUID)
    assert chosen.GetSize() == (10, 12, 8)
