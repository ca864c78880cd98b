"""Training data from any user's folders or from a task directory, on the bundle's working grid.

Two ways to name data:
- user folders: a folder of source images, a folder of source label maps matched to them by file
  name (`case07.nii.gz` <-> `case07.nrrd`, any supported format, DICOM series as sub-folders), and
  a folder of unlabelled target images;
- a task directory made by `crossdomainseg data make` (layout in docs/ARCHITECTURE.md), read by
  split.

Every image is read, checked, resampled to the working grid (geometry.working_reference: the
scan's own axes nearest L, P, S, the bundle's spacing), so scans of differing sizes, spacings and
orientations train together, and normalised with its domain's spec. Label maps are resampled
nearest-neighbour onto the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import aligned_direction, resample_to_reference, working_reference
from ..imageio import READ_SUFFIXES, read_image, validate_image
from ..normalize import normalize


@dataclass
class Sample:
    """One case on the working grid: array order (z, y, x), or (y, x) when spatial_dims is 2."""

    id: str
    image: np.ndarray  # float32, normalised
    label: np.ndarray | None  # int64
    spacing: tuple  # working spacing (x, y[, z]) mm


def case_id(path: Path) -> str:
    """File name without its image suffix (folders, i.e. DICOM series, keep their name)."""
    name = path.name
    for suffix in sorted(READ_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_images(folder: str | Path, what: str = "images") -> dict[str, Path]:
    """Case id -> image file or DICOM folder, for every readable entry of `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"The {what} folder {folder} does not exist.")
    entries = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        is_image = path.is_file() and any(path.name.lower().endswith(s) for s in READ_SUFFIXES)
        if is_image or path.is_dir():
            entries.setdefault(case_id(path), path)
    if not entries:
        raise InputError(
            f"The {what} folder {folder} holds no images (NIfTI, NRRD, MHA files or DICOM folders)."
        )
    return entries


def labelled_cases(images_dir, labels_dir, what: str = "source") -> list[tuple[str, Path, Path]]:
    """(id, image, label) for every image, its label map matched by file name (`what` names the
    folders in error messages)."""
    images = list_images(images_dir, f"{what} images")
    labels = list_images(labels_dir, f"{what} labels")
    unmatched = sorted(set(images) - set(labels))
    if unmatched:
        raise InputError(
            f"No label map in {labels_dir} for {len(unmatched)} image(s), e.g. {unmatched[:3]}; "
            "label files must have the same name as their image (any supported format)."
        )
    return [(cid, images[cid], labels[cid]) for cid in images]


def unlabelled_cases(images_dir) -> list[tuple[str, Path, None]]:
    return [(cid, path, None) for cid, path in list_images(images_dir, "target images").items()]


def read_task(task_dir) -> dict:
    """task.json of a task directory (crossdomainseg.data.TaskDir checks it)."""
    from ..data import TaskDir

    return TaskDir(task_dir).meta


def task_cases(task_dir, split: str, domain: str, labelled: bool = True) -> list[tuple[str, Path, Path | None]]:
    """(id, image, label or None) of a task directory's `split` in `domain` ("source"/"target")."""
    from ..data import TaskDir

    return [(cid, image, label if labelled else None)
            for cid, image, label in TaskDir(task_dir).cases(split, domain)]


def rotated(image: sitk.Image, rotation: np.ndarray) -> sitk.Image:
    """The same voxels placed rotated by `rotation` (3x3) about the image centre in patient space:
    on the working grid this looks like a scan acquired at another orientation."""
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2 for n in image.GetSize()]))
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    out = sitk.Image(image)
    out.SetDirection((rotation @ direction).ravel().tolist())
    out.SetOrigin((centre + rotation @ (np.asarray(image.GetOrigin()) - centre)).tolist())
    return out


def random_rotation(rng: np.random.Generator, max_degrees: float, spatial_dims: int) -> np.ndarray:
    """A random rotation, each Euler angle uniform in +-max_degrees (in-plane only for 2D)."""
    angles = np.radians(rng.uniform(-max_degrees, max_degrees, 3))
    if spatial_dims == 2:
        angles[:2] = 0.0
    (a, b, c), (ca, cb, cc) = np.sin(angles), np.cos(angles)
    rx = np.array([[1, 0, 0], [0, ca, -a], [0, a, ca]])
    ry = np.array([[cb, 0, b], [0, 1, 0], [-b, 0, cb]])
    rz = np.array([[cc, -c, 0], [c, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx


def load_sample(case: tuple, spacing, norm_spec: dict, spatial_dims: int,
                label_values=None, rotation: np.ndarray | None = None) -> Sample:
    """Read, resample and normalise one (id, image, label-or-None) case, optionally rotated
    (augmentation: `rotated`)."""
    cid, image_path, label_path = case
    image = validate_image(read_image(image_path), str(image_path))
    spacing = [float(s) for s in spacing]
    full_spacing = spacing + [image.GetSpacing()[2]] if spatial_dims == 2 else spacing
    if spatial_dims == 2 and image.GetSize()[2] != 1:
        raise InputError(f"{image_path}: a 2D model needs 2D images, this one has "
                         f"{image.GetSize()[2]} slices.")
    # a rotated copy keeps the unrotated scan's working axes, so the anatomy turns on the grid
    axes = None if rotation is None or image.GetSize()[2] == 1 else aligned_direction(image)
    if rotation is not None:
        image = rotated(image, rotation)
    reference = working_reference(image, full_spacing, axes)
    floor = float(sitk.GetArrayViewFromImage(image).min())
    working = resample_to_reference(sitk.Cast(image, sitk.sitkFloat32), reference,
                                    sitk.sitkLinear, floor)
    array = normalize(sitk.GetArrayFromImage(working), norm_spec)
    label = None
    if label_path is not None:
        label_image = read_image(label_path)
        check_integer_labels(np.unique(sitk.GetArrayViewFromImage(label_image)), label_path)
        if rotation is not None:
            label_image = rotated(label_image, rotation)
        _check_overlap(image, label_image, image_path, label_path)
        label_image = sitk.Cast(label_image, sitk.sitkInt16)
        label = sitk.GetArrayFromImage(
            resample_to_reference(label_image, reference, sitk.sitkNearestNeighbor, 0)
        ).astype(np.int64)
        if label_values is not None:
            extra = sorted(set(np.unique(label).tolist()) - set(label_values))
            if extra:
                raise InputError(f"{label_path}: label values {extra} are not among the task's "
                                 f"labels {sorted(label_values)}.")
    if spatial_dims == 2:
        array = array[0]
        label = None if label is None else label[0]
    return Sample(cid, array, label, tuple(spacing))


def check_integer_labels(values: np.ndarray, label_path) -> None:
    """A label map holds whole non-negative values: fractions (a resampled or probability map)
    would be truncated into other labels."""
    if values.size and (np.any(values < 0) or not np.all(np.mod(values, 1) == 0)):
        raise InputError(f"{label_path} holds fractional or negative values; a label map holds whole "
                         "label values (0 for background). Export it as a label map, not a resampled image.")


# Largest label value: the engine writes labels as 8-bit maps and the store keeps them so.
MAX_LABEL_VALUE = 255


def check_label_channels(labels: dict) -> None:
    """The segmenter has one output channel per value from 0 to the largest label value, so the
    values ({name: value}) must be at most `MAX_LABEL_VALUE` and not sparse: more than half of
    the channels standing for values no label has (e.g. {0, 1000}: 1001 channels for one
    structure) would make a network that hardly trains. Refused before any work, with the values
    and the relabelling that fixes them."""
    values = sorted(set(int(v) for v in labels.values()) | {0})
    shown = ", ".join(str(v) for v in (values if len(values) <= 12 else values[:8] + ["..."] + values[-2:]))
    if len(values) > MAX_LABEL_VALUE + 1:
        raise InputError(f"The labels have {len(values)} values ({shown}); a model segments at most "
                         f"{MAX_LABEL_VALUE} structures (labels are written as 8-bit maps). If these are "
                         "images rather than label maps, give the label maps' folder.")
    # the fewest changes: values already below the count stay, the others take the free values
    free = sorted(set(range(len(values))) - set(values))
    moves = [f"{v} -> {new}" for v, new in zip([v for v in values if v >= len(values)], free)]
    fix = (f"relabel the label maps to consecutive values 0..{len(values) - 1} "
           f"({', '.join(moves[:3] + (['...'] if len(moves) > 3 else []))}) and name them with "
           "--label-names, e.g. liver=1,spleen=2")
    if values[-1] + 1 > 2 * len(values):
        raise InputError(f"The label values {shown} are sparse: the network would have {values[-1] + 1} "
                         f"output channels (one per value from 0 to {values[-1]}) for {len(values) - 1} "
                         f"structure(s); {fix}.")
    if values[-1] > MAX_LABEL_VALUE:
        raise InputError(f"The label values {shown} go above {MAX_LABEL_VALUE}, which labels written as "
                         f"8-bit maps cannot hold; {fix}.")


def _check_overlap(image, label, image_path, label_path):
    """A label map must cover the same physical region as its image (guards mismatched pairs)."""
    from ..geometry import physical_bounds

    lo_i, hi_i = physical_bounds(image)
    lo_l, hi_l = physical_bounds(label)
    tolerance = 2 * max(max(image.GetSpacing()), max(label.GetSpacing()))
    dims = 2 if image.GetSize()[2] == 1 else 3
    if np.any(np.abs(lo_i - lo_l)[:dims] > tolerance) or np.any(np.abs(hi_i - hi_l)[:dims] > tolerance):
        raise InputError(
            f"{label_path} does not cover the same region as {image_path} (image spans "
            f"{np.round(lo_i, 1).tolist()}..{np.round(hi_i, 1).tolist()} mm, label "
            f"{np.round(lo_l, 1).tolist()}..{np.round(hi_l, 1).tolist()} mm); is it the right label map?"
        )


def load_samples(cases, spacing, norm_spec, spatial_dims, label_values=None,
                 rotated_copies: int = 0, max_degrees: float = 0.0, seed: int = 0) -> list[Sample]:
    """Every case as it is, plus `rotated_copies` randomly rotated copies of each (seeded), so
    the networks do not depend on the scan's orientation."""
    samples = [load_sample(c, spacing, norm_spec, spatial_dims, label_values) for c in cases]
    rng = np.random.default_rng([seed, 17])
    for c in cases:
        for _ in range(rotated_copies):
            rotation = random_rotation(rng, max_degrees, spatial_dims)
            samples.append(load_sample(c, spacing, norm_spec, spatial_dims, label_values, rotation))
    return samples
