"""Training the reference segmenter S_s^pretrain on labelled source images (Dice + CE).

The bundle is (re)written after every epoch with the best weights so far (by Dice on the
validation cases, or the last epoch when there are none) and the per-epoch losses in
`metadata["training"]["source"]["history"]`; a checkpoint beside it makes the run resumable.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..bundle import load_bundle, save_bundle
from ..device import pick_device
from ..errors import InputError
from ..networks import build_network
from .datasets import check_label_channels, load_samples
from .intensity import remap_intensity
from .loops import (Checkpoint, batch, epoch_rng, past_deadline, predict_probabilities, random_patch,
                    same_run, seed_everything)
from .randomize import crop_normalization, synthesize

PALETTE = [[0, 0, 0], [230, 80, 60], [80, 180, 90], [70, 110, 220], [230, 200, 60], [180, 90, 200],
           [60, 200, 200], [240, 150, 40]]


# Settings added after checkpoints were written, at the value those runs trained with: a
# checkpoint without them resumes when they are left at that value.
ADDED_SETTINGS = {"domain_randomize": 0.0, "init_from": ""}


@dataclass
class SourceConfig:
    """What defines the bundle and the run (all JSON-able; recorded in metadata.training)."""

    task: str
    labels: dict  # name -> value, background 0
    spatial_dims: int
    spacing: list  # working grid mm, (x, y[, z])
    roi_size: list  # training patch / inference window, array order
    normalization: dict  # {"source": spec, "target": spec}
    input_modality: str = "target"
    output_modality: str = "source"
    colors: dict = field(default_factory=dict)
    channels: list = field(default_factory=lambda: [8, 16, 32, 64])
    strides: list = field(default_factory=lambda: [2, 2, 2])
    num_res_units: int = 1
    rotated_copies: int = 0  # augmentation: randomly rotated copies of each training image
    max_degrees: float = 0.0
    # Share of training crops whose intensities go through a random transfer function
    # (intensity.remap_intensity): a reference that leans on shape as well as on source contrast
    # is fair on the target modality from the start and gives the translator useful gradients.
    intensity_remap: float = 0.0
    # Foreground crops centred on a label drawn uniformly among those present (small labels).
    class_balanced: bool = False
    # Remapped crops also shift each labelled structure's brightness by up to this much either
    # way (intensity.remap_intensity; 0 = off).
    label_contrast: float = 0.0
    # Share of training crops synthesised from their labels and source intensity classes with
    # random contrast, texture, bias, noise and resolution (randomize.synthesize, SynthSeg-style);
    # 1 trains on synthetic images alone (the `domain_randomized` peer), 0 is off.
    domain_randomize: float = 0.0
    # A bundle whose segmenter (same network spec) gives the starting weights: fine-tuning an
    # already trained reference, e.g. with domain randomisation; "" starts from random weights.
    init_from: str = ""
    epochs: int = 20
    steps_per_epoch: int = 20
    batch_size: int = 2
    lr: float = 1e-3
    seed: int = 0
    version: str = "0.1.0"
    data: str = ""  # description of the training data, recorded in the bundle


def segmenter_spec(config: SourceConfig) -> dict:
    return {
        "kind": "segmenter", "spatial_dims": config.spatial_dims, "in_channels": 1,
        "out_channels": max(config.labels.values()) + 1, "channels": list(config.channels),
        "strides": list(config.strides), "num_res_units": config.num_res_units, "norm": "instance",
    }


def mean_dice(probabilities: np.ndarray, label: np.ndarray, n_classes: int) -> float:
    """Mean Dice over foreground classes of the argmax (classes absent in both count as 1)."""
    pred = probabilities.argmax(0)
    scores = []
    for c in range(1, n_classes):
        a, b = pred == c, label == c
        total = a.sum() + b.sum()
        scores.append(1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total)
    return float(np.mean(scores))


def evaluate_segmenter(network, samples, roi, n_classes, device) -> float:
    network.eval()
    return float(np.mean([
        mean_dice(predict_probabilities(network, s.image, roi, device), s.label, n_classes)
        for s in samples
    ]))


def _metadata(config: SourceConfig, history, metrics, command, start: dict | None = None) -> dict:
    colors = dict(config.colors)
    for name, value in config.labels.items():
        colors.setdefault(name, PALETTE[value % len(PALETTE)])
    return {
        "version": config.version,
        "task": config.task,
        "spatial_dims": config.spatial_dims,
        "input_modality": config.input_modality,
        "output_modality": config.output_modality,
        "labels": dict(config.labels),
        "colors": colors,
        "spacing": list(config.spacing),
        "roi_size": list(config.roi_size),
        "normalization": copy.deepcopy(config.normalization),
        "training": {
            # Training steps behind this segmenter, those of the bundle it started from included
            # (the supervised bound of METHOD.md section 8 gets the same budget).
            "budget_steps": config.epochs * config.steps_per_epoch + (start or {}).get("budget_steps", 0),
            # the bundle this segmenter was fine-tuned from (init_from): its version, recipe and budget
            **({"start": start} if start else {}),
            "data": config.data,
            "seed": config.seed,
            "command": command,
            "source": {"config": asdict(config), "history": history},
        },
        "metrics": metrics,
        # A reference trained on randomised contrasts reads the target image itself; a translator
        # trained later then only makes the preview (engine.bundle_mode).
        **({"segmenter_input": "image"} if config.domain_randomize > 0 else {}),
    }


def train_source(config: SourceConfig, train_cases, val_cases, out: str | Path,
                 checkpoint_dir: str | Path | None = None, resume: bool = False,
                 device: str | None = None, progress: bool = True, command: str | None = None,
                 stage: str = "source", deadline: float | None = None):
    """Train the segmenter on (id, image, label) cases and write the bundle at `out`; `stage`
    names the run in the progress lines (`train all`'s randomize stage also trains here).
    `deadline` (a time.time()): no epoch starts that the last one's wall time says would end past
    it, so a busy machine shortens the run instead of overrunning a time budget."""
    out = Path(out)
    if not train_cases:
        raise InputError("No labelled source images to train on.")
    check_label_channels(config.labels)
    for name in ("intensity_remap", "domain_randomize"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise InputError(f"{name.replace('_', '-')} is a share of the training crops, between 0 "
                             f"and 1; got {getattr(config, name)}.")
    initial, started_from = _initial_weights(config) if config.init_from else (None, None)
    device = pick_device(device)
    label_values = sorted(config.labels.values())
    norm = config.normalization["source"]
    train = load_samples(train_cases, config.spacing, norm, config.spatial_dims, label_values,
                         config.rotated_copies, config.max_degrees, config.seed)
    val = load_samples(val_cases, config.spacing, norm, config.spatial_dims, label_values)
    val_randomized = randomized_copies(val, config) if config.domain_randomize else []
    n_classes = max(label_values) + 1

    extras = _networks_to_keep(out, config)
    seed_everything(config.seed)
    network, optimiser, loss_fn = training_parts(config, device)
    if initial is not None:
        network.load_state_dict(initial)
    checkpoint = Checkpoint(checkpoint_dir or out.with_name(out.name + ".ckpt"), "source")
    start, history, best = 0, [], {"score": -1.0, "state": None, "epoch": -1}
    state = checkpoint.load() if resume else None
    if state is not None:
        if not same_run({**ADDED_SETTINGS, **state["config"]}, asdict(config)):
            raise InputError(f"Checkpoint {checkpoint.file} was made with other settings; "
                             "rerun without --resume or with the same settings.")
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        start, history, best = state["epoch"] + 1, state["history"], state["best"]

    epoch_wall = 0.0
    for epoch in range(start, config.epochs):
        if past_deadline(deadline, epoch_wall, stage, epoch, config.epochs, progress):
            break
        rng = epoch_rng(config.seed, epoch)
        network.train()
        losses, began = [], time.time()
        # disable=None: no step bar when stderr is not a terminal (logs keep one line per epoch)
        bar = tqdm(range(config.steps_per_epoch), desc=f"{stage} {epoch + 1}/{config.epochs}",
                   disable=None if progress else True, leave=False)
        for _ in bar:
            losses.append(train_step(network, optimiser, loss_fn, train, rng, config, device))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        entry = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4) if losses else None, "seconds": round(time.time() - began, 2)}
        validating = time.time()
        score = evaluate_segmenter(network, val, config.roi_size, n_classes, device) if val else epoch
        if val:
            entry["val_dice"] = round(score, 4)
        if val_randomized:
            entry["val_dice_randomized"] = round(evaluate_segmenter(
                network, val_randomized, config.roi_size, n_classes, device), 4)
            score = (score + entry["val_dice_randomized"]) / 2
        if val:  # the time validation takes each epoch (`train all` sizes its epochs by it)
            entry["val_seconds"] = round(time.time() - validating, 2)
        history.append(entry)
        if progress:
            tqdm.write(f"{stage} epoch {epoch + 1}: " + ", ".join(f"{k}={v}" for k, v in entry.items() if k != "epoch"))
        if score >= best["score"]:
            best = {"score": float(score), "epoch": epoch + 1,
                    **{f"source_{k}": v for k, v in entry.items() if k.startswith("val_dice")},
                    "state": {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}}
        metrics = {key: best[key] for key in ("source_val_dice", "source_val_dice_randomized") if key in best}
        metrics["best_epoch"] = best["epoch"]
        saved_network = build_network(segmenter_spec(config))
        saved_network.load_state_dict(best["state"])
        save_bundle(out, _metadata(config, history, metrics, command, started_from), {"segmenter": saved_network, **extras})
        checkpoint.save({"epoch": epoch, "config": asdict(config), "network": network.state_dict(),
                         "optimiser": optimiser.state_dict(), "history": history, "best": best})
        epoch_wall = time.time() - began
    return load_bundle(out)


def training_parts(config: SourceConfig, device) -> tuple:
    """(network, optimiser, loss) a segmenter run of `config` trains with."""
    from monai.losses import DiceCELoss

    network = build_network(segmenter_spec(config)).to(device)
    optimiser = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=1e-4)
    return network, optimiser, DiceCELoss(to_onehot_y=True, softmax=True)


def train_step(network, optimiser, loss_fn, train, rng: np.random.Generator, config: SourceConfig,
               device) -> float:
    """One optimiser step on `config.batch_size` crops drawn from the samples `train`; its loss."""
    picks = rng.integers(len(train), size=config.batch_size)
    patches = [random_patch(train[i], config.roi_size, rng, class_balanced=config.class_balanced)
               for i in picks]
    patches = [(_crop_intensities(x, y, rng, config), y) for x, y in patches]
    images, labels = batch(patches, device)
    images = _intensity_jitter(images, rng)
    loss = loss_fn(network(images), labels)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss.item()


# Randomised renderings of each source validation case when domain randomisation is on: the best
# epoch is then chosen on the mean of real and randomised validation Dice (source labels only), so
# that it rewards contrast robustness, not only the source contrast.
VAL_RENDERINGS = 1


def randomized_copies(samples, config: SourceConfig) -> list:
    """`VAL_RENDERINGS` fixed synthetic renderings (randomize.synthesize, seeded) of each sample."""
    rng = np.random.default_rng([config.seed, 23])
    spec = crop_normalization(config.normalization["target"])
    return [dataclasses.replace(s, image=synthesize(s.image, s.label, rng, spec))
            for s in samples for _ in range(VAL_RENDERINGS)]


def _initial_weights(config: SourceConfig) -> dict:
    """(segmenter weights, record) of the bundle `init_from` names, checked against this run's spec;
    the record (version, recipe, training steps) goes into the new bundle's metadata."""
    start = load_bundle(config.init_from)
    spec, ours = start.network_spec("segmenter"), segmenter_spec(config)
    if {k: spec.get(k) for k in ours} != ours:
        raise InputError(f"--init-from {config.init_from}: its segmenter ({spec}) differs from the "
                         f"one this run trains ({ours}); use the same --channels, "
                         "--res-units and labels.")
    training = start.metadata["training"]
    recipe = training["source"]["config"]
    record = {"version": start.version, "config": recipe,
              "budget_steps": int(training.get("budget_steps", recipe["epochs"] * recipe["steps_per_epoch"]))}
    return start.network("segmenter").state_dict(), record


def _networks_to_keep(out: Path, config: SourceConfig) -> dict:
    """Networks added to an existing bundle at `out` by other trainers (e.g. the click refiner),
    kept when the bundle is retrained on the same grid and labels. The generator is not kept: it
    was trained against the old segmenter and must be retrained."""
    try:
        old = load_bundle(out)
    except InputError:
        return {}
    if old.spacing != list(config.spacing) or old.labels != dict(config.labels):
        return {}
    return {name: old.network(name) for name in old.network_names
            if name not in ("segmenter", "generator")}


def _crop_intensities(x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                      config: SourceConfig) -> np.ndarray:
    """A training crop's image: synthesised from its labels (share `domain_randomize`), else
    through a random transfer function (share `intensity_remap`), else as it is."""
    if config.domain_randomize and rng.random() < config.domain_randomize:
        return synthesize(x, y, rng, crop_normalization(config.normalization["target"]))
    if rng.random() < config.intensity_remap:
        return remap_intensity(x, rng, y if config.label_contrast else None, config.label_contrast)
    return x


def _intensity_jitter(images: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Small per-sample contrast/brightness changes: robustness to scanner variation within the
    source modality (kept small: the domain gap is the translator's job)."""
    n = images.shape[0]
    shape = (n,) + (1,) * (images.ndim - 1)
    scale = torch.from_numpy(rng.uniform(0.9, 1.1, n)).float().view(shape).to(images.device)
    shift = torch.from_numpy(rng.uniform(-0.05, 0.05, n)).float().view(shape).to(images.device)
    return images * scale + shift
