"""Pieces the training loops share: seeded patch sampling, sliding-window prediction,
checkpoints that survive a kill, and the per-epoch seed that makes a resumed run match."""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import InputError
from .datasets import Sample


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """Each epoch reseeds from (seed, epoch), so resuming at epoch k replays the same batches."""
    torch.manual_seed(seed * 100003 + epoch)
    return np.random.default_rng([seed, epoch])


def pad_to(array: np.ndarray, shape, value: float = 0.0) -> np.ndarray:
    """Pad at the end of each axis up to `shape` (no-op on axes already that large)."""
    pads = [(0, max(0, int(s) - n)) for n, s in zip(array.shape, shape)]
    return np.pad(array, pads, constant_values=value) if any(p[1] for p in pads) else array


def random_patch(sample: Sample, roi, rng: np.random.Generator, foreground_share: float = 0.5,
                 centres: np.ndarray | None = None, class_balanced: bool = False):
    """A roi-sized (image, label-or-None) crop; with probability `foreground_share` centred on a
    random labelled voxel (so small structures are seen often enough), or, when `centres`
    (voxel indices, e.g. `body_voxels`) are given, always on one of those. `class_balanced`
    first draws one of the labels present, then a voxel of it: a lesion of a few dozen voxels
    is then centred as often as the liver, not once in hundreds of crops."""
    image = pad_to(sample.image, roi)
    label = None if sample.label is None else pad_to(sample.label, roi)
    starts = []
    centre = None
    if centres is not None and len(centres):
        centre = centres[rng.integers(len(centres))]
    elif label is not None and rng.random() < foreground_share:
        inside = label > 0
        if class_balanced and inside.any():
            inside = label == rng.choice(np.unique(label[inside]))
        foreground = np.argwhere(inside)
        if len(foreground):
            centre = foreground[rng.integers(len(foreground))]
    for axis, (n, r) in enumerate(zip(image.shape, roi)):
        if centre is None:
            starts.append(int(rng.integers(0, n - r + 1)))
        else:
            starts.append(int(np.clip(centre[axis] - r // 2 + rng.integers(-r // 4, r // 4 + 1), 0, n - r)))
    box = tuple(slice(s, s + r) for s, r in zip(starts, roi))
    return image[box], None if label is None else label[box]


def body_voxels(sample: Sample, threshold: float = 0.05, step: int = 2) -> np.ndarray:
    """Indices of (every `step`-th) voxel brighter than air after normalisation: patch centres
    inside the body, so both domains of a GAN show the same kind of content (not air in one
    and organs in the other, which a discriminator would learn instead of the modality)."""
    grid = tuple(slice(0, None, step) for _ in sample.image.shape)
    return np.argwhere(sample.image[grid] > threshold) * step


def batch(patches, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    images = torch.from_numpy(np.stack([p[0] for p in patches])[:, None]).float().to(device)
    if patches[0][1] is None:
        return images, None
    labels = torch.from_numpy(np.stack([p[1] for p in patches])[:, None]).long().to(device)
    return images, labels


@torch.no_grad()
def predict_probabilities(network, image: np.ndarray, roi, device="cpu") -> np.ndarray:
    """Softmax probabilities (C, *image.shape) by sliding windows of `roi` (overlap 0.25)."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(image)[None, None]).float().to(device)
    logits = sliding_window_inference(x, list(roi), 2, network, overlap=0.25, mode="gaussian")
    return torch.softmax(logits, 1)[0].cpu().numpy()


@torch.no_grad()
def translate(generator, image: np.ndarray, roi, device="cpu") -> np.ndarray:
    """Generator output on a whole image, by sliding windows of `roi` (sizes divisible by the
    generator's stride), blended with Gaussian weights so patch seams do not show."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(image)[None, None]).float().to(device)
    return sliding_window_inference(x, list(roi), 2, generator, overlap=0.5, mode="gaussian")[0, 0].cpu().numpy()


class Checkpoint:
    """One resumable training state (torch.save of a dict), written atomically."""

    def __init__(self, folder: str | Path, name: str):
        self.file = Path(folder) / f"{name}.ckpt"

    def load(self) -> dict | None:
        if not self.file.is_file():
            return None
        return load_checkpoint(self.file)

    def save(self, state: dict) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=f".{self.file.name}.", suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, self.file)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by torch.save, read with weights_only=True: only tensors and plain
    data are rebuilt, so a file planted in its place cannot run code; anything else is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # hostile pickle, truncated zip, not a torch file: all refused alike
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: not a checkpoint this program wrote, or damaged ({reason[:200]}); "
                         "delete it to start training afresh.") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a checkpoint this program wrote (holds {type(state).__name__}); "
                         "delete it to start training afresh.")
    return state


def same_run(saved: dict, current: dict) -> bool:
    """Whether a checkpoint may be continued: every setting equal except the number of epochs
    (resuming with more epochs extends a finished run)."""
    return {k: v for k, v in saved.items() if k != "epochs"} == {
        k: v for k, v in current.items() if k != "epochs"}


def past_deadline(deadline: float | None, epoch_wall: float, stage: str, epoch: int, epochs: int,
                  progress: bool) -> bool:
    """Whether epoch `epoch` (0-based) would end past `deadline` (a time.time(); None: never),
    judged by the wall time `epoch_wall` of the last epoch of this run (0 before the first, which
    always runs); says so in the log when it would."""
    if deadline is None or epoch_wall == 0 or time.time() + epoch_wall <= deadline:
        return False
    if progress:
        tqdm.write(f"{stage}: its share of the time budget is spent; stopped after {epoch} of {epochs} epochs")
    return True
