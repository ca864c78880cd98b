"""The boundary shift click refiner and its branches (front ends click with it, alone or as the
learned refiner's fallback).

- LocalOtsuRefiner: the click's side of Otsu's two-class split of the intensities around it, with
  guards against leaks.
- SmallObjectRefiner: for a label with few voxels near the click (a lesion): a positive click takes
  the click's blob at half contrast, a negative one on a stray island takes the island off.
- BoundaryShiftRefiner: moves the label's boundary near the click by a multiple of the click's
  depth in the error (small labels go to SmallObjectRefiner); the learned refiner's fallback.
"""

import numpy as np
from scipy import ndimage

from .boundary_evidence import (CORE_MM, MIN_HISTOGRAM_VOXELS, RING_MM, fit_mask, log_likelihood_ratio,
                                otsu_threshold, signed_distance)
from .encoding import DEFAULT_CROP_MM, CropInputs, squared_distance_mm
from .regions import apply_region, component_at, within_a_voxel

# A label with fewer voxels than this in the click's crop (a lesion, or nothing yet) is a small
# object: the boundary shift and learned refiners hand its clicks to SmallObjectRefiner.
SMALL_LABEL_VOXELS = 300
# A fine click (within a voxel or so of the boundary) on a label with fewer voxels than this in the
# crop (a large lesion, almost right) is the small object refiner's too: see BoundaryShiftRefiner.
FINE_VOXELS = 4000


class LocalOtsuRefiner:
    """The click's tissue: the side of Otsu's split of the intensities within `window_mm` of the
    click that the click falls on, opened by one voxel (cuts thin bridges) and connected to the
    click within `max_radius_mm`. Two guards keep a click from costing Dice:
    - a region that reaches the rim of that ball leaked into a large structure of like
      intensity: only its part within `guard_mm` of the click stays;
    - a positive click on the side of the split where the label's own voxels in the window are
      not (the split there separates something else than the label from its surroundings, e.g.
      a rim voxel of a small bright lesion) adds only a ball of `small_mm`."""

    name = "local_otsu"

    def __init__(self, crop_mm=DEFAULT_CROP_MM, smoothing_voxels: float = 0.7, window_mm: float = 15.0,
                 max_radius_mm: float = 30.0, guard_mm: float = 8.0, small_mm: float = 3.0):
        self.crop_mm = tuple(float(c) for c in crop_mm)
        self.smoothing = float(smoothing_voxels)
        self.window_mm = float(window_mm)
        self.max_radius_mm = float(max_radius_mm)
        self.guard_mm = float(guard_mm)
        self.small_mm = float(small_mm)

    def region(self, inputs: CropInputs) -> np.ndarray:
        image = ndimage.gaussian_filter(inputs.image.astype(np.float32), self.smoothing)
        d2 = squared_distance_mm(image.shape, inputs.click, inputs.spacing)
        window = d2 <= self.window_mm**2
        threshold = otsu_threshold(image[window])
        bright = image[inputs.click] >= threshold
        own = inputs.current & window  # with fewer than 10 voxels the label has no side yet
        if inputs.click_positive and own.sum() >= 10 and (np.median(image[own]) >= threshold) != bright:
            return d2 <= self.small_mm**2
        side = ((image >= threshold) if bright else (image < threshold)) & (d2 <= self.max_radius_mm**2)
        # opening, with the crop's faces not counted as edges (tissue runs on beyond them)
        opened = ndimage.binary_dilation(ndimage.binary_erosion(side, border_value=1)) & side
        opened[inputs.click] = side[inputs.click]
        region = component_at(opened, inputs.click)
        if region[d2 > (self.max_radius_mm - 4.0) ** 2].any():
            region = component_at(region & (d2 <= self.guard_mm**2), inputs.click)
        return region

    def propose(self, inputs: CropInputs) -> np.ndarray:
        return apply_region(inputs, self.region(inputs))


