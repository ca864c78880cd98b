"""Post-processing as named steps: the registry, bundle validation, the engine's raw and delivered
labels, and the label not depending on whether uncertainty was asked for."""

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg.bundle import BundleError, load_bundle, make_random_bundle, read_metadata, update_bundle, write_metadata
from crossdomainseg.engine import Engine
from crossdomainseg.errors import InputError
from crossdomainseg.postprocess import STEPS, apply_steps, check_steps, remove_islands

ISLANDS = {"step": "remove_islands", "min_fraction": 0.2}


def _label():
    label = np.zeros((1, 40, 40), np.uint8)
    label[0, 5:15, 5:15] = 1    # left lung, 100 voxels
    label[0, 5:15, 25:34] = 1   # right lung, 90: kept
    label[0, 30:32, 30:32] = 1  # 4-voxel stray island: removed
    label[0, 20:28, 10:18] = 2  # heart
    label[0, 35, 2] = 2         # 1-voxel island of another label: removed
    return label


def test_small_islands_are_removed_and_similar_parts_kept():
    label = _label()
    clean = remove_islands(label, 0.2)
    assert clean[0, 30:32, 30:32].sum() == 0 and clean[0, 35, 2] == 0
    assert (clean == 1).sum() == 190 and (clean == 2).sum() == 64
    assert np.array_equal(label, _label())  # the input is not changed
    assert np.array_equal(remove_islands(label, 0.0), label)


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def test_steps_run_in_the_listed_order_and_nothing_without_steps():
    rng = np.random.default_rng(0)
    shape, spacing = (30, 30, 30), (3.0, 3.0, 3.0)
    truth = _ball(shape, (15, 15, 15), 8)
    image = (0.5 + 0.4 * truth + rng.normal(0, 0.08, shape)).astype(np.float32)
    draft = _ball(shape, (15, 15, 15), 7).astype(np.uint8)
    draft[2, 2, 2] = 1  # a stray island
    assert np.array_equal(apply_steps([], draft, image, spacing), draft)
    assert apply_steps([], draft, image, spacing) is not draft  # a copy: the caller's array stays
    draft[27:29, 2:4, 2:7] = 2  # a second label in two parts: 20 voxels and 8
    draft[25:27, 25:27, 25:27] = 2
    wider = {"step": "remove_islands", "min_fraction": 0.5}
    out = apply_steps([ISLANDS, wider], draft, image, spacing)
    assert np.array_equal(out, remove_islands(remove_islands(draft, 0.2), 0.5))
    assert out[2, 2, 2] == 0 and out[27, 2, 2] == 2 and out[25, 25, 25] == 0
    assert apply_steps([ISLANDS], draft, image, spacing)[25, 25, 25] == 2  # 8 >= 0.2 * 20: kept
    assert np.array_equal(apply_steps([ISLANDS], draft, image, spacing), remove_islands(draft, 0.2))


@pytest.mark.parametrize("steps, message", [
    ({"step": "remove_islands"}, "must be a list"),
    ([{"step": "keep_inside"}], "Unknown post-processing step"),
    ([{"step": "remove_islands"}], "needs min_fraction"),
    ([{"step": "remove_islands", "min_fraction": 1.5}], "needs min_fraction"),
    ([{"step": "remove_islands", "min_fraction": 0.2, "deep": True}], "no parameters"),
    ([ISLANDS, {"step": "boundary_fit", "rim_mm": 6.0, "prior_mm": 4.0}], "boundary_fit was removed"),
])
def test_bad_steps_are_refused_with_the_reason(steps, message):
    with pytest.raises(InputError, match=message):
        check_steps(steps)


def test_every_registered_step_is_documented_with_its_parameters():
    import crossdomainseg.postprocess as module

    for name, step in STEPS.items():
        assert f"- {name}:" in module.__doc__
        assert all(len(spec) == 3 for spec in step.params.values())


