"""Curriculum pieces checked numerically: eq. 4 teacher update, memory bank and its skip rule,
eq. 1/3 gates, the losses, augmentations, schedules, the promotion gate, and the appearance
replay's loss."""

import random

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from crossdomainseg.bundle import make_random_bundle
from crossdomainseg.curriculum.augment import flip_pair, views
from crossdomainseg.curriculum import cps as cps_module
from crossdomainseg.curriculum.cps import CrossPseudoSupervision
from crossdomainseg.curriculum.losses import ce_dice_loss, consistency_loss, dice_distance, pseudo_labels
from crossdomainseg.curriculum.memory_bank import MemoryBank
from crossdomainseg.curriculum.params import U_RAMP_EPOCHS, CurriculumParams
from crossdomainseg.curriculum.promotion import promote_if_best
from crossdomainseg.curriculum.teacher import update_teacher
from crossdomainseg.curriculum.trainer import CurriculumTrainer, is_heldout, prepare
from crossdomainseg.errors import InputError
from crossdomainseg.registry import ModelRegistry
from crossdomainseg.training.loops import load_checkpoint


def _const_net(value):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
        net[1].running_mean.fill_(value)
        net[1].num_batches_tracked.fill_(int(value))
    return net


def test_teacher_update_follows_equation_4():
    teacher, student, reference = _const_net(1.0), _const_net(3.0), _const_net(-2.0)
    update_teacher(teacher, student, reference, alpha=0.1, beta=0.2)
    expected = 0.7 * 1.0 + 0.1 * 3.0 + 0.2 * -2.0
    for p in teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, expected))
    assert torch.allclose(teacher[1].running_mean, torch.full((2,), expected))
    assert int(teacher[1].num_batches_tracked) == 3
    # Student and reference are left alone; repeated updates converge to the fixed point.
    assert all(torch.all(p == 3.0) for p in student.parameters())
    for _ in range(400):
        update_teacher(teacher, student, reference, alpha=0.1, beta=0.2)
    fixed = (0.1 * 3.0 + 0.2 * -2.0) / 0.3
    assert torch.allclose(next(teacher.parameters()), torch.tensor(fixed), atol=1e-4)


def test_patent_defaults_and_schedules():
    p = CurriculumParams()
    assert (p.alpha, p.beta, p.tau_ts0, p.confident_after) == (0.001, 0.001, 0.3, 5)
    # tau_u from the unlabelled images' own U by default: lowest first, the highest after the ramp
    u = [0.42, 0.45, 0.52]
    assert p.tau_u(0, u) == pytest.approx(0.42) and p.tau_u(U_RAMP_EPOCHS, u) == pytest.approx(0.52)
    with pytest.raises(InputError, match="uncertainties"):
        p.tau_u(0)
    fixed = CurriculumParams(tau_u0=0.05, lambda_u=0.02)
    assert fixed.tau_u(0) == 0.05 and fixed.tau_u(3) == pytest.approx(0.11)
    assert p.tau_ts(2) == pytest.approx(0.3 + 2 * p.lambda_ts)
    q = CurriculumParams.from_dict({"epochs": "7", "alpha": "0.01", "curriculum": "false"})
    assert (q.epochs, q.alpha, q.curriculum) == (7, 0.01, False)
    with pytest.raises(InputError, match="Unknown"):
        CurriculumParams.from_dict({"tau": 1})
    with pytest.raises(InputError):
        CurriculumParams.from_dict({"alpha": 0.7, "beta": 0.6})


def test_memory_bank_counts_to_confident():
    bank = MemoryBank(confident_after=3)
    for epoch in range(2):
        bank.mark_suitable("a", epoch)
    bank.mark_suitable("b", 1)
    assert bank.counter("a") == 2 and not bank.is_consistently_confident("a")
    bank.mark_suitable("a", 4)
    assert bank.is_consistently_confident("a") and bank.n_consistently_confident() == 1
    assert bank.first_confident_epoch == {"a": 0, "b": 1}
    restored = MemoryBank()
    restored.load_state_dict(bank.state_dict())
    assert restored.counters == {"a": 3, "b": 1} and restored.confident_after == 3


