"""The learned refiner: its grid handling, its bundle round trip, its training samples and the
train-refiner / eval clicks commands end to end."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from crossdomainseg.bundle import load_bundle, make_random_bundle, update_bundle
from crossdomainseg.errors import BundleError
from crossdomainseg.interactive import CropInputs, InteractiveSession
from crossdomainseg.interactive.sphere import SphereRefiner
from crossdomainseg.interactive.encoding import NET_SIZE
from crossdomainseg.interactive.refiner import REFINER_SPEC, LearnedRefiner, click_refiner, to_net_index
from crossdomainseg.interactive import train_refiner
from crossdomainseg.interactive.train_refiner import Draft, TrainCase, corrupt, make_drafts, make_sample
from crossdomainseg.networks import build_network

LABELS = {"background": 0, "organ": 1, "lesion": 2}


class _Recorder(torch.nn.Module):
    """Stand-in network: records its input and answers "label" inside the positive click bump."""

    def forward(self, x):
        self.seen = x.clone()
        return torch.where(x[:, 3:4] > 0.5, 10.0, -10.0)


def test_propose_rescales_the_crop_to_the_refiner_grid_and_back():
    recorder = _Recorder()
    refiner = LearnedRefiner(recorder, size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), device="cpu", small_voxels=0,
                             fallback=None)
    shape = (8, 32, 16)  # a crop at 4 x 1 x 2 mm covers 32 x 32 x 32 mm: 16^3 on the refiner grid
    zeros = np.zeros(shape, np.float32)
    click = (4, 16, 8)
    inputs = CropInputs(zeros + 0.5, zeros, zeros, zeros.astype(bool), [click], [], click, True, (4.0, 1.0, 2.0))
    prob = refiner.propose(inputs)
    assert prob.shape == shape
    assert recorder.seen.shape == (1, 5, 16, 16, 16)
    assert torch.allclose(recorder.seen[0, 0], torch.tensor(0.5))
    net_click = tuple(int(round(v)) for v in to_net_index(click, shape, (16, 16, 16)))
    assert recorder.seen[0, 3][net_click] == pytest.approx(1.0)
    assert prob[click] > 0.99 and prob[0, 0, 0] < 0.01


class _Stubborn(torch.nn.Module):
    """Stand-in network that only repeats the current probability, whatever the clicks say."""

    def forward(self, x):
        return (x[:, 2:3] - 0.5) * 20.0


def test_a_click_the_network_contradicts_goes_to_the_fallback():
    """A negative click inside the label that the network keeps inside goes to the classical
    fallback (here the local Otsu refiner; by default the boundary shift one)."""
    shape = (12, 12, 12)
    image = np.random.default_rng(0).normal(0, 0.05, shape).astype(np.float32)
    image[:, :6] += 1.0  # two noisy regions: the fallback takes the clicked one
    current = np.ones(shape, bool)
    click = (6, 3, 6)
    negative = CropInputs(image, image, current.astype(np.float32), current, [], [click], click, False,
                          (2.0, 2.0, 2.0))
    default = LearnedRefiner(_Stubborn(), size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), device="cpu")
    assert default.fallback.name == "boundary_shift"
    refiner = LearnedRefiner(_Stubborn(), size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), device="cpu",
                             fallback="local_otsu", fallback_voxels=0)
    removed = refiner.propose(negative) < 0.5
    assert refiner.fallbacks == 1
    assert removed[:, :4].all() and not removed[:, 6:].any()  # the clicked half (edge blurred), grown in the image
    network_only = LearnedRefiner(_Stubborn(), size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), device="cpu",
                                  fallback=None)
    assert not (network_only.propose(negative) < 0.5).any() and network_only.fallbacks == 0


class _LeftHalf(torch.nn.Module):
    """Stand-in network: "label" in the half of the crop with the lower x index, whatever it sees."""

    def forward(self, x):
        out = torch.full_like(x[:, :1], -10.0)
        out[..., : x.shape[-1] // 2] = 10.0
        return out


def test_on_a_negative_click_it_agrees_with_the_network_vetoes_removing_what_it_sees_as_label():
    """A positive click, and a negative click the network contradicts, go to the fallback: its
    whole proposal. On a negative click it agrees with, the fallback's removal (an 8 mm ball)
    stands except where the network still sees the label (the crop's left half)."""
    shape = (12, 12, 12)
    zeros = np.zeros(shape, np.float32)
    left = np.zeros(shape, bool)
    left[..., :6] = True

    def inputs(click, positive):
        current = np.zeros(shape, bool) if positive else np.ones(shape, bool)
        return CropInputs(zeros, zeros, current.astype(np.float32), current, [click] if positive else [],
                          [] if positive else [click], click, positive, (2.0, 2.0, 2.0))

    def changes(click, positive):
        refiner = LearnedRefiner(_LeftHalf(), size=shape, spacing=(2.0, 2.0, 2.0), device="cpu",
                                 fallback=SphereRefiner(radius_mm=8.0), small_voxels=0, fallback_voxels=0)
        crop = inputs(click, positive)
        ball = (SphereRefiner(radius_mm=8.0).propose(crop) >= 0.5) != crop.current
        return (refiner.propose(crop) >= 0.5) != crop.current, ball, refiner.fallbacks

    changed, ball, fallbacks = changes((6, 6, 4), True)
    assert (changed == ball).all() and fallbacks == 1
    changed, ball, fallbacks = changes((6, 6, 4), False)  # contradicted: the network sees label there
    assert (changed == ball).all() and fallbacks == 1
    changed, ball, fallbacks = changes((6, 6, 8), False)
    assert (changed == (ball & ~left)).all() and (ball & left).any() and changed[6, 6, 8] and fallbacks == 0


def test_a_label_with_few_voxels_near_the_click_goes_to_the_small_object_refiner():
    """A positive click on a 33-voxel lesion: the network is not asked; the click takes the
    bright blob."""
    shape = (12, 16, 16)
    image = np.random.default_rng(0).normal(0, 0.05, shape).astype(np.float32)
    grid = np.indices(shape)
    blob = sum((g - c) ** 2 for g, c in zip(grid, (6, 8, 8))) <= 4
    image[blob] += 1.0
    current = np.zeros(shape, bool)
    current[1, 1, 1] = True  # the label so far: one voxel elsewhere
    click = (6, 8, 8)
    inputs = CropInputs(image, image, current.astype(np.float32), current, [click], [], click, True, (2.0, 2.0, 2.0))
    recorder = _Recorder()
    refiner = LearnedRefiner(recorder, size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), device="cpu")
    assert ((refiner.propose(inputs) >= 0.5) == (blob | current)).all()
    assert not hasattr(recorder, "seen")
    network = LearnedRefiner(recorder, size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), device="cpu", small_voxels=0,
                             fallback=None)
    network.propose(inputs)
    assert hasattr(recorder, "seen")


