"""Stage ``restore``: supervised restoration of any backbone from (degraded, ground truth) pairs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from restoration.stages.base import RestorationStage

__all__ = ["RestoreStage"]


class RestoreStage(RestorationStage):
    """Train ``net`` to map ``batch["lq"]`` to ``batch["gt"]`` under a pixel loss.

    Args:
        loss: ``(restored, target) -> scalar`` (L1, Charbonnier or PSNR loss, see ``restoration.losses``).
        **base: the shared options of :class:`~restoration.stages.base.RestorationStage`
            (network, optimizer, scheduler, EMA, validation).
    """

    def __init__(self, *, loss: nn.Module, **base: Any) -> None:
        super().__init__(**base)
        self.loss = loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        restored = self.net(batch["lq"])
        loss = self.loss(restored, batch["gt"])
        self.log("train/loss", loss, prog_bar=True)
        return self.checked_loss(loss)