def test_losses():
    p = torch.zeros(1, 2, 4, 4)
    p[:, 1, :2] = 1
    p[:, 0, 2:] = 1
    q = torch.flip(p, dims=(2,))
    assert float(dice_distance(p, p)[0]) == pytest.approx(0.0, abs=1e-5)
    assert float(dice_distance(p, q)[0]) == pytest.approx(1.0, abs=1e-5)
    target = p.argmax(1)
    good, bad = 20 * (p - 0.5), 20 * (q - 0.5)
    assert float(ce_dice_loss(good, target)) < 0.01 < 5 < float(ce_dice_loss(bad, target))
    # Consistency: the student is pulled to the teacher's hard labels; no gradient to the teacher.
    teacher = (0.3 * p + 0.1).requires_grad_(True)
    student = bad.clone().requires_grad_(True)
    consistency_loss(teacher, student).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert float(consistency_loss(teacher, good)) < 0.01


def test_consistency_loss_leaves_out_unsure_teacher_voxels():
    # Left half: the teacher is sure of class 1; right half: 0.55 / 0.45, barely class 0.
    teacher = torch.zeros(1, 2, 4, 4)
    teacher[:, 1, :, :2] = 10.0
    teacher[:, 0, :, 2:] = 0.2
    student = torch.zeros(1, 2, 4, 4)
    student[:, 1] = 10.0  # agrees where the teacher is sure, says class 1 where it is not
    student.requires_grad_(True)
    loss = consistency_loss(teacher, student, confidence_threshold=0.9)
    loss.backward()
    assert float(loss) < 0.01
    assert student.grad[..., 2:].abs().max() == 0  # the unsure half does not pull the student
    assert float(consistency_loss(teacher, student, confidence_threshold=0.0)) > 1.0
    # Threshold 0 is the patent's loss, D~ against the teacher's hard labels on every voxel.
    assert torch.allclose(consistency_loss(teacher, student), ce_dice_loss(student, teacher.argmax(1)))
    with pytest.raises(InputError, match="confidence_threshold"):
        CurriculumParams.from_dict({"confidence_threshold": 1.0})


def test_class_adaptive_threshold_keeps_the_class_the_teacher_is_less_sure_of():
    # Class 0 (background): 0.99 sure on 12 voxels, 0.80 on 4; class 2: 0.75 sure on 4 voxels.
    probs = torch.full((1, 3, 4, 5), 0.005)
    probs[0, 0, :3] = 0.99
    probs[0, 0, 3, :4], probs[0, 1, 3, :4] = 0.80, 0.195
    probs[0, 2, :, 4], probs[0, 0, :, 4], probs[0, 1, :, 4] = 0.75, 0.2, 0.05
    probs[0, 0, 3, 4], probs[0, 2, 3, 4] = 0.2, 0.75
    teacher = probs.log()
    labels, kept = pseudo_labels(teacher, 0.9)
    assert not kept[labels == 2].any()  # one threshold silences class 2
    labels, kept = pseudo_labels(teacher, 0.9, class_adaptive=True)
    # class 0's mean 0.94 scales class 2's threshold to 0.9 x 0.75 / 0.94 = 0.72: kept
    assert kept[labels == 2].all() and int((labels == 2).sum()) == 4
    # within class 0 (threshold 0.9) the 0.80 voxels still drop out, the 0.99 ones count
    assert int(kept[labels == 0].sum()) == 12 and not kept[0, 3, :4].any()
    student = torch.zeros(1, 3, 4, 5, requires_grad=True)
    consistency_loss(teacher, student, 0.9, class_adaptive=True).backward()
    assert student.grad[0, :, :, 4].abs().sum() > 0  # class 2 voxels pull the student
    assert CurriculumParams.from_dict({"class_adaptive_threshold": "true"}).class_adaptive_threshold


def test_views_and_flip_pair():
    x = torch.rand(2, 1, 8, 8, 8)
    out = views(x, n_weak=2, n_strong=3, rng=random.Random(0), ops=2, magnitude=0.5)
    assert out.shape == (10, 1, 8, 8, 8)
    assert torch.equal(out[:2], x)  # the first weak view is the image itself
    assert not torch.allclose(out[4:], x.repeat(3, 1, 1, 1, 1))
    again = views(x, 2, 3, random.Random(0), 2, 0.5)
    assert torch.allclose(out, again)
    y = (x[:, 0] > 0.5).long()
    fx, fy = flip_pair(x, y, random.Random(3))
    assert torch.equal((fx[:, 0] > 0.5).long(), fy)  # image and label stay paired


