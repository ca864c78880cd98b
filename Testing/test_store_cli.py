"""`crossdomainseg accept`: a corrected case from files into the accepted-case store."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg.bundle import make_random_bundle
from crossdomainseg.cli import main
from crossdomainseg.store import AcceptedCaseStore


def _image(array, spacing=(2.0, 2.0, 3.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((5.0, -3.0, 1.0))
    return image


@pytest.fixture
def case(tmp_path):
    array = np.random.default_rng(0).normal(100, 10, (8, 12, 12)).astype(np.float32)
    label = np.zeros(array.shape, np.uint8)
    label[2:6, 3:9, 3:9] = 1
    sitk.WriteImage(_image(array), str(tmp_path / "image.nii.gz"))
    sitk.WriteImage(_image(label), str(tmp_path / "label.nrrd"))
    (tmp_path / "clicks.json").write_text(json.dumps([{"point": [10.0, 4.0, 7.0], "positive": True}]))
    bundle = make_random_bundle(tmp_path / "bundle", spacing=4.0)
    return tmp_path, bundle


def test_accept_stores_the_case_with_its_clicks_and_model(case, capsys):
    root, bundle = case
    draft = np.zeros((8, 12, 12), np.uint8)
    draft[2:6, 3:9, 3:8] = 1  # the model's label missed one slab of 4 x 6 voxels
    sitk.WriteImage(_image(draft), str(root / "draft.nrrd"))
    assert main(["accept", str(root / "image.nii.gz"), str(root / "label.nrrd"), "--store", str(root / "store"),
                 "--bundle", str(bundle.path), "--clicks", str(root / "clicks.json"),
                 "--draft", str(root / "draft.nrrd")]) == 0
    assert "accepted" in capsys.readouterr().out
    store = AcceptedCaseStore(root / "store")
    [case_id] = store.cases()
    stored = store.load(case_id)
    assert stored.model_version == bundle.version
    assert stored.clicks[0]["point"] == [10.0, 4.0, 7.0]
    assert np.array_equal(sitk.GetArrayFromImage(stored.label),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(root / "label.nrrd"))))
    assert stored.image.GetSpacing() == (2.0, 2.0, 3.0)
    assert store.manifest(case_id)["edited_voxels"] == 24


def test_accept_refuses_bad_input_before_writing(case, capsys):
    root, bundle = case
    store = root / "store"
    base = ["--store", str(store), "--bundle", str(bundle.path)]
    # a label on another grid
    sitk.WriteImage(_image(np.zeros((8, 12, 12), np.uint8), spacing=(1.0, 1.0, 1.0)), str(root / "moved.nrrd"))
    assert main(["accept", str(root / "image.nii.gz"), str(root / "moved.nrrd")] + base) == 2
    assert "grid" in capsys.readouterr().err
    # clicks that are not JSON, or a label file that is not there
    (root / "bad.json").write_text("{not json")
    assert main(["accept", str(root / "image.nii.gz"), str(root / "label.nrrd"), "--clicks",
                 str(root / "bad.json")] + base) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["accept", str(root / "image.nii.gz"), str(root / "nope.nrrd")] + base) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (store / "cases").exists() or AcceptedCaseStore(store).cases() == []


def test_accept_refuses_labels_the_model_does_not_define(case, capsys):
    root, bundle = case
    label = np.zeros((8, 12, 12), np.uint8)
    label[2:4, 2:4, 2:4] = 7
    sitk.WriteImage(_image(label), str(root / "seven.nrrd"))
    assert main(["accept", str(root / "image.nii.gz"), str(root / "seven.nrrd"), "--store", str(root / "store"),
                 "--bundle", str(bundle.path)]) == 2
    assert "7" in capsys.readouterr().err
    assert AcceptedCaseStore(root / "store").cases() == []


def test_accept_refuses_a_volume_for_a_2d_model(case, capsys):
    root, _ = case
    flat = make_random_bundle(root / "xray", spatial_dims=2, spacing=4.0)
    assert main(["accept", str(root / "image.nii.gz"), str(root / "label.nrrd"), "--store", str(root / "store"),
                 "--bundle", str(flat.path)]) == 2
    assert "segments 2D images, but a 3D volume of" in capsys.readouterr().err
    assert not (root / "store" / "cases").exists() or AcceptedCaseStore(root / "store").cases() == []
