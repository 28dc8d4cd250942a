"""The guide interface: a frozen pre-trained model mapping degraded images to a feature vector.

A guide is built once, put in eval mode with ``requires_grad_(False)``, and stays that way:
``train()`` cannot switch it back, its forward runs under ``no_grad``, and a stage keeps it out of
the optimizer, the EMA and DDP's gradient synchronisation. Concrete guides (CLIP through
open_clip, Stable Diffusion through diffusers, this framework's own checkpoints) implement
:meth:`Guide.encode` on inputs already resized and normalised by :meth:`Guide.preprocess`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Guide"]


class Guide(nn.Module):
    """Base class of frozen feature extractors: N×3×H×W images in [0, 1] → N×``dim`` features."""

    dim: int

    def freeze(self) -> Guide:
        """Eval mode and no gradients, for good; call at the end of ``__init__``."""
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Guide:
        # Lightning calls .train() on the whole stage every epoch; a guide's BatchNorm and dropout
        # must keep their inference behaviour.
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize and normalise to the guide's own input convention (identity by default)."""
        return images

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(self.preprocess(images))