def _volume(seed, shift=0):
    rng = np.random.default_rng(seed)
    array = rng.normal(0, 0.3, size=(16, 16, 16)).astype(np.float32)
    array[4 + shift:12, 4:12, 4:12] += 3
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((4.0, 4.0, 4.0))
    label = sitk.GetImageFromArray((array > 1.5).astype(np.uint8))
    label.CopyInformation(image)
    return image, label


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("b") / "b", spacing=4.0, roi=16, seed=3)


def test_uncertainty_gate_warmup_gate_and_memory_bank_skip(bundle):
    params = CurriculumParams(confident_after=2, tau_u0=0.05, lambda_u=0.0, tau_ts0=0.3)
    vol = prepare(bundle, _volume(0)[0], "x")
    trainer = CurriculumTrainer(bundle, params, [vol])
    p_ref, u = trainer.reference_view(vol)
    assert p_ref.shape == (1, 2, 16, 16, 16) and 0.0 <= u <= 1.0
    teacher_probs = trainer.probs(trainer.teacher, trainer.inputs(vol)[None])
    # Hard case: U above tau_u -> skipped, counter unchanged.
    trainer.bank.uncertainty["x"] = 0.5
    assert not trainer.suitable(vol) and trainer.bank.counter("x") == 0
    # Easy for the reference, but the teacher disagrees with S_pre(G(x)) -> warm-up gate refuses.
    trainer.bank.uncertainty["x"] = 0.01
    trainer._ref_cache["x"] = (1.0 - teacher_probs).half()
    assert not trainer.suitable(vol) and trainer.bank.counter("x") == 0
    # Agreement -> suitable, counted; after confident_after epochs U and the gate are skipped.
    trainer._ref_cache["x"] = teacher_probs.half()
    assert trainer.suitable(vol) and trainer.bank.counter("x") == 1
    assert trainer.suitable(vol) and trainer.bank.counter("x") == 2
    trainer.bank.uncertainty["x"] = 0.99
    trainer._ref_cache["x"] = (1.0 - teacher_probs).half()
    assert trainer.suitable(vol) and trainer.bank.counter("x") == 2
    plain = CurriculumTrainer(bundle, CurriculumParams(curriculum=False), [vol])
    plain.bank.uncertainty["x"] = 0.99
    assert plain.suitable(vol)


def test_training_on_accepted_cases_improves_heldout_dice_and_moves_teacher_by_eq4(bundle):
    torch.manual_seed(0)
    params = CurriculumParams(epochs=0, lr=3e-3, holdout_every=4, tau_u0=1.0, tau_ts0=1.0, student_input="image",
                              alpha=0.05, beta=0.001, steps_per_epoch=8, supervised_batch=2)
    target = [prepare(bundle, _volume(10 + i)[0], f"t{i}") for i in range(2)]
    accepted = [prepare(bundle, *_volume(20 + i, shift=i % 2)[:1], f"a{i}", label=_volume(20 + i, i % 2)[1])
                for i in range(4)]
    trainer = CurriculumTrainer(bundle, params, target, accepted)
    assert [is_heldout(i, 4) for i in range(6)] == [False, True, False, False, False, True]
    assert [v.key for v in trainer.heldout_accepted()] == ["a1"]
    before = trainer.mean_dice(trainer.student, trainer.train_accepted())
    teacher_before = [p.clone() for p in trainer.teacher.parameters()]
    for _ in range(4):
        summary = trainer.run_epoch()
    assert summary["confident"] == 2 and summary["losses"]["supervised"] > 0
    after = trainer.mean_dice(trainer.student, trainer.train_accepted())
    assert after > before + 0.2 and after > 0.7
    moved = sum(float((a - b).abs().sum()) for a, b in zip(trainer.teacher.parameters(), teacher_before))
    assert moved > 0


def test_checkpoint_holds_only_plain_data_and_resumes(tmp_path, bundle):
    # read back with weights_only=True (load_checkpoint): tensors and plain data only
    params = CurriculumParams(epochs=0, steps_per_epoch=1, supervised_batch=1, tau_u0=1.0, tau_ts0=1.0)
    target = [prepare(bundle, _volume(0)[0], "t0")]
    accepted = [prepare(bundle, _volume(1)[0], "a0", label=_volume(1)[1])]
    trainer = CurriculumTrainer(bundle, params, target, accepted)
    trainer.run_epoch()
    torch.save(trainer.state_dict(), tmp_path / "checkpoint.pt")
    resumed = CurriculumTrainer(bundle, params, target, accepted)
    resumed.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt"))
    assert resumed.epoch == trainer.epoch == 1 and resumed.history == trainer.history
    assert resumed.rng.getstate() == trainer.rng.getstate()
    student = trainer.student.state_dict()
    assert all(torch.equal(student[k], v) for k, v in resumed.student.state_dict().items())


