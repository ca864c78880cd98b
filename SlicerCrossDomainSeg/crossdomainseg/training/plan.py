"""A training plan chosen from the data, as nnU-Net plans from a dataset fingerprint.

`fingerprint(cases)` reads every image of one domain once and records its spacing, size, extent in
mm and a seeded sample of its intensities (and of its labelled voxels when it has labels).
`make_plan(source, target, device)` turns the two fingerprints into what `train source` and
`train translator` otherwise take as options:

- the working grid's spacing: the per-axis median spacing of all images, coarsened evenly when the
  median image would exceed `MAX_VOXELS` on that grid (a CPU or GPU memory and time bound);
- the patch size (roi, array order): the median image's shape on that grid, a multiple of 8 (the
  UNet's three halvings), at most `ROI_CAP` per axis; the translator's crop at most 48 (CPU) /
  64 (CUDA) per axis, a multiple of 4;
- each domain's normalisation, from that domain's own images: CT-like data (at least 1% of voxels
  at or below -500, i.e. air in Hounsfield units, and at least 99% within -1100..4000) get a window
  on their tissue of interest, at least 100 HU wide: with labels the labelled voxels' 0.5th..99.5th
  percentiles (nnU-Net), without labels the body's (voxels above -500 HU) median +- 3 robust
  standard deviations. A brain CT gets a brain window, not the abdominal -400..600 that squashes
  brain tissue.
  Other data (MR, radiographs: arbitrary units) are normalised per image between their 1st and
  99th percentiles.

`epochs_for(...)` turns a time budget and a measured epoch into a number of epochs.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..imageio import read_image, validate_image

SAMPLE_PER_IMAGE = 100_000
# Largest median image on the working grid (voxels) and largest patch per axis, by dimension and
# device: a CPU must finish a brain-sized task in 90 minutes on two threads.
MAX_VOXELS = {("cpu", 3): 128**3, ("cuda", 3): 256**3, ("cpu", 2): 256**2, ("cuda", 2): 512**2}
ROI_CAP = {("cpu", 3): 64, ("cuda", 3): 128, ("cpu", 2): 128, ("cuda", 2): 256}
TRANSLATOR_CAP = {"cpu": 48, "cuda": 64}
CHANNELS = {"cpu": [8, 16, 32, 64], "cuda": [16, 32, 64, 128]}
AIR_HU = -500.0
MIN_WINDOW_HU = 100.0
PERCENTILES = [0.5, 1, 5, 25, 50, 75, 95, 99, 99.5]


def fingerprint(cases, seed: int = 0) -> dict:
    """Spacing, size, extent and intensity sample of (id, image, label-or-None) cases of one domain."""
    if not cases:
        raise InputError("No images to plan from.")
    rng = np.random.default_rng(seed)
    spacings, sizes, samples, labelled = [], [], [], []
    for _, image_path, label_path in cases:
        image = validate_image(read_image(image_path), str(image_path))
        spacings.append(list(image.GetSpacing()))
        sizes.append(list(image.GetSize()))
        values = sitk.GetArrayViewFromImage(image).ravel()
        samples.append(rng.choice(values, min(SAMPLE_PER_IMAGE, values.size), replace=False).astype(np.float32))
        if label_path is not None:
            label = sitk.GetArrayViewFromImage(read_image(label_path)).ravel()
            if label.size == values.size:
                inside = values[label > 0]
                if inside.size:
                    labelled.append(rng.choice(inside, min(SAMPLE_PER_IMAGE, inside.size),
                                               replace=False).astype(np.float32))
    spacings, sizes = np.array(spacings), np.array(sizes)
    _check_one_dimension(cases, sizes)
    return {
        "n": len(cases),
        "spatial_dims": 2 if np.all(sizes[:, 2] == 1) else 3,
        "spacing": spacings.tolist(),
        "size": sizes.tolist(),
        "extent_mm": (spacings * sizes).round(2).tolist(),
        "intensities": np.concatenate(samples),
        "labelled_intensities": np.concatenate(labelled) if labelled else None,
    }


def _check_one_dimension(cases, sizes: np.ndarray) -> None:
    """A folder mixing 2D (single-slice) and 3D images is refused here, before any training."""
    flat = sizes[:, 2] == 1
    if flat.any() and not flat.all():
        odd, kind = (flat, "2D") if flat.sum() <= (~flat).sum() else (~flat, "3D")
        names = [str(cases[i][1]) for i in np.flatnonzero(odd)]
        raise InputError(f"{len(names)} image(s) are {kind} among {len(cases)} of the other kind, "
                         f"e.g. {names[:3]}; keep images of one kind (all 2D or all 3D) in a folder.")


def _percentiles(values: np.ndarray) -> dict:
    return {str(p): round(float(v), 2) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}


def is_ct_like(values: np.ndarray) -> bool:
    """Air in Hounsfield units: some voxels at or below -500, nearly all within -1100..4000."""
    return bool(np.mean(values <= AIR_HU) >= 0.01 and np.mean((values >= -1100) & (values <= 4000)) >= 0.99)


def choose_normalization(print_: dict) -> tuple[dict, str]:
    """(spec, reason) for one domain's fingerprint."""
    values = print_["intensities"]
    if not is_ct_like(values):
        return ({"kind": "percentile", "lower": 1, "upper": 99},
                "no Hounsfield-range air: per-image 1st..99th percentile")
    labelled = print_["labelled_intensities"]
    if labelled is not None:  # nnU-Net's CT rule: the labelled voxels' 0.5th..99.5th percentiles
        low, high = np.percentile(labelled, [0.5, 99.5])
        reason = "the labelled voxels' 0.5th..99.5th percentiles"
    else:  # no labels: the body's median +- 3 robust standard deviations (bone is in the tail)
        body = values[values > AIR_HU]
        centre = float(np.median(body))
        half = 3 * 1.4826 * float(np.median(np.abs(body - centre)))
        low, high = centre - half, centre + half
        reason = f"the body's (> {AIR_HU:g} HU) median {centre:.0f} HU +- 3 robust SD"
    centre, half = (low + high) / 2, max((high - low) / 2, MIN_WINDOW_HU / 2)
    low, high = round((centre - half) / 10) * 10, round((centre + half) / 10) * 10
    return {"kind": "window", "low": float(low), "high": float(high)}, f"CT-like (air at <= {AIR_HU:g}): {reason}"


