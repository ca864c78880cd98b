"""The background trainer's prompt stage: the bundle's prompt network fine-tuned on accepted cases,
published as a new registry version only through its gate on held-out accepted cases, stopped and
resumed, and picked up by the next click session. The trainer runs in this process (its
`_Run.main`, as `trainer start` runs it), with tiny step counts."""

import json
import shutil
import signal

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from crossdomainseg.bundle import load_bundle, make_random_bundle, update_bundle
from crossdomainseg.curriculum import process
from crossdomainseg.curriculum.params import CurriculumParams
from crossdomainseg.curriculum.prompt_stage import PromptStage
from crossdomainseg.interactive.prompt_net import PROMPT_SPEC, prompt_grid, prompt_spec
from crossdomainseg.networks import build_network
from crossdomainseg.registry import ModelRegistry
from crossdomainseg.store import AcceptedCaseStore

LABELS = {"background": 0, "organ": 1}
# no segmenter epochs: the prompt stage runs at once; 1 epoch of 2 steps of 2 samples
TINY = {"epochs": 0, "holdout_every": 3, "prompt_epochs": 1, "prompt_steps": 2, "prompt_batch": 2}


def _pair(seed, lesion=False):
    rng = np.random.default_rng(seed)
    array = rng.normal(0, 0.3, size=(16, 16, 16)).astype(np.float32)
    array[4:12, 5:12, 4:11] += 3
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((4.0, 4.0, 4.0))
    values = (array > 1.5).astype(np.uint8)
    if lesion:
        values[1:3, 1:4, 12:15] = 2
    label = sitk.GetImageFromArray(values)
    label.CopyInformation(image)
    return image, label


def _bundle(tmp_path, spatial_dims=3):
    """A tiny bundle (3D, or 2D with a 2D prompt network) whose prompt network answers "background"
    everywhere (its last bias -50), so that a few fine-tuning steps change its weights but not one
    of its answers: the gate then sees the same figures for both networks."""
    bundle = make_random_bundle(tmp_path / "bundle", spatial_dims=spatial_dims, spacing=4.0, roi=16, seed=1,
                                labels=LABELS)
    torch.manual_seed(0)
    network = build_network(prompt_spec(spatial_dims))
    state = network.state_dict()
    state[[k for k in state if k.endswith("bias")][-1]] = torch.tensor([-50.0])
    network.load_state_dict(state)
    size, spacing = prompt_grid(spatial_dims)
    update_bundle(bundle.path, networks={"prompt": network},
                  metadata={"prompt": {"size": list(size), "spacing": list(spacing), "training": {"steps": 0}}})
    return bundle.path


def _store(tmp_path, n=3, lesion_at=None):
    store = AcceptedCaseStore(tmp_path / "store")
    for i in range(n):
        lesion = i == lesion_at
        store.accept(*_pair(i, lesion), model_version="v0001", labels=LABELS,
                     structures={"lesion": 2} if lesion else None)
    return store


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """The trainer's main installs SIGTERM and SIGINT handlers: give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    threads = torch.get_num_threads()
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)
    torch.set_num_threads(threads)


def _run_trainer(tmp_path, bundle, store, params=None, unlabelled=None, source=None, registry=None) -> dict:
    """Run the trainer process's main in this process, configured as `trainer start` configures it."""
    workdir = process.trainer_dir(store.root).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if unlabelled is not None:
        store.set_unlabelled_folder(unlabelled)
    checked = CurriculumParams.for_bundle(load_bundle(bundle).metadata, {**TINY, **(params or {})})
    config = {"store": str(store.root), "registry": str(registry or tmp_path / "reg"), "bundle": str(bundle),
              "source": None if source is None else str(source),
              "params": checked.to_dict(), "threads": 1, "nice": 0, "device": "cpu"}
    (workdir / "config.json").write_text(json.dumps(config))
    assert process._Run(workdir).main() == 0
    return json.loads((workdir / "status.json").read_text())


def _source_folder(tmp_path):
    """Labelled source data for the trainer's replay: images/ and labels/ matched by name."""
    for sub in ("images", "labels"):
        (tmp_path / "source" / sub).mkdir(parents=True)
    for i in range(2):
        image, label = _pair(50 + i)
        sitk.WriteImage(image, str(tmp_path / "source" / "images" / f"s{i}.nii.gz"))
        sitk.WriteImage(label, str(tmp_path / "source" / "labels" / f"s{i}.nii.gz"))
    return tmp_path / "source"


