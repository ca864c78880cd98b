"""`eval clicks` on a user's own folders of images and reference label maps (no task folder)."""

import json

import numpy as np
import SimpleITK as sitk

from crossdomainseg.bundle import make_random_bundle
from crossdomainseg.cli import main


def _write_pair(images, labels, name):
    array = np.zeros((16, 20, 20), np.float32)
    array[4:12, 5:15, 5:15] = 100.0
    label = (array > 0).astype(np.uint8)
    for data, folder in ((array, images), (label, labels)):
        image = sitk.GetImageFromArray(data)
        image.SetSpacing((2.0, 2.0, 3.0))
        sitk.WriteImage(image, str(folder / name))


def test_eval_clicks_on_plain_folders(tmp_path, capsys):
    bundle = make_random_bundle(tmp_path / "bundle", spacing=4.0)
    data = tmp_path / "mine"
    for sub in ("images", "labels"):
        (data / sub).mkdir(parents=True)
    _write_pair(data / "images", data / "labels", "case1.nii.gz")
    common = ["eval", "clicks", "--bundle", str(bundle.path), "--methods", "sphere", "--max-clicks", "2",
              "--threads", "1", "--device", "cpu"]

    out = tmp_path / "a.json"
    assert main(common + ["--images", str(data / "images"), "--labels", str(data / "labels"),
                          "--out", str(out)]) == 0
    first = json.loads(out.read_text())["sphere"]
    assert first["objects"] == 1 and set(first["dice_at_clicks"]) == {"0", "1", "2"}

    # a folder holding images/ and labels/ is the same data
    out = tmp_path / "b.json"
    assert main(common + ["--data", str(data), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["sphere"]["curves"] == first["curves"]

    # --choose on the user's folders records where the choice came from
    assert main(common + ["--data", str(data), "--choose"]) == 0
    from crossdomainseg.bundle import load_bundle

    assert load_bundle(bundle.path).metadata["click_refiner"]["split"] == "user folders"


def test_eval_clicks_folder_errors_say_what_to_give(tmp_path, capsys):
    bundle = make_random_bundle(tmp_path / "bundle", spacing=4.0)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    _write_pair(tmp_path / "images", tmp_path / "labels", "a.nii.gz")
    (tmp_path / "labels" / "a.nii.gz").rename(tmp_path / "labels" / "other.nii.gz")
    common = ["eval", "clicks", "--bundle", str(bundle.path), "--methods", "sphere"]
    assert main(common + ["--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels")]) == 2
    assert "No label map" in capsys.readouterr().err
    assert main(common + ["--images", str(tmp_path / "images")]) == 2
    assert "--images and --labels together" in capsys.readouterr().err
    assert main(common) == 2
    assert "--images DIR --labels DIR" in capsys.readouterr().err


def _two_cases(tmp_path):
    """A random bundle and folders images/ and labels/ holding the pairs a.nii.gz and b.nii.gz."""
    bundle = make_random_bundle(tmp_path / "bundle", spacing=4.0)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        _write_pair(images, labels, name)
    return bundle, images, labels


def test_a_bad_label_map_is_refused_before_any_case_is_evaluated(tmp_path, capsys):
    bundle, images, labels = _two_cases(tmp_path)
    bad = sitk.ReadImage(str(labels / "b.nii.gz"))
    out = tmp_path / "results.json"
    argv = ["eval", "clicks", "--bundle", str(bundle.path), "--methods", "sphere", "--max-clicks", "1",
            "--threads", "1", "--device", "cpu", "--images", str(images), "--labels", str(labels),
            "--out", str(out)]

    value = max(bundle.labels.values()) + 40  # a structure the model has no label for
    sitk.WriteImage(bad * value, str(labels / "b.nii.gz"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"holds values [{value}] that the model does not define" in err and "b.nii.gz" in err
    assert "[1/2]" not in err and not out.exists()  # case a was not evaluated first

    shifted = sitk.Image(bad)  # same size, another place: not this image's label map
    shifted.SetOrigin((30.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(labels / "b.nii.gz"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is not on the grid of" in err and "[1/2]" not in err and not out.exists()


def test_each_image_is_read_once_the_pairs_checked_from_headers(tmp_path, monkeypatch):
    import crossdomainseg.imageio as imageio

    bundle, images, labels = _two_cases(tmp_path)
    reads = []
    read_image = imageio.read_image
    monkeypatch.setattr(imageio, "read_image", lambda path, *a, **k: reads.append(path) or read_image(path, *a, **k))
    assert main(["eval", "clicks", "--bundle", str(bundle.path), "--methods", "sphere", "--max-clicks", "1",
                 "--threads", "1", "--device", "cpu", "--images", str(images), "--labels", str(labels)]) == 0
    for name in ("a.nii.gz", "b.nii.gz"):
        assert reads.count(images / name) == 1  # for its evaluation only; its grid came from the header
