"""Label clean-up after the argmax: stray islands of a label, far from its organ, are what makes
HD95 large. A connected component smaller than `min_fraction` of its label's largest component
becomes background; organs in two parts of similar size (kidneys, lungs) keep both. A label the
bundle declares to lie inside another (a liver lesion inside the liver) loses the components that
lie outside it, and where the bundle gives the contrast it differs from its parent by, is found
again in the image (refit_inside)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InputError

DEFAULT_MIN_ISLAND_FRACTION = 0.2
# keep_inside: a contained label's component stays when at least this share of the voxels around
# it belong to its parent. On the phantom-ct-mr drafts the lesions drafted in bowel, spleen or
# kidney had none of the liver around them and those in the liver 0.5-1.0 (true subcapsular
# lesions touch the outside too), so any share in (0, 0.5) drops the same ones.
INSIDE_SHARE = 0.25


def check_min_fraction(min_fraction: float) -> float:
    if not 0.0 <= float(min_fraction) < 1.0:
        raise InputError(f"min_island_fraction must be in [0, 1), got {min_fraction}.")
    return float(min_fraction)


def remove_islands(label: np.ndarray, min_fraction: float = DEFAULT_MIN_ISLAND_FRACTION) -> np.ndarray:
    """A copy of `label` (integer array, any dimension) without small components; 0 keeps all."""
    out = label.copy()
    if min_fraction <= 0:
        return out
    for value in np.unique(label):
        if value == 0:
            continue
        components, n = ndimage.label(label == value)
        if n < 2:
            continue
        sizes = np.bincount(components.ravel())[1:]
        drop = np.concatenate([[False], sizes < min_fraction * sizes.max()])
        out[drop[components]] = 0  # a lookup table: np.isin sorts the whole volume
    return out


def keep_inside(label: np.ndarray, inside: dict[int, int], share: float = INSIDE_SHARE) -> np.ndarray:
    """A copy of `label` (integer array) where each component of a label `child` in `inside`
    ({child value: parent value}) becomes background unless `share` of the voxels 2 voxels around
    it are `parent`."""
    out = label.copy()
    for child, parent in inside.items():
        components, _ = ndimage.label(label == child)
        for k, box in enumerate(ndimage.find_objects(components), start=1):
            box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)
            part = components[box] == k
            around = ndimage.binary_dilation(part, iterations=2) & ~part
            if (label[box][around] == parent).mean() < share:
                out[box][part] = 0
    return out


def _enclosed(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled; a 3D one also slice by slice along the first axis (a lesion
    under the capsule is open to the outside in 3D but mostly enclosed in-plane)."""
    filled = ndimage.binary_fill_holes(mask)
    if mask.ndim == 3:
        for k in range(mask.shape[0]):
            filled[k] |= ndimage.binary_fill_holes(mask[k])
    return filled


def refit_inside(image: np.ndarray, label: np.ndarray, inside: dict[int, int], contrast: float) -> np.ndarray:
    """A copy of `label` where each label `child` in `inside` ({child value: parent value}) is
    what its parent encloses (holes of parent and child together, background or child) and
    whose intensity lies more than `contrast` robust standard deviations (1.4826 MAD) from the
    parent's median; the child's voxels that do not lie that far become the parent where
    enclosed, else are left to keep_inside. Either sign: a lesion darker than the liver in CT
    may be brighter in MR, and a network trained on CT alone learns only the darker one. On the
    phantom-ct-mr target the shipped model leaves the lesion as a hole in the liver (13-23
    deviations brighter) and drafts lesions in liver-like tissue: test lesion Dice 0.12 -> 0.96
    at contrast 12 (validation 0.01 -> 0.86; 8: 0.82, 10: 0.84, 16: 0.80). Its source lesions lie
    3-4 deviations darker: a bundle sets the contrast its target validation split says."""
    out = label.copy()
    for child, parent in inside.items():
        parent_mask = label == parent
        if not parent_mask.any():
            continue
        host = parent_mask | (label == child)
        box = ndimage.find_objects(host.astype(np.uint8))[0]
        region, values = label[box], image[box]
        enclosed = _enclosed(host[box])
        hosted = values[region == parent]
        centre = float(np.median(hosted))
        spread = 1.4826 * float(np.median(np.abs(hosted - centre)))
        distinct = np.abs(values - centre) > contrast * spread
        view = out[box]  # a view: the writes land in `out`
        view[enclosed & ((region == 0) | (region == child)) & distinct] = child
        view[enclosed & (region == child) & ~distinct] = parent
    return out
