"""`crossdomainseg train all`: the plan chosen from the data, and one command from a new user's
three folders to a bundle the engine loads."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg.bundle import load_bundle
from crossdomainseg.cli import main
from crossdomainseg.errors import InputError
from crossdomainseg.training.plan import choose_normalization, epochs_for, make_plan
from crossdomainseg.training.train_all import split_validation


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


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_all")
    assert main(["data", "make", "--task", "phantom-ct-mr", "--n", "3", "--seed", "0",
                 "--out", str(root / "task")]) == 0
    return root


@pytest.mark.slow
def test_train_all_from_three_folders_to_a_bundle_the_engine_loads(phantom, capsys):
    from crossdomainseg.engine import Engine
    from crossdomainseg.registry import ModelRegistry

    task, out = phantom / "task", phantom / "bundle"
    argv = ["train", "all", "--source-images", str(task / "source" / "images"),
            "--source-labels", str(task / "source" / "labels"),
            "--target-images", str(task / "target" / "images"), "--out", str(out),
            "--budget-minutes", "0.2", "--steps", "1", "--threads", "2",
            "--label-names", "liver=1,kidneys=2,spleen=3,lesion=4"]
    assert main(argv) == 0
    logged = capsys.readouterr()
    assert "source epoch 1:" in logged.out and "translator epoch 1:" in logged.out
    assert "\r" not in logged.out + logged.err  # line-based progress when not on a terminal

    bundle = load_bundle(out)
    plan = bundle.metadata["plan"]
    assert bundle.has_network("segmenter") and bundle.has_network("generator")
    assert bundle.metadata["normalization"] == plan["normalization"]
    assert plan["normalization"]["source"]["kind"] == "window"  # the phantom CT has air in HU
    assert plan["normalization"]["target"]["kind"] == "percentile"  # the MR-like target has not
    assert bundle.roi_size == plan["roi_size"] and bundle.spacing == plan["spacing"]
    assert plan["stages"]["source"]["epochs"] >= 1 and plan["stages"]["translator"]["epochs"] >= 1
    assert "1 validation" in bundle.metadata["training"]["data"]  # 3 source images: 2 train, 1 val

    image_path = task / "target" / "images" / "target_000.nii.gz"
    result = Engine(out, threads=2).segment(image_path, preview=True, uncertainty=False)
    image = sitk.ReadImage(str(image_path))
    assert result.label.GetSize() == image.GetSize()
    assert np.allclose(result.label.GetOrigin(), image.GetOrigin())
    assert result.preview is not None
    # the front ends (Slicer module, web app) copy a bundle into a workspace registry first
    registry = ModelRegistry(phantom / "registry")
    registry.init_from(out)
    assert load_bundle(registry.current_path()).metadata["plan"] == plan

    # an existing bundle is not overwritten without --resume
    weights = (out / "models" / "segmenter.pt").read_bytes()
    epochs = {name: stage["epochs"] for name, stage in plan["stages"].items()}
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume after a finished run keeps the plan and the trained weights
    assert main(argv + ["--resume"]) == 0
    assert (out / "models" / "segmenter.pt").read_bytes() == weights
    resumed = json.loads((phantom / "bundle.ckpt" / "plan.json").read_text())
    assert {name: stage["epochs"] for name, stage in resumed["stages"].items()} == epochs
