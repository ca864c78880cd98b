"""Eq. 4 of the patent: the teacher follows the student and is pulled back to the reference.

theta_tea <- (1 - alpha - beta) * theta_tea + alpha * theta_stu + beta * theta_pre, after every
optimiser step. Floating-point buffers (normalisation statistics) follow the same rule.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def update_teacher(teacher: nn.Module, student: nn.Module, reference: nn.Module,
                   alpha: float, beta: float) -> None:
    keep = 1.0 - alpha - beta
    tea = dict(teacher.named_parameters())
    tea.update(dict(teacher.named_buffers()))
    stu = dict(student.named_parameters())
    stu.update(dict(student.named_buffers()))
    ref = dict(reference.named_parameters())
    ref.update(dict(reference.named_buffers()))
    for name, value in tea.items():
        if not torch.is_floating_point(value):
            value.copy_(stu[name])  # counters such as num_batches_tracked
            continue
        value.mul_(keep).add_(stu[name], alpha=alpha).add_(ref[name], alpha=beta)
