"""Inputs that used to give a silent wrong result, or a traceback after the work, now give a clear
InputError before any work, or a correct result: truncated files, NaN/Inf voxels, padding outside
the field of view, volumes far smaller than the network's patch, more memory than the machine
has, outputs that would overwrite an input or cannot be written, and batch reporting."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg import cli, engine as engine_module, resources
from crossdomainseg.bundle import make_random_bundle
from crossdomainseg.engine import Engine
from crossdomainseg.errors import InputError
from crossdomainseg.imageio import read_image
from crossdomainseg.padding import find_padding

FORMATS = [(".nii", False), (".nii.gz", True), (".nrrd", False), (".nrrd", True), (".mha", False),
           (".mha", True)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("b") / "bundle", spacing=2.0, roi=32)


def _image(array, spacing=(1.5, 1.5, 2.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    return image


def _case(path, seed=0, size=(24, 22, 20)):
    rng = np.random.default_rng(seed)
    sitk.WriteImage(_image(rng.normal(size=size[::-1]).astype(np.float32)), str(path))
    return path


@pytest.mark.parametrize("suffix,compress", FORMATS)
def test_truncated_files_are_refused_in_every_format(tmp_path, suffix, compress):
    array = np.random.default_rng(0).integers(1, 1000, size=(30, 30, 30)).astype(np.int16)
    whole = tmp_path / f"whole{suffix}"
    sitk.WriteImage(_image(array), str(whole), compress)
    assert np.array_equal(sitk.GetArrayFromImage(read_image(whole)), array)
    cut = tmp_path / f"cut{suffix}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match="cut short"):
        read_image(cut)


@pytest.mark.parametrize("suffix,compress", FORMATS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_refused_in_every_format(tmp_path, suffix, compress, bad):
    array = np.random.default_rng(0).normal(size=(12, 12, 12)).astype(np.float32)
    array[3, 4, 5] = bad
    path = tmp_path / f"bad{suffix}"
    sitk.WriteImage(_image(array), str(path), compress)
    with pytest.raises(InputError, match="NaN or infinite"):
        read_image(path)


def test_padding_sentinels_are_found_and_ordinary_backgrounds_are_not():
    rng = np.random.default_rng(0)
    body = np.clip(rng.normal(300, 80, size=(20, 40, 40)), 1, None).round()
    inside = np.zeros(body.shape, bool)
    inside[:, 8:32, 8:32] = True
    for pixel, value, dtype in [(sitk.sitkInt16, -32768, np.int16), (sitk.sitkInt16, 32767, np.int16),
                                (sitk.sitkUInt16, 65535, np.uint16), (sitk.sitkFloat32, -3024, np.float32)]:
        array = np.where(inside, body, value).astype(dtype)
        found = find_padding(array, pixel)
        assert found is not None and found.value == value and found.share == pytest.approx(0.64, abs=0.01)
        assert found.fill == pytest.approx(body[inside].min(), abs=1)
    # MR with a dark background of 0 (any pixel type), CT with air at -1000 next to -1024
    for pixel, dtype in [(sitk.sitkUInt16, np.uint16), (sitk.sitkInt16, np.int16), (sitk.sitkFloat32, np.float32)]:
        assert find_padding(np.where(inside, body, 0).astype(dtype), pixel) is None
    ct = np.where(inside, rng.normal(40, 300, size=body.shape), rng.normal(-1000, 10, size=body.shape))
    assert find_padding(np.clip(ct, -1024, 3000).astype(np.int16), sitk.sitkInt16) is None
    with pytest.raises(InputError, match="almost no image"):
        find_padding(np.where(np.arange(body.size).reshape(body.shape) < 10, 5, -32768).astype(np.int16),
                     sitk.sitkInt16)


def _foreground_dice(label: sitk.Image, reference: sitk.Image) -> float:
    a, b = sitk.GetArrayViewFromImage(label) > 0, sitk.GetArrayViewFromImage(reference) > 0
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_int16_padding_outside_the_field_of_view_does_not_spoil_the_result():
    engine = Engine(resources.shipped_bundle("phantom-ct-mr"), device="cpu", threads=1)
    case = sitk.ReadImage(str(resources.demo_case()))
    reference = sitk.ReadImage(str(resources.demo_case()).replace(".nii.gz", "_label.nii.gz"))
    assert case.GetPixelID() == sitk.sitkInt16
    plain = _foreground_dice(engine.segment(case, preview=False, uncertainty=False).label, reference)
    # the same scan inside a wider reconstruction whose outside is -32768
    margin = [24, 24, 0]
    padded = sitk.ConstantPad(case, margin, margin, -32768)
    label = engine.segment(padded, preview=False, uncertainty=False).label
    inner = sitk.Crop(label, margin, margin)
    assert _foreground_dice(inner, reference) >= plain - 0.02, "padding lowered the Dice"
    assert plain > 0.5
    assert not sitk.GetArrayViewFromImage(label)[:, :margin[1]].any(), "labels in the padding"


def test_a_volume_far_smaller_than_the_patch_is_refused(bundle, tmp_path):
    engine = Engine(bundle.path, device="cpu", threads=1)
    tiny = _image(np.random.default_rng(0).normal(size=(4, 4, 4)).astype(np.float32), (2.0, 2.0, 2.0))
    with pytest.raises(InputError, match="covers only 8 x 8 x 8 mm"):
        engine.segment(tiny, preview=False, uncertainty=False)
    # a quarter of the patch along every axis is still segmented, on the input's grid
    small = _image(np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32), (2.0, 2.0, 2.0))
    assert engine.segment(small, preview=False, uncertainty=False).label.GetSize() == (8, 8, 8)
    # padding outside the field of view does not make a tiny scan big enough
    scan = (np.random.default_rng(0).normal(size=(6, 6, 6)) * 300 + 1000).astype(np.int16)
    padded = sitk.ConstantPad(_image(scan, (2.0, 2.0, 2.0)), (8, 8, 8), (8, 8, 8), -32768)
    with pytest.raises(InputError, match="covers only 12 x 12 x 12 mm"):
        engine.segment(padded, preview=False, uncertainty=False)


def test_memory_is_checked_from_the_header_before_reading(tmp_path, monkeypatch):
    import nibabel

    # a 600^3 int16 volume: header plus a sparse file, nothing allocated
    path = tmp_path / "big.nii"
    header = nibabel.Nifti1Header()
    header.set_data_shape((600, 600, 600))
    header.set_data_dtype(np.int16)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_qform(np.eye(4), code=1)
    with open(path, "wb") as stream:
        header.write_to(stream)
        stream.truncate(int(header.get_data_offset()) + 600 ** 3 * 2)
    engine = Engine(resources.shipped_bundle("phantom-ct-mr"), device="cpu", threads=1)
    working = (200, 200, 200)
    # the 600^3 case went past 15.7 GB before it was killed: the estimate must say at least that
    assert engine.memory_estimate((600, 600, 600), working, engine.tta_n) > 15.7e9

    def no_read(*_args, **_kwargs):
        raise AssertionError("the voxels were read before the memory check")

    monkeypatch.setattr(engine_module, "read_image", no_read)
    monkeypatch.setattr(engine_module, "_available_memory_bytes", lambda: 16 * 2**30)
    with pytest.raises(InputError, match=r"needs about \d+\.\d GiB to segment but only 12\.8 GiB"):
        engine.segment(path)
    # the same check applies to an image given in memory
    monkeypatch.setattr(engine_module, "_available_memory_bytes", lambda: 2**20)
    with pytest.raises(InputError, match="needs about"):
        engine.segment(sitk.ReadImage(str(resources.demo_case())), preview=False, uncertainty=False)


def test_available_memory_comes_from_psutil(monkeypatch):
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("M", (), {"available": 12345})())
    assert engine_module._available_memory_bytes() == 12345


@pytest.fixture
def no_segmentation(monkeypatch):
    """Engine.segment fails the test if called: the refusals must come before any work."""
    def segment(*_args, **_kwargs):
        raise AssertionError("the segmentation ran before the outputs were checked")

    monkeypatch.setattr(Engine, "segment", segment)


@pytest.mark.parametrize("flags", [["--out", "IN"], ["--out", "o.nii.gz", "--preview", "IN"],
                                   ["--out", "o.nii.gz", "--uncertainty", "IN"],
                                   ["--out", "o.nii.gz", "--preview", "o.nii.gz"],
                                   ["--out", "o.nii.gz", "--uncertainty", "./sub/../o.nii.gz"]])
def test_outputs_never_overwrite_an_input_or_each_other(bundle, tmp_path, monkeypatch, capsys, flags,
                                                        no_segmentation):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    source = _case(tmp_path / "in.nii.gz")
    before = source.read_bytes()
    argv = [str(source) if f == "IN" else f for f in flags]
    assert cli.main(["segment", str(source), "--bundle", str(bundle.path), *argv]) == 2
    err = capsys.readouterr().err
    assert "overwrite" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert source.read_bytes() == before and not (tmp_path / "o.nii.gz").exists()


def test_unwritable_outputs_are_refused_before_the_work(bundle, tmp_path, capsys, no_segmentation):
    source = _case(tmp_path / "in.nii.gz")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "afolder").mkdir()
    cases = [(["--out", str(tmp_path / "afile" / "label.nii.gz")], "is a file, not a folder"),
             (["--out", str(tmp_path / "afolder")], "is a folder"),
             (["--out", str(tmp_path / "label.png")], "must end in one of"),
             (["--out", str(tmp_path / "l.nii.gz"), "--preview", str(tmp_path / "afile" / "p.nii.gz")],
              "is a file, not a folder")]
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((["--out", str(locked / "label.nii.gz")], "cannot write in"))
    for flags, message in cases:
        assert cli.main(["segment", str(source), "--bundle", str(bundle.path), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_batch_refuses_its_input_folder_as_output(bundle, tmp_path, capsys, no_segmentation):
    folder = tmp_path / "cases"
    folder.mkdir()
    _case(folder / "a.nii.gz")
    assert cli.main(["segment", str(folder), "--bundle", str(bundle.path), "--out", str(folder)]) == 2
    assert "would be overwritten" in capsys.readouterr().err
    out = tmp_path / "labels"
    assert cli.main(["segment", str(folder), "--bundle", str(bundle.path), "--out", str(out),
                     "--uncertainty", str(out)]) == 2
    assert "overwrite the other" in capsys.readouterr().err
    _case(folder / "a.mha")
    assert cli.main(["segment", str(folder), "--bundle", str(bundle.path), "--out", str(out)]) == 2
    assert "would both be written as a.nii.gz" in capsys.readouterr().err


def test_batch_reports_a_refused_file_as_failed_with_its_reason(bundle, tmp_path, capsys):
    folder = tmp_path / "cases"
    folder.mkdir()
    _case(folder / "good.nii.gz")
    data = _case(tmp_path / "whole.nii.gz", seed=1).read_bytes()
    (folder / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    out = tmp_path / "labels"
    assert cli.main(["segment", str(folder), "--bundle", str(bundle.path), "--out", str(out),
                     "--no-uncertainty"]) == 1
    captured = capsys.readouterr()
    assert "segmented 1 case(s)" in captured.out and "1 failed" in captured.out
    assert "failed: cut.nii.gz:" in captured.err and "cut short" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.nii.gz"]


def test_piecewise_constant_and_8bit_images_have_no_padding():
    # background 10 around organs of 60 and 100: a background, not padding (nothing to fill)
    array = np.full((20, 40, 40), 10.0, np.float32)
    array[5:15, 10:30, 10:20], array[5:15, 10:30, 20:30] = 60.0, 100.0
    assert find_padding(array, sitk.sitkFloat32) is None
    # a small bright object in a dark background is an image, not "almost no image"
    small = np.zeros((40, 40, 40), np.int16)
    small[18:21, 18:21, 18:21] = 500
    assert find_padding(small, sitk.sitkInt16) is None
    # saturated 255 in an 8-bit image is ordinary saturation
    saturated = np.random.default_rng(0).integers(0, 256, size=(20, 40, 40)).astype(np.uint8)
    saturated[:, :10] = 255
    assert find_padding(saturated, sitk.sitkUInt8) is None
