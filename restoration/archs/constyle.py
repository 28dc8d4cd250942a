"""The ConStyle v2 prompter: a small CNN that maps a degraded image to restoration prompts.

Fan, Zhang and Chang, "ConStyle v2: A Strong Prompter for All-in-One Image Restoration", arXiv 2406.18242
(2024), and "IRConStyle" (ConStyle v1), arXiv 2402.15784 (official code: ``archs/ConStyle_v2_arch.py``,
class ``MyBaseEncoder``; ``archs/ConStyle_arch.py`` holds the same encoder without the classifier).

A plain CNN, not a ResNet: four stages of bias-free 3×3 convs with LeakyReLU(0.1) (no normalisation),
global average pooling to 256 channels, two Linear + BatchNorm1d + GELU heads to the 128-d latents q0 and
q1, and, for v2 pre-training, a 256 → 512 → classes classifier. The prompts of the prompted U-Nets
(:mod:`restoration.archs.prompted`) are the outputs of stages 1-3 (H/2, H/4, H/8) and the latent q1.
Parameter names are those of the official encoder, so ``encoder_q.*`` of ``pretrained_ConStyle_v2.pth``
loads strictly (1,190,832 parameters without the classifier, 644,584 in the 1000-class classifier).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

__all__ = ["ConStyleEncoder", "PrompterOutput"]

# (in, out, stride) of the bias-free 3×3 convs of each stage (official MyBaseEncoder.stage1..4)
_STAGES = (
    ((3, 16, 1), (16, 16, 1), (16, 32, 2)),
    ((32, 32, 1), (32, 64, 2)),
    ((64, 128, 1), (128, 128, 2)),
    ((128, 256, 1), (256, 256, 2)),
)


class PrompterOutput(NamedTuple):
    """What the prompter gives a restoration network.

    Attributes:
        q0: N×128 latent after the first head (used by the style loss).
        q1: N×128 latent after the second head: the "style" vector that modulates the bottleneck.
        prompts: the visual prompts, stage 1-3 outputs: 32×H/2×W/2, 64×H/4×W/4, 128×H/8×W/8.
        logits: N×classes classifier logits, or ``None`` for an encoder built without a classifier.
    """

    q0: torch.Tensor
    q1: torch.Tensor
    prompts: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    logits: torch.Tensor | None


class _ConvAct(nn.Sequential):
    # keys "<i>.0.weight": the official ConvAct is Sequential(conv, LeakyReLU)
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.LeakyReLU(0.1),
        )


class _LinearBNAct(nn.Sequential):
    # keys "0.*" Linear, "1.*" BatchNorm1d (official LinerBNAct)
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features), nn.GELU())


class ConStyleEncoder(nn.Module):
    """The ConStyle prompter (official ``MyBaseEncoder``).

    Args:
        num_classes: classes of the v2 pretext classifier (1000 for ImageNet); ``None`` builds the v1
            encoder without one (the ``ConStyle`` module inside the official prompted networks).
        latent_dim: width of q0 and q1 (128 in both papers).
        dropout: dropout of the classifier's hidden layer (0.5 as the official code).
    """

    def __init__(
        self, *, num_classes: int | None = 1000, latent_dim: int = 128, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"ConStyleEncoder num_classes={num_classes}; expected >= 1 or None")
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.stage1, self.stage2, self.stage3, self.stage4 = (
            nn.Sequential(*(_ConvAct(*layer) for layer in stage)) for stage in _STAGES
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mlp1 = _LinearBNAct(256, latent_dim)
        self.mlp2 = _LinearBNAct(latent_dim, latent_dim)
        self.classifier = (
            nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Dropout(dropout), nn.Linear(512, num_classes))
            if num_classes is not None
            else None
        )

    # prompts come at H/2, H/4, H/8 and the pooled stage at H/16: any size works, odd sizes round up
    size_multiple = 1

    def forward(self, images: torch.Tensor) -> PrompterOutput:
        """Prompts of an N×3×H×W batch in [0, 1] (no normalisation, as the official code)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"ConStyleEncoder expects N×3×H×W images, got {tuple(images.shape)}")
        fea0 = self.stage1(images)
        fea1 = self.stage2(fea0)
        fea2 = self.stage3(fea1)
        pooled = self.pool(self.stage4(fea2)).flatten(1)
        q0 = self.mlp1(pooled)
        q1 = self.mlp2(q0)
        logits = self.classifier(pooled) if self.classifier is not None else None
        return PrompterOutput(q0=q0, q1=q1, prompts=(fea0, fea1, fea2), logits=logits)
