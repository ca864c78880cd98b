"""Image grids, smooth random deformations and geometric primitives rasterised through them.

A subject's anatomy is defined once in undeformed patient space (LPS mm). Rendering maps every
voxel centre of a grid to physical space, applies the subject's deformation and tests membership,
so the same subject renders consistently on any spacing, orientation or size (the CT grid, an
oblique MR grid, the CT-on-MR-grid ground truth) and its labels never suffer resampling artefacts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

FAR = 1.0e4  # mm; "unbounded" extent of shapes such as the body cylinder


@dataclass(frozen=True)
class Grid:
    """An image grid: size and spacing in (x, y, z) order, direction columns = index axes in LPS."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    @classmethod
    def centred(cls, size, spacing, centre=(0.0, 0.0, 0.0), direction=None) -> "Grid":
        """The grid of `size` x `spacing` whose middle lies at `centre` (LPS mm)."""
        direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
        half = (np.asarray(size, dtype=float) - 1) / 2 * np.asarray(spacing, dtype=float)
        origin = np.asarray(centre, dtype=float) - direction @ half
        return cls(tuple(int(s) for s in size), tuple(float(s) for s in spacing),
                   tuple(float(o) for o in origin), direction)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return self.size[2], self.size[1], self.size[0]

    def physical_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LPS coordinates (x, y, z) of every voxel centre, each a float32 array of `shape`."""
        idx = [np.arange(n, dtype=np.float32) * np.float32(s) for n, s in zip(self.size, self.spacing)]
        axes = (idx[0][None, None, :], idx[1][None, :, None], idx[2][:, None, None])
        points = []
        for c in range(3):
            d = self.direction[c]
            points.append(np.float32(self.origin[c]) + np.float32(d[0]) * axes[0]
                          + np.float32(d[1]) * axes[1] + np.float32(d[2]) * axes[2])
        return tuple(np.broadcast_to(p, self.shape).astype(np.float32) for p in points)

    def index_box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Array slices (z, y, x) covering the physical axis-aligned box [lo, hi]; None if outside."""
        lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
        corners = np.array([[(lo, hi)[b >> a & 1][a] for a in range(3)] for b in range(8)])
        cont = (corners - np.asarray(self.origin)) @ self.direction / np.asarray(self.spacing)
        first = np.maximum(np.floor(cont.min(axis=0)).astype(int), 0)
        last = np.minimum(np.ceil(cont.max(axis=0)).astype(int) + 1, self.size)
        if np.any(first >= last):
            return None
        return slice(first[2], last[2]), slice(first[1], last[1]), slice(first[0], last[0])

    def to_image(self, array: np.ndarray) -> sitk.Image:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return image


