"""Training the translator G_t->s as a TD-GAN: a CycleGAN (two generators, two PatchGAN
discriminators; LSGAN adversarial, cycle and identity losses) whose source half is tied to the
bundle's frozen reference segmenter: S(G_t->s(G_s->t(x_s))) must still segment as the source
label y_s (segmentation consistency through the cycle, Zhang et al. 2018). Optionally
(`lambda_semantic`) also S(G_t->s(x_t)) must match S(x_t) on real target images (CyCADA's
semantic consistency), for a reference trained to be fair on the target modality; and
(`lambda_class_intensity`) the regions S(x_t) labels as an organ must have, in G_t->s(x_t), that
organ's mean source intensity (the labelled source images give it).

Only G_t->s (its weight average when `average_decay` > 0) is stored in the bundle (`models/generator.pt`: target-normalised image in,
source-normalised image in [0, 1] out, the "synthetic-modality preview"); the other three
networks live in the resumable checkpoint. The bundle is updated after every epoch with the
losses in `metadata["training"]["translator"]["history"]`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..bundle import load_bundle, update_bundle
from ..device import pick_device
from ..errors import InputError
from ..networks import build_network
from .datasets import load_samples
from .loops import (Checkpoint, batch, body_voxels, epoch_rng, past_deadline, predict_probabilities,
                    random_patch, same_run, seed_everything, translate)
from .source import mean_dice


@dataclass
class TranslatorConfig:
    patch_size: list  # training crop, array order; divisible by 2**n_down
    generator_channels: int = 16
    n_down: int = 2
    n_blocks: int = 3
    stem_kernel: int = 7
    residual: bool = False
    norm: str = "instance"  # "none" keeps absolute intensities (see networks.py)
    discriminator_channels: int = 16
    discriminator_layers: int = 3
    epochs: int = 20
    steps_per_epoch: int = 20
    batch_size: int = 1
    lr: float = 2e-4
    lambda_cycle: float = 10.0
    lambda_identity: float = 5.0  # CycleGAN: half the cycle weight
    lambda_seg: float = 1.0
    # Semantic consistency on real target images (CyCADA): S(G_t->s(x_t)) must segment as S(x_t)
    # does. Useful when the reference is already fair on raw target images (intensity_remap).
    lambda_semantic: float = 0.0
    # Organ intensities: in G_t->s(x_t), the mean of each region S(x_t) labels as organ c must be
    # the mean source intensity of organ c (from the labelled source images).
    lambda_class_intensity: float = 0.0
    rotated_copies: int = 0  # source augmentation, so orientation is no cue for the discriminator
    max_degrees: float = 0.0
    # Exponential moving average of G_t->s weights (0 = off): GAN weights oscillate from step to
    # step; the average is what is evaluated and shipped.
    average_decay: float = 0.0
    # Segmentation consistency trains G_t->s on a detached, noised G_s->t(x_s): otherwise G_s->t
    # can hide x_s in its output for G_t->s to decode (CycleGAN steganography, Chu et al. 2017),
    # which helps the loss but not real target images.
    seg_detached: bool = False
    seg_noise: float = 0.0
    seed: int = 0
    losses: list = field(default_factory=lambda: ["adversarial", "cycle", "identity", "segmentation"])


def generator_spec(config: TranslatorConfig, spatial_dims: int) -> dict:
    return {"kind": "generator", "spatial_dims": spatial_dims, "channels": config.generator_channels,
            "n_down": config.n_down, "n_blocks": config.n_blocks, "stem_kernel": config.stem_kernel,
            "output": "sigmoid", "residual": config.residual, "norm": config.norm}


def discriminator_spec(config: TranslatorConfig, spatial_dims: int) -> dict:
    return {"kind": "discriminator", "spatial_dims": spatial_dims,
            "channels": config.discriminator_channels, "n_layers": config.discriminator_layers,
            "norm": config.norm}


def evaluate_translation(segmenter, generator, samples, roi, n_classes, device) -> float:
    """Mean Dice of the reference on translated target images (TD-GAN)."""
    scores = []
    for s in samples:
        synthetic = translate(generator, s.image, roi, device)
        scores.append(mean_dice(predict_probabilities(segmenter, synthetic, roi, device), s.label, n_classes))
    return round(float(np.mean(scores)), 4)


def evaluate_vanilla(segmenter, samples, roi, n_classes, device) -> float:
    """Mean Dice of the reference on target images as they are (the baseline to beat)."""
    return round(float(np.mean([
        mean_dice(predict_probabilities(segmenter, s.image, roi, device), s.label, n_classes)
        for s in samples])), 4)


def _adversarial(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.mse_loss(logits, torch.full_like(logits, 1.0 if real else 0.0))


def train_translator(bundle_path: str | Path, config: TranslatorConfig, source_cases, target_cases,
                     val_target_cases=(), checkpoint_dir: str | Path | None = None,
                     resume: bool = False, device: str | None = None, progress: bool = True,
                     command: str | None = None, version: str | None = None, deadline: float | None = None):
    """Train G_t->s against the bundle's segmenter and store it in the bundle; returns the bundle.

    `source_cases` are labelled (id, image, label); `target_cases` unlabelled; labelled
    `val_target_cases` are only evaluated and logged (vanilla vs TD-GAN Dice), never trained on
    nor used to pick weights: the bundle holds the last epoch's generator. A `version` replaces
    the bundle's (a new generator is a new model); None keeps it. `deadline`: as in
    `train_source`.
    """
    bundle_path = Path(bundle_path)
    bundle = load_bundle(bundle_path)
    if not source_cases or not target_cases:
        raise InputError("Translator training needs labelled source images and unlabelled target images.")
    if any(d % 2 ** config.n_down for d in config.patch_size):
        raise InputError(f"patch_size {config.patch_size} must be divisible by {2 ** config.n_down}.")
    device = pick_device(device)
    dims, spacing = bundle.spatial_dims, bundle.spacing
    norms = bundle.metadata["normalization"]
    values = sorted(bundle.labels.values())
    source = load_samples(source_cases, spacing, norms["source"], dims, values,
                          config.rotated_copies, config.max_degrees, config.seed)
    target = load_samples([(c[0], c[1], None) for c in target_cases], spacing, norms["target"], dims)
    val = load_samples(val_target_cases, spacing, norms["target"], dims, values)
    class_means = _class_means(source, values, device)
    source_centres = [body_voxels(s) for s in source]
    target_centres = [body_voxels(s) for s in target]

    seed_everything(config.seed)
    segmenter = bundle.network("segmenter", device)
    for p in segmenter.parameters():
        p.requires_grad_(False)
    vanilla = evaluate_vanilla(segmenter, val, bundle.roi_size, bundle.num_classes, device) if val else None
    g_ts = build_network(generator_spec(config, dims)).to(device)
    g_st = build_network(generator_spec(config, dims)).to(device)
    g_avg = copy.deepcopy(g_ts).requires_grad_(False)
    d_s = build_network(discriminator_spec(config, dims)).to(device)
    d_t = build_network(discriminator_spec(config, dims)).to(device)
    opt_g = torch.optim.Adam(list(g_ts.parameters()) + list(g_st.parameters()), lr=config.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(list(d_s.parameters()) + list(d_t.parameters()), lr=config.lr, betas=(0.5, 0.999))
    from monai.losses import DiceCELoss

    seg_loss = DiceCELoss(to_onehot_y=True, softmax=True)
    modules = {"g_ts": g_ts, "g_st": g_st, "d_s": d_s, "d_t": d_t, "g_avg": g_avg,
               "opt_g": opt_g, "opt_d": opt_d}
    checkpoint = Checkpoint(checkpoint_dir or bundle_path.with_name(bundle_path.name + ".ckpt"), "translator")
    start, history = 0, []
    state = checkpoint.load() if resume else None
    if state is not None:
        if not same_run(state["config"], asdict(config)):
            raise InputError(f"Checkpoint {checkpoint.file} was made with other settings; "
                             "rerun without --resume or with the same settings.")
        for name, module in modules.items():
            module.load_state_dict(state[name])
        start, history = state["epoch"] + 1, state["history"]

    epoch_wall = 0.0
    for epoch in range(start, config.epochs):
        if past_deadline(deadline, epoch_wall, "translator", epoch, config.epochs, progress):
            break
        rng = epoch_rng(config.seed, epoch)
        for m in (g_ts, g_st, d_s, d_t):
            m.train()
        sums, began = {}, time.time()
        # disable=None: no step bar when stderr is not a terminal (logs keep one line per epoch)
        bar = tqdm(range(config.steps_per_epoch), desc=f"translator {epoch + 1}/{config.epochs}",
                   disable=None if progress else True, leave=False)
        for _ in bar:
            xs, ys = batch([random_patch(source[i], config.patch_size, rng, centres=source_centres[i])
                            for i in rng.integers(len(source), size=config.batch_size)], device)
            xt, _ = batch([random_patch(target[i], config.patch_size, rng, centres=target_centres[i])
                           for i in rng.integers(len(target), size=config.batch_size)], device)
            fake_s, fake_t = g_ts(xt), g_st(xs)
            rec_t, rec_s = g_st(fake_s), g_ts(fake_t)
            for p in list(d_s.parameters()) + list(d_t.parameters()):
                p.requires_grad_(False)
            losses = {
                "adversarial": _adversarial(d_s(fake_s), True) + _adversarial(d_t(fake_t), True),
                "cycle": config.lambda_cycle * (F.l1_loss(rec_t, xt) + F.l1_loss(rec_s, xs)),
                "identity": config.lambda_identity * (F.l1_loss(g_ts(xs), xs) + F.l1_loss(g_st(xt), xt)),
                "segmentation": config.lambda_seg * seg_loss(segmenter(_seg_input(g_ts, fake_t, rec_s, config)), ys),
            }
            if config.lambda_semantic > 0 or config.lambda_class_intensity > 0:
                with torch.no_grad():
                    pseudo = segmenter(xt).argmax(1, keepdim=True)
            if config.lambda_semantic > 0:
                losses["semantic"] = config.lambda_semantic * seg_loss(segmenter(fake_s), pseudo)
            if config.lambda_class_intensity > 0:
                losses["class_intensity"] = config.lambda_class_intensity * _class_intensity_loss(
                    fake_s, pseudo, class_means)
            generator_loss = sum(losses.values())
            opt_g.zero_grad(set_to_none=True)
            generator_loss.backward()
            opt_g.step()
            _average_into(g_avg, g_ts, config.average_decay)
            for p in list(d_s.parameters()) + list(d_t.parameters()):
                p.requires_grad_(True)
            disc_loss = 0.5 * (
                _adversarial(d_s(xs), True) + _adversarial(d_s(fake_s.detach()), False)
                + _adversarial(d_t(xt), True) + _adversarial(d_t(fake_t.detach()), False)
            )
            opt_d.zero_grad(set_to_none=True)
            disc_loss.backward()
            opt_d.step()
            losses["discriminator"] = disc_loss
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            bar.set_postfix(seg=f"{losses['segmentation'].item():.3f}", cyc=f"{losses['cycle'].item():.3f}")
        entry = {"epoch": epoch + 1, **{k: round(v / config.steps_per_epoch, 5) for k, v in sums.items()},
                 "seconds": round(time.time() - began, 2)}
        shipped = g_avg if config.average_decay > 0 else g_ts
        if val:
            shipped.eval()
            entry["val_vanilla_dice"] = vanilla
            entry["val_tdgan_dice"] = evaluate_translation(segmenter, shipped, val, bundle.roi_size,
                                                           bundle.num_classes, device)
        history.append(entry)
        if progress:
            tqdm.write(f"translator epoch {epoch + 1}: " + ", ".join(
                f"{k}={v}" for k, v in entry.items() if k != "epoch"))
        _store(bundle_path, shipped, config, history, command, version)
        checkpoint.save({"epoch": epoch, "config": asdict(config), "history": history,
                         **{name: m.state_dict() for name, m in modules.items()}})
        epoch_wall = time.time() - began
    return load_bundle(bundle_path)


def _seg_input(g_ts, fake_t, rec_s, config: TranslatorConfig) -> torch.Tensor:
    if not config.seg_detached:
        return rec_s
    fake_t = fake_t.detach()
    return g_ts(fake_t + config.seg_noise * torch.randn_like(fake_t))


def _class_means(samples, values, device) -> torch.Tensor:
    """Mean normalised source intensity of each label value (index = value; NaN if absent)."""
    means = torch.full((max(values) + 1,), float("nan"))
    for v in values:
        voxels = np.concatenate([s.image[s.label == v] for s in samples])
        if voxels.size:
            means[v] = float(voxels.mean())
    return means.to(device)


def _class_intensity_loss(image: torch.Tensor, pseudo: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Mean over foreground classes present in `pseudo` of |mean(image in class) - source mean|:
    region means only, so texture inside an organ stays free."""
    terms = [(image[pseudo == v].mean() - means[v]).abs()
             for v in range(1, len(means)) if not torch.isnan(means[v]) and (pseudo == v).any()]
    return torch.stack(terms).mean() if terms else image.sum() * 0.0


@torch.no_grad()
def _average_into(average, network, decay: float) -> None:
    if decay <= 0:
        return
    for a, p in zip(average.parameters(), network.parameters()):
        a.lerp_(p, 1.0 - decay)
    for a, b in zip(average.buffers(), network.buffers()):
        a.copy_(b)


def _store(bundle_path: Path, generator, config: TranslatorConfig, history: list, command,
           version: str | None) -> None:
    current = load_bundle(bundle_path).metadata
    training = copy.deepcopy(current.get("training", {}))
    training["translator"] = {"config": asdict(config), "history": history, "command": command}
    metrics = dict(current.get("metrics", {}))
    last = history[-1]
    for key in ("val_vanilla_dice", "val_tdgan_dice"):
        if key in last:
            metrics[f"target_{key}"] = last[key]
    saved = build_network(generator.spec)
    saved.load_state_dict(generator.state_dict())
    update_bundle(bundle_path, networks={"generator": saved},
                  metadata={"training": training, "metrics": metrics, **({"version": version} if version else {})})