def _zero_student(trainer):
    """The student predicts background everywhere."""
    with torch.no_grad():
        for p in trainer.student.parameters():
            p.zero_()
        last = [m for m in trainer.student.modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)][-1]
        last.bias[0] = 5.0


def test_promotion_gate_refuses_a_worse_student(tmp_path, bundle):
    registry = ModelRegistry(tmp_path / "reg")
    registry.init_from(bundle.path)
    params = CurriculumParams(holdout_every=2)
    accepted = [prepare(bundle, _volume(i)[0], f"a{i}", label=_volume(i)[1]) for i in range(2)]
    trainer = CurriculumTrainer(bundle, params, [], accepted)
    # The student starts as a copy of the current model: equal Dice passes the gate.
    same = promote_if_best(trainer, registry, tmp_path / "candidate")
    first = same["versions"]["v0001"]
    assert same["published"] == "v0002" and first["student_dice"] == pytest.approx(first["dice"], abs=0.05)
    from crossdomainseg.bundle import load_bundle

    published = load_bundle(registry.current_path())
    assert published.metadata["segmenter_input"] == "preview" and published.has_network("reference")
    assert registry.best_version() == "v0002"
    # A student that predicts background everywhere is worse: not published, CURRENT unchanged.
    _zero_student(trainer)
    worse = promote_if_best(trainer, registry, tmp_path / "candidate")
    assert worse["versions"]["v0002"]["dice"] > 0.05 and worse["student_dice"] == 0.0
    assert worse["published"] is None and registry.current_version() == "v0002"
    assert registry.versions() == ["v0001", "v0002"]
    # No held-out case yet -> nothing is published.
    lonely = CurriculumTrainer(bundle, params, [], accepted[:1])
    assert promote_if_best(lonely, registry, tmp_path / "candidate")["published"] is None


def test_promotion_gate_compares_with_the_best_version_not_only_the_current(tmp_path, bundle):
    """Regressions must not pile up: a worse model became current (published by hand); a student
    as bad as it but worse than the shipped version is refused (the old gate, current only, took it)."""
    registry = ModelRegistry(tmp_path / "reg")
    registry.init_from(bundle.path)
    accepted = [prepare(bundle, _volume(i)[0], f"a{i}", label=_volume(i)[1]) for i in range(2)]
    broken = CurriculumTrainer(bundle, CurriculumParams(holdout_every=2), [], accepted)
    _zero_student(broken)
    broken.export(tmp_path / "broken")
    assert registry.publish(tmp_path / "broken") == "v0002"
    trainer = CurriculumTrainer(bundle, CurriculumParams(holdout_every=2), [], accepted)
    _zero_student(trainer)
    gate = promote_if_best(trainer, registry, tmp_path / "candidate")
    assert gate["versions"]["v0002"]["student_dice"] >= gate["versions"]["v0002"]["dice"]  # as good as current
    assert gate["published"] is None and "v0001" in gate["reason"] and "v0002" not in gate["reason"]
    assert gate["best_version"] == "v0001" and registry.best_version() == "v0001"


def test_promotion_gives_no_credit_for_a_draft_accepted_unchanged(tmp_path, bundle):
    """An unchanged draft of v0001 would score v0001 1.0 and reward copying it: it is left out of
    the comparison with v0001, and a gate with only such cases publishes nothing."""
    from crossdomainseg.curriculum.trainer import Volume

    registry = ModelRegistry(tmp_path / "reg")
    registry.init_from(bundle.path)
    truth = np.zeros((16, 16, 16), np.int64)
    truth[4:12, 4:12, 4:12] = 1
    draft = np.zeros_like(truth)
    draft[4:12, 4:12, 4:8] = 1  # the current model's draft: half the organ
    x = torch.zeros(1, 16, 16, 16)
    copied = Volume("a1", x, torch.from_numpy(draft), unchanged_draft_of="random-0")  # name it was shipped as
    corrected = Volume("a3", x, torch.from_numpy(truth))
    trainer = CurriculumTrainer(bundle, CurriculumParams(holdout_every=2, curriculum=False, student_input="image"),
                                [], [Volume("a0", x, torch.from_numpy(truth)), copied,
                                     Volume("a2", x, torch.from_numpy(truth)), corrected])
    trainer.predict = lambda network, volume, reads=None: (truth if network is trainer.student else draft)
    gate = promote_if_best(trainer, registry, tmp_path / "candidate")
    assert gate["versions"]["v0001"] == {"dice": pytest.approx(2 / 3), "student_dice": 1.0, "cases": 1}
    assert gate["published"] == "v0002"
    only_copied = CurriculumTrainer(bundle, trainer.params, [], trainer.accepted[:2])
    only_copied.predict = trainer.predict
    refused = promote_if_best(only_copied, registry, tmp_path / "candidate")
    assert refused["published"] is None and "unchanged draft of v0001" in refused["reason"]


