"""Fitting label boundaries to the image (boundary_fit), as the curriculum's pseudo-labels use it."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from crossdomainseg.boundary_fit import add_partial_volume, fit_labels, signed_distance
from crossdomainseg.curriculum.losses import pseudo_labels
from crossdomainseg.curriculum.params import CurriculumParams
from crossdomainseg.errors import InputError

SPACING = (3.0, 3.0, 3.0)


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def _scene(seed=0):
    """A bright ball (truth, label 1) beside a dark one (label 2) in noise, with labels that
    miss a 1-voxel band of the bright ball's rim and overshoot the dark ball's by one voxel."""
    rng = np.random.default_rng(seed)
    shape = (40, 40, 40)
    bright, dark = _ball(shape, (20, 12, 20), 8), _ball(shape, (20, 30, 20), 6)
    image = 0.5 + 0.4 * bright - 0.4 * dark + rng.normal(0, 0.08, shape)
    truth = np.where(bright, 1, np.where(dark, 2, 0))
    draft = np.where(_ball(shape, (20, 12, 20), 7), 1, np.where(_ball(shape, (20, 30, 20), 7) & ~bright, 2, 0))
    return image.astype(np.float32), truth, draft


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_fit_moves_band_errors_onto_the_image_edges():
    image, truth, draft = _scene()
    fitted, rims = fit_labels(image, draft, SPACING, rim_mm=6.0, prior_mm=4.0)
    for value in (1, 2):
        before, after = _dice(draft == value, truth == value), _dice(fitted == value, truth == value)
        assert after > before + 0.04, (value, before, after)
    # only the rims change, and labels never trade voxels (only via background)
    assert not ((fitted != draft) & ~rims).any()
    assert not ((fitted > 0) & (draft > 0) & (fitted != draft)).any()


def test_deep_fit_takes_off_a_swallowed_slab_thicker_than_the_rim():
    """A dark ball whose label also holds a 15 mm slab of the bright tissue beside it (as the
    network's kidneys hold the fat around them): the rim fit alone leaves the slab's inside,
    whose intensity is also in the label's core; the deep fit takes the slab off whole and leaves
    the ball."""
    rng = np.random.default_rng(0)
    shape = (40, 40, 48)
    organ = _ball(shape, (20, 20, 16), 8)
    slab = np.zeros(shape, bool)
    slab[10:31, 10:31, 24:29] = True  # 5 voxels: 15 mm
    image = (0.3 + 0.4 * (~organ) + rng.normal(0, 0.05, shape)).astype(np.float32)
    draft = (organ | slab).astype(np.uint8)
    plain, _ = fit_labels(image, draft, SPACING, 6.0, 4.0)
    deep, rims = fit_labels(image, draft, SPACING, 6.0, 4.0, deep=True)
    assert (plain.astype(bool) & slab & ~organ).sum() > 0.1 * slab.sum()
    assert (deep.astype(bool) & slab & ~organ).sum() < 0.02 * slab.sum()
    assert _dice(deep == 1, organ) > 0.95 and not ((deep != draft) & ~rims).any()
    fitted, _ = fit_labels(image, organ.astype(np.uint8), SPACING, 6.0, 4.0, deep=True)
    assert _dice(fitted == 1, organ) > 0.97  # nothing swallowed: the deep fit keeps the organ


def test_fit_keeps_small_labels_and_featureless_images():
    image, truth, draft = _scene()
    small = np.zeros_like(draft)
    small[_ball(draft.shape, (20, 20, 20), 3)] = 4  # 123 voxels: too few for a histogram
    fitted, rims = fit_labels(image, small, SPACING, 6.0, 4.0)
    assert np.array_equal(fitted, small) and not rims.any()
    flat = np.full(image.shape, 0.5, np.float32)  # no evidence: the prior keeps the boundary
    fitted, _ = fit_labels(flat, draft, SPACING, 6.0, 4.0)
    assert np.array_equal(fitted, draft)


def test_signed_distance_is_negative_inside():
    mask = _ball((21, 21, 21), (10, 10, 10), 5)
    d = signed_distance(mask, SPACING)
    assert d[10, 10, 10] < -12 and d[0, 0, 0] > 20 and abs(d[10, 10, 15]) <= 3


def test_pseudo_labels_fitted_to_each_view_and_counted_where_the_teacher_is_unsure():
    image, truth, draft = _scene()
    # A teacher sure of the draft inside, unsure (0.6) on every voxel within 1 voxel of its rims.
    logits = torch.from_numpy(np.eye(3, dtype=np.float32)[draft]).movedim(-1, 0)[None] * 10.0
    rim = np.zeros(draft.shape, bool)
    for value in (0, 1, 2):
        d = np.abs(signed_distance(draft == value, SPACING))
        rim |= d <= 3.0
    logits[0][:, torch.from_numpy(rim)] *= 0.04
    images = torch.from_numpy(image)[None, None]
    plain, weight = pseudo_labels(logits, 0.9)
    assert torch.equal(plain[0], torch.from_numpy(draft)) and not weight[0][torch.from_numpy(rim)].any()
    fitted, weight = pseudo_labels(logits, 0.9, images=images, spacing=SPACING, fit_mm=6.0, prior_mm=4.0)
    for value in (1, 2):
        assert _dice(fitted[0].numpy() == value, truth == value) > _dice(draft == value, truth == value) + 0.04
    assert weight[0][torch.from_numpy(rim)].all()  # the fitted rims count
    with pytest.raises(InputError, match="pseudo_label_fit_mm"):
        CurriculumParams.from_dict({"pseudo_label_fit_mm": -1})


def test_pseudo_labels_find_a_contained_label_again_by_its_contrast():
    """A teacher that leaves a bright lesion as a hole in the liver (as the shipped model does on
    the phantom MR) and calls liver-like tissue lesion: the refitted pseudo-labels get both right
    and count the voxels they changed."""
    rng = np.random.default_rng(0)
    teacher = np.zeros((16, 32, 32), np.int64)
    teacher[2:14, 4:28, 4:28] = 1
    truth = teacher.copy()
    truth[6:10, 8:14, 8:14] = 2
    teacher[6:10, 8:14, 8:14] = 0
    teacher[6:10, 18:24, 18:24] = 2
    image = rng.normal(0.0, 1.0, teacher.shape) + np.where(truth == 2, 40.0, np.where(truth == 1, 20.0, 0.0))
    logits = torch.from_numpy(np.eye(3, dtype=np.float32)[teacher]).movedim(-1, 0)[None] * 10.0
    images = torch.from_numpy(image.astype(np.float32))[None, None]
    labels, weight = pseudo_labels(logits, 0.9, images=images, inside={2: 1}, inside_contrast=12.0)
    assert np.array_equal(labels[0].numpy(), truth)
    assert weight[0][torch.from_numpy(truth != teacher)].all()
    plain, _ = pseudo_labels(logits, 0.9, images=images)
    assert np.array_equal(plain[0].numpy(), teacher)


def test_the_trainer_refits_contained_labels_only_with_the_bundles_contrast(tmp_path):
    from crossdomainseg.bundle import make_random_bundle, update_bundle
    from crossdomainseg.curriculum.trainer import CurriculumTrainer

    bundle = make_random_bundle(tmp_path / "b", spacing=4.0, roi=16, seed=3,
                                labels={"background": 0, "liver": 1, "lesion": 2})
    on = CurriculumParams(pseudo_label_inside=True, student_input="image", curriculum=False)
    with pytest.raises(InputError, match="inside_contrast"):
        CurriculumTrainer(bundle, on, [])
    bundle = update_bundle(bundle.path, metadata={"inside": {"lesion": "liver"}, "inside_contrast": {"target": 9.0}})
    assert CurriculumTrainer(bundle, on, []).inside == {"inside": {2: 1}, "inside_contrast": 9.0}
    assert CurriculumTrainer(bundle, CurriculumParams(curriculum=False, student_input="image"), []).inside == {}
    with pytest.raises(InputError, match="source"):  # previews are source-like: no contrast given for them
        CurriculumTrainer(bundle, CurriculumParams(pseudo_label_inside=True, curriculum=False), [])
    bundle = update_bundle(bundle.path, metadata={"boundary_fit": {
        "rim_mm": 6, "prior_mm": 4, "deep": True, "swallowed": {"target": {"liver": "brighter"}}}})
    deep = CurriculumParams(pseudo_label_deep=True, student_input="image", curriculum=False)
    assert CurriculumTrainer(bundle, deep, []).inside == {"swallowed": {1: "brighter"}}
    assert CurriculumTrainer(bundle, CurriculumParams(pseudo_label_deep=True, curriculum=False), []).inside == {
        "swallowed": {}}  # previews: the deep fit without sides


def test_deep_pseudo_labels_give_back_the_swallowed_shell():
    """The teacher's label holds 12 mm of the brighter tissue around the organ: with the bundle's
    swallowed side the pseudo-labels give the shell back, and those voxels count."""
    rng = np.random.default_rng(0)
    shape = (48, 48, 48)
    organ, layer = _ball(shape, (24, 24, 24), 7), _ball(shape, (24, 24, 24), 12)
    teacher = _ball(shape, (24, 24, 24), 11).astype(np.int64)
    image = np.where(organ, 0.5, np.where(layer, 0.8, 0.1)) + rng.normal(0, 0.05, shape)
    logits = torch.from_numpy(np.eye(2, dtype=np.float32)[teacher]).movedim(-1, 0)[None] * 10.0
    images = torch.from_numpy(image.astype(np.float32))[None, None]
    fit = {"images": images, "spacing": SPACING, "fit_mm": 6.0, "prior_mm": 4.0}
    rim_only, _ = pseudo_labels(logits, 0.9, **fit)
    labels, weight = pseudo_labels(logits, 0.9, **fit, swallowed={1: "brighter"})
    assert _dice(rim_only[0].numpy() == 1, organ) < 0.8
    assert _dice(labels[0].numpy() == 1, organ) > 0.95
    assert weight[0][torch.from_numpy((teacher == 1) & ~organ)].float().mean() > 0.95


def test_bundles_name_their_curriculum_defaults():
    """for_bundle: the bundle's `curriculum_params` under the caller's overrides; the shipped
    phantom-ct-mr bundle fits its pseudo-labels and finds their lesions again (chosen on its
    validation split), xray-drr not."""
    from pathlib import Path

    from crossdomainseg.bundle import read_metadata

    metadata = {"curriculum_params": {"pseudo_label_fit_mm": 6.0, "alpha": 0.01}}
    params = CurriculumParams.for_bundle(metadata, {"alpha": 0.02})
    assert params.pseudo_label_fit_mm == 6.0 and params.alpha == 0.02
    assert CurriculumParams.for_bundle({}).pseudo_label_fit_mm == 0.0  # the patent's labels
    with pytest.raises(InputError, match="Unknown curriculum parameters"):
        CurriculumParams.for_bundle({"curriculum_params": {"fit": 1}})
    bundles = Path(__file__).resolve().parents[1] / "Resources" / "bundles"
    shipped = CurriculumParams.for_bundle(read_metadata(bundles / "phantom-ct-mr"))
    assert shipped.pseudo_label_fit_mm == 6.0 and shipped.pseudo_label_inside and shipped.student_input == "image"
    assert shipped.pseudo_label_deep and shipped.tau_u0 > CurriculumParams().tau_u0
    assert CurriculumParams.for_bundle(read_metadata(bundles / "xray-drr")).pseudo_label_fit_mm == 0.0


def test_majority_evens_out_speckle_and_the_bundle_fit_is_off_without_its_key():
    from crossdomainseg.boundary_fit import fit_bundle_label, majority

    truth = _ball((30, 30, 30), (15, 15, 15), 9).astype(np.uint8)
    rng = np.random.default_rng(3)
    speckled = np.where(rng.random(truth.shape) < 0.05, 1 - truth, truth).astype(np.uint8)
    assert (majority(speckled) != truth).mean() < 0.2 * (speckled != truth).mean()
    array, truth, draft = _scene()
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    unfitted = fit_bundle_label({}, draft, image)
    assert np.array_equal(sitk.GetArrayFromImage(unfitted), draft) and unfitted.GetSpacing() == SPACING
    fitted = sitk.GetArrayFromImage(fit_bundle_label({"boundary_fit": {"rim_mm": 6.0, "prior_mm": 4.0}}, draft, image))
    for value in (1, 2):
        assert _dice(fitted == value, truth == value) > _dice(draft == value, truth == value) + 0.04


def test_partial_volume_voxels_just_outside_a_label_join_it():
    """A ball whose rim voxels hold part ball, part surroundings (averaged from a 4x finer grid);
    the reference takes a voxel whose centre is inside. A draft of only the voxels at least 95%
    ball misses that shell; the partial-volume step gives back the voxels at least half ball,
    not those below a third, nothing beyond its reach, and not a neighbouring label's voxels."""
    fine = 4
    grid = (np.indices((40 * fine,) * 3) + 0.5) / fine
    share = (((grid - 20.0) ** 2).sum(0) <= 10.3**2).reshape(40, fine, 40, fine, 40, fine).mean(axis=(1, 3, 5))
    rng = np.random.default_rng(2)
    image = (100.0 + 400.0 * share + rng.normal(0, 10, share.shape)).astype(np.float32)
    truth = _ball(share.shape, (19.5, 19.5, 19.5), 10.3)
    neighbour = np.zeros(share.shape, bool)
    neighbour[:, :, 31:] = True  # touches the ball's rim on one side
    draft = np.where(share >= 0.95, 1, np.where(neighbour, 2, 0)).astype(np.uint8)
    spacing = (1.0, 1.0, 1.0)
    out = add_partial_volume(image, draft, spacing, share=0.5, reach_mm=1.5)
    added = (out == 1) & (draft != 1)
    assert _dice(out == 1, truth & ~neighbour) > _dice(draft == 1, truth & ~neighbour) + 0.05
    assert added.any() and share[added].min() > 1 / 3
    assert (signed_distance(draft == 1, spacing)[added] <= 1.5).all()
    assert np.array_equal(out == 2, draft == 2)
    unreached = add_partial_volume(image, draft, spacing, share=0.5, reach_mm=0.5)
    assert np.array_equal(unreached, draft)
    # as the engine runs it: the bundle's boundary_fit with the partial-volume keys
    from crossdomainseg.boundary_fit import fit_bundle_label

    fit = {"rim_mm": 0.1, "prior_mm": 1.0}  # a rim thinner than a voxel: the fit leaves the draft
    volume = sitk.GetImageFromArray(image)
    plain = sitk.GetArrayFromImage(fit_bundle_label({"boundary_fit": fit}, draft, volume))
    grown = sitk.GetArrayFromImage(fit_bundle_label(
        {"boundary_fit": {**fit, "partial_volume_share": 0.5, "partial_volume_mm": 1.5}}, draft, volume))
    assert (grown == 1).sum() > (plain == 1).sum() and ((plain == 1) & (grown != 1)).sum() == 0


def test_swallowed_side_keeps_the_organ_when_core_and_ring_both_hold_the_swallowed_tissue():
    """A ball in a layer of brighter tissue (as the target's kidneys lie in fat) with darker tissue
    beyond, labelled with 12 mm of the layer all round: the core holds more of the bright tissue
    than the ring does, so the deep fit alone keeps the shell; told that the label swallows
    brighter tissue, it takes the shell off. Told the wrong side, it keeps it (the side is the
    bundle's to say)."""
    rng = np.random.default_rng(0)
    shape = (48, 48, 48)
    organ = _ball(shape, (24, 24, 24), 7)
    draft = _ball(shape, (24, 24, 24), 11).astype(np.uint8)
    layer = _ball(shape, (24, 24, 24), 12)
    image = (np.where(organ, 0.5, np.where(layer, 0.8, 0.1)) + rng.normal(0, 0.05, shape)).astype(np.float32)
    deep, _ = fit_labels(image, draft, SPACING, 6.0, 4.0, deep=True)
    split, rims = fit_labels(image, draft, SPACING, 6.0, 4.0, deep=True, swallowed={1: "brighter"})
    wrong, _ = fit_labels(image, draft, SPACING, 6.0, 4.0, deep=True, swallowed={1: "darker"})
    assert _dice(deep == 1, organ) < 0.8
    assert _dice(split == 1, organ) > 0.95 and not ((split != draft) & ~rims).any()
    assert _dice(wrong == 1, organ) < 0.8
    uniform, _ = fit_labels(image, organ.astype(np.uint8), SPACING, 6.0, 4.0, deep=True, swallowed={1: "brighter"})
    assert _dice(uniform == 1, organ) > 0.95  # nothing swallowed: one intensity, no split


def test_swallowed_side_leaves_right_labels_whole():
    """Right labels stay whole: two kidneys of one label under different gain, in brighter fat,
    with a tissue as bright as the brighter kidney nearby (split as one, the label's intensities
    part the kidneys)."""
    rng = np.random.default_rng(1)
    shape = (40, 40, 64)
    left, right = _ball(shape, (20, 20, 16), 8), _ball(shape, (20, 20, 44), 8)
    near = np.zeros(shape, bool)
    near[:, :, 55:60] = True
    image = np.where(left, 0.3, np.where(right | near, 0.6, 0.95)) + rng.normal(0, 0.03, shape)
    truth = (left | right).astype(np.uint8)
    fitted, _ = fit_labels(image.astype(np.float32), truth, SPACING, 6.0, 4.0, deep=True, swallowed={1: "brighter"})
    assert _dice(fitted == 1, truth == 1) > 0.97
