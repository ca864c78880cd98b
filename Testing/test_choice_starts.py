"""The starts `eval clicks --choose` scores click methods from on a task folder: source drafts,
randomised renderings of the source images and empty masks, pooled (evaluation/choice_starts.py)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from crossdomainseg.bundle import load_bundle, make_random_bundle, update_bundle
from crossdomainseg.errors import InputError
from crossdomainseg.evaluation.choice_starts import (chooser_cases, per_start, randomisation_record, render,
                                                     start_of)
from crossdomainseg.evaluation.clicks import evaluate_cases, labelled_paths
from crossdomainseg.interactive.sphere import SphereRefiner
from crossdomainseg.normalize import normalize

PHANTOM_LABELS = {"background": 0, "liver": 1, "kidneys": 2, "spleen": 3, "lesion": 4}


def _case():
    """A dark volume holding a bright box (label 1) and a dim one (label 2), on a 2 x 2 x 3 mm grid."""
    array = np.full((20, 32, 32), 10.0, np.float32)
    array[5:15, 6:16, 6:16] = 200.0
    array[5:15, 18:28, 18:28] = 80.0
    array += np.random.default_rng(0).normal(0, 2, array.shape).astype(np.float32)
    label = np.zeros(array.shape, np.uint8)
    label[5:15, 6:16, 6:16] = 1
    label[5:15, 18:28, 18:28] = 2
    image, truth = sitk.GetImageFromArray(array), sitk.GetImageFromArray(label)
    for item in (image, truth):
        item.SetSpacing((2.0, 2.0, 3.0))
        item.SetOrigin((-30.0, 12.0, 5.0))
    return image, truth


def test_a_rendering_is_a_new_contrast_of_the_same_anatomy_on_the_working_grid(tmp_path):
    bundle = make_random_bundle(tmp_path / "b", labels={"background": 0, "a": 1, "b": 2}, spacing=4.0)
    image, truth = _case()
    rendered, label = render(image, truth, bundle, np.random.default_rng(1))
    assert rendered.GetSpacing() == (4.0, 4.0, 4.0) and rendered.GetSize() == label.GetSize()
    assert np.allclose(rendered.GetOrigin(), label.GetOrigin())
    y = sitk.GetArrayFromImage(label)
    assert set(np.unique(y)) == {0, 1, 2} and 0.5 < (y == 1).sum() / (y == 2).sum() < 2
    # the same seed renders the same image, another seed another contrast
    again, _ = render(image, truth, bundle, np.random.default_rng(1))
    other, _ = render(image, truth, bundle, np.random.default_rng(2))
    x = sitk.GetArrayFromImage(rendered)
    assert np.array_equal(x, sitk.GetArrayFromImage(again))
    assert not np.allclose(x, sitk.GetArrayFromImage(other), atol=0.05)
    # not the source image rescaled: its per-label order of brightness is redrawn
    means = [[float(sitk.GetArrayFromImage(r)[y == v].mean()) for v in (0, 1, 2)]
             for r in [render(image, truth, bundle, np.random.default_rng(s))[0] for s in range(8)]]
    assert len({tuple(np.argsort(m)) for m in means}) > 1


def test_a_rendering_is_written_in_the_units_the_engine_normalises_back(tmp_path):
    bundle = make_random_bundle(tmp_path / "b", labels={"background": 0, "a": 1, "b": 2}, spacing=4.0)
    bundle = update_bundle(bundle.path, metadata={"normalization": {
        "source": {"kind": "percentile", "lower": 1, "upper": 99},
        "target": {"kind": "window", "low": -100.0, "high": 300.0}}})
    image, truth = _case()
    rendered, _ = render(image, truth, bundle, np.random.default_rng(4))
    x = sitk.GetArrayFromImage(rendered)
    assert x.min() >= -100.0 and x.max() <= 300.0 and x.max() - x.min() > 200.0
    unit = bundle.normalize(x, "target")
    assert unit.min() == pytest.approx(0.0, abs=1e-3) and unit.max() == pytest.approx(1.0, abs=1e-3)


def test_a_2d_bundle_renders_in_the_plane(tmp_path):
    bundle = make_random_bundle(tmp_path / "b", spatial_dims=2, spacing=2.0)
    array = np.zeros((1, 40, 40), np.float32)
    array[0, 10:30, 10:30] = 100.0
    label = (array > 0).astype(np.uint8)
    image, truth = sitk.GetImageFromArray(array), sitk.GetImageFromArray(label)
    for item in (image, truth):
        item.SetSpacing((1.0, 1.0, 5.0))
    rendered, out = render(image, truth, bundle, np.random.default_rng(0))
    assert rendered.GetSize() == (20, 20, 1) and rendered.GetSpacing() == (2.0, 2.0, 5.0)
    assert sitk.GetArrayFromImage(out).sum() == 100


def test_the_record_says_which_randomisation_rendered_the_starts(tmp_path):
    bundle = make_random_bundle(tmp_path / "b")
    assert "defaults" in randomisation_record(bundle) and "records no domain randomisation" in randomisation_record(bundle)
    trained = SimpleNamespace(metadata={"training": {"start": {"config": {"domain_randomize": 0.0}},
                                                     "source": {"config": {"domain_randomize": 0.8}}}})
    assert "trained with (domain_randomize 0.8)" in randomisation_record(trained)


def test_objects_are_named_by_their_start():
    assert start_of("source_000/liver") == "draft"
    assert start_of("source_000@randomised12/liver") == "randomised"
    assert start_of("source_000@empty/lesion") == "empty"


class _ThresholdEngine:
    """Drafts every label where the normalised image is bright: a draft that follows contrast."""

    def __init__(self, bundle, mode):
        self.bundle, self.mode = bundle, mode

    def segment(self, image, preview=True, uncertainty=False):
        x = self.bundle.normalize(sitk.GetArrayFromImage(image), "source" if self.mode == "source" else "target")
        label = sitk.GetImageFromArray((x > 0.5).astype(np.uint8))
        label.CopyInformation(image)
        return SimpleNamespace(label=label, probabilities=None, preview=None)


@pytest.fixture(scope="module")
def phantom_task(tmp_path_factory):
    from crossdomainseg.data import make_task

    return make_task("phantom-ct-mr", 3, 0, tmp_path_factory.mktemp("task") / "phantom")


def test_every_case_is_clicked_from_its_draft_its_renderings_and_an_empty_mask(tmp_path, phantom_task):
    bundle = make_random_bundle(tmp_path / "b", labels=PHANTOM_LABELS, spacing=4.0)
    source, target = _ThresholdEngine(bundle, "source"), _ThresholdEngine(bundle, "vanilla")
    paths = labelled_paths(phantom_task, "val", "source")[:1]
    cases = list(chooser_cases(source, target, paths, renderings=2))
    case_id = paths[0][0]
    assert [c[0] for c in cases] == [case_id, f"{case_id}@randomised0", f"{case_id}@randomised1", f"{case_id}@empty"]
    assert [c[3] for c in cases] == [(source, "source"), (target, "target"), (target, "target"), (target, "target", True)]
    for _, rendered, truth, _ in cases[1:3]:
        assert rendered.GetSpacing() == (4.0, 4.0, 4.0) and rendered.GetSize() == truth.GetSize()
    assert not np.array_equal(sitk.GetArrayFromImage(cases[1][1]), sitk.GetArrayFromImage(cases[2][1]))
    # the empty start clicks on the first rendering, read as a target image as the product meets it
    assert cases[3][1] is cases[1][1] and cases[3][2] is cases[1][2]
    with pytest.raises(InputError, match="at least one randomised rendering"):
        next(chooser_cases(source, target, paths, renderings=0))

    results = evaluate_cases(source, iter(cases), len(cases), {"sphere": SphereRefiner()}, 2, log=lambda m: None)
    curves = results["sphere"]["curves"]
    starts = per_start(results)
    assert set(starts) == {"draft", "randomised", "empty"}
    n = starts["draft"]["sphere"]["objects"]
    assert n >= 3 and starts["randomised"]["sphere"]["objects"] == 2 * n and starts["empty"]["sphere"]["objects"] == n
    assert results["sphere"]["objects"] == 4 * n
    # the empty start has nothing at first, then the robot's positive click adds to it
    empty = [c for o, c in curves.items() if start_of(o) == "empty"]
    assert all(c[0] == 0.0 for c in empty) and any(c[1] > 0.0 for c in empty)
    # the renderings' drafts are not the source drafts: the contrast changed under the same labels
    draft = {o.split("/")[1]: c[0] for o, c in curves.items() if start_of(o) == "draft"}
    rendered = [(o.split("/")[1], c[0]) for o, c in curves.items() if start_of(o) == "randomised"]
    assert any(abs(dice - draft[name]) > 0.05 for name, dice in rendered)


@pytest.mark.slow
def test_choose_on_a_task_folder_pools_the_starts_and_records_them(tmp_path, phantom_task, capsys):
    from crossdomainseg.cli import main
    from crossdomainseg.evaluation.cli import choose

    bundle = make_random_bundle(tmp_path / "b", labels=PHANTOM_LABELS, spacing=4.0)
    out = tmp_path / "clicks.json"
    command = ["eval", "clicks", "--bundle", str(bundle.path), "--data", str(phantom_task), "--max-clicks", "2",
               "--methods", "sphere,boundary_shift", "--threads", "1", "--device", "cpu", "--limit", "1"]
    assert main(command + ["--renderings", "1"]) == 2  # renderings go with --choose only
    assert "--renderings" in capsys.readouterr().err
    assert main(command + ["--choose", "--renderings", "0"]) == 2
    assert "--renderings (1 or more)" in capsys.readouterr().err
    assert main(command + ["--choose", "--renderings", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    chosen = load_bundle(bundle.path).metadata["click_refiner"]
    assert chosen["name"] == choose(results)
    starts = chosen["starts"]
    assert starts["renderings"] == 1 and "defaults" in starts["randomisation"] and starts["engine_mode"] == "tdgan"
    n = starts["draft"]["objects"]
    assert starts["randomised"]["objects"] == n and starts["empty"]["objects"] == n
    assert set(starts["empty"]["dice_0"].values()) == {0.0}
    for name, r in results.items():
        assert r["objects"] == 3 * n and {start_of(o) for o in r["curves"]} == {"draft", "randomised", "empty"}
        # the recorded figures are the pooled ones; the per-start ones sit beside them
        assert chosen["noc90_mean"][name] == r["noc90_mean"]
        assert starts["empty"]["noc90_mean"][name] == r["starts"]["empty"]["noc90_mean"]
        pooled = sum(r["starts"][s]["noc90_mean"] * r["starts"][s]["objects"] for s in r["starts"]) / (3 * n)
        assert r["noc90_mean"] == pytest.approx(pooled, abs=2e-3)
