"""Unlabelled target training images with the bundle's own pseudo-labels, for the prompt network.

The prompt network is used on target images; these cases let it train on them. Each target
training image (never a target label) is segmented once by the bundle's segmenter (raw network
output on the image's own grid, no post-processing, no augmentation). A voxel keeps the winning
class only where its probability is at least CONFIDENCE; elsewhere it is UNKNOWN: never part of
a sampled object, never where the simulated user clicks, and outside the loss.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .prompt_cases import UNKNOWN, PromptCase, to_prompt_grid

CONFIDENCE = 0.9  # softmax maximum a pseudo-label voxel needs


def pseudo_label(probabilities: np.ndarray) -> np.ndarray:
    """(z, y, x) int16 label map from (z, y, x, C) class probabilities: the argmax where its
    probability is at least CONFIDENCE, UNKNOWN elsewhere."""
    label = np.argmax(probabilities, axis=-1).astype(np.int16)
    label[np.max(probabilities, axis=-1) < CONFIDENCE] = UNKNOWN
    return label


def target_prompt_case(image: sitk.Image, label: sitk.Image, bundle, fill: int = 0) -> PromptCase:
    """A target image and its labels on the network's grid (2D arrays for a 2D bundle): the image
    normalised as "target" (as the session feeds it) and shown as it is (no synthetic contrast)."""
    image, label = to_prompt_grid(image, label, bundle.spatial_dims, fill)
    return PromptCase(bundle.normalize(image, "target"), label, None, synthesize=False)


def target_training_images(task_dir) -> list:
    """Paths of the task's unlabelled target training images (their labels are never read)."""
    from ..data import TaskDir

    images = [image for _, image, _ in TaskDir(task_dir).cases("train", "target")]
    if not images:
        raise InputError(f"{task_dir} has no target training images: the prompt network cannot learn the "
                         "target modality from it. Add unlabelled target images (target/images, train split) "
                         "or train without --target-share.")
    return images


def load_target_cases(task_dir, bundle, limit: int | None = None, log=print) -> list:
    """PromptCases of the task's target training images on the prompt network's grid: the image
    normalised as "target" (as the session feeds it), the bundle's confident pseudo-labels, no
    synthetic image."""
    from ..engine import Engine

    paths = target_training_images(task_dir)[:limit]
    engine = Engine(bundle, postprocess=False, tta_n=1)
    cases = []
    for path in paths:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        result = engine.segment(image, preview=False, uncertainty=False)
        labels = sitk.GetImageFromArray(pseudo_label(sitk.GetArrayFromImage(result.probabilities)))
        labels.CopyInformation(image)
        case = target_prompt_case(image, labels, bundle, UNKNOWN)
        if case.values:
            cases.append(case)
        log(f"pseudo-labelled {path.name}: {np.mean(case.label == UNKNOWN):.1%} of voxels unknown"
            + ("" if case.values else "; no confident structure, left out"))
    if not cases:
        raise InputError(f"The bundle's segmenter is confident (probability >= {CONFIDENCE}) on no structure of "
                         f"any target training image in {task_dir}: there are no pseudo-labels to learn from. "
                         "Train without --target-share, or train the segmenter further first.")
    return cases
