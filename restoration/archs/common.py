"""Small pieces shared by the networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelLayerNorm", "pad_to_multiple"]


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad the bottom and right of an N×C×H×W batch up to a multiple of ``multiple``.

    Crop the result back with ``[..., :height * s, :width * s]`` (``s`` the network's scale).
    Reflection needs the pad to be smaller than the side; tiny inputs fall back to replication.
    """
    height, width = images.shape[-2:]
    pad_bottom, pad_right = -height % multiple, -width % multiple
    if pad_bottom == 0 and pad_right == 0:
        return images
    mode = "reflect" if pad_bottom < height and pad_right < width else "replicate"
    return F.pad(images, (0, pad_right, 0, pad_bottom), mode=mode)


class ChannelLayerNorm(nn.LayerNorm):
    """Layer norm over the channels of each pixel of an N×C×H×W map.

    Run as a fused layer norm on a channels-last view: one pass forward and backward instead of the
    separate mean, variance and affine kernels of a per-pixel norm written out along dim 1.
    """

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
