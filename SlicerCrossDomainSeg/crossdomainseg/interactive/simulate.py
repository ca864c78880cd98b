"""The simulated user: where a careful user would click next, for training click networks and
for the robot user of the evaluation (evaluation/robot.py).

Each click goes to the interior (distance-transform maximum; among ties, the one nearest their
centroid) of the largest error region: positive in a false-negative region, negative in a
false-positive one. With an empty prediction the whole object is the error region, so the first
click lands at the object's deepest point. An axis along which the whole grid is one voxel (a 2D image stored as one slice) is no direction of
depth: the interior is measured in the plane.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class RobotClick:
    index: tuple[int, int, int]  # (z, y, x) on the grid of the arrays given
    positive: bool
    size: int  # voxels in the error region clicked
    region: tuple  # slices of the region's bounding box, with `mask` below
    mask: np.ndarray  # the error region inside `region`


def _interior_point(component: np.ndarray, spacing, flat=()) -> tuple[int, ...]:
    """The voxel of `component` deepest inside it (mm), its outside reaching past its box except
    along the `flat` axes (True: the whole grid is one voxel thick there). Voxels tied at that
    depth (every voxel of a region one voxel thick, a sliver along a boundary) go to the one
    nearest (mm) their centroid: the middle of the region, as a user clicks it, not its first
    voxel in memory order at one end."""
    pads = [0 if f else 1 for f in (tuple(flat) or (False,) * component.ndim)]
    padded = np.pad(component, [(p, p) for p in pads])
    dist = ndimage.distance_transform_edt(padded, sampling=spacing)[tuple(slice(p, n - p) for p, n in
                                                                          zip(pads, padded.shape))]
    tied = np.argwhere(dist >= dist.max())
    if len(tied) == 1:
        return tuple(int(i) for i in tied[0])
    scale = np.broadcast_to(np.asarray(spacing, float), (component.ndim,))
    offsets = (tied - tied.mean(axis=0)) * scale
    return tuple(int(i) for i in tied[int(np.argmin((offsets ** 2).sum(axis=1)))])


def next_click(truth: np.ndarray, pred: np.ndarray, spacing=(1.0, 1.0, 1.0),
               addable: np.ndarray | None = None) -> RobotClick | None:
    """The robot's next click for one label (boolean arrays, same shape); None when no error.

    `spacing` is (z, y, x) mm so the interior is measured in physical distance. `addable` limits
    false negatives to voxels a positive click may take (not locked by hand).
    """
    # errors lie inside the box of truth | pred: labelling only that box finds the same regions in
    # the same order (a tenth of the time on a whole brain)
    flat = _flat_axes(truth)  # of the whole grid, not of the box below
    box = _bounding_box(truth | pred)
    if box is None:
        return None
    truth, pred = truth[box], pred[box]
    missing = truth & ~pred if addable is None else truth & ~pred & addable[box]
    best = _largest([_error_regions(missing, True), _error_regions(pred & ~truth, False)])
    if best is None:
        return None
    click = _click_on(best, spacing, flat)
    offset = [s.start for s in box]
    return RobotClick(tuple(i + o for i, o in zip(click.index, offset)), click.positive, click.size,
                      tuple(slice(r.start + o, r.stop + o) for r, o in zip(click.region, offset)), click.mask)


def _bounding_box(mask: np.ndarray):
    """Slices of the box holding every True voxel of `mask`; None when there is none."""
    axes = []
    for k in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != k)))
        if not len(hits):
            return None
        axes.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(axes)


def _error_regions(errors: np.ndarray, positive: bool):
    """(positive, component labels, voxels per component with 0 for the background, boxes)."""
    labels, n = ndimage.label(errors)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return positive, labels, sizes, ndimage.find_objects(labels)


def _largest(regions):
    """(error regions of one sign, component) of the largest error component, None when there
    is no error; a tie goes to the false negatives."""
    best, best_size = None, 0
    for region in regions:
        sizes = region[2]
        k = int(np.argmax(sizes))
        if sizes[k] > best_size:
            best, best_size = (region, k), sizes[k]
    return best


def _flat_axes(grid: np.ndarray) -> tuple[bool, ...]:
    """Per axis, whether `grid` is one voxel thick along it."""
    return tuple(n == 1 for n in grid.shape)


def _click_on(best, spacing, flat=()) -> RobotClick:
    (positive, labels, sizes, boxes), k = best
    box = boxes[k - 1]
    component = labels[box] == k
    local = _interior_point(component, spacing, flat)
    index = tuple(int(s.start) + i for s, i in zip(box, local))
    return RobotClick(index, positive, int(sizes[k]), box, component)


def training_clicks(truth: np.ndarray, pred: np.ndarray, n: int, spacing=(1.0, 1.0, 1.0)):
    """Clicks of a simulated session on one crop, for training the refiner.

    The robot clicks `n` times; after each click but the last, the region it clicked is
    corrected (as a perfect refiner would). Returns (clicks, pred before the last click): the
    network input is then exactly what it sees in use, the label after earlier clicks plus all
    clicks so far.
    """
    pred = pred.copy()
    clicks = []
    if n <= 0:
        return clicks, pred
    # Correcting the clicked component leaves every other error component as it was, so the
    # components are found once and the clicked one is struck off, instead of labelling the
    # whole crop again for every click.
    regions = [_error_regions(truth & ~pred, True), _error_regions(pred & ~truth, False)]
    flat = _flat_axes(truth)
    for i in range(n):
        best = _largest(regions)
        if best is None:
            break
        click = _click_on(best, spacing, flat)
        (_, _, sizes, _), k = best
        sizes[k] = 0  # corrected: out of the running
        clicks.append(click)
        if i < n - 1:
            pred[click.region][click.mask] = click.positive
    return clicks, pred