def test_promotion_scores_what_the_engine_delivers(tmp_path):
    """A network that leaves a stray island: the delivered label (the bundle's post-processing
    steps, here island removal) has none, so the held-out Dice the gate compares is higher than
    the network's own."""
    from crossdomainseg.bundle import update_bundle
    from crossdomainseg.curriculum.trainer import Volume

    bundle = make_random_bundle(tmp_path / "b", spacing=4.0, roi=16, seed=3,
                                labels={"background": 0, "liver": 1, "lesion": 2})
    bundle = update_bundle(bundle.path, metadata={"postprocess": [{"step": "remove_islands", "min_fraction": 0.2}]})
    trainer = CurriculumTrainer(bundle, CurriculumParams(curriculum=False, student_input="image"), [])
    truth = np.zeros((16, 16, 16), np.int64)
    truth[2:12, 2:12, 2:12] = 1
    image = np.random.default_rng(0).normal(0.0, 0.01, truth.shape) + 0.5 * (truth == 1)
    volume = Volume("a", torch.from_numpy(image.astype(np.float32))[None], torch.from_numpy(truth))
    draft = truth.astype(np.uint8)
    draft[14, 14, 14] = 1  # a stray island of liver
    draft[13:15, 2:4, 2:4] = 2  # a stray lesion: the only one, so it stays
    assert np.array_equal(trainer.delivered(draft, volume), np.where(draft == 2, 2, truth))
    trainer.predict = lambda network, v, reads=None: draft  # the network's own label, whatever it is
    raw, delivered = trainer.mean_dice(None, [volume]), trainer.mean_dice(None, [volume], delivered=True)
    assert delivered > raw


def test_reference_reading_raw_images_needs_no_generator_and_sets_tau_u_from_their_u(tmp_path):
    plain = make_random_bundle(tmp_path / "nog", spacing=4.0, roi=16, seed=4, with_generator=False)
    target = [prepare(plain, _volume(30 + i)[0], f"t{i}") for i in range(3)]
    with pytest.raises(InputError, match="generator"):
        CurriculumTrainer(plain, CurriculumParams(), target)
    params = CurriculumParams(reference_input="image", student_input="image", tau_ts0=1.0)
    trainer = CurriculumTrainer(plain, params, target)
    u = [trainer.reference_view(v)[1] for v in target]
    assert trainer.tau_u(0) == pytest.approx(min(u))
    assert trainer.tau_u(U_RAMP_EPOCHS) == pytest.approx(max(u))
    # no unlabelled images: nothing to gate, no tolerance (the background trainer with accepted cases only)
    assert CurriculumTrainer(plain, params, []).thresholds()["tau_u"] is None
    # the first epoch admits the most confident image(s) only
    summary = trainer.run_epoch()
    assert 1 <= summary["confident"] < 3 and summary["tau_u"] == pytest.approx(min(u))


