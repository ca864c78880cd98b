"""Grids: the working grid networks run on, and the way back to the input's own grid.

The working grid has the model's spacing and the scan's own axes, reordered and flipped to the
nearest of L, P and S (`aligned_direction`), and covers the input's extent. So a network sees
every scan the same way up and at the same scale whatever its storage order (axial, coronal,
sagittal), and an oblique scan fills its working grid: on a grid aligned with the patient axes
instead, the corners outside the tilted field of view are padding, and the straight edge where
the scan stops inside the grid is read as anatomy (on the tilted brain and abdomen target scans
the networks drew structures along it). An axis-aligned scan gets the identity direction.
Single-slice (2D) images stay single-slice with the identity direction: only the in-plane
spacing changes.
"""

import itertools

import numpy as np
import SimpleITK as sitk

AXIS_ROUND_OFF = 1e-4  # direction cosines this close to an axis are that axis (0.006 degrees)


def _corners(image: sitk.Image) -> np.ndarray:
    """(2^d, d) LPS corners (mm) of the region the voxels cover (voxel edges, not centres)."""
    size = np.asarray(image.GetSize(), dtype=float)
    return np.asarray([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in choice])
                       for choice in itertools.product(*[(-0.5, s - 0.5) for s in size])])


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest LPS corner (mm) of the region the voxels cover (voxel edges, not centres)."""
    corners = _corners(image)
    return corners.min(axis=0), corners.max(axis=0)


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images share size, spacing, origin and direction (within file round-off)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))


def aligned_direction(image: sitk.Image) -> np.ndarray:
    """(3, 3) direction (columns: the grid's x, y, z axes in LPS) of a volume's working grid: its
    own index axes, the one nearest L first, then P, then S, each pointing the way of that axis."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    order = max(itertools.permutations(range(3)),
                key=lambda p: sum(abs(direction[axis, p[axis]]) for axis in range(3)))
    axes = np.stack([np.sign(direction[axis, order[axis]]) * direction[:, order[axis]] for axis in range(3)],
                    axis=1)
    # an axis-aligned scan whose header carries round-off (a float32 qform, a RAS/LPS round trip)
    # gets exactly the identity, so the same scan read two ways is resampled identically
    return np.eye(3) if np.allclose(axes, np.eye(3), atol=AXIS_ROUND_OFF) else axes


def working_reference(image: sitk.Image, spacing, direction: np.ndarray | None = None) -> sitk.Image:
    """An empty image defining the working grid for `image` at `spacing` (mm): axes `direction`
    ((3, 3), columns in LPS; by default `aligned_direction(image)`), covering the image's extent."""
    spacing = np.asarray(spacing, dtype=float)[:3]
    if image.GetSize()[2] == 1:
        plane = _plane_reference(image[:, :, 0], spacing[:2], np.eye(2))
        reference = sitk.JoinSeries(plane)
        reference.SetOrigin((*plane.GetOrigin(), image.GetOrigin()[2]))
        reference.SetSpacing((*plane.GetSpacing(), image.GetSpacing()[2]))
        return reference
    return _plane_reference(image, spacing, aligned_direction(image) if direction is None else direction)


def _plane_reference(image: sitk.Image, spacing: np.ndarray, direction: np.ndarray) -> sitk.Image:
    corners = _corners(image) @ direction  # coordinates along the grid's axes
    low, high = corners.min(axis=0), corners.max(axis=0)
    size = np.maximum(1, np.round((high - low) / spacing)).astype(int)
    reference = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    reference.SetSpacing(spacing.tolist())
    reference.SetDirection(direction.ravel().tolist())
    reference.SetOrigin((direction @ (low + spacing / 2)).tolist())
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
