"""Choices made on the SOURCE validation split only: post-processing steps and uncertainty hint
bands. The chooser reads no target file, and keeps a step only where it helps there."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg.bundle import load_bundle, make_random_bundle
from crossdomainseg.errors import InputError
from crossdomainseg.source_validation import SourceCase, SourceValidation, choose_steps, hint_bands

ISLANDS = {"step": "remove_islands", "min_fraction": 0.2}


def _task(folder, n_val=3):
    """A task folder whose source val cases are labelled 2D images and whose target labels are
    not images at all (any read of them fails)."""
    rng = np.random.default_rng(0)
    ids = {"source": [f"source_{i:03d}" for i in range(n_val)], "target": [f"target_{i:03d}" for i in range(n_val)]}
    for domain in ("source", "target"):
        for kind in ("images", "labels"):
            (folder / domain / kind).mkdir(parents=True)
        for case_id in ids[domain]:
            label = np.zeros((1, 48, 48), np.uint8)
            label[0, 10:30, 12:36] = 1
            image = sitk.GetImageFromArray((label * 2.0 + rng.normal(0, 0.3, label.shape)).astype(np.float32))
            sitk.WriteImage(image, str(folder / domain / "images" / f"{case_id}.nii.gz"))
            if domain == "source":
                sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / domain / "labels" / f"{case_id}.nii.gz"))
            else:
                (folder / domain / "labels" / f"{case_id}.nii.gz").write_text("a target label: never to be read")
    splits = {d: {"train": [], "val": ids[d], "test": []} for d in ids}
    (folder / "task.json").write_text(json.dumps({
        "task": "test-task", "labels": {"background": 0, "organ": 1}, "spatial_dims": 2,
        "splits": {s: [i for d in ids for i in splits[d][s]] for s in ("train", "val", "test")},
        "domain_splits": splits}))
    return folder


def test_the_chooser_reads_only_source_cases(tmp_path, monkeypatch):
    from crossdomainseg import imageio
    from crossdomainseg.engine import Engine

    task = _task(tmp_path / "task")
    read = []
    original = imageio.read_image
    monkeypatch.setattr(imageio, "read_image", lambda path, *a, **k: (read.append(str(path)), original(path, *a, **k))[1])
    bundle = make_random_bundle(tmp_path / "b", spatial_dims=2, spacing=1.0, roi=48,
                                labels={"background": 0, "organ": 1})
    cases = SourceValidation(task).segment(Engine(bundle, device="cpu", mode="source", tta_n=3), log=lambda m: None)
    assert len(cases) == 3 and all(c.U is not None for c in cases)
    assert read and all("/source/" in p for p in read)
    assert all(p.parent.parent.name == "source" for _, image, label in SourceValidation(task).paths() for p in (image, label))
    with pytest.raises(InputError, match="mode 'source'"):
        SourceValidation(task).segment(Engine(bundle, device="cpu"))


def test_settings_command_writes_steps_and_bands_from_source_cases_alone(tmp_path, capsys):
    import shutil

    from crossdomainseg.cli import main

    task = _task(tmp_path / "task")
    shutil.rmtree(task / "target")  # no target data at all: the choice does not need any
    bundle = make_random_bundle(tmp_path / "b", spatial_dims=2, spacing=1.0, roi=48,
                                labels={"background": 0, "organ": 1})
    assert main(["train", "settings", "--bundle", str(bundle.path), "--task-dir", str(task),
                 "--choose-postprocess", "--calibrate-hints", "--threads", "1"]) == 0
    metadata = load_bundle(bundle.path).metadata
    assert isinstance(metadata["postprocess"], list)
    assert metadata["postprocess_choice"]["split"] == "source val" and metadata["postprocess_choice"]["cases"] == 3
    hints = metadata["uncertainty_hints"]
    assert hints["confident_up_to"] <= hints["unsure_above"] and len(hints["source_val_U"]) == 3
    assert main(["train", "settings", "--bundle", str(bundle.path), "--choose-postprocess"]) != 0
    assert "need --task-dir" in capsys.readouterr().err


def _case(raw, truth, u=0.1):
    return SourceCase("c", np.zeros(raw.shape, np.float32), (1.0, 1.0, 1.0), raw, truth, u)


def test_a_step_is_kept_only_where_it_raises_source_dice():
    truth = np.zeros((1, 40, 40), np.uint8)
    truth[0, 5:25, 5:25] = 1
    stray = truth.copy()
    stray[0, 32:35, 32:35] = 1  # the network's stray island
    steps, record = choose_steps([_case(stray, truth)], [1], candidates=((ISLANDS,),))
    assert steps == [ISLANDS] and record["delivered_dice"] > record["raw_dice"]
    # where the small component is real anatomy, removing it lowers Dice: not kept
    steps, record = choose_steps([_case(stray, stray)], [1], candidates=((ISLANDS,),))
    assert steps == [] and record["delivered_dice"] == record["raw_dice"] == 1.0
    assert record["tried"][0]["dice"] < 1.0


def test_hint_bands_are_source_u_percentiles():
    truth = np.ones((1, 4, 4), np.uint8)
    bands = hint_bands([_case(truth, truth, u) for u in (0.1, 0.2, 0.3, 0.4, 0.5)])
    assert bands["confident_up_to"] == 0.3 and 0.4 < bands["unsure_above"] <= 0.5
