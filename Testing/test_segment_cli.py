import json

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg import cli
from crossdomainseg.bundle import make_random_bundle
from crossdomainseg.imageio import read_seg_nrrd


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("b") / "bundle", spacing=2.0, roi=32)


def write_case(path, seed=0, constant=False, size=(20, 18, 16)):
    rng = np.random.default_rng(seed)
    array = np.full(size[::-1], 3.0, np.float32) if constant else rng.normal(size=size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 2.0, 2.5))
    image.SetOrigin((10.0, -5.0, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path))
    return image


def test_single_file_writes_outputs_on_input_grid(bundle, tmp_path, capsys):
    image = write_case(tmp_path / "in.nii.gz")
    out, preview, heat = tmp_path / "label.nii.gz", tmp_path / "preview.nii.gz", tmp_path / "heat.nrrd"
    code = cli.main(["segment", str(tmp_path / "in.nii.gz"), "--bundle", str(bundle.path), "--out", str(out),
                     "--preview", str(preview), "--uncertainty", str(heat), "--tta", "2"])
    assert code == 0
    assert "U = " in capsys.readouterr().out
    for path in (out, preview, heat):
        written = sitk.ReadImage(str(path))
        assert written.GetSize() == image.GetSize()
        assert np.allclose(written.GetDirection(), image.GetDirection())
        assert np.allclose(written.GetOrigin(), image.GetOrigin())


def test_seg_nrrd_output_and_no_uncertainty(bundle, tmp_path, capsys):
    write_case(tmp_path / "in.nrrd")
    out = tmp_path / "label.seg.nrrd"
    assert cli.main(["segment", str(tmp_path / "in.nrrd"), "--bundle", str(bundle.path), "--out", str(out),
                     "--no-uncertainty"]) == 0
    label, names = read_seg_nrrd(out)
    assert names == {"organ": 1}
    assert "U = " not in capsys.readouterr().out