def test_bundles_list_valid_steps_and_retired_rules_are_refused(tmp_path):
    bundle = make_random_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="Unknown post-processing step"):
        update_bundle(bundle.path, metadata={"postprocess": [{"step": "refit_inside"}]})
    for retired in ({"boundary_fit": {"rim_mm": 6, "prior_mm": 4}}, {"inside": {"a": "b"}},
                    {"inside_contrast": {"target": 12}}):
        with pytest.raises(BundleError, match="no longer applies"):
            update_bundle(bundle.path, metadata=retired)
    with pytest.raises(BundleError, match="uncertainty_hints"):
        update_bundle(bundle.path, metadata={"uncertainty_hints": {"confident_up_to": 0.3, "unsure_above": 0.1}})
    assert update_bundle(bundle.path, metadata={"postprocess": [ISLANDS]}).metadata["postprocess"] == [ISLANDS]


def test_a_bundle_listing_a_removed_step_is_refused_with_what_to_do_and_can_be_repaired(tmp_path, monkeypatch):
    bundle = make_random_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="boundary_fit was removed"):
        update_bundle(bundle.path, metadata={"postprocess": [{"step": "boundary_fit", "rim_mm": 6, "prior_mm": 4}]})
    # a bundle an older version signed with the step in its list
    metadata = read_metadata(bundle.path)
    metadata["postprocess"] = [{"step": "boundary_fit", "rim_mm": 6.0, "prior_mm": 4.0, "deep": True}]
    with monkeypatch.context() as m:
        m.setattr("crossdomainseg.bundle.validate_metadata", lambda metadata: None)
        write_metadata(bundle.path, metadata)
    with pytest.raises(BundleError, match=r"postprocess.*: \[\]"):
        load_bundle(bundle.path)
    # the project's own writer repairs it (no hand edit, so the signature stays valid)
    assert load_bundle(update_bundle(bundle.path, metadata={"postprocess": []}).path).metadata["postprocess"] == []


def _noise(shape=(1, 64, 64)):
    return sitk.GetImageFromArray(np.random.default_rng(0).normal(size=shape).astype(np.float32))


def test_engine_delivers_the_bundles_steps_and_raw_output_on_request(tmp_path):
    bundle = make_random_bundle(tmp_path / "b", spatial_dims=2, spacing=1.0, roi=64)
    image = _noise()
    plain = Engine(bundle, device="cpu").segment(image, preview=False, uncertainty=False)
    raw = sitk.GetArrayFromImage(plain.raw_label)
    assert plain.postprocess == [] and np.array_equal(sitk.GetArrayFromImage(plain.label), raw)
    assert np.array_equal(raw, sitk.GetArrayFromImage(plain.probabilities).argmax(-1))
    bundle = update_bundle(bundle.path, metadata={"postprocess": [ISLANDS]})
    delivered = Engine(bundle, device="cpu").segment(image, preview=False, uncertainty=False)
    label = sitk.GetArrayFromImage(delivered.label)
    assert delivered.postprocess == [ISLANDS] and np.array_equal(label, remove_islands(raw, 0.2))
    assert (label != raw).any()  # a random network on noise leaves islands to remove
    assert np.array_equal(sitk.GetArrayFromImage(delivered.raw_label), raw)
    asked_raw = Engine(bundle, device="cpu", postprocess=False).segment(image, preview=False, uncertainty=False)
    assert asked_raw.postprocess == [] and np.array_equal(sitk.GetArrayFromImage(asked_raw.label), raw)


def test_the_label_does_not_depend_on_whether_uncertainty_was_asked(tmp_path):
    bundle = make_random_bundle(tmp_path / "b", spatial_dims=2, spacing=1.0, roi=64)
    bundle = update_bundle(bundle.path, metadata={"postprocess": [ISLANDS]})
    engine = Engine(bundle, device="cpu", tta_n=6)
    image = _noise()
    without = engine.segment(image, preview=False, uncertainty=False)
    with_u = engine.segment(image, preview=False, uncertainty=True)
    assert with_u.U is not None and with_u.uncertainty is not None
    for key in ("label", "raw_label", "probabilities"):
        assert np.array_equal(sitk.GetArrayFromImage(getattr(without, key)), sitk.GetArrayFromImage(getattr(with_u, key)))
