"""DICOM Segmentation (SEG) export for a label map whose image came from a DICOM series.

A binary SEG: one frame per segment and source slice that holds the segment, each frame referencing
its source instance and carrying its patient-space position, so any DICOM viewer overlays it on
the series it was made from. Patient and study come from the source series; a new series holds
the SEG. Written with pydicom (no other DICOM library needed).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from crossdomainseg.errors import InputError

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
POSITION_TOLERANCE_MM = 0.01


def dicom_files(source) -> list[Path]:
    """The DICOM files of a series folder, or the file itself."""
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    return [source]


def write_dicom_seg(label: sitk.Image, source_files, path, labels: dict, colors: dict,
                    algorithm: str, manual_edits: bool = False) -> Path:
    """Write `label` (on the source series' grid, values as in `labels`) as a DICOM SEG at `path`.

    source_files: the files of the DICOM series the image was read from. algorithm: the model
    (name and version) recorded as the segmentation algorithm. manual_edits: the label was
    corrected by the user (algorithm type SEMIAUTOMATIC).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sources = _sources_by_slice(label, source_files)
    first = sources[0]
    values = sitk.GetArrayViewFromImage(label)
    segments = [(name, int(value)) for name, value in sorted(labels.items(), key=lambda kv: kv[1])
                if int(value) != 0 and (values == int(value)).any()]
    if not segments:
        raise InputError("The segmentation is empty: there is nothing to export as DICOM SEG.")

    now = datetime.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SEG_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "FrameOfReferenceUID"):
        setattr(ds, keyword, getattr(first, keyword, ""))
    ds.SOPClassUID = SEG_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SEG"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(getattr(first, "SeriesNumber", 0) or 0) + 1000
    ds.SeriesDescription = "CrossDomainSeg segmentation"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.Manufacturer = "SlicerCrossDomainSeg"
    ds.ManufacturerModelName = "CrossDomainSeg"
    ds.DeviceSerialNumber = "1"
    ds.SoftwareVersions = algorithm
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel = "SEGMENTATION"
    ds.ContentDescription = "CrossDomainSeg " + ("corrected" if manual_edits else "automatic")
    ds.ContentCreatorName = "CrossDomainSeg"
    ds.SegmentationType = "BINARY"
    ds.SegmentsOverlap = "NO"  # one label map: every voxel belongs to at most one segment
    ds.PositionReferenceIndicator = getattr(first, "PositionReferenceIndicator", "")
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(first.Rows), int(first.Columns)
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = ds.PixelRepresentation = 0

    ds.SegmentSequence = Sequence()
    for number, (name, _) in enumerate(segments, start=1):
        item = Dataset()
        item.SegmentNumber = number
        item.SegmentLabel = name
        item.SegmentAlgorithmType = "SEMIAUTOMATIC" if manual_edits else "AUTOMATIC"
        item.SegmentAlgorithmName = algorithm
        item.SegmentedPropertyCategoryCodeSequence = Sequence([_code("85756007", "SCT", "Tissue")])
        item.SegmentedPropertyTypeCodeSequence = Sequence([_code("85756007", "SCT", "Tissue")])
        item.RecommendedDisplayCIELabValue = _dicom_lab(colors.get(name, (230, 80, 60)))
        ds.SegmentSequence.append(item)

    spacing = label.GetSpacing()
    direction = np.asarray(label.GetDirection()).reshape(3, 3)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[0]:.6g}"]  # row spacing, column spacing
    measures.SliceThickness = f"{spacing[2]:.6g}"
    measures.SpacingBetweenSlices = f"{spacing[2]:.6g}"
    shared.PixelMeasuresSequence = Sequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])]
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])

    dimensions = Dataset()
    dimensions.DimensionOrganizationUID = generate_uid()
    ds.DimensionOrganizationSequence = Sequence([dimensions])
    ds.DimensionIndexSequence = Sequence([
        _dimension(dimensions.DimensionOrganizationUID, 0x0062000B, 0x0062000A, "Segment number"),
        _dimension(dimensions.DimensionOrganizationUID, 0x00200032, 0x00209113, "Image position"),
    ])

    frames, per_frame = [], Sequence()
    for number, (_, value) in enumerate(segments, start=1):
        for k, source in enumerate(sources):
            mask = values[k] == value
            if not mask.any():
                continue
            frames.append(mask)
            per_frame.append(_frame(source, number, k + 1, label.TransformIndexToPhysicalPoint((0, 0, k))))
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.NumberOfFrames = len(frames)
    packed = np.packbits(np.concatenate([f.ravel() for f in frames]).astype(np.uint8), bitorder="little")
    ds.PixelData = packed.tobytes() + (b"\0" if packed.size % 2 else b"")

    referenced = Dataset()
    referenced.SeriesInstanceUID = first.SeriesInstanceUID
    referenced.ReferencedInstanceSequence = Sequence()
    for source in sources:
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        referenced.ReferencedInstanceSequence.append(item)
    ds.ReferencedSeriesSequence = Sequence([referenced])

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    tmp.replace(path)
    return path