def test_a_label_under_fallback_voxels_goes_to_the_fallback_unasked():
    """A 1728-voxel label, under the 4000 of the default: the network is not asked, the fallback
    (counted) answers; with fallback_voxels 0 the network is asked about the negative click."""
    shape = (12, 12, 12)
    image = np.random.default_rng(0).normal(0, 0.05, shape).astype(np.float32)
    image[:, :6] += 1.0
    current = np.ones(shape, bool)
    click = (6, 3, 6)
    negative = CropInputs(image, image, current.astype(np.float32), current, [], [click], click, False,
                          (2.0, 2.0, 2.0))
    recorder = _Recorder()
    refiner = LearnedRefiner(recorder, size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), device="cpu",
                             fallback="local_otsu")
    removed = refiner.propose(negative) < 0.5
    assert refiner.fallbacks == 1 and not hasattr(recorder, "seen")
    assert removed[:, :4].all() and not removed[:, 6:].any()
    LearnedRefiner(recorder, size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), device="cpu",
                   fallback=SphereRefiner(radius_mm=4.0), fallback_voxels=0).propose(negative)
    assert hasattr(recorder, "seen")


def test_small_volumes_are_padded_for_the_network():
    recorder = _Recorder()
    refiner = LearnedRefiner(recorder, size=(16, 16, 16), spacing=(1.0, 1.0, 1.0), device="cpu", small_voxels=0,
                             fallback=None)
    zeros = np.zeros((5, 9, 16), np.float32)
    out = refiner.propose(CropInputs(zeros, zeros, zeros, zeros.astype(bool), [(2, 4, 8)], [], (2, 4, 8),
                                     True, (1.0, 1.0, 1.0)))
    assert out.shape == (5, 9, 16) and recorder.seen.shape[2:] == (16, 16, 16)