class Deformation:
    """A smooth random displacement: a few long-wavelength sine waves per axis.

    Amplitude times wave number stays well below 1, so the map is a diffeomorphism (structures
    stay nested: a lesion placed inside the liver stays inside it)."""

    def __init__(self, rng: np.random.Generator, amplitude_mm: float, wavelength_mm=(70.0, 180.0),
                 terms: int = 3):
        directions = rng.normal(size=(3, terms, 3))
        directions /= np.linalg.norm(directions, axis=2, keepdims=True)
        wavelength = rng.uniform(*wavelength_mm, size=(3, terms, 1))
        self.wave = (2 * np.pi / wavelength * directions).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, size=(3, terms)).astype(np.float32)
        self.amplitude = (rng.uniform(0.3, 1.0, size=(3, terms)) * amplitude_mm / terms).astype(np.float32)
        self.max_displacement = float(np.abs(self.amplitude).sum(axis=1).max())

    def warped_points(self, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Undeformed-space coordinates of every voxel centre of `grid`.

        The phase of each wave is affine in the voxel index, so it is built from three 1D
        arrays by broadcasting instead of from the full coordinate arrays (the hot loop of
        the generator)."""
        points = list(grid.physical_points())
        axes = [np.arange(n, dtype=np.float64) * s for n, s in zip(grid.size, grid.spacing)]
        for c in range(3):
            for t in range(self.wave.shape[1]):
                w = self.wave[c, t].astype(np.float64)
                step = w @ grid.direction  # phase per mm along each index axis
                start = float(w @ np.asarray(grid.origin)) + float(self.phase[c, t])
                angle = ((start + step[0] * axes[0]).astype(np.float32)[None, None, :]
                         + (step[1] * axes[1]).astype(np.float32)[None, :, None])
                angle = angle + (step[2] * axes[2]).astype(np.float32)[:, None, None]
                np.sin(angle, out=angle)
                angle *= self.amplitude[c, t]
                points[c] += angle
        return tuple(points)

class Shape:
    """Something with an undeformed bounding box and a vectorised membership test."""

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def inside(self, x, y, z) -> np.ndarray:
        raise NotImplementedError


@dataclass
class Ellipsoid(Shape):
    centre: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # columns = local axes in LPS

    def bounds(self):
        half = np.sqrt(((self.rotation * np.asarray(self.radii)[None, :]) ** 2).sum(axis=1))
        return np.asarray(self.centre) - half, np.asarray(self.centre) + half

    def inside(self, x, y, z):
        d = (x - np.float32(self.centre[0]), y - np.float32(self.centre[1]), z - np.float32(self.centre[2]))
        total = 0
        for a in range(3):
            r = self.rotation[:, a]
            local = np.float32(r[0]) * d[0] + np.float32(r[1]) * d[1] + np.float32(r[2]) * d[2]
            total = total + (local / np.float32(self.radii[a])) ** 2
        return total <= 1


@dataclass
class Cylinder(Shape):
    """Elliptic cylinder along z (body outline, spine, aorta), cut to [z_low, z_high]."""

    centre_xy: tuple[float, float]
    radii_xy: tuple[float, float]
    z_low: float = -FAR
    z_high: float = FAR

    def bounds(self):
        (cx, cy), (rx, ry) = self.centre_xy, self.radii_xy
        return np.array([cx - rx, cy - ry, self.z_low]), np.array([cx + rx, cy + ry, self.z_high])

    def inside(self, x, y, z):
        (cx, cy), (rx, ry) = self.centre_xy, self.radii_xy
        m = ((x - np.float32(cx)) / np.float32(rx)) ** 2 + ((y - np.float32(cy)) / np.float32(ry)) ** 2 <= 1
        if self.z_low > -FAR or self.z_high < FAR:
            m &= (z >= self.z_low) & (z <= self.z_high)
        return m


@dataclass
class Capsule(Shape):
    """All points within `radius` of the segment a-b (clavicles, vessels, trachea)."""

    a: np.ndarray
    b: np.ndarray
    radius: float

    def bounds(self):
        a, b = np.asarray(self.a, float), np.asarray(self.b, float)
        return np.minimum(a, b) - self.radius, np.maximum(a, b) + self.radius

    def inside(self, x, y, z):
        a, b = np.asarray(self.a, np.float32), np.asarray(self.b, np.float32)
        ab = b - a
        d = (x - a[0], y - a[1], z - a[2])
        t = np.clip((d[0] * ab[0] + d[1] * ab[1] + d[2] * ab[2]) / np.float32(ab @ ab), 0, 1)
        dist2 = (d[0] - t * ab[0]) ** 2 + (d[1] - t * ab[1]) ** 2 + (d[2] - t * ab[2]) ** 2
        return dist2 <= np.float32(self.radius) ** 2


@dataclass
class Slabs(Shape):
    """`shape` cut into slabs of `thickness` repeating every `period` mm along z, tilted by
    `slope` (dz per mm of y): vertebral discs, ribs."""

    shape: Shape
    period: float
    thickness: float
    phase: float = 0.0
    slope: float = 0.0

    def bounds(self):
        return self.shape.bounds()

    def inside(self, x, y, z):
        level = np.mod(z - np.float32(self.slope) * y - np.float32(self.phase), np.float32(self.period))
        return (level < self.thickness) & self.shape.inside(x, y, z)


@dataclass
class Ring(Shape):
    """The band of an elliptic cylinder between normalised radii `inner` and 1, for y >= y_min
    (ribs wrap the back and sides, not the anterior abdominal wall)."""

    cylinder: Cylinder
    inner: float
    y_min: float = -FAR

    def bounds(self):
        return self.cylinder.bounds()

    def inside(self, x, y, z):
        (cx, cy), (rx, ry) = self.cylinder.centre_xy, self.cylinder.radii_xy
        r2 = ((x - np.float32(cx)) / np.float32(rx)) ** 2 + ((y - np.float32(cy)) / np.float32(ry)) ** 2
        m = (r2 <= 1) & (r2 >= np.float32(self.inner) ** 2) & (y >= self.y_min)
        if self.cylinder.z_low > -FAR or self.cylinder.z_high < FAR:
            m &= (z >= self.cylinder.z_low) & (z <= self.cylinder.z_high)
        return m


@dataclass
class Step:
    """Paint `shape` with `tissue`; `within` names an earlier mask that clips it (organs stay in
    the abdominal cavity)."""

    shape: Shape
    tissue: int
    within: str | None = None
    name: str | None = None  # remember this shape's mask under this name


def rasterise(steps: list[Step], deformation: Deformation, grid: Grid) -> np.ndarray:
    """Tissue index per voxel (uint8, array order z, y, x); later steps paint over earlier ones."""
    q = deformation.warped_points(grid)
    tissue = np.zeros(grid.shape, dtype=np.uint8)
    masks: dict[str, np.ndarray] = {}
    margin = deformation.max_displacement + 1.0
    for step in steps:
        lo, hi = step.shape.bounds()
        box = grid.index_box(np.asarray(lo) - margin, np.asarray(hi) + margin)
        if step.name:
            masks[step.name] = np.zeros(grid.shape, dtype=bool)
        if box is None:
            continue
        m = step.shape.inside(q[0][box], q[1][box], q[2][box])
        if step.within is not None:
            m &= masks[step.within][box]
        if step.name:
            masks[step.name][box] = m
        tissue[box][m] = step.tissue
    return tissue


def rotation(axis, degrees: float) -> np.ndarray:
    """Rotation matrix about `axis` (Rodrigues)."""
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def bias_field(grid: Grid, rng) -> np.ndarray:
    """exp of a random smooth (quadratic + low-frequency cosine) field, about +-30 %."""
    x, y, z = grid.physical_points()
    log_bias = np.zeros(grid.shape, np.float32)
    for p in (x / 100, y / 80, z / 80):
        log_bias += np.float32(rng.uniform(-0.25, 0.25)) * p + np.float32(rng.uniform(-0.15, 0.15)) * p * p
    w = rng.normal(size=3) * 2 * np.pi / 300
    log_bias += np.float32(0.12) * np.cos(np.float32(w[0]) * x + np.float32(w[1]) * y + np.float32(w[2]) * z
                                          + np.float32(rng.uniform(0, 2 * np.pi)))
    return np.exp(log_bias)