def test_cross_pseudo_supervision_trains_two_disagreeing_students(bundle, monkeypatch):
    torch.manual_seed(0)
    params = CurriculumParams(epochs=0, steps_per_epoch=2, student_input="image", reference_input="image", lr=3e-3,
                              consistency_weight=0.5)
    target = [prepare(bundle, _volume(40 + i)[0], f"t{i}") for i in range(2)]
    source = [prepare(bundle, _volume(50)[0], "s0", "source", label=_volume(50)[1])]
    with pytest.raises(InputError, match="labelled"):
        CrossPseudoSupervision(bundle, params, target)
    trainer = CrossPseudoSupervision(bundle, params, target, source=source)
    assert not trainer.params.curriculum  # every image, every epoch
    differ = sum(float((a - b).abs().sum()) for a, b in zip(trainer.student.parameters(), trainer.partner.parameters()))
    assert differ > 0
    before = [[p.clone() for p in net.parameters()] for net in (trainer.student, trainer.partner)]
    anchored = []  # labelled batch size of each supervised loss, one per student per step
    real_loss = cps_module.ce_dice_loss
    monkeypatch.setattr(cps_module, "ce_dice_loss", lambda logits, y: anchored.append(len(y)) or real_loss(logits, y))
    summary = trainer.run_epoch()
    assert summary["confident"] == 2 and summary["losses"]["cross"] > 0
    # the labelled anchor (CPS paper: supervised + lambda * cross) at the cross term's weight, for
    # both students, with as many labelled crops as unlabelled images per step
    losses = summary["losses"]
    assert losses["total"] == pytest.approx(losses["cross"] + 0.5 * losses["anchor"], rel=1e-5)
    assert anchored == [params.batch_size] * 2 * params.steps_per_epoch
    for net, old in zip((trainer.student, trainer.partner), before):
        assert sum(float((a - b).abs().sum()) for a, b in zip(net.parameters(), old)) > 0


def test_train_step_adds_an_appearance_loss_only_with_source_volumes(tmp_path, bundle):
    params = CurriculumParams(epochs=0, steps_per_epoch=2, tau_u0=1.0, lambda_u=0.0, tau_ts0=1.0,
                              student_input="image", reference_input="image", appearance_weight=1.0)
    assert CurriculumParams().appearance_weight == 0  # an option, not a default (docs/experiments.md)
    target = [prepare(bundle, _volume(i)[0], f"t{i}") for i in range(2)]
    source = [prepare(bundle, *_volume(10)[:1], "s0", "source", label=_volume(10)[1])]
    trainer = CurriculumTrainer(bundle, params, target, source=source)
    summary = trainer.run_epoch()
    assert summary["losses"]["appearance"] > 0 and "replay" in summary["losses"]
    assert set(summary["appearance_medians"]) == set(bundle.labels)
    # the checkpoint keeps the fitted class models (read back with weights_only=True)
    torch.save(trainer.state_dict(), tmp_path / "checkpoint.pt")
    resumed = CurriculumTrainer(bundle, params, target, source=source)
    resumed.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt"))
    assert np.array_equal(resumed.appearance.quantiles, trainer.appearance.quantiles, equal_nan=True)
    # refit every 2 epochs: epoch 1 trains on the models fitted at epoch 0
    every_other = CurriculumTrainer(bundle, CurriculumParams(**{**params.to_dict(), "appearance_refit": 2}),
                                    target, source=source)
    assert "appearance_medians" in every_other.run_epoch()
    second = every_other.run_epoch()
    assert "appearance_medians" not in second and "appearance" in second["losses"]
    without = CurriculumTrainer(bundle, params, target).run_epoch()
    assert "appearance" not in without["losses"] and "appearance_medians" not in without
    off = CurriculumTrainer(bundle, CurriculumParams(**{**params.to_dict(), "appearance_weight": 0.0}),
                            target, source=source).run_epoch()
    assert "appearance" not in off["losses"]
    cps = CrossPseudoSupervision(bundle, params, target, source=source)
    assert cps.params.appearance_weight == 0 and "appearance" not in cps.run_epoch()["losses"]
    with pytest.raises(InputError, match="appearance"):
        CurriculumParams.from_dict({"appearance_refit": 0})


def test_curriculum_reads_what_the_bundles_segmenter_reads():
    from pathlib import Path

    from crossdomainseg.bundle import read_metadata

    generator = {"networks": {"segmenter": {}, "generator": {}}}
    assert CurriculumParams.for_bundle(generator).student_input == "preview"
    randomised = CurriculumParams.for_bundle({**generator, "segmenter_input": "image"})
    assert (randomised.student_input, randomised.reference_input) == ("image", "image")
    plain = CurriculumParams.for_bundle({"networks": {"segmenter": {}}})
    assert (plain.student_input, plain.reference_input) == ("image", "image")
    chosen = CurriculumParams.for_bundle({**generator, "curriculum_params": {"reference_input": "image"}},
                                         {"student_input": "image"})
    assert (chosen.student_input, chosen.reference_input) == ("image", "image")
    # the shipped brain bundle segments the raw T2 (domain randomisation); its preview is not for it
    brain = read_metadata(Path(__file__).resolve().parents[1] / "Resources" / "bundles" / "brain-t1-t2")
    assert CurriculumParams.for_bundle(brain).student_input == "image"
