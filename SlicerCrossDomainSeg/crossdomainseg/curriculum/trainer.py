"""The curriculum training loop of the patent (Fig. 4 with the semi-supervised Fig. 5 variant).

Networks (all built from the bundle): the reference S_pre is the bundle's source-trained segmenter
(frozen), G its generator (frozen); teacher and student start as copies of the model being
fine-tuned. Per step, for each unlabelled target image of the batch (Fig. 4 lines 7-14):
  memory-bank counter >= confident_after -> train on it directly; else
  U(x) = max_i D(T_i^-1 S_pre(T_i G(x)), mean) (eq. 1) must be <= tau_u, and the warm-up gate
  D(S_tea(x'), S_pre(G(x))) <= tau_ts (eq. 3); passing both increments the counter.
Loss: consistency D~(H(S_tea(T_i x')), S_stu(T_i x')) over m weak + strong views (eq. 2), on the
voxels where the teacher is confident (params.confidence_threshold),
+ supervised CE + Dice on accepted (clinician-corrected) cases, + low-weight replay of labelled
source images, + with params.appearance_weight > 0, labelled source crops rendered in the target's
appearance (appearance.py; the class models refitted from the teacher every
params.appearance_refit epochs). After the optimiser step the teacher follows eq. 4. tau_u and
tau_ts rise per epoch.
G and S_pre are frozen, so U(x) and S_pre(G(x)) are computed once per image and cached.

x' is what teacher and student read (`params.student_input`): the raw target image x as in the
patent ("image"), or the synthetic preview G(x) ("preview", the Engine's default tdgan path).
The patent's warm start (teacher = S_pre on raw x) only works where that "vanilla" prediction is
already fair (patent: Dice 0.78), which a reference trained on plain source images is not (the
first phantom CT->MR reference: 0.05), so "preview" is the default; references trained with
random intensity transfer functions are fair on raw MR (phantom-ct-mr 1.2: about 0.5) and the
curriculum benchmark reads "image". Published bundles record it as metadata `segmenter_input`
and keep the source-trained reference as network `reference`.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference

from .. import geometry
from ..bundle import Bundle, save_bundle
from ..errors import InputError
from ..metrics import dice
from ..postprocess import apply_steps, bundle_steps
from ..uncertainty import default_transforms, image_uncertainty, tta_probabilities
from . import appearance
from .augment import flip_pair, views
from .losses import ce_dice_loss, consistency_loss, dice_distance
from .memory_bank import MemoryBank
from .params import CurriculumParams
from .teacher import update_teacher

log = logging.getLogger(__name__)

REFERENCE = "reference"  # network name of the source-trained S_pre inside fine-tuned bundles


@dataclass
class Volume:
    """One image on the bundle's working grid: x (1, *spatial) normalised, y (*spatial) or None;
    unchanged_draft_of: the model version whose draft was accepted as y with no voxel edited;
    slices: (working-grid array axis, thickness in working voxels) of an image acquired with
    thick slices, None otherwise (appearance.slice_geometry)."""

    key: str
    x: torch.Tensor
    y: torch.Tensor | None = None
    domain: str = "target"
    unchanged_draft_of: str | None = None
    slices: tuple[int, float] | None = None


def prepare(bundle: Bundle, image: sitk.Image, key: str, domain: str = "target",
            label: sitk.Image | None = None) -> Volume:
    """Resample to the working grid and normalise as the bundle's `domain`."""
    single = image.GetSize()[2] == 1 if image.GetDimension() == 3 else True
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
        label = sitk.JoinSeries(label) if label is not None else None
    if (bundle.spatial_dims == 2) != single:
        raise InputError(
            f"Image {key} is {'2D' if single else '3D'} but the model segments "
            f"{bundle.spatial_dims}D images; keep only images of the model's kind in the folder."
        )
    image = sitk.Cast(image, sitk.sitkFloat32)
    work = geometry.to_working_grid(image, bundle.spacing)
    array = bundle.normalize(sitk.GetArrayViewFromImage(work), domain)
    if bundle.spatial_dims == 2:
        array = array[0]
    y = None
    if label is not None:
        lab = geometry.resample_to_reference(sitk.Cast(label, sitk.sitkUInt8), work, sitk.sitkNearestNeighbor, 0)
        lab_array = sitk.GetArrayFromImage(lab).astype(np.int64)
        if lab_array.max() >= bundle.num_classes:
            raise InputError(
                f"Label of {key} holds value {lab_array.max()} but the model has only "
                f"{bundle.num_classes - 1} foreground labels."
            )
        y = torch.from_numpy(lab_array[0] if bundle.spatial_dims == 2 else lab_array)
    slices = appearance.slice_geometry(image, bundle.spacing) if bundle.spatial_dims == 3 else None
    return Volume(key, torch.from_numpy(np.ascontiguousarray(array))[None], y, domain, slices=slices)


