"""New structures (a lesion, a cyst: a segment the model has no label for) as the front ends
start them: their default names, which model bundles can outline them, and a box drawn on one
slice made three-dimensional. No MRML here."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from crossdomainseg.errors import BundleError, InputError

NAME_LENGTH = 64  # a DICOM SEG segment label holds at most 64 characters


def structure_name(requested: str | None, taken) -> str:
    """`requested` (stripped), or "Structure N" with the lowest N free; InputError when the name is
    taken by another segment or too long."""
    taken = set(taken)
    name = (requested or "").strip()
    if not name:
        n = 1
        while f"Structure {n}" in taken:
            n += 1
        return f"Structure {n}"
    if name in taken:
        raise InputError(f"A segment named {name!r} already exists; give the new structure another name.")
    if len(name) > NAME_LENGTH or "\\" in name:
        raise InputError(f"A structure's name has at most {NAME_LENGTH} characters and no backslash; "
                         f"{name[:20]!r}... does not fit.")
    return name


def require_prompt_network(session, task: str | None, box: bool = False) -> None:
    """BundleError, saying which shipped bundles can, when the model cannot outline new structures
    (`box`: from a box, which needs the prompt network's box channel)."""
    refiner = session.structure_refiner
    if refiner is not None and (not box or getattr(refiner, "accepts_box", False)):
        return
    from crossdomainseg.interactive.prompt_net import BOX_CHANNELS
    from crossdomainseg.resources import shipped_bundles

    clicks, boxes = [], []  # the shipped bundles that outline new structures from a click, from a box
    for name, path in shipped_bundles().items():
        spec = json.loads((path / "configs" / "metadata.json").read_text()).get("networks", {}).get("prompt")
        if spec is not None:
            clicks.append(name)
            if spec.get("in_channels", 0) >= BOX_CHANNELS:
                boxes.append(name)
    from_box = f"Models that take a box: {', '.join(boxes) or 'none shipped'}"
    if refiner is None:
        raise BundleError(f"This model ({task or 'unknown task'}) cannot outline new structures: it has no "
                          f"prompt network. Models that can: {', '.join(clicks) or 'none shipped'}"
                          f"{f' ({from_box.lower()})' if box else ''}; or add one to this model with "
                          "`crossdomainseg train-prompt`.")
    raise BundleError(f"This model's prompt network ({task or 'unknown task'}) takes clicks, not a box (it has "
                      f"no box channel): start the structure with a click. {from_box}; or add the box "
                      "channel with `crossdomainseg train-prompt --fine-tune`.")


def box_corners(image: sitk.Image, corner_a, corner_b) -> tuple[tuple, tuple]:
    """Opposite corners (LPS mm) of the box a user drew from `corner_a` to `corner_b` (LPS mm),
    cut to the image. A box drawn on one slice (less than two voxels deep along an axis of the
    image) is given the mean of its other two extents as its depth along that axis, centred on the
    slice, so a lesion boxed in one view is outlined in 3D."""
    a = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in corner_a]))
    b = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in corner_b]))
    last = np.array(image.GetSize(), float) - 1.0
    if np.any(np.maximum(a, b) < -0.5) or np.any(np.minimum(a, b) > last + 0.5):
        raise InputError("The box is outside the image; draw it around the structure, inside the volume.")
    a, b = np.clip(a, 0.0, last), np.clip(b, 0.0, last)
    spacing = np.array(image.GetSpacing())
    extent = np.abs(b - a) * spacing
    thin = [axis for axis in range(3) if np.abs(b - a)[axis] < 2.0 and image.GetSize()[axis] > 1]
    if len(thin) == 1:
        axis = thin[0]
        depth = np.mean([extent[i] for i in range(3) if i != axis]) / spacing[axis]
        centre = (a[axis] + b[axis]) / 2.0
        a[axis], b[axis] = max(0.0, centre - depth / 2.0), min(last[axis], centre + depth / 2.0)
    elif len(thin) > 1:
        raise InputError("A box needs two corners apart on a slice: drag or click its opposite corners.")
    return (tuple(image.TransformContinuousIndexToPhysicalPoint(a.tolist())),
            tuple(image.TransformContinuousIndexToPhysicalPoint(b.tolist())))
