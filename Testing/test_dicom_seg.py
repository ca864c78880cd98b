"""DICOM SEG written with highdicom: coded terminology, provenance, exact read-back, dciodvfy-clean."""

import datetime

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from crossdomainseg import dciodvfy, imageio, terminology
from crossdomainseg.dicom_seg import Provenance, read_dicom_seg, write_dicom_seg
from crossdomainseg.dicom_series import write_series
from crossdomainseg.errors import InputError

LABELS = {"background": 0, "liver": 1, "kidneys": 2, "spleen": 3, "lesion": 4, "my structure": 7}

def assert_valid(path):
    """dciodvfy finds no error in the object (warnings are allowed and printed)."""
    report = dciodvfy.validate(path)
    print("\n".join(report.warnings))
    assert report.errors == []


def series_and_label(folder):
    image = sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 900, (6, 16, 14)).astype(np.int16))
    image.SetSpacing((0.9, 0.9, 3.0))
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))  # sagittal slices
    files = write_series(image, folder, patient_name="Doe^Jane", patient_id="P-17")
    array = np.zeros((6, 16, 14), dtype=np.uint8)
    array[1:4, 2:9, 2:8] = 1
    array[2, 4:6, 4:6] = 4
    array[3:5, 10:14, 9:12] = 2
    array[5, 0:3, 0:3] = 7
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(imageio.read_image(folder))
    return files, label


def test_seg_codes_provenance_and_exact_read_back(tmp_path):
    files, label = series_and_label(tmp_path / "series")
    when = datetime.datetime(2026, 12, 7, 1, 2, 3)
    provenance = Provenance("phantom-ct-mr-1.2", clicks=3, corrected=True, accepted_by="Smith^Anna", when=when)
    path = write_dicom_seg(label, files, tmp_path / "out" / "seg.dcm", LABELS, provenance)
    assert_valid(path)

    seg = pydicom.dcmread(path)
    source = pydicom.dcmread(files[0])
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID, seg.PatientID) == (
        source.StudyInstanceUID, source.FrameOfReferenceUID, "P-17")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert (seg.ContentDate, seg.ContentTime, str(seg.ContentCreatorName)) == ("20261207", "010203", "Smith^Anna")
    assert "phantom-ct-mr-1.2" in seg.SeriesDescription and "3 clicks" in seg.ContentDescription
    segments = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert list(segments) == ["liver", "kidneys", "lesion", "my structure"]  # spleen is empty
    for name, item in segments.items():
        term = terminology.term_for(name)
        assert item.SegmentAlgorithmType == "SEMIAUTOMATIC"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == term.type.value
        assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == term.type.scheme
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == term.category.value
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmVersion == "phantom-ct-mr-1.2"
        assert algorithm.AlgorithmParameters == "clicks=3"
    kidney_type = segments["kidneys"].SegmentedPropertyTypeCodeSequence[0]
    assert kidney_type.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Right and left"
    assert segments["my structure"].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "99CDS"
    assert seg.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99CDS"

    back, values = read_dicom_seg(path, files, LABELS)
    assert values == {"liver": 1, "kidneys": 2, "lesion": 4, "my structure": 7}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(label))
    np.testing.assert_allclose(back.GetDirection(), label.GetDirection())


def test_uncorrected_label_is_automatic(tmp_path):
    files, label = series_and_label(tmp_path / "series")
    path = write_dicom_seg(label, files, tmp_path / "seg.dcm", LABELS, Provenance("m-1"))
    assert_valid(path)
    assert {s.SegmentAlgorithmType for s in pydicom.dcmread(path).SegmentSequence} == {"AUTOMATIC"}


def test_empty_or_off_grid_label_is_refused(tmp_path):
    files, label = series_and_label(tmp_path / "series")
    empty = sitk.Image(label.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(label)
    with pytest.raises(InputError, match="empty"):
        write_dicom_seg(empty, files, tmp_path / "e.dcm", LABELS, Provenance("m-1"))
    moved = sitk.Image(label)
    moved.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="does not lie on the grid"):
        write_dicom_seg(moved, files, tmp_path / "m.dcm", LABELS, Provenance("m-1"))
    assert not list(tmp_path.glob("*.dcm"))