class SmallObjectRefiner:
    """Clicks on a label with few voxels in the crop, such as a lesion:
    - positive: the click's blob, split at half contrast: voxels on the click's side of the
      midpoint between the intensity at the click and the median of the unlabelled voxels within
      `window_mm`, connected to the click, with local Otsu's leak guard. On a voxel beside the
      label (one step away) the label's median intensity stands for the click's, whose
      neighbourhood there is mostly the tissue around.
    - negative, inside a connected part of the label of fewer than `island_voxels` that holds no
      positive click: that whole part goes (a stray blob of the automatic result), unless the
      click is a fine one (below) on a part thicker than a sliver.
    - any other negative click: local Otsu's region.
    A fine click (within `fine_mm` of the label's boundary: a one-voxel error) changes nothing
    farther than `fine_radius_mm` from it; so does a negative click whose region would take more
    than `vouched_share` of a part of the label that a positive click vouches for (the user said
    that part is right). On a label with fewer than `tiny_voxels` in the crop, where one voxel is
    worth more than 0.01 of Dice, a fine click changes only the voxel clicked."""

    name = "small_object"

    def __init__(self, crop_mm=DEFAULT_CROP_MM, window_mm: float = 15.0, max_radius_mm: float = 30.0,
                 guard_mm: float = 8.0, island_voxels: int = SMALL_LABEL_VOXELS, fine_mm: float = 2.0,
                 fine_radius_mm: float = 2.5, vouched_share: float = 0.5,
                 tiny_voxels: int = 100):
        self.tiny_voxels = int(tiny_voxels)
        self.crop_mm = tuple(float(c) for c in crop_mm)
        self.window_mm = float(window_mm)
        self.vouched_share = float(vouched_share)
        self.max_radius_mm, self.guard_mm = float(max_radius_mm), float(guard_mm)
        self.island_voxels = int(island_voxels)
        self.fine_mm, self.fine_radius_mm = float(fine_mm), float(fine_radius_mm)
        self.otsu = LocalOtsuRefiner(crop_mm=crop_mm, max_radius_mm=max_radius_mm, guard_mm=guard_mm)

    def propose(self, inputs: CropInputs) -> np.ndarray:
        d2 = squared_distance_mm(inputs.current.shape, inputs.click, inputs.spacing)
        # fine: the label's boundary within fine_mm, i.e. a voxel of the click's other side
        other_side = ~inputs.current if inputs.current[inputs.click] else inputs.current
        fine = bool((other_side & (d2 <= self.fine_mm**2)).any())
        island = None if inputs.click_positive else self._island(inputs)
        if island is not None and (not fine or self._thin(island, inputs.spacing)):
            return apply_region(inputs, island)
        if inputs.click_positive:
            beside = bool((inputs.current & (d2 <= within_a_voxel(self.fine_mm, inputs.spacing) ** 2)).any())
            region = self._blob(inputs, d2, beside)
        else:
            region = self.otsu.region(inputs)
        if fine or (not inputs.click_positive and self._takes_vouched(inputs, region)):
            region &= d2 <= self.fine_radius_mm**2
            if fine and inputs.current.sum() < self.tiny_voxels:
                region = np.zeros_like(region)
        return apply_region(inputs, region)

    def _blob(self, inputs: CropInputs, d2: np.ndarray, beside_label: bool) -> np.ndarray:
        """The click's blob; `d2`: squared mm from the click. Beside the label (a voxel away), the
        blob is the label's tissue: the click's neighbourhood there is partly the tissue around."""
        image = inputs.image.astype(np.float32)
        window = d2 <= self.window_mm**2
        own = inputs.current & window
        if beside_label and own.sum() >= 10:
            at_click = float(np.median(image[own]))
        else:
            seed = tuple(slice(max(0, c - 1), c + 2) for c in inputs.click)
            at_click = float(np.median(image[seed]))
        around = window & ~inputs.current
        if not around.any():
            around = window
        middle = (at_click + float(np.median(image[around]))) / 2
        side = (image >= middle) if at_click >= middle else (image <= middle)
        side &= d2 <= self.max_radius_mm**2
        side[inputs.click] = True
        region = component_at(side, inputs.click)
        if region[d2 > (self.max_radius_mm - 4.0) ** 2].any():
            region = component_at(region & (d2 <= self.guard_mm**2), inputs.click)
        return region

    def _takes_vouched(self, inputs: CropInputs, region: np.ndarray) -> bool:
        """Whether `region` holds more than vouched_share of the label's part under the click,
        and a positive click lies in that part."""
        part = component_at(inputs.current, inputs.click)
        if not any(part[p] for p in inputs.positive):
            return False
        return int((region & part).sum()) > self.vouched_share * int(part.sum())

    def _thin(self, part: np.ndarray, spacing) -> bool:
        """No voxel of `part` deeper than fine_mm inside it: a sliver, where every click is fine."""
        return float(ndimage.distance_transform_edt(np.pad(part, 1), sampling=spacing).max()) <= self.fine_mm

    def _island(self, inputs: CropInputs) -> np.ndarray | None:
        """The connected part of the label under the click, when it is small and no positive
        click vouches for it; else None."""
        if not inputs.current[inputs.click]:
            return None
        part = component_at(inputs.current, inputs.click)
        if part.sum() >= self.island_voxels or any(part[p] for p in inputs.positive):
            return None
        return part


