"""Every constant of the curriculum, with where it comes from; schedules of the two thresholds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import InputError


@dataclass
class CurriculumParams:
    epochs: int = 20
    batch_size: int = 2  # unlabelled target images per step
    # AdamW as in the patent, whose 1e-3 trains from scratch; the student here starts as the
    # shipped model, and 1e-3 first undid part of it (phantom-ct-mr bundle 1.1, mean teacher:
    # 0.452 -> 0.443 Dice after 5 epochs; 2e-4: 0.456)
    lr: float = 2e-4
    weight_decay: float = 1e-4
    # Eq. 4: theta_tea = (1 - alpha - beta) theta_tea + alpha theta_stu + beta theta_pre, per step.
    alpha: float = 0.001
    beta: float = 0.001
    # Source uncertainty tolerance tau_u (eq. 1 gate): starts at 0.05, rises linearly per epoch.
    # U's scale depends on the bundle's networks, so a bundle sets its own start: phantom-ct-mr's
    # unlabelled target training images have U 0.22-0.41, so from 0.05 the curriculum admitted
    # nothing for half of its 30 epochs; from 0.223 (their lowest U, rounded up) it starts with
    # its most confident image: validation 0.586 -> 0.614, test 0.612 -> 0.640 (with
    # pseudo_label_deep; benchmarks/curriculum.py --auto-lambda-u, 30 epochs).
    tau_u0: float = 0.05
    lambda_u: float = 0.02
    # Warm-up gate tau_ts (eq. 3, teacher vs reference-on-translation disagreement): from 0.3, rising.
    tau_ts0: float = 0.3
    lambda_ts: float = 0.05
    # Memory bank: an image judged suitable in this many epochs skips U and the gate (patent: 5).
    confident_after: int = 5
    tta_n: int = 4  # transforms for U(x_t) (uncertainty.default_transforms)
    n_weak: int = 2  # m = n_weak + n_strong augmented views per image in the consistency loss
    n_strong: int = 2
    strong_ops: int = 2  # RandAugment: ops drawn per strong view
    strong_magnitude: float = 0.5  # RandAugment magnitude in [0, 1]
    consistency_weight: float = 1.0
    # Eq. 2 counts only voxels where the teacher's top softmax reaches this (0: every voxel, as in
    # the patent). Not in the patent: on phantom-ct-mr the starting teacher's pseudo-labels are
    # about 0.5 Dice; of the voxels that it or the truth calls foreground, those it is unsure of
    # (46%) are right 40% of the time, the sure ones 62%. 0.9 gave curriculum 0.551 against 0.540 and
    # plain mean teacher 0.554 against 0.543 (benchmarks/curriculum.py, 30 epochs; HD95 28 and 21
    # against 35 mm).
    confidence_threshold: float = 0.9
    # Not in the patent: the teacher's hard labels, fitted to each view's image before they teach
    # the student (losses.pseudo_labels, boundary_fit.fit_labels): voxels within
    # pseudo_label_fit_mm of a label's boundary are relabelled by how much likelier their
    # intensity is in that label's core than in a ring around it, less their signed distance /
    # pseudo_label_prior_mm; these voxels count whatever the teacher's confidence. 0 (default):
    # H(S_tea) as in the patent. Whether it helps depends on the task, so a bundle turns it on in
    # its metadata (`curriculum_params`, see for_bundle). phantom-ct-mr (on, 6 / 4 mm): curriculum
    # on the target validation split 0.512 -> 0.539 (liver 0.715 -> 0.800, kidneys 0.577 ->
    # 0.591, spleen 0.646 -> 0.716, lesion 0.112 -> 0.050), on the test split 0.549 -> 0.552
    # (liver, kidneys, spleen up, lesion down; HD95 29 -> 37 mm). xray-drr (off): the test split
    # curriculum fell 0.879 -> 0.848 with it, below vanilla (0.865).
    pseudo_label_fit_mm: float = 0.0
    pseudo_label_prior_mm: float = 4.0
    # Not in the patent: that fit as the engine's deep fit (boundary_fit.fit_mask deep=True), with
    # the bundle's `boundary_fit.swallowed` sides for what teacher and student read, so labels
    # that swallowed the tissue around them give it back in the pseudo-labels too. phantom-ct-mr
    # (on; kidneys and spleen swallow the target's fat), 30 epochs: curriculum on the target
    # validation split 0.569 -> 0.586, test split 0.582 -> 0.612 (kidneys 0.658 -> 0.709,
    # spleen 0.653 -> 0.699, HD95 31 -> 21 mm); with the bundle's tau_u0 as well 0.614 / 0.640.
    pseudo_label_deep: bool = False
    # Not in the patent: the labels the bundle puts inside another (`inside`, a lesion in the
    # liver) found again in each view's pseudo-labels by their contrast to their parent, as the
    # engine does (postprocess.refit_inside, the bundle's `inside_contrast`). The starting
    # teacher on phantom-ct-mr leaves the target's lesions as holes in the liver (their contrast
    # to it is reversed from CT's), so without it the student never learns them. Needs the
    # bundle's contrast for what teacher and student read (student_input "image": target).
    # phantom-ct-mr (on), 30 epochs: curriculum on the target validation split 0.539 without
    # (tau_u reaching the 90th percentile of U at the last epoch), 0.585 with (at half the
    # epochs; lesion 0.20); on the test split 0.552 -> 0.582 (at the last epoch), plain mean
    # teacher with the same pseudo-labels 0.549 -> 0.594 (lesion 0.22).
    pseudo_label_inside: bool = False
    supervised_weight: float = 1.0  # accepted (clinician-corrected) labels, patent Fig. 5
    supervised_batch: int = 2
    replay_weight: float = 0.05  # labelled source data, low weight against forgetting (METHOD.md 3)
    replay_batch: int = 1
    # Every holdout_every-th accepted case (second, then every k-th) is kept out of training and
    # decides promotion (promotion.py): publish when the student's held-out Dice is at least every
    # kept version's + promotion_margin. 0: train on every accepted case (nothing held out, so
    # nothing can be published).
    holdout_every: int = 3
    promotion_margin: float = 0.0
    publish_every: int = 5  # epochs between promotion checks (each publication is a version)
    # What teacher and student read: "preview" = G(x) (the Engine's tdgan path) or "image" = raw
    # target x (patent; needs a reference that is already fair on raw target images).
    student_input: str = "preview"
    curriculum: bool = True  # False: plain mean teacher (every image, every epoch, no U, no gate)
    steps_per_epoch: int = 0  # 0: one pass over the target images
    crop_size: int = 0  # training crop edge in voxels; 0: the bundle's roi_size
    seed: int = 0

    def tau_u(self, epoch: int) -> float:
        return self.tau_u0 + self.lambda_u * epoch

    def tau_ts(self, epoch: int) -> float:
        return self.tau_ts0 + self.lambda_ts * epoch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def for_bundle(cls, metadata: dict, overrides: dict | None = None) -> "CurriculumParams":
        """The parameters for a bundle: its metadata's `curriculum_params` (what suits its task,
        chosen on its validation split) under the caller's overrides."""
        return cls.from_dict({**metadata.get("curriculum_params", {}), **(overrides or {})})

    @classmethod
    def from_dict(cls, values: dict | None) -> "CurriculumParams":
        values = dict(values or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InputError(f"Unknown curriculum parameters {unknown}; known: {sorted(known)}.")
        out = {}
        for name, value in values.items():
            kind = type(getattr(cls(), name))
            try:
                if kind is bool and isinstance(value, str):
                    value = value.lower() in ("1", "true", "yes", "on")
                out[name] = kind(value)
            except (TypeError, ValueError):
                raise InputError(f"Curriculum parameter {name} must be {kind.__name__}, got {value!r}.") from None
        params = cls(**out)
        params.check()
        return params

    def check(self) -> None:
        if not (0 <= self.alpha and 0 <= self.beta and self.alpha + self.beta <= 1):
            raise InputError("Teacher update needs alpha, beta >= 0 and alpha + beta <= 1.")
        if self.epochs < 0 or self.batch_size < 1 or self.n_weak + self.n_strong < 1:
            raise InputError("Curriculum needs epochs >= 0, batch_size >= 1 and at least one view.")
        if not 0 <= self.confidence_threshold < 1:
            raise InputError("confidence_threshold must be in [0, 1): the teacher's top softmax "
                             "a voxel needs to count in the consistency loss.")
        if self.pseudo_label_fit_mm < 0 or self.pseudo_label_prior_mm <= 0:
            raise InputError("pseudo_label_fit_mm must be >= 0 (0: no fit) and pseudo_label_prior_mm > 0.")
        if self.confident_after < 1 or self.tta_n < 2:
            raise InputError("confident_after must be >= 1 and tta_n >= 2 (U compares predictions).")
        if self.student_input not in ("preview", "image"):
            raise InputError("student_input must be 'preview' (G(x)) or 'image' (raw target).")
        if self.holdout_every < 0 or self.holdout_every == 1:
            raise InputError("holdout_every must be 0 (no hold-out) or >= 2 so that some accepted "
                             "cases are trained on.")
