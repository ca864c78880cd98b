"""Every constant of the curriculum, with where it comes from; schedules of the two thresholds."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import InputError


U_RAMP_EPOCHS = 10  # epochs for an automatic tau_u to go from the lowest to the highest U


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
    # Source uncertainty tolerance tau_u (eq. 1 gate), rising linearly per epoch. U's scale depends
    # on the bundle's networks, so by default (< 0) both come from the unlabelled target images'
    # own U: tau_u starts at the lowest (the most confident image is admitted first) and rises by
    # (highest - lowest) / U_RAMP_EPOCHS per epoch, so every image can be admitted by then.
    tau_u0: float = -1.0
    lambda_u: float = -1.0
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
    # Per-class thresholds (FreeMatch's self-adaptive class thresholds, computed per batch): a
    # voxel the teacher labels c counts when its top softmax reaches confidence_threshold x (the
    # teacher's mean top softmax over the voxels it labels c) / (that mean of its most confident
    # class). Assumption: a single threshold silences the classes the teacher is least sure of
    # (their voxels rarely reach it), so the student learns to stop predicting them; scaling by
    # each class's own confidence keeps every predicted class in the pseudo-labels. No constant.
    class_adaptive_threshold: bool = False
    supervised_weight: float = 1.0  # accepted (clinician-corrected) labels, patent Fig. 5
    supervised_batch: int = 2
    replay_weight: float = 0.05  # labelled source data, low weight against forgetting (METHOD.md 3)
    replay_batch: int = 1
    # Target-appearance replay (appearance.py): labelled source crops rendered in the appearance
    # the teacher finds in the unlabelled target images, trained on with their source labels.
    # Unlike pseudo-labels its labels are exact, so it does not reinforce the teacher's errors;
    # 1.0 weighs it like the consistency loss. Off by default (0): it gained brain T2 +0.008 Dice,
    # inside the noise, and cost xray-drr 0.010 (docs/experiments.md), so it is not a default.
    appearance_weight: float = 0.0
    appearance_batch: int = 2
    appearance_refit: int = 1  # epochs between refits of the target class models from the teacher
    # Within-label texture of rendered crops (appearance.render): "flat" (target median + scaled
    # source fine texture) or "rank" (per-label histogram matching). Chosen on the accepted cases
    # (brain-t1-t2 target val, 288 steps from 1.1): flat 0.604, rank 0.597 Dice.
    appearance_texture: str = "flat"
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
    # What the reference S_pre reads for U(x) (eq. 1) and the gate (eq. 3): "preview" = G(x) as in
    # the patent, or "image" = the raw target, for a reference trained to read it (domain
    # randomisation); then no generator is needed.
    reference_input: str = "preview"
    curriculum: bool = True  # False: plain mean teacher (every image, every epoch, no U, no gate)
    steps_per_epoch: int = 0  # 0: one pass over the target images
    # The prompt network's stage (prompt_stage.py), after the segmenter's epochs, for a bundle
    # with a prompt network: fine-tuned with train_prompt's simulated user, on this share of the
    # samples from the training accepted cases (the clinician's labels on the target images it is
    # used on), the rest from the labelled source data (synthetic contrast, lesions), when the
    # trainer has it, so it does not forget the objects accepted cases lack. Half and
    # half keeps both kinds of objects in every batch. Steps: prompt_epochs x prompt_steps of
    # prompt_batch samples; a fine-tuning step of 4 samples took 0.5 s on one niced CPU thread (an
    # 80x96x80 case on the 2 mm grid; 0.65 s on a brain-t1-t2 case), so about 4 min in all, and
    # the gate about 25 s per held-out brain case (10 labels). The learning rate is a quarter of
    # training from scratch (2e-3): it starts from a trained network. None of these is tuned.
    prompt_share: float = 0.5
    prompt_epochs: int = 4
    prompt_steps: int = 100  # per epoch; the status gets one line per epoch
    prompt_batch: int = 4
    prompt_lr: float = 5e-4
    # Published when, on the held-out accepted cases, each Dice after 1 and 5 simulated clicks
    # (from an empty mask and from the current model's draft) is at least the current network's
    # + prompt_margin and no more clicks lower their object's Dice by > 0.01 (prompt_promotion.py).
    prompt_margin: float = 0.0
    crop_size: int = 0  # training crop edge in voxels; 0: the bundle's roi_size
    seed: int = 0

    def tau_u(self, epoch: int, u_values=()) -> float:
        """tau_u at `epoch`; `u_values` (the unlabelled images' U) set what is left automatic."""
        start, rate = self.tau_u0, self.lambda_u
        if (start < 0 or rate < 0) and len(u_values) == 0:
            raise InputError("An automatic tau_u needs the unlabelled images' uncertainties.")
        if start < 0:
            start = min(u_values)
        if rate < 0:
            rate = (max(u_values) - min(u_values)) / U_RAMP_EPOCHS
        return start + rate * epoch

    def tau_ts(self, epoch: int) -> float:
        return self.tau_ts0 + self.lambda_ts * epoch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def for_bundle(cls, metadata: dict, overrides: dict | None = None) -> "CurriculumParams":
        """The parameters for a bundle: teacher, student and reference read what its segmenter
        reads (metadata `segmenter_input`, as the engine decides: the raw image for a bundle
        without a generator), under its metadata's `curriculum_params` (what suits its task,
        chosen on its validation split or accepted cases), under the caller's overrides."""
        image = metadata.get("segmenter_input") == "image" or "generator" not in metadata.get("networks", {})
        reads = "image" if image else "preview"
        return cls.from_dict({"student_input": reads, "reference_input": reads,
                              **metadata.get("curriculum_params", {}), **(overrides or {})})

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
        if self.confident_after < 1 or self.tta_n < 2:
            raise InputError("confident_after must be >= 1 and tta_n >= 2 (U compares predictions).")
        for name in ("student_input", "reference_input"):
            if getattr(self, name) not in ("preview", "image"):
                raise InputError(f"{name} must be 'preview' (G(x)) or 'image' (raw target).")
        if self.appearance_weight < 0 or self.appearance_batch < 1 or self.appearance_refit < 1:
            raise InputError("Appearance replay needs appearance_weight >= 0 (0: off), appearance_batch >= 1 "
                             "and appearance_refit >= 1 epoch.")
        if self.appearance_texture not in ("rank", "flat"):
            raise InputError("appearance_texture must be 'rank' or 'flat' (appearance.render).")
        if not (0 <= self.prompt_share <= 1 and self.prompt_epochs >= 0 and self.prompt_steps >= 1
                and self.prompt_batch >= 1 and self.prompt_lr > 0 and -1 <= self.prompt_margin <= 1):
            raise InputError("The prompt stage needs prompt_share in [0, 1], prompt_epochs >= 0 (0: off), "
                             "prompt_steps and prompt_batch >= 1, prompt_lr > 0 and prompt_margin in [-1, 1].")
        if self.holdout_every < 0 or self.holdout_every == 1:
            raise InputError("holdout_every must be 0 (no hold-out) or >= 2 so that some accepted "
                             "cases are trained on.")