class BoundaryShiftRefiner:
    """Where the automatic result is off by a band along the object's rim, a user clicks the middle
    of the band, so the click's depth (distance to the label's boundary) is about half the band's
    width. The boundary moves past the click by `factor` times that depth (`coreless_factor`
    where that would leave the label no core for the veto), fully within `inner_mm` of the click
    and tapering to no move at `outer_mm`: the band is fixed along the rim, not only at the click.
    The image may veto voxels of the move: one that a negative click would take out stays when
    its intensity is e^`evidence` times likelier in the label's core than in a ring around it
    (histograms in the crop), and one that a positive click would add stays out when it is that
    much likelier in the ring. Then the moved boundary is refitted to the image within `refit_mm`
    of the click (boundary_evidence.fit_mask, rim `rim_mm`, prior `prior_mm`), smoothed over
    `smooth_voxels`, in the click's direction only.
    Clicks go to the small object refiner on a label with fewer than `min_voxels` in the crop,
    deeper than `max_depth_mm` (not a band), and fine (within `fine_depth_mm`) on a label with
    fewer than `fine_voxels` (a large lesion almost right: moving its whole rim by a voxel costs
    more than the click fixes). The constants' tuning is in docs/experiments.md."""

    name = "boundary_shift"

    def __init__(self, crop_mm=DEFAULT_CROP_MM, factor: float = 1.5, inner_mm: float = 5.0,
                 outer_mm: float = 25.0, max_depth_mm: float = 20.0, min_voxels: int = SMALL_LABEL_VOXELS,
                 evidence: float = 3.0, bins: int = 24, rim_mm: float = 4.0, prior_mm: float = 3.0,
                 refit_mm: float = 45.0, fine_depth_mm: float = 2.0, fine_voxels: int = FINE_VOXELS,
                 smooth_voxels: float = 1.0, coreless_factor: float = 1.35):
        self.crop_mm = tuple(float(c) for c in crop_mm)
        self.fine_depth_mm, self.fine_voxels = float(fine_depth_mm), int(fine_voxels)
        self.factor, self.coreless_factor = float(factor), float(coreless_factor)
        self.inner_mm, self.outer_mm = float(inner_mm), float(outer_mm)
        self.max_depth_mm = float(max_depth_mm)
        self.min_voxels = int(min_voxels)
        self.evidence, self.bins = float(evidence), int(bins)
        self.rim_mm, self.prior_mm, self.refit_mm = float(rim_mm), float(prior_mm), float(refit_mm)
        self.smooth_voxels = float(smooth_voxels)
        self.otherwise = SmallObjectRefiner(crop_mm=crop_mm, island_voxels=min_voxels)

    def propose(self, inputs: CropInputs) -> np.ndarray:
        if inputs.current.sum() < self.min_voxels:
            return self.otherwise.propose(inputs)
        signed = signed_distance(inputs.current, inputs.spacing)
        current = inputs.current
        depth = abs(float(signed[inputs.click]))
        if depth > self.max_depth_mm or (depth <= self.fine_depth_mm and current.sum() < self.fine_voxels):
            return self.otherwise.propose(inputs)
        distance = np.sqrt(squared_distance_mm(current.shape, inputs.click, inputs.spacing))
        weight = np.clip((self.outer_mm - distance) / (self.outer_mm - self.inner_mm), 0.0, 1.0)
        move = self.factor * depth
        # core and ring lie beyond the move: what the label surely is and surely is not
        core = signed < -(move + CORE_MM)
        if core.sum() <= MIN_HISTOGRAM_VOXELS:  # no core for the veto: a smaller move
            move = self.coreless_factor * depth
            core = signed < -(move + CORE_MM)
        # half a voxel more right at the click, so a click on the boundary voxel itself moves it
        shift = move * weight + 0.5 * min(inputs.spacing) * (distance < 3.0)
        region = (weight > 0) & ((signed <= shift) if inputs.click_positive else (signed >= -shift))
        smooth = ndimage.gaussian_filter(inputs.image.astype(np.float32), 0.7)
        ring = (signed > RING_MM[0] + (move if inputs.click_positive else 0.0)) & (signed < RING_MM[1] + move)
        ratio = log_likelihood_ratio(smooth, core, ring, self.bins)
        if ratio is not None:
            veto = (ratio < -self.evidence) if inputs.click_positive else (ratio > self.evidence)
            region &= ~veto | (distance < 3.0)
        moved = apply_region(inputs, region) >= 0.5
        # the moved label fitted to the unsmoothed image; None where the crop cannot tell label
        # from surroundings
        fit = fit_mask(inputs.image.astype(np.float32), moved, inputs.spacing, self.rim_mm, self.prior_mm, self.bins)
        return self._near_click(inputs, moved, None if fit is None else fit[0], distance)

    def _near_click(self, inputs: CropInputs, moved: np.ndarray, fitted: np.ndarray | None,
                    distance: np.ndarray) -> np.ndarray:
        """The fit smoothed over `smooth_voxels` replaces the moved label within `refit_mm` of the
        click; only the click's side of the change is kept."""
        if fitted is None:
            return moved.astype(np.float32)
        if self.smooth_voxels > 0:
            fitted = ndimage.gaussian_filter(fitted.astype(np.float32), self.smooth_voxels) >= 0.5
        near = (distance < self.refit_mm) & (distance >= 3.0)
        refitted = np.where(near, fitted, moved)
        kept = (refitted | inputs.current) if inputs.click_positive else (refitted & inputs.current)
        return kept.astype(np.float32)
