"""The interactive click session: one image, its current label, the clicks and the locked voxels.

The session works on the input image's own grid, so the label it returns needs no resampling.
Clicks are kept as patient-space points (LPS mm, SimpleITK physical space) and turned into voxel
indices only when applied, so they survive a model reload and a move to another grid (`rebase`).

A new structure (a label the segmentation does not have) starts from a positive click or from a
box drawn around it (for refiners with a box channel); the box then goes with every later click on
that structure.

A click moves voxels into or out of the label being corrected only, only inside the crop around
it, and only in a region connected to the click: a positive click adds voxels to the label (taking
them from background or from another label), a negative click returns the label's voxels to
background. Locked voxels (painted or confirmed by hand) are never changed by a click, nor are
voxels nearer to an earlier click of the other sign on the same label than to this click (else a
negative click beside a positive one takes back what that one added, and the next positive click
puts it back).
"""

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError
from .encoding import Box, CropInputs, box_answer, crop_box, crop_voxels, squared_distance_mm


@dataclass(frozen=True)
class Click:
    point: tuple[float, float, float]  # LPS mm
    positive: bool
    label: int


@dataclass(frozen=True)
class ClickResult:
    label: np.ndarray  # the session's whole label array (z, y, x) after the action
    box: Box | None  # the voxels that changed lie inside it; None when nothing changed
    changed: int


@dataclass
class _Action:
    kind: str  # "click", "box" or "paint"
    box: Box | None
    before: dict = field(default_factory=dict)  # patches inside box before the action
    after: dict = field(default_factory=dict)
    click: Click | None = None  # of a box: its label and centre (not one of the session's clicks)
    paint: tuple | None = None  # (mask image, label, lock) for replay on another grid
    new_label: bool = False  # the click started a new structure (its label value joins the session)
    corners: tuple | None = None  # a box's two opposite corners (LPS mm)


def _as_array(image_or_array, name: str) -> np.ndarray:
    if isinstance(image_or_array, sitk.Image):
        return sitk.GetArrayFromImage(image_or_array)
    if image_or_array is None:
        raise InputError(f"The click session needs a {name}.")
    return np.asarray(image_or_array)


