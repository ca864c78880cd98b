"""`crossdomainseg train all`: the plan chosen from the data, and one command from a new user's
three folders through every stage of the method (source, randomize, translator, curriculum) to a
bundle the engine loads."""

import dataclasses
import json
import time

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg.bundle import load_bundle, make_random_bundle
from crossdomainseg.cli import main
from crossdomainseg.errors import InputError
from crossdomainseg.imageio import read_image
from crossdomainseg.training.budget import (MIN_EPOCH_STEPS, MIN_EPOCHS, MIN_ROUND_TRIP_DICE, MIN_SEGMENTER_STEPS,
                                            VALIDATION_SHARE, choose_grid, epoch_steps, round_trip_dice)
from crossdomainseg.training.plan import choose_normalization, epochs_for, make_plan
from crossdomainseg.training.train_all import RESERVE_SHARE, SHARES, STAGES, recipe, split_validation, stages_to_run


def _print(values, spacing=(2.0, 2.0, 2.0), size=(97, 115, 97), n=3, labelled=None):
    return {"n": n, "spatial_dims": 3 if size[2] > 1 else 2, "spacing": [list(spacing)] * n,
            "size": [list(size)] * n, "extent_mm": [list(np.multiply(spacing, size))] * n,
            "intensities": np.asarray(values, dtype=np.float32), "labelled_intensities": labelled}


def _head_ct(rng):
    """Air, brain (20-45 HU) and skull (700-1800 HU), as a head CT's voxels are shared."""
    return np.concatenate([rng.normal(-1000, 5, 40_000), rng.normal(32, 8, 50_000),
                           rng.uniform(700, 1800, 10_000)])


def test_unlabelled_head_ct_gets_a_brain_window_not_the_abdominal_default():
    spec, reason = choose_normalization(_print(_head_ct(np.random.default_rng(0))))
    assert spec["kind"] == "window" and "CT-like" in reason
    assert spec["low"] <= 10 and spec["high"] >= 60  # grey and white matter inside the window
    assert spec["high"] - spec["low"] <= 200  # brain contrast kept (-400..600 would be 1000 wide)


def test_labelled_ct_window_is_the_labelled_voxels_percentiles():
    rng = np.random.default_rng(1)
    organs = rng.uniform(40, 160, 20_000).astype(np.float32)
    spec, _ = choose_normalization(_print(_head_ct(rng), labelled=organs))
    assert (spec["low"], spec["high"]) == (40.0, 160.0)


def test_mr_like_data_get_per_image_percentiles():
    values = np.abs(np.random.default_rng(2).normal(300, 200, 50_000))
    spec, reason = choose_normalization(_print(values))
    assert spec == {"kind": "percentile", "lower": 1, "upper": 99} and "percentile" in reason


def test_plan_grid_and_patch_from_the_data():
    mr = np.abs(np.random.default_rng(3).normal(300, 200, 10_000))
    plan = make_plan(_print(mr, (2.0, 2.0, 2.0)), _print(mr, (2.0, 2.0, 2.0)), "cpu")
    assert plan["spacing"] == [2.0, 2.0, 2.0]
    assert plan["roi_size"] == [64, 64, 64]  # brain 97 x 115 x 97 at 2 mm, capped on a CPU
    assert all(p % 4 == 0 and p <= 48 for p in plan["translator_patch"])
    # a 0.5 mm scan of 400 x 400 x 300 voxels is coarsened to at most 128^3 on a CPU
    fine = make_plan(_print(mr, (0.5, 0.5, 0.5), (400, 400, 300)), _print(mr, (0.5, 0.5, 0.5), (400, 400, 300)))
    voxels = np.prod(np.array([200.0, 200.0, 150.0]) / np.array(fine["spacing"]))
    assert voxels <= 128**3 * 1.01 and fine["spacing"][0] > 0.5
    with pytest.raises(InputError, match="same dimension"):
        make_plan(_print(mr), _print(mr, size=(256, 256, 1)))


