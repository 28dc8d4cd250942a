"""Learning-rate schedules for iteration-based training (configured as ``_partial_`` Hydra targets)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from restoration.errors import ConfigError

__all__ = ["WarmupCosineLR"]


class WarmupCosineLR(LRScheduler):
    """Linear warm-up from 0 to the base rate, an optional constant hold, then cosine annealing to ``min_lr``.

    Stepped every iteration. The hold reproduces BasicSR's ``CosineAnnealingRestartCyclicLR`` with a first
    period whose ``eta_min`` is the base rate (ConStyle v2: 3e-4 for 243,312 iterations, then cosine to 1e-6).

    The rate is a closed-form function of the step count, so the scheduler's state is just that
    count and a resumed run continues the curve exactly.

    Args:
        optimizer: the wrapped optimizer.
        total_steps: length of the whole schedule in optimizer steps (usually ``trainer.max_steps``);
            after it the rate stays at ``min_lr``.
        warmup: fraction of ``total_steps`` spent in the linear warm-up (0: none); a fraction
            rather than a step count so short test runs and long runs share one config.
        min_lr: final learning rate (absolute, e.g. 1e-7 as PTG-RM's cosine schedule).
        hold: fraction of ``total_steps`` after the warm-up spent at the base rate before the cosine
            starts (rounded to whole steps).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        total_steps: int,
        warmup: float = 0.0,
        min_lr: float = 0.0,
        hold: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if total_steps < 1 or not 0.0 <= warmup < 1.0 or not 0.0 <= hold < 1.0 - warmup:
            raise ConfigError(
                f"WarmupCosineLR total_steps={total_steps}, warmup={warmup}, hold={hold}; "
                "expected total_steps >= 1, a warm-up fraction in [0, 1) and a hold fraction >= 0 "
                "with warmup + hold < 1"
            )
        self.total_steps = total_steps
        self.warmup_steps = int(warmup * total_steps)
        self.cosine_start = self.warmup_steps + round(hold * total_steps)
        self.min_lr = min_lr
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """Fraction of the way from ``min_lr`` to the base rate at ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step < self.cosine_start:
            return 1.0
        progress = min(1.0, (step - self.cosine_start) / max(1, self.total_steps - self.cosine_start))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        factor = self.factor(self.last_epoch)
        if self.last_epoch < self.warmup_steps:
            return [base_lr * factor for base_lr in self.base_lrs]
        return [self.min_lr + (base_lr - self.min_lr) * factor for base_lr in self.base_lrs]
