"""Evaluating a bundle on a task directory split: the reference on source images, on target
images directly ("vanilla") and on translated target images ("TD-GAN"), and the translation's
quality against the paired ground-truth source rendering. Used by the shipped-bundle test and
benchmarks/models.py. The argmax on the working grid is resampled back to each input's own grid
and scored raw (`raw=True`) or after the bundle's post-processing steps (postprocess.py), as the
engine delivers it."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from .. import metrics
from ..geometry import resample_to_reference, working_reference
from ..imageio import read_image
from ..postprocess import bundle_steps, postprocess_image
from .loops import predict_probabilities, translate


def working_grid(bundle, image: sitk.Image) -> sitk.Image:
    spacing = bundle.spacing + ([image.GetSpacing()[2]] if bundle.spatial_dims == 2 else [])
    return working_reference(image, spacing)


def to_working_array(bundle, image: sitk.Image, reference: sitk.Image) -> np.ndarray:
    floor = float(sitk.GetArrayViewFromImage(image).min())
    working = resample_to_reference(sitk.Cast(image, sitk.sitkFloat32), reference, sitk.sitkLinear, floor)
    array = sitk.GetArrayFromImage(working)
    return array[0] if bundle.spatial_dims == 2 else array


def label_on_input_grid(bundle, probabilities: np.ndarray, reference: sitk.Image, image: sitk.Image,
                        steps: list[dict]) -> sitk.Image:
    """The argmax on the input's grid after `steps` (postprocess.py)."""
    label = probabilities.argmax(0).astype(np.uint8)
    label_image = sitk.GetImageFromArray(label[None] if bundle.spatial_dims == 2 else label)
    label_image.CopyInformation(reference)
    on_input = resample_to_reference(label_image, image, sitk.sitkNearestNeighbor, 0)
    return postprocess_image(steps, sitk.GetArrayFromImage(on_input), image)


class CaseRunner:
    """Runs one bundle's networks on images of a task (CPU or CUDA), keeping arrays for scoring;
    labels raw (`raw`) or after the bundle's post-processing steps."""

    def __init__(self, bundle, device="cpu", raw: bool = False):
        self.bundle, self.device = bundle, device
        self.steps = [] if raw else bundle_steps(bundle.metadata)
        self.segmenter = bundle.network("segmenter", device)
        self.generator = bundle.network("generator", device) if bundle.has_network("generator") else None

    def segment(self, image: sitk.Image, domain: str, via_generator: bool = False):
        """(label on the input grid, normalised working array fed to the segmenter)."""
        reference = working_grid(self.bundle, image)
        array = self.bundle.normalize(to_working_array(self.bundle, image, reference), domain)
        if via_generator:
            array = translate(self.generator, array, self.bundle.roi_size, self.device)
        probabilities = predict_probabilities(self.segmenter, array, self.bundle.roi_size, self.device)
        return label_on_input_grid(self.bundle, probabilities, reference, image, self.steps), array


def _scores(pred: sitk.Image, ref: sitk.Image, labels) -> dict:
    return {"dice": metrics.dice(pred, ref, labels), "hd95": metrics.hd95(pred, ref, labels=labels),
            "assd": metrics.assd(pred, ref, labels=labels),
            "per_label": metrics.dice_per_label(pred, ref, labels)}


def _per_label_mean(rows: list[dict], names: dict) -> dict:
    """Mean Dice per label name over cases."""
    return {name: round(float(np.mean([r[value] for r in rows])), 4)
            for name, value in names.items() if value}


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from monai.metrics import SSIMMetric

    dims = a.ndim
    metric = SSIMMetric(spatial_dims=dims, data_range=1.0, win_size=7)
    ta, tb = (torch.from_numpy(np.ascontiguousarray(x))[None, None].float() for x in (a, b))
    return float(metric(ta, tb).mean())


def evaluate_source(bundle, cases, device="cpu", raw: bool = False) -> dict:
    runner = CaseRunner(bundle, device, raw)
    labels = [v for v in bundle.labels.values() if v]
    dices, per_label = [], []
    for _, image_path, label_path in cases:
        pred, _ = runner.segment(read_image(image_path), "source")
        truth = read_image(label_path)
        dices.append(metrics.dice(pred, truth, labels))
        per_label.append(metrics.dice_per_label(pred, truth, labels))
    return {"source_dice": float(np.mean(dices)), "n_source": len(dices),
            "source_dice_per_label": _per_label_mean(per_label, bundle.labels)}


def evaluate_target(bundle, cases, paired_paths: dict, device="cpu", raw: bool = False) -> dict:
    """Vanilla and TD-GAN Dice/HD95/ASSD on labelled target cases, and translation quality
    (segmentation agreement, MAE, PSNR, SSIM in normalised source units) where a paired ground-truth
    source rendering exists."""
    runner = CaseRunner(bundle, device, raw)
    labels = [v for v in bundle.labels.values() if v]
    vanilla, tdgan, seg_agreement, mae, psnr, ssims = [], [], [], [], [], []
    for case_id, image_path, label_path in cases:
        image, truth = read_image(image_path), read_image(label_path)
        pred_vanilla, _ = runner.segment(image, "target")
        pred_tdgan, synthetic = runner.segment(image, "target", via_generator=True)
        vanilla.append(_scores(pred_vanilla, truth, labels))
        tdgan.append(_scores(pred_tdgan, truth, labels))
        paired_path = paired_paths.get(case_id)
        if paired_path is None:
            continue
        paired = read_image(paired_path)
        pred_paired, paired_norm = runner.segment(paired, "source")
        # The segmenter's view of the real source rendering vs of the translation, same subject.
        seg_agreement.append(metrics.dice(pred_tdgan, pred_paired, labels))
        error = synthetic - paired_norm
        mae.append(float(np.abs(error).mean()))
        psnr.append(float(10 * np.log10(1.0 / max(float((error**2).mean()), 1e-12))))
        ssims.append(ssim(synthetic, paired_norm))
    out = {"n_target": len(cases)}
    for prefix, rows in (("vanilla", vanilla), ("tdgan", tdgan)):
        for key in ("dice", "hd95", "assd"):
            out[f"{prefix}_{key}"] = float(np.mean([r[key] for r in rows]))
        out[f"{prefix}_dice_per_label"] = _per_label_mean([r["per_label"] for r in rows], bundle.labels)
    if mae:
        out.update({"translation_seg_dice": float(np.mean(seg_agreement)),
                    "translation_mae": float(np.mean(mae)), "translation_psnr": float(np.mean(psnr)),
                    "translation_ssim": float(np.mean(ssims)), "n_paired": len(mae)})
    return out
