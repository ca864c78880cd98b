"""Post-processing as explicit, named steps: a bundle lists the steps its results get in its
metadata (`postprocess`, e.g. [{"step": "remove_islands", "min_fraction": 0.2}]), and the engine,
the bundle evaluation and the curriculum's delivered scores apply that list in order through
`apply_steps`. A bundle without the key delivers the network's raw argmax. Which steps a bundle
lists is chosen on its source validation split (source_validation.py), never on target labels.

Steps (STEPS):
- remove_islands: a connected component smaller than `min_fraction` of its label's largest
  component becomes background (stray islands far from the organ make HD95 large); organs in two
  parts of similar size (kidneys, lungs) keep both.

A step stays only where it raises source validation Dice on at least two tasks (docs/protocol.md);
RETIRED_STEPS are refused by name, with what to do, so a bundle never silently loses one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import InputError


def remove_islands(label: np.ndarray, min_fraction: float = 0.2) -> np.ndarray:
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


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class Step:
    """run(label, image, spacing, **params) -> label; params {name: (required, check, meaning)}."""

    run: Callable[..., np.ndarray]
    params: dict


STEPS = {
    "remove_islands": Step(lambda label, image, spacing, min_fraction: remove_islands(label, min_fraction), {
        "min_fraction": (True, lambda v: _positive(v) and v < 1, "a number in (0, 1)")}),
}
# removed steps -> why; a bundle listing one is refused rather than delivered without it
RETIRED_STEPS = {"boundary_fit": "it raised source validation Dice on one task only (phantom-ct-mr), "
                                 "on neither xray-drr nor brain-t1-t2"}


def check_steps(steps, error: type[Exception] = InputError) -> list[dict]:
    """`steps` if it is a list of known steps with valid parameters; else raises `error`."""
    if not isinstance(steps, list):
        raise error(f"postprocess must be a list of steps such as {{\"step\": \"remove_islands\", "
                    f"\"min_fraction\": 0.2}}; got {steps!r}.")
    for entry in steps:
        name = entry.get("step") if isinstance(entry, dict) else None
        if name in RETIRED_STEPS:
            raise error(f"Post-processing step {name} was removed from this version: {RETIRED_STEPS[name]}. "
                        "Deliver the network's label as it is with crossdomainseg train settings --bundle B "
                        "--json '{\"postprocess\": []}', then, if you wish, choose the steps again on the "
                        "bundle's source validation cases (--task-dir DIR --choose-postprocess).")
        if name not in STEPS:
            raise error(f"Unknown post-processing step {entry!r}; known steps: {', '.join(STEPS)}.")
        params = STEPS[name].params
        unknown = sorted(set(entry) - {"step"} - set(params))
        if unknown:
            raise error(f"Post-processing step {name} has no parameters {unknown}; it takes {sorted(params)}.")
        for key, (required, valid, meaning) in params.items():
            if (required and key not in entry) or (key in entry and not valid(entry[key])):
                raise error(f"Post-processing step {name} needs {key} ({meaning}); got {entry!r}.")
    return steps


def bundle_steps(metadata: dict) -> list[dict]:
    """The steps a bundle's results get (its metadata `postprocess`; none without it)."""
    return list(metadata.get("postprocess") or [])


def apply_steps(steps: list[dict], label: np.ndarray, image: np.ndarray, spacing) -> np.ndarray:
    """`label` (integer array) after each of `steps` in order; `image` the intensities on the
    same grid, `spacing` in mm in array order. The input is not changed."""
    out = label
    for entry in check_steps(steps):
        params = {key: value for key, value in entry.items() if key != "step"}
        out = STEPS[entry["step"]].run(out, image, spacing, **params)
    return out.copy() if out is label else out


def postprocess_image(steps: list[dict], label: np.ndarray, image: sitk.Image) -> sitk.Image:
    """`label` (array on `image`'s grid) after `steps`, as an image on that grid."""
    array = apply_steps(steps, label, sitk.GetArrayViewFromImage(image).astype(np.float32),
                        tuple(reversed(image.GetSpacing())))
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out
