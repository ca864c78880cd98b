"""The `train source` / `train translator` commands on user folders of mixed formats, sizes,
spacings and orientations: they run, log, resume, and reject bad folders clearly."""


import numpy as np
import pytest
import SimpleITK as sitk
import torch

from crossdomainseg.bundle import load_bundle, update_bundle
from crossdomainseg.cli import main
from crossdomainseg.errors import InputError
from crossdomainseg.networks import build_network
from crossdomainseg.training.datasets import labelled_cases, load_sample, unlabelled_cases


def _phantom(rng, size, spacing, flip, target):
    """A box body with a sphere 'organ' (label 1); CT-like in HU, or MR-like with other contrast."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    centre = [n / 2 + rng.uniform(-2, 2) for n in size[::-1]]
    radius = min(size) / 4
    organ = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) < radius**2
    label = organ.astype(np.uint8)
    image = np.where(organ, 300.0, 0.0) if not target else np.where(organ, 100.0, 800.0)
    image = image + rng.normal(0, 20, image.shape)
    img, lab = sitk.GetImageFromArray(image.astype(np.float32)), sitk.GetImageFromArray(label)
    direction = np.diag([-1.0, 1.0, 1.0]) if flip else np.eye(3)
    for im in (img, lab):
        im.SetSpacing(spacing)
        im.SetDirection(direction.ravel().tolist())
        im.SetOrigin((10.0, -5.0, 3.0))
    return img, lab


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(0)
    for sub in ("src_img", "src_lab", "tgt_img", "tgt_lab"):
        (root / sub).mkdir()
    formats = [".nii.gz", ".nrrd", ".mha"]
    for i in range(3):
        size = (24 + 4 * i, 24, 20 + 2 * i)
        spacing = (1.5 + 0.25 * i, 1.5, 2.0)
        img, lab = _phantom(rng, size, spacing, flip=i == 1, target=False)
        sitk.WriteImage(img, str(root / "src_img" / f"case{i}{formats[i]}"))
        sitk.WriteImage(lab, str(root / "src_lab" / f"case{i}{formats[(i + 1) % 3]}"))
        img, lab = _phantom(rng, size, spacing, flip=i == 2, target=True)
        sitk.WriteImage(img, str(root / "tgt_img" / f"t{i}.nii.gz"))
        sitk.WriteImage(lab, str(root / "tgt_lab" / f"t{i}.nii.gz"))
    return root


def test_folders_pair_by_name_and_load_on_working_grid(folders):
    cases = labelled_cases(folders / "src_img", folders / "src_lab")
    assert [c[0] for c in cases] == ["case0", "case1", "case2"]
    sample = load_sample(cases[1], [3.0, 3.0, 3.0], {"kind": "window", "low": 0, "high": 300}, 3, [0, 1])
    assert sample.image.dtype == np.float32 and 0 <= sample.image.min() and sample.image.max() <= 1
    assert sample.image.shape == sample.label.shape == (15, 12, 16)  # extent 44 x 36 x 49 mm at 3 mm
    # the flipped-direction case lands the right way up: organ voxels are bright
    assert sample.image[sample.label == 1].mean() > 0.8 > 0.2 > sample.image[sample.label == 0].mean()


def test_rotated_copy_keeps_image_and_label_together(folders):
    from crossdomainseg.training.datasets import random_rotation

    case = labelled_cases(folders / "src_img", folders / "src_lab")[0]
    spec = {"kind": "window", "low": 0, "high": 300}
    plain = load_sample(case, [2.0] * 3, spec, 3, [0, 1])
    turned = load_sample(case, [2.0] * 3, spec, 3, [0, 1],
                         random_rotation(np.random.default_rng(3), 30, 3))
    assert turned.image.shape != plain.image.shape  # the bounding box grew: it did rotate
    assert abs(int(turned.label.sum()) - int(plain.label.sum())) < 0.1 * plain.label.sum()
    assert turned.image[turned.label == 1].mean() > 0.8  # label still on the bright organ


def test_gan_patches_are_centred_inside_the_body():
    from crossdomainseg.training.datasets import Sample
    from crossdomainseg.training.loops import body_voxels, random_patch

    image = np.zeros((40, 40), np.float32)
    image[30:38, 30:38] = 0.5  # a small "body" in a corner of air
    sample = Sample("s", image, None, (1.0, 1.0))
    centres = body_voxels(sample, step=1)
    assert len(centres) == 64 and all(image[tuple(c)] > 0 for c in centres)
    rng = np.random.default_rng(0)
    for _ in range(5):
        patch, _ = random_patch(sample, (8, 8), rng, centres=centres)
        assert patch.max() > 0  # never a patch of air only


def test_class_balanced_crops_find_a_small_label():
    from crossdomainseg.training.datasets import Sample
    from crossdomainseg.training.loops import random_patch

    label = np.zeros((60, 60), np.int64)
    label[5:45, 5:45] = 1  # a big organ
    label[52:55, 52:55] = 2  # a 9-pixel lesion far from it
    sample = Sample("s", label.astype(np.float32), label, (1.0, 1.0))

    def lesion_share(balanced):
        rng = np.random.default_rng(0)
        crops = [random_patch(sample, (8, 8), rng, foreground_share=1.0, class_balanced=balanced)[1]
                 for _ in range(200)]
        return np.mean([(c == 2).any() for c in crops])

    assert lesion_share(False) < 0.05  # one foreground voxel in 180 is lesion
    assert 0.35 < lesion_share(True) < 0.65  # each label centred about equally often


def test_bad_folders_give_input_errors(folders, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        labelled_cases(tmp_path / "nope", folders / "src_lab")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        unlabelled_cases(tmp_path / "empty")
    with pytest.raises(InputError, match="No label map"):
        labelled_cases(folders / "src_img", folders / "tgt_lab")
    # a label map of another region is refused rather than trained on
    img = sitk.ReadImage(str(folders / "src_img" / "case0.nii.gz"))
    lab = sitk.ReadImage(str(folders / "src_lab" / "case0.nrrd"))
    lab.SetOrigin((500.0, 0.0, 0.0))
    sitk.WriteImage(lab, str(tmp_path / "moved.nrrd"))
    with pytest.raises(InputError, match="same region"):
        load_sample(("c", folders / "src_img" / "case0.nii.gz", tmp_path / "moved.nrrd"), [3, 3, 3],
                    {"kind": "minmax"}, 3)
    assert img.GetSize()[0] == 24


def _train_source(folders, out, extra=()):
    return main(["train", "source", "--images", str(folders / "src_img"), "--labels",
                 str(folders / "src_lab"), "--val-images", str(folders / "src_img"), "--val-labels",
                 str(folders / "src_lab"), "--out", str(out), "--source-modality", "CT",
                 "--target-modality", "MR", "--spacing", "3", "--roi", "16", "--channels", "4,8,16",
                 "--steps", "3", "--seed", "1", "--no-progress", "--threads", "1", "--rotated-copies", "1",
                 *extra])


@pytest.mark.slow
def test_train_source_then_translator_and_resume(folders, tmp_path):
    out = tmp_path / "bundle"
    assert _train_source(folders, out, ["--epochs", "2"]) == 0
    bundle = load_bundle(out)
    meta = bundle.metadata
    assert meta["labels"] == {"background": 0, "label_1": 1}
    assert meta["normalization"]["source"]["kind"] == "window"
    assert meta["normalization"]["target"]["kind"] == "percentile"
    history = meta["training"]["source"]["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all(np.isfinite(h["loss"]) for h in history)
    assert 0 <= meta["metrics"]["source_val_dice"] <= 1
    assert meta["training"]["command"].startswith("crossdomainseg train source")

    # resume to 3 epochs: continues at epoch 3 and matches an uninterrupted 3-epoch run exactly
    assert _train_source(folders, out, ["--epochs", "3", "--resume"]) == 0
    resumed = load_bundle(out).metadata["training"]["source"]["history"]
    assert [h["epoch"] for h in resumed] == [1, 2, 3] and resumed[:2] == history
    straight = tmp_path / "straight"
    assert _train_source(folders, straight, ["--epochs", "3"]) == 0
    again = load_bundle(straight).metadata["training"]["source"]["history"]
    assert [h["loss"] for h in again] == pytest.approx([h["loss"] for h in resumed], rel=1e-4)

    code = main(["train", "translator", "--bundle", str(out), "--source-images", str(folders / "src_img"),
                 "--source-labels", str(folders / "src_lab"), "--target-images", str(folders / "tgt_img"),
                 "--val-target-images", str(folders / "tgt_img"), "--val-target-labels",
                 str(folders / "tgt_lab"), "--patch", "16", "--gen-channels", "4", "--blocks", "1", "--residual",
                 "--disc-channels", "4", "--disc-layers", "2", "--epochs", "2", "--steps", "2",
                 "--no-progress", "--threads", "1"])
    assert code == 0
    bundle = load_bundle(out)
    assert bundle.has_network("segmenter") and bundle.has_network("generator")
    assert bundle.version == meta["version"]  # no --version: kept
    log = bundle.metadata["training"]["translator"]["history"]
    assert len(log) == 2
    for key in ("adversarial", "cycle", "identity", "segmentation", "discriminator", "val_tdgan_dice"):
        assert np.isfinite(log[-1][key])
    assert "target_val_tdgan_dice" in bundle.metrics
    assert bundle.network_spec("generator")["residual"] is True
    assert (tmp_path / "bundle.ckpt" / "translator.ckpt").is_file()

    # weight averaging ships the average, not the last weights; semantic consistency is logged
    code = main(["train", "translator", "--bundle", str(out), "--source-images", str(folders / "src_img"),
                 "--source-labels", str(folders / "src_lab"), "--target-images", str(folders / "tgt_img"),
                 "--patch", "16", "--gen-channels", "4", "--blocks", "1", "--norm", "none",
                 "--disc-channels", "4", "--disc-layers", "2", "--epochs", "1", "--steps", "3",
                 "--average-decay", "0.5", "--lambda-semantic", "1", "--lambda-class-intensity", "1", "--lr", "1e-2",
                 "--seg-detached", "--seg-noise", "0.05", "--version", "test-1.1",
                 "--checkpoint-dir", str(tmp_path / "avg"), "--no-progress", "--threads", "1"])
    assert code == 0
    bundle = load_bundle(out)
    last = bundle.metadata["training"]["translator"]["history"][-1]
    assert np.isfinite(last["semantic"]) and np.isfinite(last["class_intensity"])
    assert bundle.network_spec("generator")["norm"] == "none"
    assert bundle.metadata["training"]["translator"]["config"]["seg_detached"] is True
    assert bundle.version == "test-1.1" and load_bundle(out).metadata["labels"] == meta["labels"]
    state = torch.load(tmp_path / "avg" / "translator.ckpt", weights_only=True)
    shipped = bundle.network("generator").state_dict()
    assert all(torch.equal(shipped[k], state["g_avg"][k]) for k in shipped)
    assert not all(torch.equal(shipped[k], state["g_ts"][k]) for k in shipped)

    # retraining the segmenter keeps a refiner added by another trainer, drops the stale generator
    refiner = build_network({"kind": "refiner", "spatial_dims": 3, "in_channels": 4,
                             "out_channels": 2, "channels": [4, 8], "strides": [2]})
    update_bundle(out, networks={"refiner": refiner})
    assert _train_source(folders, out, ["--epochs", "1", "--intensity-remap", "1"]) == 0
    assert set(load_bundle(out).network_names) == {"segmenter", "refiner"}
    assert load_bundle(out).metadata["training"]["source"]["config"]["intensity_remap"] == 1.0


@pytest.mark.slow
def test_domain_randomize_trains_on_synthetic_crops_and_is_recorded(folders, tmp_path):
    """`--domain-randomize 1`: every crop synthesised (the training losses differ from the same
    seeded run without it), the share recorded in the bundle's training metadata."""
    losses = {}
    for share in ("0", "1"):
        out = tmp_path / f"dr{share}"
        assert _train_source(folders, out, ["--epochs", "1", "--domain-randomize", share]) == 0
        meta = load_bundle(out).metadata["training"]
        assert meta["source"]["config"]["domain_randomize"] == float(share)
        assert f"--domain-randomize {share}" in meta["command"]
        losses[share] = meta["source"]["history"][0]["loss"]
    assert np.isfinite(losses["1"]) and losses["1"] != losses["0"]