def segmenter_input(bundle: Bundle) -> str:
    """"image" when the bundle's segmenter reads the raw target (fine-tuned), else "preview"."""
    return bundle.metadata.get("segmenter_input", "preview")


class CurriculumTrainer:
    def __init__(self, bundle: Bundle, params: CurriculumParams, target: list[Volume],
                 accepted: list[Volume] = (), source: list[Volume] = (), device=None):
        self.bundle, self.params = bundle, params
        self.device = torch.device(device or "cpu")
        self.target = list(target)
        self.accepted = [v for v in accepted if v.y is not None]
        self.source = [v for v in source if v.y is not None]
        self.roi = bundle.roi_size
        self.spacing = tuple(reversed(bundle.spacing))  # mm per voxel of the working grid, array order
        ref_name = REFERENCE if bundle.has_network(REFERENCE) else "segmenter"
        self.reference = self._frozen(bundle.network(ref_name, self.device))
        self.generator = self._frozen(bundle.network("generator", self.device)) if bundle.has_network("generator") else None
        reads_preview = params.student_input == "preview" or (params.curriculum and params.reference_input == "preview")
        if reads_preview and self.generator is None:
            raise InputError("The curriculum needs the bundle's generator G (eq. 1, 3) when the reference or "
                             "the student reads the preview; this bundle has none (set reference_input and "
                             "student_input to 'image' for a reference that reads raw target images).")
        start = bundle.network("segmenter", self.device)
        self.student = copy.deepcopy(start).train()
        for p in self.student.parameters():
            p.requires_grad_(True)
        self.teacher = self._frozen(copy.deepcopy(start))
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=params.lr, weight_decay=params.weight_decay)
        self.bank = MemoryBank(params.confident_after)
        self.epoch = 0
        self.step = 0
        self.history: list[dict] = []
        self.rng = random.Random(params.seed)
        self._ref_cache: dict[str, torch.Tensor] = {}
        self._translated: dict[str, torch.Tensor] = {}
        # Appearance replay: each source volume's class quantiles (fixed), the target's (refitted).
        self._source_quantiles = {
            v.key: appearance.class_quantiles(v.x[0].numpy(), v.y.numpy(), bundle.num_classes)
            for v in self.source} if params.appearance_weight > 0 else {}
        self._source_anatomy = appearance.source_anatomy(self.source, self._source_quantiles, bundle.num_classes)
        self.appearance: appearance.TargetAppearance | None = None
        sizes = [v.x.shape[1:] for v in self.target + self.accepted + self.source]
        biggest = np.max(np.asarray(sizes), axis=0) if sizes else np.asarray(self.roi)
        # Crops as big as the roi, or as the largest image rounded up to the networks' stride.
        edges = [params.crop_size or r for r in self.roi]
        self.crop = [int(min(e, 16 * math.ceil(s / 16))) for e, s in zip(edges, biggest)]

    @staticmethod
    def _frozen(module: torch.nn.Module) -> torch.nn.Module:
        module = module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module

    # -- networks on whole images ---------------------------------------------------------------
    def run(self, network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return sliding_window_inference(x.to(self.device), self.roi, sw_batch_size=4, predictor=network,
                                        overlap=0.25, mode="gaussian", padding_mode="replicate")

    def probs(self, network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.run(network, x), dim=1)

    @torch.no_grad()
    def translated(self, volume: Volume) -> torch.Tensor:
        """G(x) (1, *spatial) of a target volume, cached (G is frozen)."""
        if volume.key not in self._translated:
            self._translated[volume.key] = self.run(self.generator, volume.x[None])[0].cpu()
        return self._translated[volume.key]

    def inputs(self, volume: Volume) -> torch.Tensor:
        """x': what teacher and student read for this volume (1, *spatial)."""
        if volume.domain == "target" and self.params.student_input == "preview":
            return self.translated(volume)
        return volume.x

    def network_input(self, volume: Volume, reads: str) -> torch.Tensor:
        """The input of a segmenter that reads `reads` ("image" or "preview")."""
        if volume.domain != "target" or reads == "image":
            return volume.x
        return self.translated(volume)

    @torch.no_grad()
    def reference_view(self, volume: Volume) -> tuple[torch.Tensor, float]:
        """S_pre(G(x)) (or S_pre(x): params.reference_input) probabilities and U(x) (eq. 1), cached:
        both networks are frozen."""
        if volume.key not in self._ref_cache:
            seen = self.network_input(volume, self.params.reference_input)[None]
            predictions = tta_probabilities(
                lambda t: self.probs(self.reference, t), seen,
                default_transforms(self.params.tta_n, self.bundle.spatial_dims))
            self.bank.uncertainty[volume.key] = float(image_uncertainty(predictions)[0])
            self._ref_cache[volume.key] = torch.stack(predictions).mean(0).half()
        return self._ref_cache[volume.key].float(), self.bank.uncertainty[volume.key]

    def suitable(self, volume: Volume) -> bool:
        """Fig. 4 lines 8-12 with the memory bank; increments the counter when suitable."""
        if not self.params.curriculum:
            return True
        if self.bank.is_consistently_confident(volume.key):
            return True
        p_ref, u = self.reference_view(volume)
        if u > self.tau_u(self.epoch):
            return False
        # Eq. 3 on the two predicted segmentations: soft Dice of two soft maps is below 1 even
        # for identical maps, which would gate out every unsure-but-agreeing image.
        p_tea = self.probs(self.teacher, self.inputs(volume)[None])
        if float(dice_distance(p_tea, p_ref)[0]) > self.params.tau_ts(self.epoch):
            return False
        self.bank.mark_suitable(volume.key, self.epoch)
        return True

    # -- training ---------------------------------------------------------------------------
    def _crop(self, volume: Volume) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = self.inputs(volume), volume.y
        pads = []
        for size, want in zip(reversed(x.shape[1:]), reversed(self.crop)):
            pads += [0, max(0, want - size)]
        if any(pads):
            x = torch.nn.functional.pad(x[None], pads, mode="replicate")[0]
            y = torch.nn.functional.pad(y, pads, value=0) if y is not None else None
        slices = []
        for size, want in zip(x.shape[1:], self.crop):
            start = self.rng.randrange(size - want + 1)
            slices.append(slice(start, start + want))
        return x[(slice(None), *slices)], (y[tuple(slices)] if y is not None else None)

    def _labelled_batch(self, volumes: list[Volume], n: int):
        picked = [self._crop(self.rng.choice(volumes)) for _ in range(n)]
        x = torch.stack([p[0] for p in picked]).to(self.device)
        y = torch.stack([p[1] for p in picked]).to(self.device)
        return flip_pair(x, y, self.rng)

    def train_step(self, batch: list[Volume]) -> dict:
        p = self.params
        selected = [v for v in batch if self.suitable(v)]
        losses, total = {}, None
        if selected:
            x = torch.stack([self._crop(v)[0] for v in selected]).to(self.device)
            with torch.no_grad():
                v_all = views(x, p.n_weak, p.n_strong, self.rng, p.strong_ops, p.strong_magnitude)
                t_logits = self.teacher(v_all)
            loss = consistency_loss(t_logits, self.student(v_all), p.confidence_threshold,
                                    p.class_adaptive_threshold)
            losses["consistency"] = float(loss.detach())
            total = p.consistency_weight * loss
        train_cases = self.train_accepted()
        if train_cases and p.supervised_weight > 0:
            x, y = self._labelled_batch(train_cases, p.supervised_batch)
            loss = ce_dice_loss(self.student(x), y)
            losses["supervised"] = float(loss.detach())
            total = p.supervised_weight * loss + (total if total is not None else 0)
        if self.source and p.replay_weight > 0 and total is not None:
            x, y = self._labelled_batch(self.source, p.replay_batch)
            loss = ce_dice_loss(self.student(x), y)
            losses["replay"] = float(loss.detach())
            total = total + p.replay_weight * loss
        if self.appearance is not None and p.appearance_weight > 0:
            x, y = self._rendered_batch(p.appearance_batch)
            loss = ce_dice_loss(self.student(x), y)
            losses["appearance"] = float(loss.detach())
            total = p.appearance_weight * loss + (total if total is not None else 0)
        if total is not None:
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            update_teacher(self.teacher, self.student, self.reference, p.alpha, p.beta)
            losses["total"] = float(total.detach())
        self.step += 1
        return {"selected": [v.key for v in selected], "losses": losses}

    def _rendered_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n labelled source crops in the target's appearance, each with the slice geometry of a
        random unlabelled target image (appearance.render)."""
        xs, ys = [], []
        for _ in range(n):
            volume = self.rng.choice(self.source)
            x, y = self._crop(volume)
            rng = np.random.default_rng(self.rng.randrange(2**32))
            rendered = appearance.render(x[0].numpy(), y.numpy(), self._source_quantiles[volume.key],
                                         self.appearance, self.rng.choice(self.target).slices, rng,
                                         self.params.appearance_texture)
            xs.append(torch.from_numpy(rendered)[None])
            ys.append(y)
        return flip_pair(torch.stack(xs).to(self.device), torch.stack(ys).to(self.device), self.rng)

    @torch.no_grad()
    def refit_appearance(self) -> dict[str, float | None]:
        """The target class models from the teacher's softmax on every unlabelled target image
        (what the student reads of it); returns each label's fitted median."""
        read = (self.inputs(v) for v in self.target)
        pairs = ((x[0].numpy(), self.probs(self.teacher, x[None])[0].cpu().numpy()) for x in read)
        self.appearance = appearance.fit(pairs, *self._source_anatomy,
                                         rng=np.random.default_rng(self.params.seed + self.epoch))
        names = {value: name for name, value in self.bundle.labels.items()}
        medians = {names.get(c, str(c)): m for c, m in enumerate(self.appearance.medians())}
        log.info("epoch %d: target appearance medians %s (from %s)", self.epoch, medians,
                 dict(zip(names.values(), self.appearance.origin)))
        return medians

    def _appearance_due(self) -> bool:
        p = self.params
        return (p.appearance_weight > 0 and bool(self.source) and bool(self.target)
                and (self.appearance is None or self.epoch % p.appearance_refit == 0))

    def train_accepted(self) -> list[Volume]:
        return [v for i, v in enumerate(self.accepted) if not is_heldout(i, self.params.holdout_every)]

    def heldout_accepted(self) -> list[Volume]:
        return [v for i, v in enumerate(self.accepted) if is_heldout(i, self.params.holdout_every)]

    def epoch_batches(self) -> list[list[Volume]]:
        p = self.params
        order = list(self.target)
        self.rng.shuffle(order)
        batches = [order[i:i + p.batch_size] for i in range(0, len(order), p.batch_size)]
        if not batches and self.train_accepted():
            batches = [[] for _ in range(max(1, math.ceil(len(self.train_accepted()) / p.supervised_batch)))]
        if p.steps_per_epoch:
            batches = [batches[i % len(batches)] for i in range(p.steps_per_epoch)] if batches else []
        return batches

    def run_epoch(self, stop: Callable[[], bool] = lambda: False,
                  on_step: Callable[[dict], None] | None = None) -> dict | None:
        """One epoch; returns its summary, or None when `stop()` interrupted it (state unchanged
        apart from the steps taken, so the epoch reruns on resume)."""
        confident: set[str] = set()
        sums: dict[str, float] = {}
        steps = 0
        medians = self.refit_appearance() if self._appearance_due() else None
        for batch in self.epoch_batches():
            if stop():
                return None
            result = self.train_step(batch)
            confident.update(result["selected"])
            for name, value in result["losses"].items():
                sums[name] = sums.get(name, 0.0) + value
            steps += 1
            if on_step is not None:
                on_step({"epoch": self.epoch, "step": self.step, "losses": result["losses"],
                         "confident": len(confident), **self.thresholds()})
        summary = {
            "epoch": self.epoch,
            "steps": steps,
            "confident": len(confident),
            "consistently_confident": self.bank.n_consistently_confident(),
            "losses": {k: v / max(steps, 1) for k, v in sums.items()},
            **self.thresholds(),
        }
        if medians is not None:
            summary["appearance_medians"] = medians
        self.history.append(summary)
        self.epoch += 1
        return summary

    def thresholds(self) -> dict:
        tau_u = self.tau_u(self.epoch) if self.params.curriculum else None
        return {"tau_u": tau_u, "tau_ts": self.params.tau_ts(self.epoch)}

    def tau_u(self, epoch: int) -> float | None:
        """The eq. 1 tolerance at `epoch`; automatic parts from the unlabelled images' U (params);
        None while there are no unlabelled images to gate."""
        p = self.params
        if p.tau_u0 >= 0 and p.lambda_u >= 0:
            return p.tau_u(epoch)
        if not self.target:
            return None
        return p.tau_u(epoch, [self.reference_view(v)[1] for v in self.target])

    # -- evaluation and export -------------------------------------------------------------
    @torch.no_grad()
    def predict(self, network: torch.nn.Module, volume: Volume, reads: str | None = None) -> np.ndarray:
        """The network's raw label map on the working grid; `reads` defaults to the student's
        input kind."""
        x = self.network_input(volume, reads or self.params.student_input)
        return self.run(network, x[None]).argmax(1)[0].cpu().numpy()

    def delivered(self, label: np.ndarray, volume: Volume) -> np.ndarray:
        """`label` (working grid) after the bundle's post-processing steps, as the engine
        delivers its results (postprocess.py), here on the working grid."""
        return apply_steps(bundle_steps(self.bundle.metadata), label, volume.x[0].numpy().astype(np.float32),
                           self.spacing)

    def case_dice(self, network: torch.nn.Module, volumes: list[Volume], reads: str | None = None,
                  delivered: bool = False) -> list[float]:
        """Dice of `network` on each labelled volume; `delivered`: after the bundle's
        post-processing steps, as the clinician gets the result."""
        labels = [v for v in self.bundle.labels.values() if v != 0]
        scores = []
        for volume in volumes:
            label = self.predict(network, volume, reads)
            if delivered:
                label = self.delivered(label.astype(np.uint8), volume)
            scores.append(float(dice(label, volume.y.numpy(), labels)))
        return scores

    def mean_dice(self, network: torch.nn.Module, volumes: list[Volume], reads: str | None = None,
                  delivered: bool = False) -> float:
        scores = self.case_dice(network, volumes, reads, delivered)
        return float(np.mean(scores)) if scores else float("nan")

    def export(self, path: Path, network: str = "student") -> Bundle:
        """A bundle whose segmenter is the student (or teacher), reading raw target images."""
        metadata = copy.deepcopy(self.bundle.metadata)
        networks = {name: self.bundle.network(name) for name in self.bundle.network_names}
        networks.setdefault(REFERENCE, self.bundle.network("segmenter"))  # S_pre stays for U(x)
        networks["segmenter"] = copy.deepcopy(getattr(self, network)).cpu().eval()
        metadata["segmenter_input"] = self.params.student_input
        metadata.setdefault("training", {})["curriculum"] = {
            "params": self.params.to_dict(), "epochs_done": self.epoch, "steps_done": self.step,
            "base_version": self.bundle.version,
        }
        return save_bundle(path, metadata, networks)

    def state_dict(self) -> dict:
        return {
            "student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(), "bank": self.bank.state_dict(),
            "epoch": self.epoch, "step": self.step, "history": self.history,
            "rng": self.rng.getstate(), "params": self.params.to_dict(),
            "base_version": self.bundle.version,
            "appearance": None if self.appearance is None else {
                "quantiles": torch.from_numpy(self.appearance.quantiles), "origin": self.appearance.origin},
        }

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.bank.load_state_dict(state["bank"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])
        self.rng.setstate(state["rng"])
        fitted = state.get("appearance")
        self.appearance = None if fitted is None else appearance.TargetAppearance(
            fitted["quantiles"].numpy(), list(fitted["origin"]))


def is_heldout(index: int, every: int) -> bool:
    """Accepted case number `index` (acceptance order) is held out: the 2nd, then every k-th."""
    return every > 0 and index % every == 1


def left_out(manifest: dict) -> str | None:
    """Why an accepted case (its store manifest) is left out of training, or None: a case holding
    new structures the model has no label for."""
    added = manifest.get("structures") or {}
    if not added:
        return None
    return (f"it holds new structures ({', '.join(sorted(added))}) the model has no label for; the trainer "
            "learns only the model's own labels, so it leaves this case out (the case stays in the store)")


def labelled_pairs(folder) -> list[tuple[Path, Path]]:
    """(image, label) paths of a labelled data folder (images/ and labels/, matched by file name);
    none when `folder` is None."""
    if not folder:
        return []
    labels = Path(folder) / "labels"
    return [(path, labels / path.name) for path in sorted((Path(folder) / "images").iterdir())
            if (labels / path.name).is_file()]
