"""Losses for restoration.

Pixel losses map (restored, target) to a scalar: L1, Charbonnier and PSNR loss.
:class:`PatchContrastiveLoss` maps a batch of token features to a scalar: the contrastive term of IPT's
pre-training (Chen et al., "Pre-Trained Image Processing Transformer", CVPR 2021).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CharbonnierLoss", "L1Loss", "PSNRLoss", "PatchContrastiveLoss"]


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


class PatchContrastiveLoss(nn.Module):
    """SupCon loss over the patch tokens of a batch, with the image as the label (IPT pre-training).

    Every token is an anchor; its positives are the other tokens of the same image and everything else in
    the batch is a negative, so patches of one image are pulled together and patches of different images
    pushed apart (IPT; MindSpore ``SupConLoss`` with the tokens as the views of an image). With
    L2-normalised tokens ``z`` and ``s(i, a) = z_i·z_a / temperature``, anchor ``i`` costs

        -(temperature / base_temperature) · mean over positives p of [s(i, p) - log sum_{a != i} exp s(i, a)]

    and the loss is the mean over all anchors. It is computed in float32 even under autocast: the logits are
    scaled by 1 / 0.07. The similarity matrix has (N·P)² entries: 1 GiB for IPT's 64 images per device.

    Args:
        temperature: the softmax temperature; 0.07 as IPT (MindSpore ``MyTrain``).
        base_temperature: SupCon's reference temperature; the loss is scaled by ``temperature /
            base_temperature`` (1 with IPT's values).
    """

    def __init__(self, *, temperature: float = 0.07, base_temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError(
                f"PatchContrastiveLoss temperature={temperature}, base_temperature={base_temperature}; "
                "expected positive numbers"
            )
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens``: N×P×D, P tokens of dimension D for each of N >= 2 images (IPT: N×256×576)."""
        if tokens.ndim != 3 or tokens.shape[0] < 2 or tokens.shape[1] < 2:
            raise ValueError(
                "PatchContrastiveLoss expects N×P×D tokens with N >= 2 images (the negatives) and P >= 2 "
                f"tokens per image (the positives); got shape {tuple(tokens.shape)}"
            )
        num_images, num_tokens, _ = tokens.shape
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            features = F.normalize(tokens.float(), dim=-1).flatten(0, 1)
            logits = features @ features.T / self.temperature
            others = logits.clone()
            others.diagonal().fill_(-torch.inf)  # an anchor is not its own positive or negative
            log_denominator = torch.logsumexp(others, dim=1)
            # Tokens are grouped by image, so the positives of a token are its block of the similarity
            # matrix without the diagonal.
            block_sums = logits.view(-1, num_images, num_tokens).sum(dim=2)
            own_block = torch.arange(num_images, device=features.device).repeat_interleave(num_tokens)
            positive_logits = (block_sums.gather(1, own_block[:, None]).squeeze(1) - logits.diagonal()) / (
                num_tokens - 1
            )
            loss = -(positive_logits - log_denominator)
        return (self.temperature / self.base_temperature) * loss.mean()