@pytest.mark.slow
def test_checkpoint_from_before_domain_randomize_resumes_only_without_it(folders, tmp_path):
    out = tmp_path / "old"
    assert _train_source(folders, out, ["--epochs", "1"]) == 0
    checkpoint = tmp_path / "old.ckpt" / "source.ckpt"
    state = torch.load(checkpoint, weights_only=False)
    del state["config"]["domain_randomize"]  # as written before the option existed
    torch.save(state, checkpoint)
    assert _train_source(folders, out, ["--epochs", "2", "--resume", "--domain-randomize", "0.5"]) == 2
    assert _train_source(folders, out, ["--epochs", "2", "--resume"]) == 0
    assert [h["epoch"] for h in load_bundle(out).metadata["training"]["source"]["history"]] == [1, 2]


def test_intensity_remap_gives_other_contrasts_on_the_same_anatomy():
    from crossdomainseg.training.intensity import remap_intensity

    rng = np.random.default_rng(0)
    x = np.repeat(np.linspace(0, 1, 16, dtype=np.float32)[None, None], 8, axis=0).repeat(8, axis=1)
    outs = [remap_intensity(x, rng) for _ in range(4)]
    assert all(o.shape == x.shape and o.dtype == np.float32 for o in outs)
    assert not np.allclose(outs[0], outs[1], atol=0.05)  # a different transfer function each time
    # not just a rescaling: the order of intensities changes somewhere along the ramp
    assert any((np.diff(o[4, 4]) < -0.02).any() for o in outs)