def test_refiner_round_trips_through_a_bundle(tmp_path):
    make_random_bundle(tmp_path / "b", labels=LABELS)
    with pytest.raises(BundleError, match="no click refiner"):
        LearnedRefiner.from_bundle(load_bundle(tmp_path / "b"))
    torch.manual_seed(0)
    network = build_network(REFINER_SPEC)
    update_bundle(tmp_path / "b", networks={"refiner": network},
                  metadata={"refiner": {"size": [16, 24, 24], "spacing": [3.0, 2.0, 2.0]}})
    refiner = LearnedRefiner.from_bundle(load_bundle(tmp_path / "b"), device="cpu")
    assert refiner.size == (16, 24, 24) and refiner.crop_mm == (48.0, 48.0, 48.0)
    x = torch.randn(1, 5, 16, 24, 24)
    with torch.inference_mode():
        assert torch.allclose(refiner.network(x), network.eval()(x))


def test_front_ends_click_with_the_method_the_bundle_names(tmp_path):
    make_random_bundle(tmp_path / "b", labels=LABELS)
    assert click_refiner(load_bundle(tmp_path / "b")).name == "boundary_shift"  # no refiner network
    update_bundle(tmp_path / "b", networks={"refiner": build_network(REFINER_SPEC)})
    learned = click_refiner(load_bundle(tmp_path / "b"), "cpu")
    assert isinstance(learned, LearnedRefiner) and learned.fallback.name == "boundary_shift"
    update_bundle(tmp_path / "b", metadata={"click_refiner": {"name": "sphere"}})
    assert click_refiner(load_bundle(tmp_path / "b")).name == "sphere"
    update_bundle(tmp_path / "b", metadata={"click_refiner": {"name": "magic"}})
    with pytest.raises(BundleError, match="unknown click refiner 'magic'"):
        click_refiner(load_bundle(tmp_path / "b"))


def test_copy_refiner_needs_the_same_normalisation(tmp_path):
    from crossdomainseg.interactive.train_refiner import copy_refiner

    make_random_bundle(tmp_path / "a", labels=LABELS)
    make_random_bundle(tmp_path / "b", labels=LABELS, seed=1)
    make_random_bundle(tmp_path / "c", labels=LABELS)
    update_bundle(tmp_path / "c", metadata={"normalization": {
        "source": {"kind": "window", "low": -400, "high": 600}, "target": {"kind": "minmax"}}})
    update_bundle(tmp_path / "a", networks={"refiner": build_network(REFINER_SPEC)},
                  metadata={"refiner": {"size": [16, 16, 16], "spacing": [2.0, 2.0, 2.0], "training": {}}})
    copied = copy_refiner(tmp_path / "a", tmp_path / "b", note="copied")
    assert copied.metadata["refiner"]["training"]["note"] == "copied"
    original = load_bundle(tmp_path / "a").network("refiner").state_dict()
    for name, tensor in copied.network("refiner").state_dict().items():
        assert torch.equal(tensor, original[name])
    with pytest.raises(BundleError, match="normalisation"):
        copy_refiner(tmp_path / "a", tmp_path / "c")


def _case(rng):
    shape = (40, 56, 56)
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    organ = ((g[0] - 20) / 12.0) ** 2 + ((g[1] - 28) / 16.0) ** 2 + ((g[2] - 28) / 18.0) ** 2 <= 1
    lesion = (g[0] - 20) ** 2 + (g[1] - 28) ** 2 + (g[2] - 34) ** 2 <= 9
    label = organ.astype(np.int16)
    label[lesion] = 2
    image = (0.3 + 0.3 * organ + 0.3 * lesion + rng.normal(0, 0.02, shape)).astype(np.float32)
    return TrainCase(image, label)


def test_training_samples_put_clicks_where_the_target_agrees():
    rng = np.random.default_rng(0)
    case = _case(rng)
    clicked = 0
    for _ in range(12):
        x, y = make_sample(case, rng)
        assert x.shape == (5, *NET_SIZE) and y.shape == (1, *NET_SIZE)
        positive, negative = x[3] > 0.99, x[4] > 0.99
        assert (y[0][positive] == 1).all() and (y[0][negative] == 0).all()
        clicked += int(positive.any() or negative.any())
    assert clicked >= 6  # most samples carry clicks (10% have none)


