"""Intensity normalisation per modality, from a JSON-able spec stored in the bundle.

The bundle records one spec per domain, so a new scan of the same modality is normalised exactly
as the training data were. Kinds:

- `{"kind": "window", "low": -250, "high": 250}`: fixed window in the modality's own units
  (CT in HU). Values below/above are clipped. Invertible (`denormalize`).
- `{"kind": "percentile", "lower": 1, "upper": 99}`: per image, the given percentiles of all
  voxels map to the ends of the range (MR, X-ray: arbitrary units), clipped.
- `{"kind": "minmax"}`: per image, min and max map to the ends of the range.

Optional `"range": [0, 1]` (default) or `[-1, 1]`: the output interval. Output is float32.
"""

from __future__ import annotations

import numpy as np

from .errors import BundleError, InputError

KINDS = ("window", "percentile", "minmax")


def validate_spec(spec: dict) -> dict:
    """Return `spec` if usable, else raise BundleError saying what is wrong."""
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise BundleError(f"Normalisation spec must have 'kind' in {KINDS}; got {spec!r}.")
    kind = spec["kind"]
    if kind == "window" and not (
        isinstance(spec.get("low"), (int, float)) and isinstance(spec.get("high"), (int, float))
        and spec["high"] > spec["low"]
    ):
        raise BundleError(f"A window spec needs numbers low < high; got {spec!r}.")
    if kind == "percentile":
        lower, upper = spec.get("lower", 1), spec.get("upper", 99)
        if not (0 <= lower < upper <= 100):
            raise BundleError(f"A percentile spec needs 0 <= lower < upper <= 100; got {spec!r}.")
    lo, hi = spec.get("range", [0, 1])
    if not hi > lo:
        raise BundleError(f"Normalisation range must be increasing; got {spec.get('range')!r}.")
    return spec


def intensity_bounds(array: np.ndarray, spec: dict) -> tuple[float, float]:
    """The input intensities that map to the two ends of the output range for this image."""
    validate_spec(spec)
    kind = spec["kind"]
    if kind == "window":
        return float(spec["low"]), float(spec["high"])
    values = np.asarray(array, dtype=np.float32)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise InputError("The image is empty or has NaN/infinite voxels; cannot normalise it.")
    if kind == "percentile":
        lo, hi = np.percentile(values, [spec.get("lower", 1), spec.get("upper", 99)])
    else:
        lo, hi = values.min(), values.max()
    if hi <= lo:  # a constant image: map it to the bottom of the range rather than divide by 0
        hi = lo + 1.0
    return float(lo), float(hi)


def normalize(array: np.ndarray, spec: dict) -> np.ndarray:
    """Map `array` to the spec's output range (float32, clipped)."""
    lo, hi = intensity_bounds(array, spec)
    out_lo, out_hi = spec.get("range", [0, 1])
    unit = np.clip((np.asarray(array, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return (out_lo + unit * (out_hi - out_lo)).astype(np.float32)


def denormalize(array: np.ndarray, spec: dict, bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Map normalised values back to intensities: exact for `window` (e.g. HU for a CT preview);
    for per-image kinds pass the `bounds` of a reference image (`intensity_bounds`), otherwise the
    values stay in [0, 1] units."""
    validate_spec(spec)
    out_lo, out_hi = spec.get("range", [0, 1])
    unit = (np.asarray(array, dtype=np.float32) - out_lo) / (out_hi - out_lo)
    if spec["kind"] == "window":
        bounds = (spec["low"], spec["high"])
    if bounds is None:
        return unit.astype(np.float32)
    return (bounds[0] + unit * (bounds[1] - bounds[0])).astype(np.float32)
