"""Accepted-case store: round trip, refusal of bad input, and crash safety under SIGKILL."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg.errors import InputError
from crossdomainseg.store import AcceptedCaseStore

LABELS = {"background": 0, "organ": 1}
PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "SlicerCrossDomainSeg"


def make_pair(seed=0, size=(24, 20, 16)):
    rng = np.random.default_rng(seed)
    array = rng.normal(100, 20, size=size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.2, 2.5))
    image.SetOrigin((-10.0, 5.0, 30.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    label = sitk.GetImageFromArray((array > 110).astype(np.uint8))
    label.CopyInformation(image)
    return image, label


def test_accept_round_trip(tmp_path):
    store = AcceptedCaseStore(tmp_path / "store")
    image, label = make_pair(1)
    clicks = [{"point": [1.0, -2.5, 33.0], "positive": True}, {"point": (0, 0, 40), "positive": False}]
    case_id = store.accept(image, label, clicks, model_version="v0003", meta={"user": "dr a"},
                           labels=LABELS)
    second = store.accept(*make_pair(2), clicks=[], model_version="v0004")
    assert store.cases() == [case_id, second]
    case = store.load(case_id)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.image), sitk.GetArrayFromImage(image))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.label), sitk.GetArrayFromImage(label))
    assert case.image.GetDirection() == pytest.approx(image.GetDirection())
    assert case.label.GetOrigin() == pytest.approx(image.GetOrigin())
    assert [c["point"] for c in case.clicks] == [[1.0, -2.5, 33.0], [0.0, 0.0, 40.0]]
    assert case.clicks[1]["positive"] is False
    assert case.model_version == "v0003" and case.meta == {"user": "dr a"}
    assert abs(case.accepted_at - time.time()) < 60
    assert store.load(second).model_version == "v0004"


def test_incomplete_case_is_not_a_case(tmp_path):
    store = AcceptedCaseStore(tmp_path)
    case_id = store.accept(*make_pair(), clicks=[], labels=LABELS)
    (tmp_path / "cases" / "20990101T000000.000000-dead00").mkdir()
    (tmp_path / "cases" / "20990101T000000.000000-dead00" / "image.nii.gz").write_bytes(b"half")
    assert store.cases() == [case_id]


def test_damaged_file_is_detected(tmp_path):
    store = AcceptedCaseStore(tmp_path)
    case_id = store.accept(*make_pair(), clicks=[], labels=LABELS)
    label_path = store.label_path(case_id)
    data = bytearray(label_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    label_path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged"):
        store.load(case_id)


@pytest.mark.parametrize("problem", ["grid", "float_label", "click", "meta"])
def test_bad_input_is_refused(tmp_path, problem):
    store = AcceptedCaseStore(tmp_path)
    image, label = make_pair()
    clicks, meta = [], {}
    if problem == "grid":
        label = sitk.Shrink(label, [2, 2, 1])
    elif problem == "float_label":
        label = sitk.Cast(label, sitk.sitkFloat32) * 0.5
    elif problem == "click":
        clicks = [{"point": [1, 2]}]
    else:
        meta = {"when": object()}
    with pytest.raises(InputError):
        store.accept(image, label, clicks, model_version="v1", meta=meta, labels=LABELS)
    assert store.cases() == []


@pytest.mark.parametrize("value", [256, 300, 2])
def test_label_values_the_model_does_not_define_are_refused(tmp_path, value):
    """256 would wrap to 0 in the uint8 label file (erasing the organ); 2 is no label of the model;
    nothing of the case is stored."""
    store = AcceptedCaseStore(tmp_path)
    image, label = make_pair()
    array = sitk.GetArrayFromImage(label).astype(np.int32)
    array[array == 1] = value
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(label)
    with pytest.raises(InputError, match=f"values \\[{value}\\] that the model does not define"):
        store.accept(image, bad, [], labels=LABELS)
    assert store.cases() == [] and not list(store.cases_dir.iterdir())
    assert store.labels() is None


def test_labels_are_recorded_and_checked(tmp_path):
    store = AcceptedCaseStore(tmp_path)
    image, label = make_pair()
    with pytest.raises(InputError, match="needs the model's labels"):
        store.accept(image, label, [])
    first = store.accept(image, label, [], labels=LABELS)
    assert store.labels() == LABELS
    second = store.accept(image, label, [])  # checked against the recorded labels
    with pytest.raises(InputError, match="another model or task"):
        store.accept(image, label, [], labels={"background": 0, "liver": 1})
    assert store.cases() == [first, second]


def test_edited_voxels_against_the_draft(tmp_path):
    store = AcceptedCaseStore(tmp_path)
    image, label = make_pair()
    unchanged = store.accept(image, label, [], model_version="v0002", labels=LABELS, draft=label)
    array = sitk.GetArrayFromImage(label)
    array[0, 0, :5] = 1 - array[0, 0, :5]
    edited = sitk.GetImageFromArray(array)
    edited.CopyInformation(label)
    corrected = store.accept(image, edited, [], model_version="v0002", labels=LABELS, draft=label)
    unknown = store.accept(image, edited, [], labels=LABELS)
    assert [store.manifest(c)["edited_voxels"] for c in (unchanged, corrected, unknown)] == [0, 5, None]


def test_unlabelled_folder(tmp_path):
    store = AcceptedCaseStore(tmp_path / "store")
    assert store.unlabelled_images() == []
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    image, _ = make_pair()
    sitk.WriteImage(image, str(folder / "b.nii.gz"))
    sitk.WriteImage(image, str(folder / "a.nrrd"))
    (folder / "notes.txt").write_text("not an image")
    (folder / "dicom_series").mkdir()
    (folder / "dicom_series" / "1.dcm").write_bytes(b"x")
    store.set_unlabelled_folder(folder)
    names = [p.name for p in AcceptedCaseStore(tmp_path / "store").unlabelled_images()]
    assert names == ["a.nrrd", "b.nii.gz", "dicom_series"]
    with pytest.raises(InputError, match="does not exist"):
        store.set_unlabelled_folder(tmp_path / "nowhere")


WRITER = r"""
import sys
import numpy as np, SimpleITK as sitk
from crossdomainseg.store import AcceptedCaseStore
store = AcceptedCaseStore(sys.argv[1])
rng = np.random.default_rng(int(sys.argv[2]))
while True:
    array = rng.normal(size=(48, 48, 48)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    label = sitk.GetImageFromArray((array > 0.5).astype(np.uint8))
    case_id = store.accept(image, label, [{"point": [1.0, 2.0, 3.0]}], "v0001", {"seed": int(sys.argv[2])},
                           labels={"background": 0, "organ": 1})
    print(case_id, float(array.sum()), flush=True)
"""


@pytest.mark.slow
def test_sigkill_writers_at_random_moments_loses_no_accepted_case(tmp_path):
    """Writers killed mid-write: every case they reported accepted is intact, none is half there."""
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    reported = {}
    for round_ in range(4):
        procs = [
            subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(10 * round_ + i)],
                             stdout=subprocess.PIPE, text=True, env=env)
            for i in range(2)
        ]
        # First wait until each writer has accepted one case, then kill at a random moment.
        for proc in procs:
            line = proc.stdout.readline()
            assert line, "writer died before accepting a case"
            case_id, total = line.split()
            reported[case_id] = float(total)
        time.sleep(rng.uniform(0.0, 0.6))
        for proc in procs:
            os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            for line in proc.stdout.read().splitlines():
                case_id, total = line.split()
                reported[case_id] = float(total)
            proc.wait()
    store = AcceptedCaseStore(tmp_path)
    cases = store.cases()
    assert set(reported) <= set(cases)
    assert len(reported) >= 8
    for case_id in cases:  # also the ones whose id was not printed before the kill
        case = store.load(case_id)
        assert case.model_version == "v0001"
    for case_id, total in reported.items():
        array = sitk.GetArrayFromImage(store.load(case_id).image)
        assert float(array.sum()) == pytest.approx(total, rel=1e-5)
    leftovers = [p for p in Path(tmp_path, "cases").iterdir() if not (p / "manifest.json").exists()]
    assert all(p.is_dir() for p in leftovers)  # partial folders may remain but are not cases
    assert json.loads((store.cases_dir / cases[0] / "manifest.json").read_text())["sha256"]


def test_a_case_with_new_structures_keeps_their_values_and_names(tmp_path):
    """A structure the clinician added (a lesion the model has no label for) is stored with its
    value in the label and its name in the manifest; the store's labels stay the model's."""
    store = AcceptedCaseStore(tmp_path)
    image, label = make_pair()
    array = sitk.GetArrayFromImage(label)
    array[:2] = 7
    with_lesion = sitk.GetImageFromArray(array)
    with_lesion.CopyInformation(label)
    with pytest.raises(InputError, match="values \\[7\\] that the model does not define"):
        store.accept(image, with_lesion, [], labels=LABELS)  # not declared: refused
    for bad in ({"Lesion": 1}, {"organ": 7}, {"Lesion": 256}, {"": 7}, {"Lesion": 7, "Cyst": 7}):
        with pytest.raises(InputError, match="new structure|share a label value"):
            store.accept(image, with_lesion, [], labels=LABELS, structures=bad)
    case_id = store.accept(image, with_lesion, [], labels=LABELS, structures={"Lesion": 7})
    case = store.load(case_id)
    assert case.structures == {"Lesion": 7} and store.labels() == LABELS
    assert (sitk.GetArrayFromImage(case.label)[:2] == 7).all()
    plain = store.load(store.accept(image, label, [], labels=LABELS))
    assert plain.structures == {}