def test_batch_skips_finished_and_reports_bad_cases(bundle, tmp_path, capsys):
    folder = tmp_path / "cases"
    folder.mkdir()
    write_case(folder / "a.nii.gz", seed=1)
    write_case(folder / "b.mha", seed=2)
    write_case(folder / "flat.nii.gz", constant=True)
    (folder / "notes.txt").write_text("not an image")
    out, heat = tmp_path / "labels", tmp_path / "heat"
    args = ["segment", str(folder), "--bundle", str(bundle.path), "--out", str(out),
            "--uncertainty", str(heat), "--tta", "2"]
    assert cli.main(args) == 1  # the constant image fails, the others are done
    captured = capsys.readouterr()
    assert "segmented 2 case(s), skipped 0" in captured.out
    assert "flat.nii.gz" in captured.err and "same value" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.nii.gz", "b.json", "b.nii.gz"]
    assert sorted(p.name for p in heat.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    report = json.loads((out / "a.json").read_text())
    assert report["model_version"] == "random-0" and 0 <= report["U"] <= 1 and report["tta_n"] == 2
    stamp = (out / "a.nii.gz").stat().st_mtime_ns

    (out / "b.json").unlink()  # as if interrupted before b's report was written
    assert cli.main(args) == 1
    assert "segmented 1 case(s), skipped 1" in capsys.readouterr().out
    assert (out / "a.nii.gz").stat().st_mtime_ns == stamp
    assert (out / "b.json").exists()


def test_bad_arguments_give_clear_errors(bundle, tmp_path, capsys):
    assert cli.main(["segment", str(tmp_path / "nope.nii.gz"), "--bundle", str(bundle.path),
                     "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "no such file" in capsys.readouterr().err
    write_case(tmp_path / "in.nii.gz")
    assert cli.main(["segment", str(tmp_path / "in.nii.gz"), "--bundle", "no-such-model",
                     "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "no shipped bundle" in capsys.readouterr().err
    assert cli.main(["segment", str(tmp_path / "in.nii.gz"), "--bundle", str(bundle.path),
                     "--out", str(tmp_path / "x.nii.gz"), "--no-uncertainty", "--uncertainty", "u.nii.gz"]) == 2
    folder = tmp_path / "cases"
    folder.mkdir()
    write_case(folder / "a.nii.gz")
    assert cli.main(["segment", str(folder), "--bundle", str(bundle.path), "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "must be a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["segment", str(empty), "--bundle", str(bundle.path), "--out", str(tmp_path / "labels")]) == 2
    assert "holds no image files" in capsys.readouterr().err and not (tmp_path / "labels").exists()


def test_report_says_whether_td_gan_or_vanilla_ran(bundle, tmp_path, capsys):
    write_case(tmp_path / "in.nii.gz")
    single = ["segment", str(tmp_path / "in.nii.gz"), "--bundle", str(bundle.path), "--no-uncertainty"]
    assert cli.main(single + ["--out", str(tmp_path / "a.nii.gz")]) == 0  # auto: the bundle has a generator
    assert "TD-GAN: segmented the synthetic preview" in capsys.readouterr().out
    assert cli.main(single + ["--out", str(tmp_path / "b.nii.gz"), "--mode", "vanilla"]) == 0
    assert "vanilla: segmented the image as it is" in capsys.readouterr().out

    folder = tmp_path / "cases"
    folder.mkdir()
    write_case(folder / "c.nii.gz")
    for mode, segmenter_input in (("tdgan", "preview"), ("vanilla", "image")):
        out = tmp_path / f"labels_{mode}"
        assert cli.main(["segment", str(folder), "--bundle", str(bundle.path), "--out", str(out),
                         "--no-uncertainty", "--mode", mode]) == 0
        report = json.loads((out / "c.json").read_text())
        assert (report["mode"], report["segmenter_input"]) == (mode, segmenter_input)
def test_raw_writes_the_network_label_without_the_bundles_steps(tmp_path):
    from crossdomainseg.bundle import update_bundle
    from crossdomainseg.postprocess import remove_islands

    bundle = make_random_bundle(tmp_path / "b", spacing=2.0, roi=32)
    update_bundle(bundle.path, metadata={"postprocess": [{"step": "remove_islands", "min_fraction": 0.2}]})
    write_case(tmp_path / "in.nii.gz", size=(40, 36, 32))
    labels = {}
    for name, extra in (("delivered", []), ("raw", ["--raw"])):
        out = tmp_path / f"{name}.nii.gz"
        assert cli.main(["segment", str(tmp_path / "in.nii.gz"), "--bundle", str(bundle.path), "--out", str(out),
                         "--no-uncertainty", *extra]) == 0
        labels[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert np.array_equal(labels["delivered"], remove_islands(labels["raw"], 0.2))
    assert (labels["delivered"] != labels["raw"]).any()  # a random network on noise leaves islands



def test_a_volume_given_to_a_2d_model_is_refused_by_name(tmp_path, capsys):
    flat = make_random_bundle(tmp_path / "xray", spatial_dims=2, spacing=2.0, roi=32)
    write_case(tmp_path / "volume.nii.gz")  # 16 slices, a file whose header is read first
    assert cli.main(["segment", str(tmp_path / "volume.nii.gz"), "--bundle", str(flat.path),
                     "--out", str(tmp_path / "label.nii.gz"), "--threads", "1"]) == 2
    assert "segments 2D images, but a 3D volume of 16 slices" in capsys.readouterr().err
    assert not (tmp_path / "label.nii.gz").exists()


def test_single_file_replaces_an_existing_output_only_with_force(bundle, tmp_path, capsys):
    write_case(tmp_path / "in.nii.gz")
    out, preview = tmp_path / "label.nii.gz", tmp_path / "preview.nii.gz"
    out.write_bytes(b"the user's earlier result")
    args = ["segment", str(tmp_path / "in.nii.gz"), "--bundle", str(bundle.path), "--out", str(out),
            "--no-uncertainty", "--threads", "1"]
    assert cli.main(args) == 2
    assert f"--out {out} already exists; add --force to replace it" in capsys.readouterr().err
    assert out.read_bytes() == b"the user's earlier result"
    # a --preview that exists is refused before --out is written
    out.unlink()
    preview.write_bytes(b"kept")
    assert cli.main(args + ["--preview", str(preview)]) == 2
    assert f"--preview {preview} already exists" in capsys.readouterr().err
    assert preview.read_bytes() == b"kept" and not out.exists()
    assert cli.main(args + ["--preview", str(preview), "--force"]) == 0
    assert sitk.ReadImage(str(preview)).GetSize() == (20, 18, 16) and out.exists()