def test_epochs_from_a_budget_and_validation_split():
    assert epochs_for(100, 10, 300) == 10
    assert epochs_for(5, 10, 300) == 0
    assert epochs_for(1e6, 10, 40) == 40
    train, val = split_validation(list(range(10)), 0.2, 0)
    assert len(val) == 2 and sorted(train + val) == list(range(10))
    assert split_validation([1], 0.2, 0) == ([1], [])


def _fake_probe(seconds_per_voxel):
    """A probe whose step and validation times grow with the crop's voxels, as measured ones do."""
    def measure(plan):
        voxels = float(np.prod(plan["roi_size"]))
        return {"step_seconds": {"source": seconds_per_voxel * voxels, "randomize": seconds_per_voxel * voxels},
                "val_seconds_per_case": 4 * seconds_per_voxel * voxels}
    return measure


def _mr_plan():
    mr = np.abs(np.random.default_rng(3).normal(300, 200, 10_000))
    return make_plan(_print(mr, (1.5, 1.5, 1.5), (115, 141, 120)), _print(mr, (1.5, 1.5, 1.5), (115, 141, 120)))


def test_the_grid_is_coarsened_only_when_the_budget_buys_too_few_segmenter_steps():
    plan, measure, floor = _mr_plan(), _fake_probe(0.4 / 64**3), lambda spacing: 0.95
    assert plan["spacing"] == [1.5, 1.5, 1.5] and plan["roi_size"] == [64, 64, 64]
    # 80 minutes' shares buy 6000+ steps of 0.4 s: the plan's grid is kept, after one probe
    kept, record = choose_grid(plan, {"source": 930.0, "randomize": 2095.0}, measure, floor)
    assert kept["spacing"] == plan["spacing"] and len(record["candidates"]) == 1
    assert record["candidates"][0]["steps"] >= MIN_SEGMENTER_STEPS and "fit in the budget" in record["choice"]
    # a fifth of that buys ~1360: coarsened until 4000 fit, the roi keeping its extent in mm
    coarse, record = choose_grid(plan, {"source": 186.0, "randomize": 419.0}, measure, floor)
    assert coarse["spacing"][0] > plan["spacing"][0] and record["candidates"][-1]["steps"] >= MIN_SEGMENTER_STEPS
    assert [c["steps"] for c in record["candidates"]] == sorted(c["steps"] for c in record["candidates"])
    assert np.allclose(np.multiply(coarse["roi_size"], coarse["spacing"]), 96, rtol=0.2)
    assert coarse["roi_size"][0] < 64 and all(r % 8 == 0 for r in coarse["roi_size"])
    assert record["probe"] == {k: v for k, v in record["candidates"][-1].items() if k in record["probe"]}


def test_the_source_labels_round_trip_floor_stops_the_coarsening():
    plan, measure = _mr_plan(), _fake_probe(0.4 / 64**3)
    # labels survive 2 mm (0.95) but not 2.67 mm (0.85): the run stays at 2 mm though 4000 steps do not fit
    floor = lambda spacing: 0.95 if spacing[0] <= 2.0 else 0.85  # noqa: E731
    chosen, record = choose_grid(plan, {"source": 60.0, "randomize": 120.0}, measure, floor)
    assert chosen["spacing"] == [2.0, 2.0, 2.0] and chosen["roi_size"] == [48, 48, 48]
    assert record["candidates"][-1]["round_trip_dice"] < MIN_ROUND_TRIP_DICE and "steps" not in record["candidates"][-1]
    assert record["candidates"][-2]["steps"] < MIN_SEGMENTER_STEPS and "round trip" in record["choice"]


def test_round_trip_dice_of_source_labels_falls_with_a_coarser_grid(tmp_path):
    label = np.zeros((40, 40, 40), np.uint8)
    label[5:35, 5:35, 5:35] = 1  # a large block
    label[20, 8:32, 8:32] = 2  # a sheet one voxel thick
    image = read_image(_write(tmp_path / "label.nii.gz", label))  # 3 mm voxels
    assert round_trip_dice([image], [3.0, 3.0, 3.0]) > 0.99
    assert round_trip_dice([image], [4.5, 4.5, 4.5]) < round_trip_dice([image], [3.3, 3.3, 3.3])
    assert round_trip_dice([image], [9.0, 9.0, 9.0]) < MIN_ROUND_TRIP_DICE  # the sheet is lost


