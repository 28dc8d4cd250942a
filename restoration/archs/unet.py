"""A plain convolutional U-Net: the foundation's default backbone.

Residual 3×3 conv blocks (EDSR-style, Lim et al., CVPRW 2017) at ``levels`` resolutions of a
U-Net (Ronneberger et al., MICCAI 2015): strided-conv down-sampling that doubles the width,
transposed-conv up-sampling, skip connections merged by a 1×1 conv, and a global residual so the
network predicts the correction to its input. With ``upscale > 1`` it runs at the input size and a
PixelShuffle tail adds its output to the bicubically up-sampled input (super-resolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restoration.archs.common import pad_to_multiple

__all__ = ["ResBlock", "UNet"]


class ResBlock(nn.Module):
    """conv3×3 → ReLU → conv3×3, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.body(features)


class UNet(nn.Module):
    """Plain CNN U-Net restorer.

    Args:
        in_channels: channels of the degraded input.
        out_channels: channels of the output (the global residual needs ``out == in``).
        width: channels at full resolution; level ``i`` has ``width · 2^i``.
        levels: number of resolutions (``levels - 1`` down-samplings).
        blocks: residual blocks per level on each side and in the bottleneck.
        upscale: output size / input size (1 for restoration, 2-4 for super-resolution).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        width: int = 32,
        levels: int = 3,
        blocks: int = 2,
        upscale: int = 1,
    ) -> None:
        super().__init__()
        if in_channels != out_channels:
            raise ValueError(
                f"UNet needs in_channels == out_channels for its residual; got {in_channels}, {out_channels}"
            )
        if levels < 1 or blocks < 1 or width < 1 or upscale < 1:
            raise ValueError(
                f"UNet width={width}, levels={levels}, blocks={blocks}, upscale={upscale}; expected >= 1"
            )
        self.upscale = upscale
        self.size_multiple = 2 ** (levels - 1)
        widths = [width * 2**level for level in range(levels)]
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.encoders = nn.ModuleList(
            nn.Sequential(*(ResBlock(w) for _ in range(blocks))) for w in widths[:-1]
        )
        self.downs = nn.ModuleList(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1) for w in widths[:-1])
        self.bottleneck = nn.Sequential(*(ResBlock(widths[-1]) for _ in range(blocks)))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(2 * w, w, 2, stride=2) for w in reversed(widths[:-1]))
        self.merges = nn.ModuleList(nn.Conv2d(2 * w, w, 1) for w in reversed(widths[:-1]))
        self.decoders = nn.ModuleList(
            nn.Sequential(*(ResBlock(w) for _ in range(blocks))) for w in reversed(widths[:-1])
        )
        self.tail = nn.Sequential(
            nn.Conv2d(width, out_channels * upscale**2, 3, padding=1), nn.PixelShuffle(upscale)
        )

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        height, width = degraded.shape[-2:]
        features = self.stem(pad_to_multiple(degraded, self.size_multiple))
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            features = encoder(features)
            skips.append(features)
            features = down(features)
        features = self.bottleneck(features)
        for up, merge, decoder, skip in zip(
            self.ups, self.merges, self.decoders, reversed(skips), strict=True
        ):
            features = decoder(merge(torch.cat([up(features), skip], dim=1)))
        residual = self.tail(features)[..., : height * self.upscale, : width * self.upscale]
        if self.upscale == 1:
            return degraded + residual
        return (
            F.interpolate(degraded, scale_factor=self.upscale, mode="bicubic", align_corners=False) + residual
        )
