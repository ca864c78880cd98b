"""Task folders: `make_task`, `TaskDir` and the `crossdomainseg data make` command."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg.cli import main
from crossdomainseg.data import TaskDir, make_task
from crossdomainseg.data.tasks import plan_task, split_counts
from crossdomainseg.errors import InputError


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    out = tmp_path_factory.mktemp("task") / "ctmr"
    calls = []
    make_task("phantom-ct-mr", 3, 4, out, progress=lambda done, total, cid: calls.append((done, total)))
    assert calls[-1] == (6, 6)
    return TaskDir(out)


def test_layout_and_metadata(task):
    meta = json.loads((task.path / "task.json").read_text())
    assert meta["task"] == "phantom-ct-mr" and meta["spatial_dims"] == 3 and meta["n"] == 3
    assert task.labels == {"background": 0, "liver": 1, "kidneys": 2, "spleen": 3, "lesion": 4}
    assert set(meta["colors"]) == set(task.labels)
    assert (meta["source_modality"], meta["target_modality"]) == ("CT", "MR")
    for split in ("train", "val", "test"):
        assert sorted(meta["splits"][split]) == sorted(
            meta["domain_splits"]["source"][split] + meta["domain_splits"]["target"][split])


def test_source_labelled_everywhere_target_only_for_evaluation(task):
    for split in ("train", "val", "test"):
        source = list(task.cases(split, "source"))
        target = list(task.cases(split, "target"))
        assert len(source) == len(target) == 1
        assert all(label is not None and label.is_file() for _, _, label in source)
        for case_id, image, label in target:
            assert image.is_file()
            if split == "train":
                assert label is None and task.paired_source(case_id) is None
            else:
                assert label is not None and task.paired_source(case_id) is not None
    assert not (task.path / "source" / "paired_source").exists()


def test_written_files_are_consistent_grids(task):
    for case_id, image, label in task.cases("val", "target"):
        img, lab = sitk.ReadImage(str(image)), sitk.ReadImage(str(label))
        paired = sitk.ReadImage(str(task.paired_source(case_id)))
        for other in (lab, paired):
            assert other.GetSize() == img.GetSize()
            assert np.allclose(other.GetDirection(), img.GetDirection())
            assert np.allclose(other.GetOrigin(), img.GetOrigin())
        assert lab.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayFromImage(lab))) == {0, 1, 2, 3, 4}


def test_source_and_target_are_different_subjects(task):
    seeds = task.meta["subject_seeds"]
    assert len(set(seeds.values())) == len(seeds) == 6
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(next(task.cases("train", "source"))[2])))
    assert (source == 4).sum() > 0


def test_splits_are_60_20_20_and_seeded():
    assert split_counts(3) == {"train": 1, "val": 1, "test": 1}
    assert split_counts(20) == {"train": 12, "val": 4, "test": 4}
    assert split_counts(30) == {"train": 18, "val": 6, "test": 6}
    assert plan_task(10, 1) == plan_task(10, 1)
    assert plan_task(10, 1) != plan_task(10, 2)
    with pytest.raises(InputError, match="at least 3"):
        split_counts(2)
    with pytest.raises(InputError, match="negative"):
        plan_task(5, -1)


def test_taskdir_rejects_bad_folders(tmp_path):
    with pytest.raises(InputError, match="task.json"):
        TaskDir(tmp_path)
    (tmp_path / "task.json").write_text("{oops")
    with pytest.raises(InputError, match="JSON"):
        TaskDir(tmp_path)


def test_cli_make_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "make", "--task", "phantom-ct-mr", "--n", "3", "--seed", "9", "--out", str(out)]) == 0
    assert len(list((out / "target" / "images").glob("*.nii.gz"))) == 3
    assert "wrote phantom-ct-mr" in capsys.readouterr().out
    # Not overwriting an existing task; too few cases; unknown task.
    assert main(["data", "make", "--n", "3", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "make", "--n", "1", "--out", str(tmp_path / "small")]) == 2
    with pytest.raises(SystemExit):
        main(["data", "make", "--task", "nope", "--out", str(tmp_path / "x")])


def test_xray_task_folder(tmp_path):
    task = TaskDir(make_task("xray-drr", 3, 0, tmp_path / "xr"))
    assert task.meta["spatial_dims"] == 2 and task.labels == {"background": 0, "lungs": 1, "heart": 2}
    (case_id, image, label), = task.cases("test", "target")
    assert label is not None and task.paired_source(case_id) is not None
    assert sitk.ReadImage(str(image)).GetSize() == (128, 128, 1)
    (_, _, label), = task.cases("train", "target")
    assert label is None
