"""Per-iteration learning-rate schedule: linear warm-up, then cosine decay to a minimum (the paper's recipe)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """The multiple of the peak lr at optimizer step ``step`` (0-based).

    Linear warm-up from 1 / warmup_steps to 1 over ``warmup_steps`` steps (step ``warmup_steps - 1`` is at the peak),
    then ``min_ratio + (1 - min_ratio) * (1 + cos(pi * t)) / 2`` with t going from 0 to 1 over the remaining steps;
    ``min_ratio`` from the last step on."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps - 1)
    t = min(1.0, (step - warmup_steps) / decay)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


class WarmupCosine(LRScheduler):
    """Warm-up + cosine per optimizer step, for every parameter group (each from its own initial lr, so a head
    group at 0.1 x the adapter lr keeps that ratio). ``min_lr`` is the floor of the group with the largest lr;
    the other groups' floors keep their ratio."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr: float,
                 last_epoch: int = -1) -> None:
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(f"expected total_steps >= 1 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        peak = max(g.get("initial_lr", g["lr"]) for g in optimizer.param_groups)
        self.min_ratio = min_lr / peak if peak > 0 else 0.0
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = warmup_cosine_factor(self.last_epoch, self.warmup_steps, self.total_steps, self.min_ratio)
        return [base * factor for base in self.base_lrs]