def test_intensity_remap_keeps_tissues_smooth():
    """Two flat noisy tissues stay two smooth regions: the map must not amplify the noise."""
    from crossdomainseg.training.intensity import remap_intensity

    x = np.full((24, 24, 24), 0.3, np.float32)
    x[:, :, 12:] = 0.7
    x += np.random.default_rng(0).normal(0, 0.02, x.shape).astype(np.float32)
    ratios = []
    for seed in range(40):
        y = remap_intensity(x, np.random.default_rng(seed))
        inside = [y[2:22, 2:22, 2:10], y[2:22, 2:22, 14:22]]
        roughness = np.mean([np.abs(np.diff(r, axis=a)).mean() for r in inside for a in range(3)])
        contrast = abs(inside[0][2:-2, 2:-2, 2:-2].mean() - inside[1][2:-2, 2:-2, 2:-2].mean())
        ratios.append(roughness / max(contrast, 1e-3))
    assert np.median(ratios) < 0.9  # about 0.6; a map of the raw noisy voxels gives about 1.3


def test_label_contrast_gives_an_invisible_structure_its_own_brightness():
    """A labelled blob with the same source intensity as its surroundings stays invisible under
    the transfer function alone, and gets a contrast of its own with `label`."""
    from crossdomainseg.training.intensity import remap_intensity

    x = np.full((24, 24, 24), 0.5, np.float32)
    label = np.zeros(x.shape, np.int16)
    label[9:15, 9:15, 9:15] = 4
    ring = np.zeros(x.shape, bool)
    ring[6:18, 6:18, 6:18] = True
    ring[8:16, 8:16, 8:16] = False

    def contrast(with_label: bool, shift: float = 0.5) -> float:
        values = []
        for seed in range(20):
            y = remap_intensity(x, np.random.default_rng(seed), label if with_label else None, shift)
            values.append(abs(y[10:14, 10:14, 10:14].mean() - y[ring].mean()))
        return float(np.mean(values))

    assert contrast(False) < 0.03
    assert contrast(True) > 0.08  # half the draws shift it by U(-0.5, 0.5): about 0.12
    assert contrast(True, 1.0) > 1.6 * contrast(True)  # the largest shift scales it