class _AllOrgan(torch.nn.Module):
    """Stand-in segmenter of 3 classes that calls every voxel label 1."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], 3, *x.shape[2:])
        out[:, 1] = 10.0
        return out


def test_drafts_are_the_segmenter_on_remapped_copies():
    rng = np.random.default_rng(0)
    case = _case(rng)
    drafts = make_drafts(case, _AllOrgan(), (4.0, 4.0, 4.0), (16, 16, 16), 2, rng)
    assert len(drafts) == 2
    for draft in drafts:
        assert draft.probabilities.shape == (3, *case.image.shape)
        assert (draft.probabilities.argmax(0) == 1).all() and draft.probabilities.max() == 255
        assert draft.image.shape == case.image.shape and not np.allclose(draft.image, case.image, atol=0.05)
    assert not np.allclose(drafts[0].image, drafts[1].image)


def test_samples_from_a_draft_see_its_image_and_probability(monkeypatch):
    """With a draft, the image channel is the draft's remapped image and the probability channel
    the draft's probability of the label, except where earlier clicks made voxels certain."""
    monkeypatch.setattr(train_refiner, "DRAFT_SHARE", 1.0)
    rng = np.random.default_rng(3)
    case = _case(rng)
    probabilities = np.zeros((3, *case.image.shape), np.uint8)
    probabilities[0], probabilities[1:] = 153, 51  # background 0.6 wins: the draft misses both labels
    case.drafts = [Draft(np.full(case.image.shape, 7.0, np.float16), probabilities)]
    for _ in range(6):
        x, y = make_sample(case, rng)
        inside = x[0] == 7.0
        assert inside.mean() > 0.5 and not (x[0][~inside]).any()  # the rest is padding
        kept = np.isclose(x[2], 0.2, atol=1e-3)
        assert kept.mean() > 0.3 and np.isin(x[2][inside & ~kept], (0.0, 1.0)).all()


def test_corruptions_differ_from_the_truth():
    rng = np.random.default_rng(1)
    truth = _case(rng).label == 1
    changed = [int((corrupt(truth, rng) != truth).sum()) for _ in range(10)]
    assert sum(c > 0 for c in changed) >= 9