def test_accepted_cases_fine_tune_the_prompt_network_into_a_new_version(tmp_path, capsys):
    bundle = _bundle(tmp_path)
    store = _store(tmp_path)
    status = _run_trainer(tmp_path, bundle, store, source=_source_folder(tmp_path))
    registry = ModelRegistry(tmp_path / "reg")
    assert registry.versions() == ["v0001", "v0002"] and registry.current_version() == "v0002"
    assert status["state"] == "finished" and status["model_version"] == "v0002"
    stage = status["prompt"]
    assert stage["state"] == "published" and (stage["n_train"], stage["n_heldout"]) == (2, 1)
    assert stage["n_source"] == 2 and stage["accepted_share"] == 0.5  # mixed with the source data
    assert [line["epoch"] for line in stage["history"]] == [1] and stage["history"][0]["steps"] == 2
    gate = stage["last_gate"]
    assert gate["published"] == "v0002" and gate["compared_with"] == "v0001" and gate["heldout_cases"] == 1
    for figures in (gate["new"], gate["current"]):
        assert {"dice_empty_1", "dice_empty_5", "dice_draft_1", "dice_draft_5", "harmful_clicks"} <= set(figures)
        assert figures["objects"] == 1 and figures["clicks"] >= 1
    old, new = (load_bundle(registry.versions_dir / v) for v in ("v0001", "v0002"))
    assert new.metadata["weights"]["models/prompt.pt"] != old.metadata["weights"]["models/prompt.pt"]
    assert new.metadata["weights"]["models/segmenter.pt"] == old.metadata["weights"]["models/segmenter.pt"]
    assert new.metadata["prompt"]["training"]["fine_tuned_from"] == {"steps": 0}
    assert new.metadata["metrics"]["finetune"]["prompt_gate"]["new"] == gate["new"]
    # the first version is kept as it was published
    assert load_bundle(registry.versions_dir / "v0001").metadata["weights"] == old.metadata["weights"]
    log = capsys.readouterr().out
    assert '"prompt_epoch"' in log and '"prompt_gate"' in log


def test_a_2d_bundle_fine_tunes_its_2d_prompt_network_on_single_slice_cases(tmp_path):
    bundle = _bundle(tmp_path, spatial_dims=2)
    store = AcceptedCaseStore(tmp_path / "store")
    for i in range(3):
        image, label = (volume[:, :, 6:7] for volume in _pair(i))  # single-slice images, as 2D ones are stored
        store.accept(image, label, model_version="v0001", labels=LABELS)
    status = _run_trainer(tmp_path, bundle, store)
    stage = status["prompt"]
    assert stage["state"] == "published" and (stage["n_train"], stage["n_heldout"]) == (2, 1)
    assert stage["last_gate"]["new"]["objects"] == 1 and stage["last_gate"]["new"]["clicks"] >= 1
    new = load_bundle(ModelRegistry(tmp_path / "reg").versions_dir / stage["last_gate"]["published"])
    assert new.network_spec("prompt")["spatial_dims"] == 2 and new.metadata["prompt"]["size"] == [48, 48]


def test_a_prompt_network_failing_the_gate_is_not_published(tmp_path):
    bundle = _bundle(tmp_path)
    store = _store(tmp_path)
    status = _run_trainer(tmp_path, bundle, store, {"prompt_margin": 0.5})
    registry = ModelRegistry(tmp_path / "reg")
    assert registry.versions() == ["v0001"] and registry.current_version() == "v0001"
    gate = status["prompt"]["last_gate"]
    assert status["prompt"]["state"] == "kept" and gate["published"] is None
    assert "below the current network's + 0.5" in gate["reason"]
    assert gate["new"]["dice_empty_1"] < gate["current"]["dice_empty_1"] + 0.5


def test_a_case_with_a_new_structure_is_left_out_as_the_segmenter_leaves_it_out(tmp_path):
    bundle = _bundle(tmp_path)
    store = _store(tmp_path, n=4, lesion_at=1)
    lesion_key = f"accepted:{store.cases()[1]}"
    status = _run_trainer(tmp_path, bundle, store)
    stage = status["prompt"]
    assert "new structures (lesion)" in stage["skipped"][lesion_key]
    assert stage["skipped"][lesion_key] == status["skipped"][lesion_key]  # the segmenter's own reason
    # the other three: the 2nd of them is held out
    assert (stage["n_train"], stage["n_heldout"]) == (2, 1) and stage["state"] == "published"


def test_without_accepted_cases_the_prompt_stage_is_skipped_with_its_reason(tmp_path):
    bundle = _bundle(tmp_path)
    store = AcceptedCaseStore(tmp_path / "store")
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    sitk.WriteImage(_pair(7)[0], str(folder / "u0.nii.gz"))
    status = _run_trainer(tmp_path, bundle, store, {"epochs": 1}, unlabelled=folder)
    assert status["state"] == "finished" and status["epoch"] == 1  # the segmenter trained on the image
    assert status["prompt"] == {"state": "skipped", "reason": "no accepted case of this model to learn from",
                                "base_version": "v0001", "skipped": {}, "n_train": 0, "n_heldout": 0, "epochs": 1}
    assert ModelRegistry(tmp_path / "reg").versions() == ["v0001"]


