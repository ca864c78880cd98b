"""The embedded demo cases are small, valid, and exactly what scripts/make_demo_case.py generates."""

import importlib.util
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from crossdomainseg.data import generate_case, icbm152
from crossdomainseg.data.brain import LABELS

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "Resources" / "demo"


def _demo_seed(task: str) -> int:
    spec = importlib.util.spec_from_file_location("make_demo_case", ROOT / "scripts" / "make_demo_case.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DEMO_SEEDS[task]


def test_demo_case_is_compact_and_matches_its_generator():
    image_path, label_path = DEMO / "phantom-ct-mr_target.nii.gz", DEMO / "phantom-ct-mr_target_label.nii.gz"
    assert image_path.stat().st_size < 1_000_000 and label_path.stat().st_size < 1_000_000
    image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
    assert image.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(label))) == {0, 1, 2, 3, 4}
    fresh = generate_case("phantom-ct-mr", _demo_seed("phantom-ct-mr"), "target")
    assert np.array_equal(sitk.GetArrayFromImage(fresh.image), sitk.GetArrayFromImage(image))
    assert np.array_equal(sitk.GetArrayFromImage(fresh.label), sitk.GetArrayFromImage(label))
    assert np.allclose(fresh.image.GetDirection(), image.GetDirection())
    assert np.allclose(fresh.image.GetOrigin(), image.GetOrigin())


def test_brain_demo_case_matches_its_generator_and_keeps_the_notice(icbm152_templates):
    image_path, label_path = DEMO / "brain-t1-t2_target.nii.gz", DEMO / "brain-t1-t2_target_label.nii.gz"
    assert image_path.stat().st_size < 2_000_000 and label_path.stat().st_size < 200_000
    image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
    assert set(np.unique(sitk.GetArrayFromImage(label))) == set(LABELS.values())
    fresh = generate_case("brain-t1-t2", _demo_seed("brain-t1-t2"), "target", templates=icbm152_templates)
    assert np.array_equal(sitk.GetArrayFromImage(fresh.image), sitk.GetArrayFromImage(image))
    assert np.array_equal(sitk.GetArrayFromImage(fresh.label), sitk.GetArrayFromImage(label))
    assert (DEMO / "NOTICE-ICBM152.txt").read_text() == icbm152.NOTICE