def test_class_intensity_loss_compares_region_means_only():
    from crossdomainseg.training.translator import _class_intensity_loss

    pseudo = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    pseudo[..., :2, :] = 1
    means = torch.tensor([float("nan"), 0.6, 0.3])  # class 2 absent from pseudo: ignored
    textured = torch.zeros(1, 1, 4, 4)
    textured[..., :2, :] = torch.tensor([0.5, 0.7, 0.5, 0.7])  # mean 0.6, with texture
    assert float(_class_intensity_loss(textured, pseudo, means)) == pytest.approx(0.0, abs=1e-6)
    assert float(_class_intensity_loss(textured + 0.1, pseudo, means)) == pytest.approx(0.1, abs=1e-5)
    assert float(_class_intensity_loss(textured, torch.zeros_like(pseudo), means)) == 0.0


def test_detached_segmentation_consistency_trains_only_the_target_to_source_generator():
    from crossdomainseg.training.translator import TranslatorConfig, _seg_input, generator_spec

    config = TranslatorConfig(patch_size=[16, 16], generator_channels=4, n_blocks=1)
    g_ts, g_st = (build_network(generator_spec(config, 2)) for _ in range(2))
    xs = torch.rand(1, 1, 16, 16)
    for detached in (False, True):
        config.seg_detached, config.seg_noise = detached, 0.05 * detached
        for net in (g_ts, g_st):
            net.zero_grad(set_to_none=True)
        fake_t = g_st(xs)
        _seg_input(g_ts, fake_t, g_ts(fake_t), config).square().mean().backward()
        reached_st = any(p.grad is not None and p.grad.abs().sum() > 0 for p in g_st.parameters())
        assert reached_st is not detached  # G_s->t gets no gradient to hide the source in
        assert all(p.grad is not None for p in g_ts.parameters())


