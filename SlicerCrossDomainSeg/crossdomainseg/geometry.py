"""Grids: the working grid networks run on, and the way back to the input's own grid.

The working grid has identity direction and the model's spacing and covers the input's physical
extent, so a network sees every scan the same way up and at the same scale whatever its
orientation. Single-slice (2D) images stay single-slice: only the in-plane spacing changes.
"""

import itertools

import numpy as np
import SimpleITK as sitk


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest LPS corner (mm) of the region the voxels cover (voxel edges, not centres)."""
    size = np.asarray(image.GetSize(), dtype=float)
    corners = []
    for choice in itertools.product(*[(-0.5, s - 0.5) for s in size]):
        corners.append(image.TransformContinuousIndexToPhysicalPoint([float(c) for c in choice]))
    corners = np.asarray(corners)
    return corners.min(axis=0), corners.max(axis=0)


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images share size, spacing, origin and direction (within file round-off)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))


def working_reference(image: sitk.Image, spacing) -> sitk.Image:
    """An empty image defining the working grid for `image` at `spacing` (mm)."""
    spacing = np.asarray(spacing, dtype=float)[:3]
    if image.GetSize()[2] == 1:
        plane = _plane_reference(image[:, :, 0], spacing[:2])
        reference = sitk.JoinSeries(plane)
        reference.SetOrigin((*plane.GetOrigin(), image.GetOrigin()[2]))
        reference.SetSpacing((*plane.GetSpacing(), image.GetSpacing()[2]))
        return reference
    return _plane_reference(image, spacing)


def _plane_reference(image: sitk.Image, spacing: np.ndarray) -> sitk.Image:
    low, high = physical_bounds(image)
    size = np.maximum(1, np.round((high - low) / spacing)).astype(int)
    reference = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    reference.SetSpacing(spacing.tolist())
    reference.SetOrigin((low + spacing / 2).tolist())
    return reference


def to_working_grid(image: sitk.Image, spacing, interpolator=sitk.sitkLinear,
                    default_value: float | None = None) -> sitk.Image:
    """Resample `image` onto its working grid at `spacing`.

    Outside the input the value is `default_value`, by default the image minimum (background air
    or dark MR), so that padding does not look like tissue.
    """
    if default_value is None:
        default_value = float(sitk.GetArrayViewFromImage(image).min())
    return resample_to_reference(image, working_reference(image, spacing), interpolator,
                                 default_value)


def resample_to_reference(image: sitk.Image, reference: sitk.Image, interpolator=sitk.sitkLinear,
                          default_value: float = 0.0) -> sitk.Image:
    """Resample `image` onto `reference`'s grid (spacing, origin, direction, size).

    Single-slice images are resampled in their own plane: an X-ray has no meaningful slice
    position, so only the in-plane geometry is matched.
    """
    if image.GetSize()[2] == 1 and reference.GetSize()[2] == 1:
        plane = sitk.Resample(image[:, :, 0], reference[:, :, 0], sitk.Transform(), interpolator,
                              default_value, image.GetPixelID())
        volume = sitk.JoinSeries(plane)
        volume.CopyInformation(reference)
        return volume
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, default_value,
                         image.GetPixelID())