def _sources_by_slice(label: sitk.Image, source_files) -> list:
    """The source instance of each slice of `label` (matched by patient position)."""
    import pydicom

    found = []
    for file in source_files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception:  # not DICOM (a stray file in the folder)
            continue
        if "ImagePositionPatient" in ds and "SOPInstanceUID" in ds:
            found.append(ds)
    if not found:
        raise InputError("DICOM SEG export needs the DICOM series the image came from; none was found.")
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in found])
    size = label.GetSize()
    by_slice = []
    for k in range(size[2]):
        point = np.asarray(label.TransformIndexToPhysicalPoint((0, 0, k)))
        distance = np.linalg.norm(positions - point, axis=1)
        best = int(np.argmin(distance))
        if distance[best] > POSITION_TOLERANCE_MM or (int(found[best].Rows), int(found[best].Columns)) != (size[1], size[0]):
            raise InputError(
                "The segmentation does not lie on the grid of the DICOM series it is exported for "
                f"(slice {k} has no matching DICOM image); export as .seg.nrrd or .nii.gz instead.")
        by_slice.append(found[best])
    return by_slice


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _dimension(organization_uid: str, pointer: int, group: int, label: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.DimensionOrganizationUID = organization_uid
    item.DimensionIndexPointer = pointer
    item.FunctionalGroupPointer = group
    item.DimensionDescriptionLabel = label
    return item


def _frame(source, segment_number: int, slice_number: int, position):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    frame = Dataset()
    content = Dataset()
    content.DimensionIndexValues = [segment_number, slice_number]
    frame.FrameContentSequence = Sequence([content])
    plane = Dataset()
    plane.ImagePositionPatient = [f"{v:.6f}" for v in position]
    frame.PlanePositionSequence = Sequence([plane])
    identification = Dataset()
    identification.ReferencedSegmentNumber = segment_number
    frame.SegmentIdentificationSequence = Sequence([identification])
    image = Dataset()
    image.ReferencedSOPClassUID = source.SOPClassUID
    image.ReferencedSOPInstanceUID = source.SOPInstanceUID
    image.PurposeOfReferenceCodeSequence = Sequence(
        [_code("121322", "DCM", "Source image for image processing operation")])
    derivation = Dataset()
    derivation.SourceImageSequence = Sequence([image])
    derivation.DerivationCodeSequence = Sequence([_code("113076", "DCM", "Segmentation")])
    frame.DerivationImageSequence = Sequence([derivation])
    return frame


def _dicom_lab(rgb) -> list[int]:
    """sRGB (0-255 or 0-1) -> CIELab (D65) scaled to DICOM's 16-bit encoding."""
    rgb = np.asarray(rgb, dtype=float)
    rgb = rgb / 255.0 if rgb.max() > 1.0 else rgb
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ linear / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))
    return [int(round(lab[0] * 65535 / 100)), int(round((lab[1] + 128) * 65535 / 255)),
            int(round((lab[2] + 128) * 65535 / 255))]