def _robust_normalize(array: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(array, [0.5, 99.5])
    return ((array - lo) / max(hi - lo, 1e-6)).astype(np.float32)


class InteractiveSession:
    """Click correction of one image.

    image: SimpleITK image (any grid); label: label image or (z, y, x) array on its grid;
    probabilities: (C, z, y, x) or (z, y, x, C) array or vector image, C = number of labels
    including background (one-hot of `label` when None); image_features, preview: the refiner's
    intensity channels on the same grid, already normalised (robust rescale of the image when None);
    refiner: an object with `crop_mm` (z, y, x) and `propose(CropInputs) -> probability array`;
    structure_refiner: the one that outlines and corrects new structures (the prompt network, when
    the draft's labels are corrected with another method; default `refiner`).
    """

    def __init__(self, image, label, probabilities=None, image_features=None, preview=None,
                 refiner=None, label_values=None, structure_refiner=None):
        if refiner is None:
            from .sphere import SphereRefiner

            refiner = SphereRefiner()
        self.refiner = refiner
        self.structure_refiner = structure_refiner
        self.clicks: list[Click] = []
        self._done: list[_Action] = []
        self._undone: list[_Action] = []
        self.added: list[int] = []  # label values of new structures in effect, in order
        self._set_grid(image, label, probabilities, image_features, preview, label_values)

    @classmethod
    def from_result(cls, image: sitk.Image, result, bundle, refiner=None,
                    domain: str = "target", structure_refiner=None) -> "InteractiveSession":
        """A session on an engine SegmentationResult for `image` (the input the engine got).

        The refiner's intensity channels are normalised exactly as the bundle's networks saw
        them: the image as `domain` ("source" for an engine in source mode), the preview (given
        in source units) as "source"."""
        features = bundle.normalize(sitk.GetArrayFromImage(image), domain)
        preview = None
        if result.preview is not None:
            preview = bundle.normalize(sitk.GetArrayFromImage(result.preview), "source")
        values = [v for v in bundle.labels.values() if v != 0]
        return cls(image, result.label, result.probabilities, features, preview, refiner, values,
                   structure_refiner)

    def _set_grid(self, image, label, probabilities, image_features, preview, label_values):
        if not isinstance(image, sitk.Image):
            raise InputError("The click session needs the image as a SimpleITK image (its geometry "
                             "maps clicks in patient coordinates to voxels).")
        if image.GetDimension() != 3:
            raise InputError(f"Click correction works on 3D images (2D as one slice); got "
                             f"{image.GetDimension()}D.")
        shape = tuple(reversed(image.GetSize()))
        label = _as_array(label, "label").astype(np.int16)
        if label.shape != shape:
            raise InputError(f"The label grid {label.shape} differs from the image grid {shape}; "
                             "resample the label onto the image first.")
        values = sorted(int(v) for v in (label_values if label_values is not None else np.unique(label)))
        self.label_values = [v for v in values if v != 0]
        n_classes = max([int(label.max())] + values) + 1
        if probabilities is None:
            probs = np.stack([(label == c) for c in range(n_classes)]).astype(np.float32)
        else:
            probs = _as_array(probabilities, "probability map").astype(np.float32)
            if probs.shape[1:] != shape and probs.shape[:3] == shape:
                probs = np.moveaxis(probs, -1, 0)
            if probs.shape[1:] != shape or probs.shape[0] < n_classes:
                raise InputError(f"The probability map {probs.shape} does not match the image grid "
                                 f"{shape} with {n_classes} labels.")
            probs = np.ascontiguousarray(probs)
        base = sitk.GetArrayFromImage(image).astype(np.float32)
        features = _robust_normalize(base) if image_features is None else _as_array(image_features, "image")
        preview = features if preview is None else _as_array(preview, "preview")
        for name, array in (("normalised image", features), ("preview", preview)):
            if array.shape != shape:
                raise InputError(f"The {name} grid {array.shape} differs from the image grid {shape}.")
        self.image = image
        self.label = label
        self.probabilities = probs
        self.features = features.astype(np.float32, copy=False)
        self.preview = preview.astype(np.float32, copy=False)
        self.locked = np.zeros(shape, bool)
        # rounded to the micrometre: a float32 header stores 1.8 mm as 1.7999999523, and distances
        # on such grids tie at thresholds, so the same case read from NIfTI or NRRD clicked apart
        self.spacing = tuple(round(float(s), 6) for s in reversed(image.GetSpacing()))

    # ---- clicks -----------------------------------------------------------------------------

    def index_of(self, point) -> tuple[int, int, int]:
        """(z, y, x) voxel of an LPS point on this session's grid; InputError outside it."""
        try:
            continuous = self.image.TransformPhysicalPointToContinuousIndex([float(p) for p in point])
        except (TypeError, ValueError) as error:
            raise InputError(f"A click needs a point (x, y, z) in mm; got {point!r}.") from error
        index = tuple(int(round(c)) for c in reversed(continuous))
        if not all(0 <= i < n for i, n in zip(index, self.label.shape)):
            raise InputError(f"The click at {tuple(round(float(p), 1) for p in point)} mm (LPS) is outside "
                             "the image; click inside the volume.")
        return index

    def add_click(self, point, positive: bool, label: int) -> ClickResult:
        """Correct `label` around `point` (LPS mm): add to it (positive) or remove from it."""
        label = int(label)
        if label not in self.label_values:
            raise InputError(f"Label {label} is not one of this segmentation's labels "
                             f"{self.label_values}; pick a label to correct.")
        click = Click(tuple(float(p) for p in point), bool(positive), label)
        action = self._apply_click(click)
        self._done.append(action)
        self._undone.clear()
        self.clicks.append(click)
        return ClickResult(self.label, action.box, self._changed(action))

    def new_structure(self, point, value: int | None = None) -> tuple[int, ClickResult]:
        """Start a structure the segmentation has no label for (a lesion, a cyst) with a positive
        click at `point` (LPS mm): it gets label `value` (default: one above the highest label) and
        is corrected with `add_click` like any other label. Undo takes the structure back out.
        Returns (value, result)."""
        value = self._new_value(value)
        click = Click(tuple(float(p) for p in point), True, value)
        self.index_of(click.point)  # InputError outside the image, before anything changes
        return self._start_structure(value, lambda: self._apply_click(click),
                                     "The voxel clicked is locked (painted or confirmed by hand); click "
                                     "elsewhere to start the new structure.")

    def new_structure_from_box(self, corner_a, corner_b, value: int | None = None) -> tuple[int, ClickResult]:
        """Start a new structure from a box: `corner_a` and `corner_b` (LPS mm) are opposite corners
        of a box drawn around it. The refiner outlines the structure in the box (it may reach
        BOX_MARGIN_MM past it); the box goes with every later click on the structure. Needs a
        refiner with a box channel. Returns (value, result) as `new_structure`."""
        if not getattr(self._refiner_for(None), "accepts_box", False):
            raise InputError("This model's click network cannot start a structure from a box; click "
                             "inside the structure instead (a box needs a prompt network with a box "
                             "channel: `crossdomainseg train-prompt --fine-tune` adds one).")
        value = self._new_value(value)
        corners = tuple(tuple(float(p) for p in corner) for corner in (corner_a, corner_b))
        box = self._voxel_box(corners)  # InputError outside the image, before anything changes
        centre = self.image.TransformContinuousIndexToPhysicalPoint(
            [(a + b - 1) / 2.0 for a, b in zip(reversed(box.start), reversed(box.stop))])
        return self._start_structure(value, lambda: self._apply_box(Click(tuple(centre), True, value), corners),
                                     "Nothing in that box could be outlined (or it is all locked); draw the "
                                     "box closely around the structure, or start it with a click inside it.")

    def _start_structure(self, value: int, apply, refusal: str) -> tuple[int, ClickResult]:
        """Make `value` a label and run `apply()` (the click or box starting it); when that changes
        nothing, take the label out again and raise InputError(`refusal`). Undo takes it out."""
        self._add_label(value)
        action = apply()
        if action.box is None:
            self._remove_label(value)
            raise InputError(refusal)
        action.new_label = True
        self._done.append(action)
        self._undone.clear()
        if action.kind == "click":
            self.clicks.append(action.click)
        return value, ClickResult(self.label, action.box, self._changed(action))

    def _refiner_for(self, label: int | None):
        """The refiner for clicks on `label`: a new structure's (None: one to come) or the draft's."""
        if self.structure_refiner is not None and (label is None or label in self.added):
            return self.structure_refiner
        return self.refiner

    def _new_value(self, value: int | None) -> int:
        value = max(self.label_values + [0]) + 1 if value is None else int(value)
        if value in self.label_values or not 0 < value <= np.iinfo(np.int16).max:
            raise InputError(f"Label {value} is already in use or not a valid label value; pick a value "
                             f"other than 0 and {self.label_values}.")
        return value

    def _voxel_box(self, corners) -> Box:
        """The voxels [start, stop) (z, y, x) between two opposite corners (LPS mm) of a box."""
        a, b = (self.index_of(corner) for corner in corners)
        return Box(tuple(min(i, j) for i, j in zip(a, b)), tuple(max(i, j) + 1 for i, j in zip(a, b)))

    def _label_box(self, label: int) -> Box | None:
        """The box the structure `label` was started from (voxels of this grid), if any."""
        for action in reversed(self._done):
            if action.kind == "box" and action.click.label == label:
                return self._voxel_box(action.corners)
        return None

    def _apply_box(self, click: Click, corners) -> _Action:
        box = self._voxel_box(corners)
        refiner = self._refiner_for(click.label)
        size = tuple(max(c, n + 2 * int(np.ceil(m / s))) for c, n, m, s in zip(
            crop_voxels(refiner.crop_mm, self.spacing), box.shape, (8.0,) * 3, self.spacing))
        crop = crop_box(tuple((a + b) // 2 for a, b in zip(box.start, box.stop)), size, self.label.shape)
        sl = crop.slices
        current = self.label[sl] == click.label
        local = Box(crop.local(box.start), crop.local(box.stop))
        centre = tuple((a + b - 1) // 2 for a, b in zip(local.start, local.stop))
        inputs = CropInputs(self.features[sl], self.preview[sl], self.probabilities[click.label][sl], current,
                            [], [], centre, True, self.spacing, click.label, local, self.image.GetDirection())
        proposal = np.asarray(refiner.propose(inputs)) >= 0.5
        change = box_answer(proposal & ~self.locked[sl] & ~current, local, self.spacing)
        action = self._write(crop, change, click)
        action.kind, action.corners = "box", corners
        return action

    def _add_label(self, value: int) -> None:
        """Make `value` a label of this session (a new structure), with a probability channel."""
        if self.probabilities.shape[0] <= value:
            extra = np.zeros((value + 1 - self.probabilities.shape[0], *self.label.shape), np.float32)
            self.probabilities = np.concatenate([self.probabilities, extra])
        self.label_values = sorted(self.label_values + [value])
        self.added.append(value)

    def _remove_label(self, value: int) -> None:
        self.label_values.remove(value)
        self.added.remove(value)

    def _apply_click(self, click: Click) -> _Action:
        index = self.index_of(click.point)
        refiner = self._refiner_for(click.label)
        box = crop_box(index, crop_voxels(refiner.crop_mm, self.spacing), self.label.shape)
        sl = box.slices
        label_crop = self.label[sl]
        current = label_crop == click.label
        # positive: any unlocked voxel may join the label (a lesion inside the liver's label);
        # negative: only the label's own voxels may leave it, to background
        free = ~self.locked[sl] & (~current if click.positive else current)
        local = box.local(index)
        if not free[local]:
            return _Action("click", None, click=click)
        pos, neg = [local] if click.positive else [], [] if click.positive else [local]
        opposed = []  # earlier clicks of this label with the other sign, as crop indices
        for earlier in self.clicks:
            if earlier.label != click.label:
                continue
            try:
                other = self.index_of(earlier.point)
            except InputError:
                continue
            if earlier.positive != click.positive:
                opposed.append(box.local(other))
            if box.contains(other):
                (pos if earlier.positive else neg).append(box.local(other))
        drawn = self._label_box(click.label)
        inputs = CropInputs(self.features[sl], self.preview[sl], self.probabilities[click.label][sl],
                            current, pos, neg, local, click.positive, self.spacing, click.label,
                            None if drawn is None else Box(box.local(drawn.start), box.local(drawn.stop)),
                            self.image.GetDirection())
        proposal = np.asarray(refiner.propose(inputs)) >= 0.5
        change = free & (proposal if click.positive else ~proposal) & self._nearer(local, opposed, box.shape)
        change[local] = True  # a click always changes at least the voxel clicked
        components, _ = ndimage.label(change)
        change = components == components[local]
        return self._write(box, change, click)

    def _nearer(self, index, opposed, shape) -> np.ndarray:
        """Voxels of the crop no farther (mm) from the click at `index` than from any opposed
        click: a click never takes back what a click of the other sign said about the voxels
        nearer to it, so two clicks cannot undo each other in turn. Ties go to the new click, so
        clicking the same spot with the other sign reverses the earlier click."""
        mine = squared_distance_mm(shape, index, self.spacing)
        nearer = np.ones(shape, bool)
        for other in opposed:
            nearer &= mine <= squared_distance_mm(shape, other, self.spacing)
        return nearer

    def _write(self, box: Box, change: np.ndarray, click: Click) -> _Action:
        """Apply `change` (bool, on `box`) for the click's label; keep patches of the tight box."""
        if not change.any():
            return _Action("click", None, click=click)
        tight = ndimage.find_objects(change.astype(np.uint8))[0]
        abs_box = Box(tuple(b + s.start for b, s in zip(box.start, tight)),
                      tuple(b + s.stop for b, s in zip(box.start, tight)))
        before = self._patch(abs_box)
        mask = change[tight]
        label_view = self.label[abs_box.slices]
        prob_view = self.probabilities[(slice(None),) + abs_box.slices]
        new_value = click.label if click.positive else 0
        label_view[mask] = new_value
        prob_view[:, mask] = 0.0
        prob_view[new_value, mask] = 1.0
        return _Action("click", abs_box, before, self._patch(abs_box), click=click)

    def _patch(self, box: Box) -> dict:
        return {"label": self.label[box.slices].copy(),
                "probabilities": self.probabilities[(slice(None),) + box.slices].copy(),
                "locked": self.locked[box.slices].copy()}

    def _restore(self, box: Box, patch: dict):
        self.label[box.slices] = patch["label"]
        self.probabilities[(slice(None),) + box.slices] = patch["probabilities"]
        self.locked[box.slices] = patch["locked"]

    @staticmethod
    def _changed(action: _Action) -> int:
        if action.box is None:
            return 0
        return int((action.before["label"] != action.after["label"]).sum()
                   + (action.before["locked"] != action.after["locked"]).sum())

    # ---- hand edits -------------------------------------------------------------------------

    def paint(self, mask, label: int, lock: bool = True) -> ClickResult:
        """Set `label` (0 erases) on `mask` (bool array on this grid, or a mask image on any grid)
        by hand; painted voxels are locked against clicks unless `lock` is False."""
        label = int(label)
        if label != 0 and label not in self.label_values:
            raise InputError(f"Label {label} is not one of this segmentation's labels {self.label_values}.")
        mask_image = self._mask_image(mask)
        mask_array = sitk.GetArrayFromImage(self._on_grid(mask_image)).astype(bool)
        action = self._apply_paint(mask_array, label, lock)
        action.paint = (mask_image, label, lock)
        self._done.append(action)
        self._undone.clear()
        return ClickResult(self.label, action.box, self._changed(action))

    def _mask_image(self, mask) -> sitk.Image:
        if isinstance(mask, sitk.Image):
            return sitk.Cast(mask != 0, sitk.sitkUInt8)
        array = np.asarray(mask)
        if array.shape != self.label.shape:
            raise InputError(f"The painted mask {array.shape} does not match the image grid "
                             f"{self.label.shape}.")
        image = sitk.GetImageFromArray(array.astype(np.uint8))
        image.CopyInformation(self.image)
        return image

    def _on_grid(self, image: sitk.Image) -> sitk.Image:
        same = (image.GetSize() == self.image.GetSize()
                and np.allclose(image.GetOrigin(), self.image.GetOrigin())
                and np.allclose(image.GetSpacing(), self.image.GetSpacing())
                and np.allclose(image.GetDirection(), self.image.GetDirection()))
        if same:
            return image
        return sitk.Resample(image, self.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                             sitk.sitkUInt8)

    def _apply_paint(self, mask: np.ndarray, label: int, lock: bool) -> _Action:
        if not mask.any():
            return _Action("paint", None)
        tight = ndimage.find_objects(mask.astype(np.uint8))[0]
        box = Box(tuple(s.start for s in tight), tuple(s.stop for s in tight))
        before = self._patch(box)
        local = mask[tight]
        self.label[box.slices][local] = label
        prob_view = self.probabilities[(slice(None),) + box.slices]
        prob_view[:, local] = 0.0
        prob_view[label, local] = 1.0
        if lock:
            self.locked[box.slices] |= local
        return _Action("paint", box, before, self._patch(box))

    def set_locked(self, mask, locked: bool = True) -> None:
        """Lock (or unlock) voxels confirmed by hand: clicks never change locked voxels."""
        mask_array = sitk.GetArrayFromImage(self._on_grid(self._mask_image(mask))).astype(bool)
        self.locked[mask_array] = locked

    # ---- history ----------------------------------------------------------------------------

    def undo(self) -> ClickResult | None:
        """Take back the last click or paint; None when there is nothing to undo."""
        if not self._done:
            return None
        action = self._done.pop()
        if action.box is not None:
            self._restore(action.box, action.before)
        if action.kind == "click":
            self.clicks.pop()
        if action.new_label:
            self._remove_label(action.click.label)
        self._undone.append(action)
        return ClickResult(self.label, action.box, self._changed(action))

    def redo(self) -> ClickResult | None:
        """Apply again the last action undone; None when there is nothing to redo."""
        if not self._undone:
            return None
        action = self._undone.pop()
        if action.box is not None:
            self._restore(action.box, action.after)
        if action.kind == "click":
            self.clicks.append(action.click)
        if action.new_label:
            self._add_label(action.click.label)
        self._done.append(action)
        return ClickResult(self.label, action.box, self._changed(action))

    def revise_click(self, click: Click, point=None) -> ClickResult:
        """Move a click in effect to `point` (LPS mm), or take it out when `point` is None (the
        user dragged or deleted its point), then apply every later click and hand edit again, in
        order, from their patient-space positions. The moved click keeps its place in `clicks`;
        the redo history is dropped."""
        starts = [i for i, action in enumerate(self._done) if action.click is click]
        if not starts:
            raise InputError("That click is no longer in effect (undone, or made on an earlier "
                             "result); place a new point instead.")
        start = starts[-1]
        undone = self._done[start:]
        moved = None
        if point is not None:
            moved = _Action("click", None, click=Click(tuple(float(p) for p in point), click.positive, click.label),
                            new_label=undone[0].new_label)
            self.index_of(moved.click.point)  # InputError outside the image, before anything changes
        elif undone[0].new_label:
            raise InputError("That click started a new structure; undo it to take the structure out, "
                             "or move the click.")
        before = {"label": self.label.copy(), "locked": self.locked.copy()}
        for action in reversed(undone):
            if action.box is not None:
                self._restore(action.box, action.before)
            if action.new_label:
                self._remove_label(action.click.label)
        del self._done[start:]
        self._undone.clear()
        self.clicks = [action.click for action in self._done if action.kind == "click"]
        self._replay(([] if moved is None else [moved]) + undone[1:])
        boxes = [a.box for a in undone + self._done[start:] if a.box is not None]
        box = None if not boxes else Box(tuple(min(b.start[i] for b in boxes) for i in range(3)),
                                         tuple(max(b.stop[i] for b in boxes) for i in range(3)))
        changed = 0 if box is None else int(
            np.count_nonzero(before["label"] != self.label)
            + np.count_nonzero(before["locked"] != self.locked))
        return ClickResult(self.label, box, changed)

    def set_refiner(self, refiner) -> None:
        """Use another refiner (a reloaded model) for the next clicks; clicks so far stay."""
        self.refiner = refiner

    def rebase(self, image, label, probabilities=None, image_features=None, preview=None,
               refiner=None) -> ClickResult:
        """Start again from a new automatic result (new model or another grid) and replay every
        click and hand edit from their patient-space positions. Undone actions are dropped."""
        history = list(self._done)
        if refiner is not None:
            self.refiner = refiner
        added = list(self.added)
        self._set_grid(image, label, probabilities, image_features, preview,
                       [v for v in self.label_values if v not in added])
        self.clicks, self._done, self._undone, self.added = [], [], [], []
        self._replay(history)
        return ClickResult(self.label, Box((0, 0, 0), self.label.shape), sum(map(self._changed, self._done)))

    def _replay(self, actions) -> None:
        """Apply `actions` (clicks and hand edits) again, in order, from their patient-space
        positions, appending them to the history."""
        for action in actions:
            if action.kind in ("click", "box"):
                if action.new_label:
                    self._add_label(action.click.label)
                try:
                    replayed = (self._apply_click(action.click) if action.kind == "click"
                                else self._apply_box(action.click, action.corners))
                except InputError:  # the new grid does not cover this prompt: keep it, change nothing
                    replayed = _Action(action.kind, None, click=action.click, corners=action.corners)
                replayed.new_label = action.new_label
                if action.kind == "click":
                    self.clicks.append(action.click)
            else:
                mask_image, value, lock = action.paint
                replayed = self._apply_paint(
                    sitk.GetArrayFromImage(self._on_grid(mask_image)).astype(bool), value, lock)
                replayed.paint = action.paint
            self._done.append(replayed)

    def label_image(self) -> sitk.Image:
        """The current label as an image on the input grid."""
        image = sitk.GetImageFromArray(self.label)
        image.CopyInformation(self.image)
        return image