def _multiple(value: float, step: int, low: int, high: int) -> int:
    return int(min(high, max(low, int(value) // step * step)))


def make_plan(source: dict, target: dict, device: str = "cpu") -> dict:
    """The plan for a task from its two domains' fingerprints (JSON-able; stored in the bundle)."""
    dims = source["spatial_dims"]
    if target["spatial_dims"] != dims:
        raise InputError(f"The source images are {dims}D but the target images are "
                         f"{target['spatial_dims']}D; both domains must have the same dimension.")
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    spacings = np.array(source["spacing"] + target["spacing"])[:, :dims]
    extents = np.array(source["extent_mm"] + target["extent_mm"])[:, :dims]
    spacing = np.median(spacings, axis=0)
    median_extent = np.median(extents, axis=0)
    shape = median_extent / spacing
    coarsen = max(1.0, (float(np.prod(shape)) / MAX_VOXELS[(kind, dims)]) ** (1.0 / dims))
    spacing = (spacing * coarsen).round(3)
    shape_zyx = (median_extent / spacing)[::-1]  # array order, as roi_size
    cap = ROI_CAP[(kind, dims)]
    roi = [_multiple(n, 8, 16, cap) for n in shape_zyx]
    patch = [_multiple(r, 4, 16, TRANSLATOR_CAP[kind]) for r in roi]
    norms = {domain: choose_normalization(print_) for domain, print_ in (("source", source), ("target", target))}
    return {
        "spatial_dims": dims,
        "device": kind,
        "spacing": [float(s) for s in spacing],
        "roi_size": roi,
        "translator_patch": patch,
        "channels": CHANNELS[kind],
        "normalization": {domain: spec for domain, (spec, _) in norms.items()},
        "reasons": {
            "spacing": f"median spacing of {len(spacings)} images"
                       + (f", coarsened {coarsen:.2f}x to at most {MAX_VOXELS[(kind, dims)]} voxels" if coarsen > 1 else ""),
            "roi_size": f"median image {np.round(shape_zyx, 1).tolist()} voxels (z, y, x) on that grid, "
                        f"multiple of 8, at most {cap}",
            **{f"normalization_{domain}": reason for domain, (_, reason) in norms.items()},
        },
        "fingerprint": {domain: {"n": p["n"], "median_spacing": np.median(p["spacing"], axis=0).round(3).tolist(),
                                 "median_size": np.median(p["size"], axis=0).tolist(),
                                 "intensity_percentiles": _percentiles(p["intensities"])}
                        for domain, p in (("source", source), ("target", target))},
    }


def regrid(plan: dict, factor: float) -> dict:
    """`plan` on a grid `factor` times coarser: the roi and the translator crop keep their extent in
    mm (fewer voxels each), as multiples of 8 (the segmenter reads the translator's crops too)."""
    dims = plan["spatial_dims"]
    spacing = [round(s * factor, 3) for s in plan["spacing"][:dims]] + plan["spacing"][dims:]
    roi = [_multiple(r / factor, 8, 16, r) for r in plan["roi_size"]]
    patch = [_multiple(p / factor, 8, 16, p) for p in plan["translator_patch"]]
    return {**plan, "spacing": spacing, "roi_size": roi, "translator_patch": patch}


def epochs_for(budget_s: float, epoch_s: float, cap: int) -> int:
    """Whole epochs of `epoch_s` seconds that fit in `budget_s`, from 0 to `cap`."""
    if epoch_s <= 0:
        return cap
    return int(min(cap, max(0, budget_s // epoch_s)))