def test_a_stopped_prompt_stage_resumes_at_its_epoch(tmp_path, monkeypatch, capsys):
    bundle = _bundle(tmp_path)
    store = _store(tmp_path)
    workdir = process.trainer_dir(store.root).resolve()
    save = PromptStage.save

    def save_then_stop(self, *args, **kwargs):
        save(self, *args, **kwargs)
        (workdir / "stop.request").write_text("stop\n")  # as `trainer stop` asks

    monkeypatch.setattr(PromptStage, "save", save_then_stop)
    status = _run_trainer(tmp_path, bundle, store, {"prompt_epochs": 2})
    assert status["state"] == "stopped" and status["prompt"]["epoch"] == 1
    assert ModelRegistry(tmp_path / "reg").versions() == ["v0001"]
    monkeypatch.setattr(PromptStage, "save", save)
    (workdir / "stop.request").unlink()
    status = _run_trainer(tmp_path, bundle, store, {"prompt_epochs": 2})
    assert "prompt stage resumed at epoch 1" in capsys.readouterr().out
    assert status["state"] == "finished" and [h["epoch"] for h in status["prompt"]["history"]] == [1, 2]
    assert status["prompt"]["state"] == "published"
    # a finished stage is not run again
    again = _run_trainer(tmp_path, bundle, store, {"prompt_epochs": 2})
    assert again["prompt"]["last_gate"] == status["prompt"]["last_gate"]
    assert ModelRegistry(tmp_path / "reg").versions() == ["v0001", "v0002"]
    # more epochs continue it, and the gate compares with the version it published
    more = _run_trainer(tmp_path, bundle, store, {"prompt_epochs": 3})
    assert [h["epoch"] for h in more["prompt"]["history"]] == [1, 2, 3]
    assert more["prompt"]["last_gate"]["compared_with"] == "v0002"


def test_a_published_segmenter_carries_the_current_prompt_network(tmp_path):
    """The segmenter's gate publishes the student's bundle, made from the version its run started
    from: the prompt network promoted since then goes with it, never the older one."""
    from crossdomainseg.curriculum.promotion import promote_if_best
    from crossdomainseg.curriculum.trainer import CurriculumTrainer, prepare

    bundle = _bundle(tmp_path)
    registry = ModelRegistry(tmp_path / "reg")
    registry.init_from(bundle)
    newer = tmp_path / "newer"  # v0002: the prompt stage's publication, same segmenter
    shutil.copytree(bundle, newer)
    update_bundle(newer, networks={"prompt": build_network(PROMPT_SPEC)},
                  metadata={"prompt": {"size": [48, 48, 48], "spacing": [2.0, 2.0, 2.0], "training": {"steps": 9}}})
    registry.publish(newer)
    base = load_bundle(registry.versions_dir / "v0001")  # the segmenter's run started from v0001
    accepted = [prepare(base, *_pair(i)[:1], f"a{i}", label=_pair(i)[1]) for i in range(2)]
    trainer = CurriculumTrainer(base, CurriculumParams(holdout_every=2), [], accepted)
    assert promote_if_best(trainer, registry, tmp_path / "candidate")["published"] == "v0003"
    carried, promoted = (load_bundle(registry.versions_dir / v) for v in ("v0003", "v0002"))
    pairs = zip(carried.network("prompt").state_dict().values(), promoted.network("prompt").state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)
    assert carried.metadata["prompt"]["training"] == {"steps": 9}


def test_the_next_session_outlines_with_the_published_prompt_network(tmp_path):
    """The Logic follows the registry: after a prompt network is published, the next segmentation's
    click session outlines new structures with it."""
    from slicer_shim import headless_slicer

    from CrossDomainSegLib.logic import CrossDomainSegLogic

    bundle = _bundle(tmp_path)
    app = headless_slicer()
    image, _ = _pair(3)
    sitk.WriteImage(image, str(tmp_path / "input.nrrd"))
    volume = app.volumes.AddArchetypeVolume(str(tmp_path / "input.nrrd"), "input", 0)
    logic = CrossDomainSegLogic(app.scene, app.segmentations, workspace=tmp_path / "ws", threads=1)
    logic.load_bundle(bundle)
    logic.segment(volume)

    def weights():
        return [t.clone() for t in logic.session.structure_refiner.network.state_dict().values()]

    before = weights()
    registry = ModelRegistry(logic.bundle_path)  # the registry the trainer panel trains into
    assert _run_trainer(tmp_path, bundle, _store(tmp_path), registry=registry.root)["prompt"]["state"] == "published"
    assert logic.segment(volume).model_version == registry.current_version() == "v0002"
    after = weights()
    expected = list(load_bundle(registry.current_path()).network("prompt").state_dict().values())
    assert all(torch.equal(a, e) for a, e in zip(after, expected))
    assert not all(torch.equal(a, b) for a, b in zip(after, before))