def test_steps_per_epoch_follow_the_measured_validation_to_step_ratio():
    ratio = (1 - VALIDATION_SHARE) / VALIDATION_SHARE
    steps, reason = epoch_steps(0.5, 20.0, 1e5)
    assert steps == round(ratio * 20.0 / 0.5) and "at most 10%" in reason
    assert epoch_steps(0.5, 40.0, 1e5)[0] == 2 * steps  # validation twice as long: epochs twice as long
    assert epoch_steps(0.25, 20.0, 1e5)[0] == 2 * steps  # steps twice as fast: the same
    assert epoch_steps(0.5, 0.1, 1e5)[0] == MIN_EPOCH_STEPS  # no validation to speak of
    # a short stage keeps MIN_EPOCHS epochs, validation then a larger share
    short, reason = epoch_steps(0.5, 20.0, 600.0)
    assert short == int(600 * (1 - VALIDATION_SHARE) / 0.5 / MIN_EPOCHS) < steps and f"{MIN_EPOCHS} epochs" in reason


def test_fit_to_budget_probes_real_steps_and_sizes_the_segmenter_epochs(tmp_path):
    from crossdomainseg.training.train_all import TaskData, fit_to_budget

    rng = np.random.default_rng(4)
    label = np.zeros((24, 24, 24), np.uint8)
    label[4:20, 4:20, 4:20] = 1
    cases = [(f"s{i}", _write(tmp_path / f"s{i}.nii.gz", (200.0 * label + rng.normal(0, 20, label.shape)).astype(np.float32)),
              _write(tmp_path / f"l{i}.nii.gz", label)) for i in range(3)]
    data = TaskData(source_train=cases[:2], source_val=cases[2:], target=[], labels={"background": 0, "box": 1})
    mr = np.abs(rng.normal(300, 200, 10_000))
    plan = make_plan(_print(mr, (3.0, 3.0, 3.0), (24, 24, 24)), _print(mr, (3.0, 3.0, 3.0), (24, 24, 24)))
    seconds = {"source": 1e5, "randomize": 1e5, "translator": 1e5, "curriculum": 1e5}
    fitted = fit_to_budget(plan, data, seconds, None, 0, "v", 0.0, 0.8, "cpu")
    grid = fitted["reasons"]["grid"]
    assert fitted["spacing"] == plan["spacing"] and len(grid["candidates"]) == 1  # plenty of time: kept
    probed = grid["probe"]
    assert probed["step_seconds"]["source"] > 0 and probed["step_seconds"]["randomize"] > 0
    assert probed["val_seconds_per_case"] > 0
    # the randomize stage validates real and randomised renderings: twice the validation
    for stage, renderings in (("source", 1), ("randomize", 2)):
        expected, _ = epoch_steps(probed["step_seconds"][stage], renderings * probed["val_seconds_per_case"], 1e5)
        assert fitted["steps_per_epoch"][stage] == expected
    assert fitted["steps_per_epoch"]["translator"] == fitted["steps_per_epoch"]["curriculum"] == MIN_EPOCH_STEPS
    explicit = fit_to_budget(plan, data, seconds, 7, 0, "v", 0.0, 0.8, "cpu")
    assert set(explicit["steps_per_epoch"].values()) == {7}  # --steps overrides every stage


def test_stages_run_in_order_and_none_starts_from_a_missing_one():
    assert recipe(0.8) == list(STAGES) and "randomize" not in recipe(0.0)
    assert sum(SHARES.values()) == pytest.approx(1.0)
    assert stages_to_run(None, recipe(0.8), set()) == list(STAGES)
    assert stages_to_run(["randomize", "source"], recipe(0.8), set()) == ["source", "randomize"]
    # resumed after the first two: the rest continue from them
    assert stages_to_run(None, recipe(0.8), {"source", "randomize"}) == ["translator", "curriculum"]
    assert stages_to_run(["curriculum"], recipe(0.0), {"source", "translator"}) == ["curriculum"]
    with pytest.raises(InputError, match="randomize stage's bundle"):
        stages_to_run(["source", "translator"], recipe(0.8), set())
    with pytest.raises(InputError, match="--randomize is 0"):
        stages_to_run(["source", "randomize"], recipe(0.0), set())
    with pytest.raises(InputError, match="Unknown stage"):
        stages_to_run(["source", "reference"], recipe(0.8), set())