@pytest.mark.slow
def test_train_refiner_and_eval_clicks_commands(tmp_path):
    from crossdomainseg.cli import main
    from crossdomainseg.data import make_task

    data = make_task("phantom-ct-mr", 3, 0, tmp_path / "task")
    bundle = tmp_path / "bundle"
    make_random_bundle(bundle, labels={"background": 0, "liver": 1, "kidneys": 2, "spleen": 3, "lesion": 4},
                       spacing=4.0)
    assert main(["train-refiner", "--bundle", str(bundle), "--data", str(data), "--steps", "2",
                 "--threads", "1", "--batch", "1"]) == 0
    meta = load_bundle(bundle).metadata
    assert meta["refiner"]["training"]["steps"] == 2 and "models/refiner.pt" in meta["weights"]
    out = tmp_path / "clicks.json"
    assert main(["eval", "clicks", "--bundle", str(bundle), "--data", str(data), "--max-clicks", "3",
                 "--threads", "1", "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"brs", "learned", "learned_network_only", "sphere", "fixed_ball", "region_growing",
                            "local_otsu", "boundary_shift"}
    for r in results.values():
        assert set(r["dice_at_clicks"]) == {"0", "1", "2", "3"}
        assert r["objects"] >= 3 and 0 <= r["never_90_share"] <= 1
        assert all(len(c) == 4 for c in r["curves"].values())
    # sphere clicks are deterministic given the same start: two runs agree
    assert main(["eval", "clicks", "--bundle", str(bundle), "--data", str(data), "--max-clicks", "3",
                 "--methods", "sphere", "--threads", "1", "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["sphere"]["curves"] == results["sphere"]["curves"]
    # --choose records the best method on the SOURCE validation split in the bundle, for front
    # ends: it reads no target label (here none is readable)
    for path in (data / "target" / "labels").iterdir():
        path.write_text("a target label: never to be read by a choice")
    choose = ["eval", "clicks", "--bundle", str(bundle), "--data", str(data), "--max-clicks", "3",
              "--methods", "sphere,boundary_shift", "--threads", "1", "--device", "cpu", "--out", str(out), "--choose"]
    assert main(choose) == 0
    results = json.loads(out.read_text())
    assert all(o.startswith("source_") for o in results["sphere"]["curves"])
    chosen = load_bundle(bundle).metadata["click_refiner"]
    best = min(results, key=lambda m: (results[m]["noc90_mean"], results[m]["noc85_mean"],
                                       results[m]["clicks_dropping_over_0.01"]))
    assert chosen["name"] == best and chosen["split"] == "source val"
    assert chosen["noc90_mean"] == {m: r["noc90_mean"] for m, r in results.items()}
    assert click_refiner(load_bundle(bundle)).name == best


def test_session_from_an_engine_result(tmp_path):
    from crossdomainseg.engine import Engine

    make_random_bundle(tmp_path / "b", labels=LABELS, spacing=4.0)
    array = np.zeros((24, 32, 32), np.float32)
    array[8:16, 10:22, 10:22] = 100.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 3.0))
    engine = Engine(tmp_path / "b", device="cpu", threads=1, tta_n=1)
    result = engine.segment(image, preview=True, uncertainty=False)
    session = InteractiveSession.from_result(image, result, engine.bundle)
    assert session.label_values == [1, 2]
    assert np.array_equal(session.label, sitk.GetArrayFromImage(result.label))
    assert session.features.max() <= 1.0 and session.preview.shape == array.shape
    free = np.argwhere(session.label == 0)
    assert len(free), "the random segmenter left no background to click on"
    zyx = tuple(int(i) for i in free[len(free) // 2])
    session.add_click(image.TransformIndexToPhysicalPoint(zyx[::-1]), True, 2)
    assert session.label[zyx] == 2


def test_choose_takes_fewest_clicks_beyond_noise_then_fewest_harmful_clicks():
    from crossdomainseg.evaluation.cli import choose

    def figures(nocs, over=0):
        """Results of one method whose objects reach 0.90 after `nocs` clicks (20 = never)."""
        curves = {f"case/{i}": [0.5] * n + [0.95] * (21 - n) for i, n in enumerate(nocs)}
        return {"noc90_mean": sum(nocs) / len(nocs), "noc85_mean": sum(nocs) / len(nocs),
                "clicks_dropping_over_0.01": over, "curves": curves}

    slow = [20] * 20
    # one object of twenty reached sooner is within noise: the safer method stands
    results = {"brs": figures([5] + [20] * 19, over=45), "sphere": figures(slow, over=6),
               "boundary_shift": figures(slow, over=19)}
    assert choose(results) == "sphere"
    # fewer clicks on most objects is beyond noise: it wins despite more harmful clicks
    results["brs"] = figures([3] * 15 + [20] * 5, over=45)
    assert choose(results) == "brs"
    # all equal: fewest harmful clicks, then the classical method
    results = {"prompt": figures(slow, over=3), "sphere": figures(slow, over=3), "boundary_shift": figures(slow, over=4)}
    assert choose(results) == "sphere"
    results["prompt"] = figures(slow, over=2)
    assert choose(results) == "prompt"


def test_the_network_sees_the_label_where_it_departs_from_the_probabilities():
    """The engine's fitted label is not its segmenter's argmax; the network learnt on
    probabilities that agree with the label, so where they disagree it is given the label."""
    recorder = _Recorder()
    refiner = LearnedRefiner(recorder, size=(16, 16, 16), spacing=(2.0, 2.0, 2.0), device="cpu", small_voxels=0,
                             fallback=None)
    shape = (16, 16, 16)
    probability = np.full(shape, 0.2, np.float32)
    probability[:, :, 8:] = 0.9
    current = np.zeros(shape, bool)
    current[:, 4:, :] = True  # the label: rows 4.. whatever the probability says
    click = (8, 8, 8)
    refiner.propose(CropInputs(np.zeros(shape, np.float32), np.zeros(shape, np.float32), probability, current,
                               [click], [], click, True, (2.0, 2.0, 2.0)))
    seen = recorder.seen[0, 2].numpy()
    agree = (probability >= 0.5) == current
    assert np.allclose(seen[agree], probability[agree])
    assert np.array_equal(seen[~agree], current[~agree].astype(np.float32))
