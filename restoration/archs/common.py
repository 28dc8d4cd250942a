"""Small pieces shared by the networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pad_to_multiple"]


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