def _write(path, array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(image, str(path))
    return path


def test_curriculum_stage_trains_the_student_keeps_the_reference_and_resumes(tmp_path):
    from crossdomainseg.curriculum.params import CurriculumParams
    from crossdomainseg.training.curriculum_stage import CurriculumStage

    start = make_random_bundle(tmp_path / "start", with_generator=False)
    rng = np.random.default_rng(0)
    target = [(f"t{i}", _write(tmp_path / f"t{i}.nii.gz", rng.normal(100, 30, (32, 32, 32)).astype(np.float32)), None)
              for i in range(3)]
    label = np.zeros((32, 32, 32), np.uint8)
    label[8:24, 8:24, 8:24] = 1
    source = [(f"s{i}", _write(tmp_path / f"s{i}.nii.gz", (200.0 * label + rng.normal(0, 20, label.shape)).astype(np.float32)),
               _write(tmp_path / f"l{i}.nii.gz", label)) for i in range(2)]
    # gates open to every image (tau_u0 10, tau_ts0 1): each step of the tiny run trains
    params = CurriculumParams(reference_input="image", student_input="image", tau_u0=10.0, lambda_u=0.0,
                              tau_ts0=1.0, steps_per_epoch=1, tta_n=2, n_weak=1, n_strong=1)
    out, checkpoints, lines = tmp_path / "out", tmp_path / "ckpt", []
    CurriculumStage(start.path, out, checkpoints, target, source, params, "cpu", True, lines.append).run(1, False)
    first = load_bundle(out)
    assert first.metadata["segmenter_input"] == "image"
    assert first.metadata["training"]["curriculum"]["history"][0]["confident"] == 2  # one batch of 2
    assert _same_weights(first.network("reference"), start.network("segmenter"))
    assert not _same_weights(first.network("segmenter"), start.network("segmenter"))  # the student trained
    assert lines[0].startswith("curriculum epoch 1: confident 2/3")

    # another process resumes from the checkpoint, at the second epoch
    stage = CurriculumStage(start.path, out, checkpoints, target, source, params, "cpu", True, lines.append)
    stage.run(2, True)
    assert stage.epochs_done == 2 and len(load_bundle(out).metadata["training"]["curriculum"]["history"]) == 2
    assert lines[-1].startswith("curriculum epoch 2:")
    # a deadline already passed stops before the next step: the bundle keeps the last full epoch
    stage.run(5, True, deadline=time.time() - 1)
    assert stage.epochs_done == 2 and "share of the budget is spent" in lines[-1]
    assert len(load_bundle(out).metadata["training"]["curriculum"]["history"]) == 2
    with pytest.raises(InputError, match="other settings"):
        CurriculumStage(start.path, out, checkpoints, target, source, dataclasses.replace(params, lr=1e-2),
                        "cpu").run(3, True)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_all")
    assert main(["data", "make", "--task", "phantom-ct-mr", "--n", "3", "--seed", "0",
                 "--out", str(root / "task")]) == 0
    return root


def _argv(task, out, *extra):
    return ["train", "all", "--source-images", str(task / "source" / "images"),
            "--source-labels", str(task / "source" / "labels"),
            "--target-images", str(task / "target" / "images"), "--out", str(out),
            "--budget-minutes", "0.3", "--steps", "1", "--threads", "1",
            "--label-names", "liver=1,kidneys=2,spleen=3,lesion=4", *extra]


def _same_weights(a, b) -> bool:
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


@pytest.mark.parametrize("extra, message", [
    (["--stages", "source", "translator"], "randomize stage's bundle"),
    (["--stages", "randomize"], "source stage's bundle"),
    (["--randomize", "1.5"], "--randomize is a share"),
    (["--domain-randomize", "-0.1"], "--domain-randomize is a share"),
    (["--randomize", "0", "--stages", "source", "randomize"], "--randomize is 0"),
    (["--budget-minutes", "0"], "--budget-minutes must be positive"),
])
def test_bad_options_are_refused_before_any_work(phantom, capsys, extra, message):
    out = phantom / "refused"
    assert main(_argv(phantom / "task", out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (phantom / "refused.ckpt").exists()  # nothing planned nor trained


def test_a_2d_image_among_3d_targets_is_refused_before_any_work(phantom, capsys, tmp_path):
    targets = tmp_path / "targets"
    targets.mkdir()
    for path in sorted((phantom / "task" / "target" / "images").iterdir()):
        (targets / path.name).write_bytes(path.read_bytes())
    volume = sitk.ReadImage(str(path))
    sitk.WriteImage(volume[:, :, volume.GetSize()[2] // 2], str(targets / "one slice.nii.gz"))
    out = tmp_path / "refused"
    argv = _argv(phantom / "task", out)
    argv[argv.index("--target-images") + 1] = str(targets)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1 image(s) are 2D" in err and "one slice.nii.gz" in err
    assert not out.exists() and not (tmp_path / "refused.ckpt").exists()


def test_an_out_folder_holding_or_inside_the_users_images_is_refused_and_kept(phantom, capsys, tmp_path):
    targets = tmp_path / "targets"
    targets.mkdir()
    for path in sorted((phantom / "task" / "target" / "images").iterdir()):
        (targets / path.name).write_bytes(path.read_bytes())
    before = sorted(p.name for p in targets.iterdir())
    argv = _argv(phantom / "task", targets)
    argv[argv.index("--target-images") + 1] = str(targets)
    assert main(argv) == 2  # the bundle would have replaced the target images
    assert "is not a model bundle" in capsys.readouterr().err
    assert sorted(p.name for p in targets.iterdir()) == before
    assert not (tmp_path / "targets.ckpt").exists()

    argv[argv.index("--out") + 1] = str(targets / "bundle")
    assert main(argv) == 2  # a bundle inside an image folder would be read as a case next time
    assert "lies inside the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in targets.iterdir()) == before


def test_fractional_label_maps_are_refused_before_any_work(phantom, capsys, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    for path in sorted((phantom / "task" / "source" / "labels").iterdir()):
        label = sitk.ReadImage(str(path))
        sitk.WriteImage(sitk.Cast(label, sitk.sitkFloat32) * 0.5, str(labels / path.name))
    out = tmp_path / "refused"
    argv = _argv(phantom / "task", out)
    argv[argv.index("--source-labels") + 1] = str(labels)
    assert main(argv) == 2  # with --label-names
    assert "fractional or negative values" in capsys.readouterr().err
    del argv[argv.index("--label-names"):argv.index("--label-names") + 2]
    assert main(argv) == 2  # label names from the values found
    assert "fractional or negative values" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "refused.ckpt").exists()


def test_an_out_holding_a_bundle_is_continued_only_with_resume(phantom, capsys, tmp_path):
    out = make_random_bundle(tmp_path / "earlier", spacing=4.0).path
    before = (out / "configs" / "metadata.json").read_bytes()
    assert main(_argv(phantom / "task", out)) == 2
    assert f"{out} already holds a bundle; pass --resume to continue its training" in capsys.readouterr().err
    assert (out / "configs" / "metadata.json").read_bytes() == before
    assert not (tmp_path / "earlier.ckpt").exists()


def _relabelled(phantom, folder, mapping):
    """The phantom's source label maps with each value v written as mapping(v), in `folder`."""
    folder.mkdir()
    for path in sorted((phantom / "task" / "source" / "labels").iterdir()):
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.int32)
        label = sitk.GetImageFromArray(mapping(array).astype(np.int32))
        label.CopyInformation(sitk.ReadImage(str(path)))
        sitk.WriteImage(label, str(folder / path.name))
    return folder


def test_sparse_or_too_many_label_values_are_refused_before_any_work(phantom, capsys, tmp_path):
    out = tmp_path / "refused"
    argv = _argv(phantom / "task", out)
    # the liver written as 1000: a 1001-channel network for four structures
    argv[argv.index("--source-labels") + 1] = str(_relabelled(
        phantom, tmp_path / "sparse", lambda a: np.where(a == 1, 1000, a)))
    names = argv.index("--label-names")
    argv[names + 1] = "liver=1000,kidneys=2,spleen=3,lesion=4"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "label values 0, 2, 3, 4, 1000 are sparse" in err and "1001 output channels" in err
    assert "relabel the label maps to consecutive values 0..4 (1000 -> 1)" in err
    del argv[names:names + 2]
    assert main(argv) == 2  # label names from the values found: the same refusal
    assert "label values 0, 2, 3, 4, 1000 are sparse" in capsys.readouterr().err
    # an image given as label maps: thousands of values, beyond what a label map holds
    argv[argv.index("--source-labels") + 1] = str(_relabelled(
        phantom, tmp_path / "many", lambda a: a * 100 + np.arange(a.size).reshape(a.shape) % 300))
    assert main(argv) == 2
    assert "a model segments at most 255 structures" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "refused.ckpt").exists()


@pytest.mark.slow
def test_train_all_stops_after_any_stage_and_resumes_through_every_stage(phantom, capsys):
    from crossdomainseg.engine import Engine
    from crossdomainseg.registry import ModelRegistry

    task, out, checkpoints = phantom / "task", phantom / "bundle", phantom / "bundle.ckpt"
    image_path = task / "target" / "images" / "target_000.nii.gz"
    image = sitk.ReadImage(str(image_path))

    # stopped after the domain-randomised fine-tune: a bundle of its segmenter, reading raw images
    assert main(_argv(task, out, "--stages", "source", "randomize")) == 0
    logged = capsys.readouterr()
    assert "source epoch 1:" in logged.out and "randomize epoch 1:" in logged.out
    assert "translator epoch" not in logged.out and "curriculum epoch" not in logged.out
    early = load_bundle(out)
    assert early.network_names == ["segmenter"] and set(early.metadata["plan"]["stages"]) == {"source", "randomize"}
    assert early.metadata["training"]["source"]["config"]["init_from"] == str(checkpoints / "source" / "bundle")
    assert early.metadata["training"]["source"]["config"]["domain_randomize"] == 0.8
    assert "val_dice_randomized" in early.metadata["training"]["source"]["history"][-1]
    engine = Engine(out, threads=1)
    assert engine.mode == "vanilla"  # auto: the fine-tuned segmenter reads the raw target image
    assert engine.segment(image_path, preview=False, uncertainty=False).label.GetSize() == image.GetSize()
    randomized = load_bundle(checkpoints / "randomize" / "bundle")
    assert _same_weights(early.network("segmenter"), randomized.network("segmenter"))

    # resumed with every stage: continues at the translator, the first two are not trained again
    assert main(_argv(task, out, "--resume")) == 0
    logged = capsys.readouterr()
    assert "translator epoch 1:" in logged.out and "curriculum epoch 1:" in logged.out
    assert "source epoch" not in logged.out and "randomize epoch" not in logged.out
    assert "\r" not in logged.out + logged.err  # line-based progress when not on a terminal
    for line in logged.out.splitlines():
        assert not line.startswith("translator epoch") or "seconds=" in line  # one line per epoch

    bundle = load_bundle(out)
    plan = bundle.metadata["plan"]
    assert set(bundle.network_names) == {"segmenter", "reference", "generator"}
    assert bundle.metadata["segmenter_input"] == "image"
    # the curriculum's student is the segmenter; the randomised segmenter stays as its reference
    assert _same_weights(bundle.network("reference"), randomized.network("segmenter"))
    assert bundle.metadata["training"]["curriculum"]["params"]["student_input"] == "image"
    history = bundle.metadata["training"]["curriculum"]["history"]
    assert len(history) == plan["stages"]["curriculum"]["epochs_done"] >= 1 and "confident" in history[0]
    assert bundle.metadata["training"]["curriculum"]["steps_done"] == len(history)
    assert set(plan["stages"]) == set(STAGES) and all(s["done"] and s["epochs"] >= 1 for s in plan["stages"].values())
    # the epochs each stage trained (a stage stops at its deadline), as its bundle's history says
    for name in ("source", "randomize"):
        trained = load_bundle(checkpoints / name / "bundle").metadata["training"]["source"]["history"]
        assert plan["stages"][name]["epochs_done"] == len(trained)
    assert plan["stages"]["translator"]["epochs_done"] == len(bundle.metadata["training"]["translator"]["history"])
    assert all(1 <= s["epochs_done"] <= s["epochs"] for s in plan["stages"].values())
    # each stage's share is of what the stages before it left of the budget, and its epochs fit in it
    for i, name in enumerate(STAGES):
        stage, before = plan["stages"][name], sum(plan["stages"][s]["seconds"] for s in STAGES[:i])
        assert stage["budget_seconds"] <= 0.3 * 60 * (1 - RESERVE_SHARE) - before
        # (epoch_seconds is rounded to 1 ms: tiny epochs of one step on a coarse grid)
        assert stage["epochs"] == 1 or stage["epochs"] * (stage["epoch_seconds"] - 5e-4) <= stage["budget_seconds"]
    assert bundle.metadata["normalization"] == plan["normalization"]
    # the plan was fitted to the budget: probed candidates (0.3 min buys few steps, so coarser grids
    # were tried), its choice, and --steps as every stage's epoch length
    grid = plan["reasons"]["grid"]
    assert grid["candidates"][0]["step_seconds"]["source"] > 0 and grid["choice"]
    assert plan["spacing"] == next(c["spacing"] for c in reversed(grid["candidates"]) if "steps" in c)
    assert plan["steps_per_epoch"] == dict.fromkeys(STAGES, 1)
    assert plan["normalization"]["source"]["kind"] == "window"  # the phantom CT has air in HU
    assert plan["normalization"]["target"]["kind"] == "percentile"  # the MR-like target has not
    assert bundle.roi_size == plan["roi_size"] and bundle.spacing == plan["spacing"]
    assert "1 validation" in bundle.metadata["training"]["data"]  # 3 source images: 2 train, 1 val

    engine = Engine(out, threads=1)
    assert engine.mode == "vanilla"
    result = engine.segment(image_path, preview=True, uncertainty=False)
    assert result.label.GetSize() == image.GetSize()
    assert np.allclose(result.label.GetOrigin(), image.GetOrigin())
    assert result.preview is not None  # the translator's synthetic preview
    # the front ends (Slicer module, web app) copy a bundle into a workspace registry first
    registry = ModelRegistry(phantom / "registry")
    registry.init_from(out)
    assert load_bundle(registry.current_path()).metadata["plan"] == plan

    # an existing bundle is not overwritten without --resume
    weights = (out / "models" / "segmenter.pt").read_bytes()
    assert main(_argv(task, out)) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume after a finished run keeps the plan and the trained weights
    assert main(_argv(task, out, "--resume")) == 0
    assert "stages now: none" in capsys.readouterr().out
    assert (out / "models" / "segmenter.pt").read_bytes() == weights
    resumed = json.loads((checkpoints / "plan.json").read_text())
    assert resumed["stages"] == plan["stages"]
    # a plan.json from before per-stage epoch lengths is refused by name, not misread
    (checkpoints / "plan.json").write_text(json.dumps({**resumed, "steps_per_epoch": 25}))
    assert main(_argv(task, out, "--resume")) == 2
    assert "earlier version" in capsys.readouterr().err


@pytest.mark.slow
def test_without_the_randomize_stage_the_curriculum_reads_the_preview(phantom, capsys):
    from crossdomainseg.engine import Engine

    out = phantom / "no-randomize"
    assert main(_argv(phantom / "task", out, "--randomize", "0")) == 0
    assert "randomize epoch" not in capsys.readouterr().out
    bundle = load_bundle(out)
    assert bundle.metadata["plan"]["recipe"] == ["source", "translator", "curriculum"]
    # a plain source reference is not fair on raw target images: teacher and student read G(x)
    assert bundle.metadata["segmenter_input"] == "preview"
    assert bundle.metadata["training"]["curriculum"]["params"]["reference_input"] == "preview"
    assert Engine(out, threads=1).mode == "tdgan"
    # the run's recipe is kept: resuming it with the randomize stage back in is refused
    assert main(_argv(phantom / "task", out, "--resume")) == 2
    assert "--randomize" in capsys.readouterr().err
