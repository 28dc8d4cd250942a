"""Pixel losses for restoration: L1, Charbonnier and PSNR loss. Each maps (restored, target) to a scalar."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["CharbonnierLoss", "L1Loss", "PSNRLoss"]


class L1Loss(nn.Module):
    """Mean absolute error (IPT, ConStyle v2 restoration)."""

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (restored - target).abs().mean()


class CharbonnierLoss(nn.Module):
    """Charbonnier loss ``mean(sqrt((x - y)^2 + eps^2))``: a smooth L1 (Lai et al., LapSRN, CVPR 2017).

    Args:
        eps: smoothing constant; 1e-3 as in Restormer / MPRNet.
        reduction: ``"mean"``, or ``"sum"`` as in the PTG-RM / SNR-aware release.
    """

    def __init__(self, *, eps: float = 1e-3, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"CharbonnierLoss reduction={reduction!r}; expected 'mean' or 'sum'")
        self.eps = eps
        self.reduction = reduction

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = torch.sqrt((restored - target).square() + self.eps**2)
        return loss.mean() if self.reduction == "mean" else loss.sum()


class PSNRLoss(nn.Module):
    """Negative PSNR averaged over images (NAFNet, Chen et al., ECCV 2022): ``10·log10(mse + 1e-8)``.

    Minimising it maximises the mean per-image PSNR for images in [0, 1].
    """

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mse = (restored - target).square().flatten(1).mean(dim=1)
        return (10.0 / math.log(10.0)) * torch.log(mse + 1e-8).mean()
