"""Working grid and the way back keep patient positions."""

import numpy as np
import SimpleITK as sitk

from crossdomainseg import geometry
from test_imageio import oblique_image


def blob(image):
    """A sphere of radius 12 mm around a fixed LPS point, drawn on `image`'s grid."""
    centre = np.array([-5.0, 45.0, 118.0])
    size = image.GetSize()
    k, j, i = np.meshgrid(*[np.arange(s) for s in size[::-1]], indexing="ij")
    idx = np.stack([i.ravel(), j.ravel(), k.ravel()], 1).astype(float)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    points = np.asarray(image.GetOrigin()) + (idx * image.GetSpacing()) @ direction.T
    inside = (np.linalg.norm(points - centre, axis=1) < 12).reshape(size[::-1])
    out = sitk.GetImageFromArray(inside.astype(np.float32))
    out.CopyInformation(image)
    return out


def test_oblique_scan_fills_its_working_grid_on_its_own_axes():
    image = oblique_image(np.float32, shape=(30, 40, 50))
    working = geometry.to_working_grid(image, (2.0, 2.0, 2.0))
    direction = np.asarray(working.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction, np.asarray(image.GetDirection()).reshape(3, 3), atol=1e-12)
    assert working.GetSpacing() == (2.0, 2.0, 2.0)
    low, high = geometry.physical_bounds(image)
    wlow, whigh = geometry.physical_bounds(working)
    assert np.all(np.abs(wlow - low) < 2.0) and np.all(np.abs(whigh - high) < 2.0)
    # no padding: every working voxel but the outer rim lies inside the scanned field of view
    ones = sitk.Image(image.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(image)
    inside = sitk.GetArrayFromImage(geometry.to_working_grid(ones, (2.0, 2.0, 2.0), default_value=0.0))
    assert inside[1:-1, 1:-1, 1:-1].min() == 1.0


def test_working_axes_are_the_scan_axes_nearest_l_p_s_in_that_order():
    # a tilted coronal scan stored flipped left-right: index axes (-L, S, P) rotated by 10 degrees
    a = np.radians(10)
    tilt = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    coronal = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    image = sitk.Image((20, 18, 6), sitk.sitkFloat32)
    image.SetSpacing((1.0, 1.0, 5.0))
    image.SetDirection((tilt @ coronal).ravel().tolist())
    axes = geometry.aligned_direction(image)
    assert np.allclose(np.diag(axes), [1.0, np.cos(a), np.cos(a)])  # each axis points along +L, +P, +S
    np.testing.assert_allclose(np.abs(axes.T @ (tilt @ coronal)).max(axis=0), 1.0)  # the scan's own axes
    # a scan in any storage order without tilt gets the identity (the grid it always had)
    image.SetDirection(coronal.ravel().tolist())
    reference = geometry.working_reference(image, (2.0, 2.0, 2.0))
    assert reference.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    low, _ = geometry.physical_bounds(image)
    np.testing.assert_allclose(reference.GetOrigin(), low + 1.0)


def test_object_keeps_its_patient_position_through_working_grid_and_back():
    image = oblique_image(np.float32, shape=(40, 60, 60))
    sphere = blob(image)
    working = geometry.to_working_grid(sphere, (1.5, 1.5, 1.5), default_value=0)
    back = geometry.resample_to_reference(working, image) > 0.5
    assert back.GetSize() == image.GetSize() and back.GetDirection() == image.GetDirection()
    a = sitk.GetArrayFromImage(sphere) > 0.5
    b = sitk.GetArrayFromImage(back)
    dice = 2 * np.sum(a & (b > 0)) / (a.sum() + b.sum())
    assert a.sum() > 500 and dice > 0.9


def test_single_slice_stays_single_slice():
    plane = sitk.GetImageFromArray(np.random.default_rng(0).random((1, 64, 48)).astype(np.float32))
    plane.SetSpacing((0.5, 0.5, 1.0))
    working = geometry.to_working_grid(plane, (1.0, 1.0, 1.0))
    assert working.GetSize() == (24, 32, 1)
    back = geometry.resample_to_reference(working, plane)
    assert back.GetSize() == plane.GetSize()
    assert abs(float(sitk.GetArrayFromImage(back).mean()) - 0.5) < 0.05
