"""Reading, checking and writing images with their geometry kept exactly.

Reads NIfTI, NRRD, MetaImage (MHA/MHD) files and DICOM series folders; writes NIfTI, NRRD, MHA
and Slicer's `.seg.nrrd`. 2D images come back as single-slice 3D volumes so that everything
downstream handles one kind of image. Writes go to a temporary name first and are renamed, so a
crash never leaves a half-written file under the real name.
"""

import gzip
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .dicom_series import check_series
from .errors import InputError
from .terminology import terms_for

READ_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
WRITE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(READ_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def read_image(path, series_uid: str | None = None) -> sitk.Image:
    """Read an image file or a DICOM series folder; 2D images become single-slice volumes."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder.")
    if path.is_dir():
        image = _read_dicom_folder(path, series_uid)
    else:
        if _suffix(path) in (".nii", ".nii.gz"):
            _check_nifti_data(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise InputError(
                f"{path}: could not be read as an image: the file is damaged, cut short or of an "
                f"unsupported kind (ITK: {_first_line(error)}). Supported: "
                "NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd), DICOM."
            ) from None
        _check_spacing_given(path)
    _check_finite(image, path)
    if image.GetDimension() == 2:
        image = as_single_slice(image)
    return image


def read_header(path) -> sitk.ImageFileReader | None:
    """A 3D image file's header without its voxels (size, spacing, origin and direction as
    read_image gives them), or None where only reading the image tells: a DICOM series folder,
    a 2D file (read_image makes it one slice), a header ITK cannot read. A header without voxel
    spacing is refused as read_image refuses it."""
    path = Path(path)
    if not path.is_file():
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    if reader.GetDimension() != 3:
        return None
    _check_spacing_given(path)
    return reader


def _check_spacing_given(path: Path) -> None:
    if _header_lacks_spacing(path):
        raise InputError(
            f"{path}: the file's header gives no voxel spacing, so sizes in mm are unknown. "
            "Re-export it from the scanner software or viewer with its geometry."
        )


def _check_finite(image: sitk.Image, name) -> None:
    """NaN or infinite voxels (float images only) make every downstream number meaningless."""
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32,
                                  sitk.sitkVectorFloat64):
        return
    finite = np.isfinite(sitk.GetArrayViewFromImage(image))
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise InputError(
            f"{name}: {bad} voxel(s) are NaN or infinite; the image is corrupt or was exported "
            "wrongly. Re-export it or fill those voxels before segmenting."
        )


NIFTI_CHUNK_BYTES = 1 << 24


def _check_nifti_data(path: Path) -> None:
    """Refuse a NIfTI file whose voxel data is cut short (ITK would fill the rest with zeros) or,
    for float data, holds NaN/Inf (ITK's NIfTI reader turns them into 0). Streams the data in
    chunks, so a large file costs no extra memory."""
    import nibabel

    try:
        header = nibabel.load(str(path)).header
        dtype = header.get_data_dtype()
        expected = int(np.prod(header.get_data_shape(), dtype=np.int64)) * dtype.itemsize
        offset = int(header.get_data_offset())
    except Exception as error:  # nibabel reads every valid NIfTI header; anything else is refused
        raise InputError(f"{path}: could not be read as a NIfTI image ({_first_line(error)}).") from None
    check_values = dtype.kind == "f"
    opener = gzip.open if _suffix(path) == ".nii.gz" else open
    received = 0
    try:
        with opener(path, "rb") as stream:
            stream.seek(offset)
            while received < expected:
                want = min(NIFTI_CHUNK_BYTES, expected - received)
                chunk = stream.read(want)
                if not chunk:
                    break
                if check_values:
                    usable = len(chunk) - len(chunk) % dtype.itemsize
                    values = np.frombuffer(chunk[:usable], dtype=dtype)
                    if not np.isfinite(values).all():
                        raise InputError(
                            f"{path}: some voxels are NaN or infinite; the image is corrupt or was "
                            "exported wrongly. Re-export it or fill those voxels before segmenting.")
                received += len(chunk)
    except (EOFError, OSError, gzip.BadGzipFile, zlib.error) as error:
        raise InputError(f"{path}: the file is damaged or cut short ({_first_line(error)}); "
                         "copy or export it again.") from None
    if received < expected:
        raise InputError(
            f"{path}: the file is cut short: its header describes {expected} bytes of voxel data but "
            f"only {received} are there ({100 * received / max(expected, 1):.0f}%). The copy or "
            "download was incomplete; copy or export it again.")


def _header_lacks_spacing(path: Path) -> bool:
    """ITK quietly replaces a missing spacing by 1 mm; look at the header itself instead."""
    suffix = _suffix(path)
    if suffix in (".nii", ".nii.gz"):
        opener = gzip.open if suffix == ".nii.gz" else open
        with opener(path, "rb") as stream:
            header = stream.read(540)
        for order in "<>":
            size = struct.unpack(order + "i", header[:4])[0]
            if size == 348:  # NIfTI-1: dim int16[8] at 40, pixdim float32[8] at 76
                dims = struct.unpack(order + "8h", header[40:56])
                pixdim = struct.unpack(order + "8f", header[76:108])
                break
            if size == 540:  # NIfTI-2: dim int64[8] at 16, pixdim float64[8] at 104
                dims = struct.unpack(order + "8q", header[16:80])
                pixdim = struct.unpack(order + "8d", header[104:168])
                break
        else:
            return False
        return any(not value > 0 for value in pixdim[1:1 + min(dims[0], 3)])
    if suffix in (".nrrd", ".nhdr"):
        fields = set()
        with open(path, "rb") as stream:
            for raw in stream:
                line = raw.decode("latin-1").strip()
                if not line:
                    break
                fields.add(line.split(":", 1)[0].strip().lower())
        return not fields & {"space directions", "spacings"}
    return False


def _read_dicom_folder(folder: Path, series_uid: str | None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder}: the folder holds no DICOM image series.")
    if series_uid is None:
        if len(series) > 1:
            raise InputError(
                f"{folder}: the folder holds {len(series)} DICOM series ({', '.join(series)}); "
                "choose one (series_uid) or put each series in its own folder."
            )
        series_uid = series[0]
    elif series_uid not in series:
        raise InputError(f"{folder}: no DICOM series {series_uid} (found: {', '.join(series)}).")
    files = reader.GetGDCMSeriesFileNames(str(folder), series_uid)
    check_series(files, f"{folder} (series {series_uid})")
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: the DICOM series could not be read ({_first_line(error)}).") from None


def as_single_slice(image: sitk.Image) -> sitk.Image:
    """A 2D image as a 3D volume of one slice, same in-plane geometry, unit slice spacing."""
    volume = sitk.JoinSeries(image)
    direction = np.eye(3)
    direction[:2, :2] = np.asarray(image.GetDirection()).reshape(2, 2)
    volume.SetDirection(direction.ravel().tolist())
    volume.SetOrigin((*image.GetOrigin(), 0.0))
    volume.SetSpacing((*image.GetSpacing(), 1.0))
    for key in image.GetMetaDataKeys():
        volume.SetMetaData(key, image.GetMetaData(key))
    return volume


def validate_image(image: sitk.Image, name: str = "image") -> sitk.Image:
    """Refuse what cannot be segmented, with a message saying what is wrong; returns the image."""
    if not isinstance(image, sitk.Image):
        raise InputError(f"{name}: expected a SimpleITK image, got {type(image).__name__}.")
    if image.GetDimension() == 2:
        image = as_single_slice(image)
    if image.GetDimension() != 3:
        raise InputError(
            f"{name}: a {image.GetDimension()}D image cannot be segmented; give one 3D volume or "
            "one 2D image (for a time series or multi-echo scan, pick one volume first)."
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name}: has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or "
            "vector image); give a single-channel greyscale image."
        )
    if 0 in image.GetSize():
        raise InputError(f"{name}: the image is empty (size {image.GetSize()}).")
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(
            f"{name}: the voxel spacing {tuple(spacing)} is missing or invalid; the file's header "
            "must give positive spacing in mm."
        )
    _check_finite(image, name)
    array = sitk.GetArrayViewFromImage(image)
    if array.min() == array.max():
        raise InputError(
            f"{name}: every voxel has the same value ({array.flat[0]}); there is nothing to segment."
        )
    return image


def write_image(image: sitk.Image, path, compress: bool = True) -> Path:
    """Write atomically to NIfTI, NRRD or MHA (chosen by the file name)."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise InputError(f"{path}: cannot write '{suffix}'; use one of {', '.join(WRITE_SUFFIXES)}.")
    _atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), compress))
    return path


