"""DICOM Segmentation (SEG) objects for a label map whose image came from a DICOM series.

Written and read with highdicom. A binary SEG: one segment per label present, coded with the
bundle's terminology (terminology.py), one frame per segment and source slice that holds it, each
referencing its source instance with its patient-space position; patient, study and frame of
reference come from the source series, a new series holds the SEG.

Provenance goes where the standard has a place for it: the model version in each segment's
AlgorithmIdentificationSequence (AlgorithmVersion, with the number of clicks as an algorithm
parameter) and in SoftwareVersions; SEMIAUTOMATIC as SegmentAlgorithmType when the label was
corrected by clicks or paint (AUTOMATIC otherwise); who accepted it in ContentCreatorName; when in
ContentDate/ContentTime; all of it in words in ContentDescription and SeriesDescription.
"""

from __future__ import annotations

import datetime
import getpass
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .errors import InputError
from .terminology import LOCAL_SCHEME, terms_for

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
POSITION_TOLERANCE_MM = 0.01


@dataclass
class Provenance:
    """Who and what made a segmentation: recorded in every exported object."""

    model_version: str
    clicks: int = 0
    corrected: bool = False  # corrected by clicks or paint: SEMIAUTOMATIC
    accepted_by: str | None = None  # a DICOM person name; None: the login name
    when: datetime.datetime = field(default_factory=datetime.datetime.now)

    def person(self) -> str:
        return self.accepted_by or _user_name()

    def describe(self) -> str:
        how = f"corrected ({self.clicks} clicks)" if self.corrected else "automatic"
        return f"CrossDomainSeg {self.model_version}, {how}, accepted by {self.person()}"


def dicom_files(source) -> list[Path]:
    """The DICOM files of a series folder, or the file itself."""
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    return [source]


def write_dicom_seg(label: sitk.Image, source_files, path, labels: dict, provenance: Provenance,
                    terminology: dict | None = None, colors: dict | None = None) -> Path:
    """Write `label` (on the source series' grid, values as in `labels`) as a DICOM SEG at `path`.

    source_files: the files of the DICOM series the image was read from. terminology / colors:
    the bundle's `terminology` overrides and plain `colors` (terminology.terms_for).
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = sources_by_slice(label, source_files)
    values = sitk.GetArrayFromImage(label)
    terms = terms_for(labels, terminology, colors)
    present = [(name, int(labels[name])) for name in terms if (values == int(labels[name])).any()]
    if not present:
        raise InputError("The segmentation is empty: there is nothing to export as DICOM SEG.")

    algorithm = hd.AlgorithmIdentificationSequence(
        name="CrossDomainSeg", family=codes.cid7162.ArtificialIntelligence,
        version=provenance.model_version[:64], source="SlicerCrossDomainSeg",
        parameters={"clicks": str(int(provenance.clicks))})
    kind = (hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if provenance.corrected
            else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC)
    descriptions, numbered = [], np.zeros(values.shape, dtype=np.uint8)
    for number, (name, value) in enumerate(present, start=1):
        term = terms[name]
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64],
            segmented_property_category=_concept(term.category),
            segmented_property_type=_concept(term.type), algorithm_type=kind,
            algorithm_identification=algorithm, display_color=hd.color.CIELabColor(
                *_lab(term.color)))
        if term.modifier is not None:
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _concept(term.modifier)]
        descriptions.append(description)
        numbered[values == value] = number

    first = sources[0]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=numbered,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="SlicerCrossDomainSeg",
        manufacturer_model_name="CrossDomainSeg", software_versions=[
            f"crossdomainseg {__version__}", provenance.model_version[:64]],
        device_serial_number="1", content_label="SEGMENTATION",
        content_description=provenance.describe()[:64],
        content_creator_name=_person_name(provenance.person()),
        series_description=f"CrossDomainSeg {provenance.model_version}"[:64],
        content_date=provenance.when.date(), content_time=provenance.when.time().replace(microsecond=0),
        coding_schemes=_local_schemes(terms[name] for name, _ in present))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pydicom.dcmwrite(tmp, seg, enforce_file_format=True)
    tmp.replace(path)
    return path


def read_dicom_seg(path, source_files, labels: dict | None = None) -> tuple[sitk.Image, dict]:
    """Read a DICOM SEG back onto the grid of its source series (source_files: its files, in a
    folder that may hold other series too).

    Returns the label map (SimpleITK, the series' geometry) and {segment label: value}: `labels`'
    values for the segment labels it knows, else the segment numbers.
    """
    import highdicom as hd
    import pydicom

    from .imageio import read_image

    try:
        seg = hd.seg.segread(str(path))
    except Exception as error:  # not a DICOM file, or not a SEG
        raise InputError(f"{path}: not a readable DICOM SEG ({error}).") from None
    files = [Path(f) for f in source_files]
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    image = read_image(files[0].parent, series_uid=uid)  # the source series' grid, checked
    sources = sources_by_slice(image, files)
    frames = seg.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in sources], combine_segments=True, relabel=False,
        assert_missing_frames_are_empty=True)
    names = {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}
    values = {name: int((labels or {}).get(name, number)) for number, name in names.items()}
    array = np.zeros(frames.shape, dtype=np.uint16)
    for number, name in names.items():
        array[frames == number] = values[name]
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(image)
    return label, values


def sources_by_slice(label: sitk.Image, source_files) -> list:
    """The source instance of each slice of `label` (matched by patient position)."""
    import pydicom

    found = []
    for file in source_files:
        try:
            ds = pydicom.dcmread(file)
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


def _local_schemes(terms) -> list | None:
    """The identification of the private coding scheme, when a segment uses it (PS3.3 C.12.1)."""
    import highdicom as hd

    if all(term.standard for term in terms):
        return None
    return [hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=LOCAL_SCHEME, name="SlicerCrossDomainSeg label names",
        responsible_organization="SlicerCrossDomainSeg")]


def _concept(code):
    import highdicom as hd

    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _lab(rgb) -> tuple[float, float, float]:
    from .terminology import rgb_to_lab

    lightness, a, b = rgb_to_lab(rgb)
    return (min(max(lightness, 0.0), 100.0), min(max(a, -128.0), 127.0), min(max(b, -128.0), 127.0))


def _person_name(name: str) -> str:
    """A DICOM person name (PN): components separated by '^', at most 64 characters each; a
    single name (a login) is a family name ("name^")."""
    parts = [part[:64] for part in str(name).replace("\\", " ").split("^")[:5]]
    return "^".join(parts) if len(parts) > 1 else f"{parts[0] or 'UNKNOWN'}^"


def _user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in this environment (a service account)
        return "UNKNOWN"