def test_cli_rejects_missing_inputs(tmp_path, capsys):
    assert main(["train", "source", "--out", str(tmp_path / "b")]) == 2
    assert "--task-dir" in capsys.readouterr().err
    assert main(["train", "source", "--images", str(tmp_path), "--labels", str(tmp_path),
                 "--out", str(tmp_path / "b")]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert main(["train", "translator", "--bundle", str(tmp_path / "none"), "--task-dir", str(tmp_path)]) == 2


def test_train_source_refuses_a_sparse_label_value_before_any_work(folders, tmp_path, capsys):
    labels = tmp_path / "sparse"
    labels.mkdir()
    for path in sorted((folders / "src_lab").iterdir()):  # the organ written as 1000
        label = sitk.ReadImage(str(path))
        sitk.WriteImage(sitk.Cast(label, sitk.sitkInt16) * 1000, str(labels / path.name))
    out = tmp_path / "refused"
    assert main(["train", "source", "--images", str(folders / "src_img"), "--labels", str(labels),
                 "--out", str(out), "--threads", "1", "--roi", "16", "--channels", "4,8", "--epochs", "1",
                 "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "label values 0, 1000 are sparse" in err and "consecutive values 0..1 (1000 -> 1)" in err
    assert not out.exists() and not (tmp_path / "refused.ckpt").exists()


def test_train_settings_writes_chosen_settings_and_rejects_others(tmp_path, capsys):
    import json

    from crossdomainseg.bundle import make_random_bundle

    bundle = make_random_bundle(tmp_path / "b", labels={"background": 0, "liver": 1, "lesion": 2})
    settings = {"postprocess": [{"step": "remove_islands", "min_fraction": 0.3}],
                "curriculum_params": {"tau_u0": 0.2}}
    assert main(["train", "settings", "--bundle", str(bundle.path), "--json", json.dumps(settings)]) == 0
    metadata = load_bundle(bundle.path).metadata
    assert {k: metadata[k] for k in settings} == settings
    before = (bundle.path / "configs" / "metadata.json").read_text()
    for bad in ('{"version": "x"}', "not json", "[]", '{"inside": {"lesion": "liver"}}',
                '{"postprocess": [{"step": "keep_inside"}]}',
                '{"postprocess": [{"step": "boundary_fit", "rim_mm": 6, "prior_mm": 4}]}'):
        assert main(["train", "settings", "--bundle", str(bundle.path), "--json", bad]) == 2
    assert "--json" in capsys.readouterr().err
    assert (bundle.path / "configs" / "metadata.json").read_text() == before  # nothing half-written


def test_init_from_fine_tunes_a_bundle_and_domain_randomisation_validates_on_renderings(folders, tmp_path, capsys):
    start = tmp_path / "start"
    assert _train_source(folders, start, ["--epochs", "1"]) == 0
    weights = load_bundle(start).network("segmenter").state_dict()
    tuned = tmp_path / "tuned"
    # zero steps of training: the saved network is exactly the one it started from
    assert _train_source(folders, tuned, ["--epochs", "1", "--steps", "0", "--init-from", str(start),
                                          "--domain-randomize", "0.5"]) == 0
    bundle = load_bundle(tuned)
    assert all(torch.equal(weights[k], v) for k, v in bundle.network("segmenter").state_dict().items())
    assert bundle.metadata["training"]["source"]["config"]["init_from"] == str(start)
    training = bundle.metadata["training"]
    assert training["budget_steps"] == 3  # the start's 1 x 3 steps, plus 0 here
    assert training["start"]["budget_steps"] == 3 and training["start"]["config"]["domain_randomize"] == 0
    # with domain randomisation the best epoch also counts Dice on randomised validation renderings
    entry = bundle.metadata["training"]["source"]["history"][0]
    assert 0 <= entry["val_dice_randomized"] <= 1
    assert bundle.metrics["source_val_dice_randomized"] == entry["val_dice_randomized"]
    assert bundle.metadata["segmenter_input"] == "image"  # it reads the target itself
    # another network shape is refused with what to do
    assert _train_source(folders, tmp_path / "other", ["--epochs", "1", "--init-from", str(start),
                                                       "--channels", "4,8,16,32"]) != 0
    assert "--init-from" in capsys.readouterr().err and not (tmp_path / "other").exists()


def test_a_deadline_shortens_source_and_translator_training_but_one_epoch_always_runs(folders, tmp_path, capsys):
    """`train all` hands each stage the time its share ends: an epoch expected to end past it is
    not started (a busy machine trains fewer epochs instead of overrunning the budget)."""
    import time

    from crossdomainseg.training.source import SourceConfig, train_source
    from crossdomainseg.training.translator import TranslatorConfig, train_translator

    cases = labelled_cases(folders / "src_img", folders / "src_lab")
    config = SourceConfig(task="t", labels={"background": 0, "label_1": 1}, spatial_dims=3, spacing=[3, 3, 3],
                          roi_size=[16, 16, 16], channels=[4, 8, 16], strides=[2, 2], steps_per_epoch=2, epochs=3,
                          normalization={"source": {"kind": "minmax"}, "target": {"kind": "minmax"}})
    out = tmp_path / "bundle"
    train_source(config, cases, cases[:1], out, device="cpu", progress=True, deadline=time.time())
    history = load_bundle(out).metadata["training"]["source"]["history"]
    assert [h["epoch"] for h in history] == [1]
    assert "stopped after 1 of 3 epochs" in capsys.readouterr().out
    target = unlabelled_cases(folders / "tgt_img")
    train_translator(out, TranslatorConfig(patch_size=[16, 16, 16], generator_channels=4, n_blocks=1, discriminator_channels=4,
                                           discriminator_layers=2, epochs=3, steps_per_epoch=1),
                     cases, target, device="cpu", progress=False, deadline=time.time())
    assert len(load_bundle(out).metadata["training"]["translator"]["history"]) == 1
    train_source(config, cases, cases[:1], tmp_path / "free", device="cpu", progress=False, deadline=None)
    assert len(load_bundle(tmp_path / "free").metadata["training"]["source"]["history"]) == 3