def write_seg_nrrd(label: sitk.Image, path, labels: dict, colors: dict | None = None,
                   terminology: dict | None = None) -> Path:
    """Write a label map as a Slicer segmentation (.seg.nrrd) with slicerio, one segment per
    label value, each with its name, colour and standard terminology codes (terminology.py).

    `labels` maps segment names to label values (background 0 is skipped); `colors` maps names to
    RGB 0-255 (default: the terminology's); `terminology`: a bundle's overrides.
    """
    import slicerio

    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise InputError(f"{path}: a Slicer segmentation file name must end with .seg.nrrd.")
    array = sitk.GetArrayFromImage(label)
    voxels = np.ascontiguousarray(array.transpose(2, 1, 0)).astype(
        np.uint8 if array.max() < 256 else np.uint16)  # NRRD index order i, j, k
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(label.GetDirection()).reshape(3, 3) * np.asarray(label.GetSpacing())
    ijk_to_lps[:3, 3] = label.GetOrigin()
    extent = [0, voxels.shape[0] - 1, 0, voxels.shape[1] - 1, 0, voxels.shape[2] - 1]
    segments = []
    for name, term in terms_for(labels, terminology).items():
        rgb = np.asarray((colors or {}).get(name, term.color), dtype=float) / 255.0
        entry = {"contextName": "Segmentation category and type - DICOM master list",
                 "category": [term.category.scheme, term.category.value, term.category.meaning],
                 "type": [term.type.scheme, term.type.value, term.type.meaning]}
        if term.modifier is not None:
            entry["typeModifier"] = [term.modifier.scheme, term.modifier.value, term.modifier.meaning]
        segments.append({"id": f"Segment_{int(labels[name])}", "name": name, "nameAutoGenerated": False,
                         "color": [round(float(c), 6) for c in rgb], "colorAutoGenerated": False,
                         "labelValue": int(labels[name]), "layer": 0, "extent": extent,
                         "terminology": entry})
    segmentation = {"voxels": voxels, "ijkToLPS": ijk_to_lps.tolist(), "encoding": "gzip",
                    "containedRepresentationNames": ["Binary labelmap"],
                    "masterRepresentation": "Binary labelmap", "referenceImageExtentOffset": [0, 0, 0],
                    "segments": segments}
    _atomic_write(path, lambda tmp: slicerio.write_segmentation(str(tmp), segmentation))
    return path


def read_seg_nrrd(path) -> tuple[sitk.Image, dict]:
    """Read a single-layer Slicer .seg.nrrd: the label map and {segment name: label value}."""
    path = Path(path)
    image = read_image(path)
    labels = {}
    index = 0
    while image.HasMetaDataKey(f"Segment{index}_Name"):
        layer = image.GetMetaData(f"Segment{index}_Layer") if image.HasMetaDataKey(
            f"Segment{index}_Layer") else "0"
        if layer.strip() != "0":
            raise InputError(f"{path}: segmentations with overlapping layers are not supported.")
        labels[image.GetMetaData(f"Segment{index}_Name")] = int(
            image.GetMetaData(f"Segment{index}_LabelValue"))
        index += 1
    if not labels:
        raise InputError(f"{path}: not a Slicer segmentation (no Segment0_Name in its header).")
    return image, labels


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = _suffix(path) if not path.name.lower().endswith(".seg.nrrd") else ".seg.nrrd"
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        with open(tmp, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
