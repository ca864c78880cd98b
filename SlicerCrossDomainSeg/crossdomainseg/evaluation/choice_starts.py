"""The starts `eval clicks --choose` scores the click methods from on a task folder: the SOURCE
validation split only, source labels only (METHOD.md section 8).

Front ends correct drafts of TARGET images, which carry the errors of a contrast change, and
outline structures from nothing. On its own modality the source segmenter is close to the labels
(xray-drr: every source validation draft above Dice 0.90), so its drafts alone leave the methods
tied at no clicks. The robot user therefore clicks on the same labelled source cases from three
starts, and the methods are scored on all their objects pooled:

- "draft": the engine's result on the source image, read as source (what it chose from before);
- "randomised": each source image re-rendered `RENDERINGS` times with the bundle's domain
  randomisation (training/randomize.synthesize, on the working grid and normalised as the
  segmenter's training crops, a fixed seed per case), drafted by the engine as a target image
  (through the bundle's translator when it segments the preview) and clicked as a target image.
  The assumption: these renderings are the label-free stand-in for target drafts. A bundle whose
  training recorded no domain randomisation is rendered with randomize.py's defaults all the same
  (the record says so);
- "empty": every label outlined from nothing (a label a target draft missed wholly, a new
  structure) on the case's first rendering, read as a target image as the product meets it. Not
  on the plain source image: there f-BRS, the bundle's segmenter refined at each click, gets back
  the source segmenter's own answer for a label it knows (xray-drr: Dice 0.97 after 20 clicks from
  empty on a source image, as the prompt network, against the sphere's 0.10), which a missed label
  or a new structure on a target image does not offer.

An object is named `<case>/<label>` from the draft, `<case>@randomised<k>/<label>` and
`<case>@empty/<label>` from the others, so the chooser pairs methods over the same objects. The
renderings and the empty start of a case are not independent of its draft: the noise bound of
the choice (NOISE_SE in cli.py) treats them as if they were, so it is a little optimistic.
"""

from __future__ import annotations

import zlib

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..geometry import resample_to_reference, to_working_grid
from ..normalize import denormalize
from ..training.randomize import crop_normalization, synthesize
from .clicks import summarise

STARTS = ("draft", "randomised", "empty")
RENDERINGS = 2  # randomised renderings of each source validation case
RENDER_SEED = 37  # with the case id, seeds each case's renderings: the same on every run and --limit


def start_of(name: str) -> str:
    """Which start an object (`<case>[@start]/<label>`) was clicked from."""
    case = name.rsplit("/", 1)[0]
    return "draft" if "@" not in case else case.rsplit("@", 1)[1].rstrip("0123456789")


def render(image: sitk.Image, truth: sitk.Image, bundle, rng: np.random.Generator) -> tuple[sitk.Image, sitk.Image]:
    """(a random-modality rendering of `image`, its reference labels), both on the bundle's working
    grid: resampled and normalised as "source" as training prepares a case (training/datasets.py),
    synthesised from `truth` as the segmenter's randomised crops are (a 2D bundle's in the plane),
    in the units of the bundle's target normalisation, so that the engine's normalisation gives
    the synthesised intensities back."""
    spacing = list(bundle.spacing)[: bundle.spatial_dims]
    if bundle.spatial_dims == 2:
        spacing.append(image.GetSpacing()[2])
    working = to_working_grid(sitk.Cast(image, sitk.sitkFloat32), spacing)
    label = resample_to_reference(sitk.Cast(truth, sitk.sitkInt16), working, sitk.sitkNearestNeighbor, 0)
    x = bundle.normalize(sitk.GetArrayFromImage(working), "source")
    y = sitk.GetArrayFromImage(label)
    target = bundle.metadata["normalization"]["target"]
    if bundle.spatial_dims == 2:
        synthetic = synthesize(x[0], y[0], rng, crop_normalization(target))[None]
    else:
        synthetic = synthesize(x, y, rng, crop_normalization(target))
    rendered = sitk.GetImageFromArray(denormalize(synthetic, target))
    rendered.CopyInformation(working)
    return rendered, label


def randomisation_record(bundle) -> str:
    """How the "randomised" start renders this bundle's cases, for the click_refiner record."""
    shares = _values_of(bundle.metadata.get("training", {}), "domain_randomize")
    if any(isinstance(s, (int, float)) and s > 0 for s in shares):
        return ("training/randomize.synthesize, the domain randomisation the bundle's segmenter was trained "
                f"with (domain_randomize {max(s for s in shares if isinstance(s, (int, float)))})")
    return ("training/randomize.synthesize with its defaults: the bundle's training metadata records no "
            "domain randomisation")


def _values_of(record, key: str) -> list:
    """Every value of `key` anywhere in a nested metadata record."""
    if isinstance(record, dict):
        return [v for k, v in record.items() if k == key] + [x for v in record.values() for x in _values_of(v, key)]
    if isinstance(record, list):
        return [x for v in record for x in _values_of(v, key)]
    return []


def chooser_cases(source_engine, target_engine, paths, renderings: int = RENDERINGS):
    """The robot user's cases over labelled source (id, image path, label path) `paths`: for each,
    its draft by `source_engine` (mode "source"), `renderings` randomised renderings drafted by
    `target_engine` (the bundle's own mode), and the empty start on the first rendering; as
    `evaluate_cases` reads them (with their (engine, domain[, empty])), one at a time."""
    from ..imageio import read_image

    if source_engine.mode != "source" or target_engine.mode == "source":
        raise InputError("The chooser's starts need an engine in mode 'source' for the source drafts and one "
                         "in a target mode for the renderings.")
    if renderings < 1:
        raise InputError("The chooser needs at least one randomised rendering of each case (--renderings 1 "
                         "or more): the empty start clicks on it.")
    for case_id, image_path, label_path in paths:
        image, truth = read_image(image_path), read_image(label_path)
        if truth.GetSize() != image.GetSize():
            raise InputError(f"Label {label_path} is not on the grid of {image_path}.")
        yield case_id, image, truth, (source_engine, "source")
        rng = np.random.default_rng([RENDER_SEED, zlib.crc32(case_id.encode())])
        rendered = [render(image, truth, source_engine.bundle, rng) for _ in range(renderings)]
        for k, (image_k, truth_k) in enumerate(rendered):
            yield f"{case_id}@randomised{k}", image_k, truth_k, (target_engine, "target")
        yield f"{case_id}@empty", *rendered[0], (target_engine, "target", True)


def per_start(results: dict) -> dict:
    """Per start, per method: the summary (`summarise`, no latency) over the objects clicked from it."""
    out = {}
    for start in STARTS:
        rows = {}
        for name, r in results.items():
            objects = [o for o in r["curves"] if start_of(o) == start]
            if objects:
                summary = summarise([r["curves"][o] for o in objects], [], objects)
                rows[name] = {k: v for k, v in summary.items() if not k.startswith(("latency", "clicks_timed"))}
        if rows:
            out[start] = rows
    return out
