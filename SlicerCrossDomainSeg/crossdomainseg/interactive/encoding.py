"""Crops around a click, what a refiner sees of one click (CropInputs) and the click maps fed to
the refiner.

All indices here are (z, y, x) voxel indices of one grid; the session converts patient-space clicks
to them just before use and never stores them.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CLICK_SIGMA_VOXELS = 2.0  # on the refiner's grid
# The refiner's grid: a crop of NET_SIZE voxels at NET_SPACING mm, (z, y, x). A click may change
# only the crop around it, of the same physical size (DEFAULT_CROP_MM) whatever the image grid.
# The refiner runs on crops of the size it trained on (on larger ones it contradicts more clicks).
NET_SIZE = (24, 32, 32)
NET_SPACING = (3.0, 2.4, 2.4)
DEFAULT_CROP_MM = tuple(n * s for n, s in zip(NET_SIZE, NET_SPACING))
# A structure started from a box may reach this far (mm) past the box the user drew (a box drawn
# a little tight); the network's answer beyond it is not taken.
BOX_MARGIN_MM = 6.0


@dataclass(frozen=True)
class Box:
    """A box of voxels [start, stop) on the session grid, (z, y, x)."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    def contains(self, index) -> bool:
        return all(a <= int(i) < b for a, i, b in zip(self.start, index, self.stop))

    def local(self, index) -> tuple[int, int, int]:
        return tuple(int(i) - a for i, a in zip(index, self.start))


@dataclass
class CropInputs:
    """What a refiner sees of one click: arrays on the crop, clicks as crop indices."""

    image: np.ndarray
    preview: np.ndarray
    probability: np.ndarray  # current probability of the label being corrected
    current: np.ndarray  # bool, the label's voxels now
    positive: list
    negative: list
    click: tuple[int, int, int]
    click_positive: bool
    spacing: tuple[float, float, float]  # (z, y, x) mm
    label: int = 0  # the value of the label being corrected
    box: Box | None = None  # the user's box around the object, as crop indices (may reach past the crop)
    direction: tuple | None = None  # the session grid's direction (SimpleITK's, row-major); None: identity


def crop_box(center, size, shape) -> Box:
    """The box of `size` centred on `center`, shifted to lie inside a volume of `shape`
    (clipped where the volume is smaller than the crop)."""
    start, stop = [], []
    for c, s, n in zip(center, size, shape):
        s = min(int(s), int(n))
        a = int(np.clip(int(c) - s // 2, 0, n - s))
        start.append(a)
        stop.append(a + s)
    return Box(tuple(start), tuple(stop))


def squared_distance_mm(shape, center, spacing) -> np.ndarray:
    """Squared distance (mm^2) of every voxel of a grid of `shape` to `center`, both (z, y, x)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center, spacing))


def box_answer(proposal: np.ndarray, box: Box, spacing) -> np.ndarray:
    """What a box adds, given the network's answer `proposal` (bool, on the grid `box` is on):
    the largest connected part of the answer within the box grown by BOX_MARGIN_MM."""
    grown = Box(tuple(max(0, a - int(np.ceil(BOX_MARGIN_MM / s))) for a, s in zip(box.start, spacing)),
                tuple(b + int(np.ceil(BOX_MARGIN_MM / s)) for b, s in zip(box.stop, spacing)))
    near = np.zeros(proposal.shape, bool)
    near[grown.slices] = True
    components, n = ndimage.label(proposal & near)
    if n == 0:
        return near & False
    sizes = np.bincount(components.ravel())[1:]
    return components == int(np.argmax(sizes)) + 1


def crop_voxels(crop_mm, spacing) -> tuple[int, int, int]:
    """Voxels per axis covering `crop_mm` (z, y, x) on a grid of `spacing` (z, y, x) mm."""
    return tuple(max(1, int(np.ceil(m / s - 1e-6))) for m, s in zip(crop_mm, spacing))


def pad_to(array: np.ndarray, size, value=0.0) -> np.ndarray:
    """Pad the trailing three axes at their end to `size` (crops of small volumes)."""
    pads = [(0, 0)] * (array.ndim - 3) + [(0, max(0, int(s) - n)) for s, n in zip(size, array.shape[-3:])]
    if all(p == (0, 0) for p in pads):
        return array
    return np.pad(array, pads, constant_values=value)


def click_maps(shape, positive, negative, sigma=CLICK_SIGMA_VOXELS) -> np.ndarray:
    """(2, *shape) float32: Gaussian bumps (peak 1) at positive and at negative clicks.

    Clicks outside `shape` are ignored; several clicks combine by maximum so each keeps peak 1.
    """
    maps = np.zeros((2, *shape), np.float32)
    radius = int(np.ceil(3 * sigma))
    for channel, clicks in enumerate((positive, negative)):
        for click in clicks:
            idx = [int(round(c)) for c in click]
            if not all(0 <= i < n for i, n in zip(idx, shape)):
                continue
            lo = [max(0, i - radius) for i in idx]
            hi = [min(n, i + radius + 1) for i, n in zip(idx, shape)]
            grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
            d2 = sum((g - i) ** 2 for g, i in zip(grids, idx))
            bump = np.exp(-d2 / (2.0 * sigma**2)).astype(np.float32)
            view = maps[channel][tuple(slice(a, b) for a, b in zip(lo, hi))]
            np.maximum(view, bump, out=view)
    return maps


def to_net_index(index, crop_shape, net_shape):
    """A crop voxel index on the rescaled grid (half-pixel centres, as F.interpolate maps them)."""
    return tuple((i + 0.5) * n / c - 0.5 for i, c, n in zip(index, crop_shape, net_shape))


def box_map(shape, start, stop) -> np.ndarray:
    """(*shape) float32: 1 on the voxels whose centres lie in the box [start, stop), else 0.

    start, stop: (z, y, x) in edge coordinates of that grid (voxel j spans [j, j + 1)), so integer
    voxel indices [start, stop) mark exactly those voxels; a box reaching past the grid is cut."""
    out = np.zeros(tuple(shape), np.float32)
    sl = tuple(slice(int(np.clip(np.ceil(a - 0.5), 0, n)), int(np.clip(np.ceil(b - 0.5), 0, n)))
               for a, b, n in zip(start, stop, shape))
    out[sl] = 1.0
    return out
