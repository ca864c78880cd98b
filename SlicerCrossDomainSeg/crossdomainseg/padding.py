"""Padding outside a scanner's field of view: found, and replaced by the image's own background.

Scanners and converters fill voxels outside the reconstructed field of view with a sentinel: the
pixel type's extreme (-32768 or 32767 in int16, 65535 in uint16) or a constant far below
everything else (-3024 or -2048 in CT). Taken as intensities, such voxels become the
normalisation's lower percentile and squeeze the anatomy into a sliver of the network's input
range (the demo case padded with -32768: foreground Dice 0.0002 instead of 0.76). A sentinel is
the image's minimum or maximum when it covers at least MIN_SHARE of the voxels and either is the
pixel type's extreme or lies further than MIN_GAP times the other voxels' 1st-99th percentile
range from their nearest value, beside at least MIN_GREY_LEVELS grey levels. A dark MR
background of 0 (next value a few units up) is not one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import InputError

MIN_SHARE = 0.01
MIN_GAP = 0.4
# What must be left once the padding is removed for there to be an image at all.
MIN_IMAGE_SHARE = 0.01
# The gap rule needs a real image beside the constant (noise, many grey levels): a synthetic
# piecewise-constant image (background 10, organ 60) has no padding, only a background.
MIN_GREY_LEVELS = 64
SAMPLE = 1_000_000

# 8-bit images are left out: 255 there is ordinary saturation, not a sentinel.
_INTEGER_LIMITS = {
    sitk.sitkInt16: np.iinfo(np.int16), sitk.sitkUInt16: np.iinfo(np.uint16),
    sitk.sitkInt32: np.iinfo(np.int32), sitk.sitkUInt32: np.iinfo(np.uint32),
    sitk.sitkInt64: np.iinfo(np.int64), sitk.sitkUInt64: np.iinfo(np.uint64),
}


@dataclass
class Padding:
    value: float      # the sentinel
    share: float      # fraction of the voxels it covers
    fill: float       # what replaced it: the lowest intensity of the image proper


def find_padding(array: np.ndarray, pixel_id: int) -> Padding | None:
    """The sentinel value of `array` (read with SimpleITK pixel type `pixel_id`), or None.
    Shares and percentiles come from an even sample of SAMPLE voxels: exact enough, and cheap on
    a large volume."""
    limits = _INTEGER_LIMITS.get(pixel_id)
    flat = array.reshape(-1)
    sample = flat[::max(1, flat.size // SAMPLE)]
    low, high = float(array.min()), float(array.max())
    for value in (low, high):
        share = float(np.count_nonzero(sample == value)) / sample.size
        if share < MIN_SHARE:
            continue
        rest = sample[sample != value]
        # 0 in an unsigned image is ordinary background, not a sentinel
        extreme = limits is not None and value in ({float(limits.min)} - {0.0}) | {float(limits.max)}
        far = False
        if np.unique(rest).size >= MIN_GREY_LEVELS:
            p1, p99 = np.percentile(rest, [1, 99])
            nearest = rest.min() if value == low else rest.max()
            far = abs(float(nearest) - value) > MIN_GAP * float(p99 - p1)
        if not (extreme or far):
            continue
        if rest.size < MIN_IMAGE_SHARE * sample.size:
            raise InputError(
                f"{100 * share:.0f}% of the image is one padding value ({value:g}); there is "
                "almost no image inside the field of view to segment.")
        fill = float(np.min(flat, initial=flat.max(), where=flat != value))
        return Padding(value=value, share=share, fill=fill)
    return None


def fill_padding(image: sitk.Image, pixel_id: int) -> tuple[sitk.Image, Padding | None]:
    """`image` (float) with its padding voxels set to the lowest intensity of the image proper,
    as if the field of view were surrounded by background; the image unchanged when it has none."""
    array = sitk.GetArrayViewFromImage(image)
    padding = find_padding(array, pixel_id)
    if padding is None:
        return image, None
    filled = np.where(array == padding.value, np.float32(padding.fill), array).astype(array.dtype)
    out = sitk.GetImageFromArray(filled)
    out.CopyInformation(image)
    return out, padding
