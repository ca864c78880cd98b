"""Cross pseudo supervision (Chen et al., CVPR 2021), a peer of the curriculum (METHOD.md section 8).

Two students start from the bundle's segmenter, the second with its weights perturbed so that the
two disagree; on each unlabelled target crop each learns from the other's hard labels (augmented
views alike for both). As in the paper (loss = supervised + lambda * cross), each student also
learns from labelled crops at the cross term's weight: labelled source crops, as many per step as
unlabelled target images (the anchor; without it the two students agreed on background and
collapsed), and accepted cases as the curriculum's student does. No image gate, no memory bank, no
teacher average, no appearance replay. The first student is the result (`export` and the
benchmarks read `student`).
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from ..errors import InputError
from .augment import views
from .losses import ce_dice_loss, consistency_loss
from .trainer import CurriculumTrainer

# Std of the perturbation of the second student's weights, relative to each tensor's own std.
PERTURBATION = 0.05


class CrossPseudoSupervision(CurriculumTrainer):
    def __init__(self, bundle, params, target, accepted=(), source=(), device=None):
        if not source and not accepted:
            raise InputError("Cross pseudo supervision needs labelled cases to anchor its two students: "
                             "give labelled source cases or accepted cases.")
        super().__init__(bundle, dataclasses.replace(params, curriculum=False, appearance_weight=0.0), target,
                         accepted, source, device)
        self.partner = copy.deepcopy(self.student).train()
        generator = torch.Generator().manual_seed(params.seed + 1)
        with torch.no_grad():
            for p in self.partner.parameters():
                if p.numel() > 1:
                    p.add_(torch.randn(p.shape, generator=generator).to(p) * PERTURBATION * p.std())
        self.partner_optimizer = torch.optim.AdamW(self.partner.parameters(), lr=params.lr,
                                                   weight_decay=params.weight_decay)

    def train_step(self, batch) -> dict:
        p = self.params
        totals = [None, None]
        losses = {}
        networks = (self.student, self.partner)

        def add(i, weight, loss):
            totals[i] = weight * loss + (totals[i] if totals[i] is not None else 0)

        if batch:
            x = torch.stack([self._crop(v)[0] for v in batch]).to(self.device)
            v_all = views(x, p.n_weak, p.n_strong, self.rng, p.strong_ops, p.strong_magnitude)
            logits = [net(v_all) for net in networks]
            for i in (0, 1):
                loss = consistency_loss(logits[1 - i].detach(), logits[i], p.confidence_threshold,
                                        p.class_adaptive_threshold)
                add(i, p.consistency_weight, loss)
            losses["cross"] = float(totals[0].detach())
        accepted = self.train_accepted()
        if accepted and p.supervised_weight > 0:
            x, y = self._labelled_batch(accepted, p.supervised_batch)
            for i, net in enumerate(networks):
                add(i, p.supervised_weight, ce_dice_loss(net(x), y))
        if self.source:
            x, y = self._labelled_batch(self.source, p.batch_size)
            for i, net in enumerate(networks):
                loss = ce_dice_loss(net(x), y)
                add(i, p.consistency_weight, loss)
                if i == 0:
                    losses["anchor"] = float(loss.detach())
        if totals[0] is not None:
            for optimizer, total in zip((self.optimizer, self.partner_optimizer), totals):
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
            losses["total"] = float(totals[0].detach())
        self.step += 1
        return {"selected": [v.key for v in batch], "losses": losses}
