"""NAFNet: Simple Baselines for Image Restoration.

Chen, Chu, Zhang and Sun, ECCV 2022 (https://arxiv.org/abs/2204.04676).

A U-Net of nonlinear-activation-free blocks: layer norm, a depthwise conv whose channel halves
multiply each other (SimpleGate, in place of GELU), simplified channel attention (a 1×1 conv of the
average-pooled features, in place of SE) and learned residual scales ``beta``/``gamma`` that start
at zero. Strided 2×2 convs go down, 1×1 conv plus PixelShuffle up, skips are added.

Test-time local converter (TLC; Chu, Chen, Chen and Lu, ECCV 2022, https://arxiv.org/abs/2112.04491):
the channel attention averages over the whole image, which at inference on full-size images
(1280×720 GoPro frames) is a different statistic from the one seen on training crops. With
``pooling_type="tlc"`` each pixel averages over a window of 1.5× the training crop (scaled to the
level) instead. Inputs no larger than that window use the global average, so on training crops TLC
*is* global pooling: the option changes inference on large images only, and the state dict is the
same either way (load weights trained with one into the other).

The attribute names are those of the official state dict, so released checkpoints
(``{"params": ...}``) load strictly with :func:`restoration.archs.load_pretrained`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from restoration.archs.common import ChannelLayerNorm, pad_to_multiple

__all__ = ["POOLING_TYPES", "LocalAvgPool2d", "NAFBlock", "NAFNet", "simple_gate"]

POOLING_TYPES = ("global", "tlc")


def simple_gate(features: torch.Tensor) -> torch.Tensor:
    """NAFNet's activation: the first half of the channels times the second half."""
    first, second = features.chunk(2, dim=1)
    return first * second


class LocalAvgPool2d(nn.Module):
    """Mean over a ``kernel_size`` window around each pixel, the same size as the input (TLC).

    Only windows that fit in the map are averaged; the border pixels take the mean of the nearest
    full window. A map that fits in one window gets its global mean, as ``AdaptiveAvgPool2d(1)``.

    Args:
        kernel_size: (height, width) of the window.
    """

    def __init__(self, kernel_size: tuple[int, int]) -> None:
        super().__init__()
        self.kernel_size = tuple(kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        height, width = features.shape[-2:]
        if self.kernel_size[0] >= height and self.kernel_size[1] >= width:
            return F.adaptive_avg_pool2d(features, 1)
        window_height, window_width = min(self.kernel_size[0], height), min(self.kernel_size[1], width)
        # Summed-area table with a leading row and column of zeros: any window sum is four look-ups,
        # so the cost does not grow with the window (it reaches 384×384 pixels).
        table = F.pad(features.cumsum(dim=-1).cumsum(dim=-2), (1, 0, 1, 0))
        window_sums = (
            table[..., window_height:, window_width:]
            - table[..., :-window_height, window_width:]
            - table[..., window_height:, :-window_width]
            + table[..., :-window_height, :-window_width]
        )
        means = window_sums / (window_height * window_width)
        # Valid windows only: window - 1 rows and columns short, padded back centred (odd: one more
        # at the bottom and right).
        rows, columns = window_height - 1, window_width - 1
        return F.pad(means, (columns // 2, (columns + 1) // 2, rows // 2, (rows + 1) // 2), mode="replicate")


class NAFBlock(nn.Module):
    """NAFNet block: ``x + beta · conv(SCA(gate(dwconv(conv(norm(x))))))``, then a gated 1×1 FFN.

    Args:
        channels: input and output channels.
        dw_expand: expansion of the depthwise branch (its gate halves it again).
        ffn_expand: expansion of the feed-forward branch.
        pool_kernel: ``None`` for the paper's global average in the channel attention; a
            (height, width) window for TLC's local average (:class:`LocalAvgPool2d`).
    """

    def __init__(
        self,
        channels: int,
        *,
        dw_expand: int = 2,
        ffn_expand: int = 2,
        pool_kernel: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        dw_channels, ffn_channels = channels * dw_expand, channels * ffn_expand
        self.norm1 = ChannelLayerNorm(channels, eps=1e-6)
        self.conv1 = nn.Conv2d(channels, dw_channels, 1)
        self.conv2 = nn.Conv2d(dw_channels, dw_channels, 3, padding=1, groups=dw_channels)
        pool = nn.AdaptiveAvgPool2d(1) if pool_kernel is None else LocalAvgPool2d(pool_kernel)
        # Simplified channel attention; a Sequential because the official keys are `sca.1.weight`.
        self.sca = nn.Sequential(pool, nn.Conv2d(dw_channels // 2, dw_channels // 2, 1))
        self.conv3 = nn.Conv2d(dw_channels // 2, channels, 1)
        self.norm2 = ChannelLayerNorm(channels, eps=1e-6)
        self.conv4 = nn.Conv2d(channels, ffn_channels, 1)
        self.conv5 = nn.Conv2d(ffn_channels // 2, channels, 1)
        # Zero residual scales: every block starts as the identity.
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        gated = simple_gate(self.conv2(self.conv1(self.norm1(features))))
        features = features + self.conv3(gated * self.sca(gated)) * self.beta
        return features + self.conv5(simple_gate(self.conv4(self.norm2(features)))) * self.gamma


class NAFNet(nn.Module):
    """NAFNet restorer (see the module docstring). Any input size: pads to ``2^len(encoder_blocks)``.

    Args:
        image_channels: channels of the input and of the output (a residual on the input).
        width: channels at full resolution; level ``i`` has ``width · 2^i``.
        encoder_blocks: NAFBlocks at each encoder level, one 2× down-sampling after each.
        middle_blocks: NAFBlocks at the lowest resolution.
        decoder_blocks: NAFBlocks at each decoder level, lowest resolution first; as many levels as
            the encoder.
        pooling_type: ``"global"`` (the paper's channel attention) or ``"tlc"`` (local statistics at
            inference on inputs larger than 1.5 × ``train_size``; identical to global below that).
        train_size: (height, width) or side of the training crops; sets the TLC windows (1.5× it,
            scaled to each level). Ignored with ``pooling_type="global"``.
    """

    def __init__(
        self,
        *,
        image_channels: int = 3,
        width: int = 32,
        encoder_blocks: Sequence[int] = (2, 2, 4, 8),
        middle_blocks: int = 12,
        decoder_blocks: Sequence[int] = (2, 2, 2, 2),
        pooling_type: str = "global",
        train_size: int | Sequence[int] = 256,
    ) -> None:
        super().__init__()
        encoder_blocks, decoder_blocks = list(encoder_blocks), list(decoder_blocks)
        if len(encoder_blocks) != len(decoder_blocks):
            raise ValueError(
                "NAFNet needs as many decoder levels as encoder levels; got "
                f"encoder_blocks={encoder_blocks}, decoder_blocks={decoder_blocks}"
            )
        if pooling_type not in POOLING_TYPES:
            raise ValueError(f"pooling_type {pooling_type!r}; expected one of {POOLING_TYPES}")
        self.size_multiple = 2 ** len(encoder_blocks)
        pool_kernels = (
            self._tlc_windows(train_size, levels=len(encoder_blocks) + 1)
            if pooling_type == "tlc"
            else [None] * (len(encoder_blocks) + 1)
        )

        def blocks(count: int, level: int) -> nn.Sequential:
            return nn.Sequential(
                *(NAFBlock(width * 2**level, pool_kernel=pool_kernels[level]) for _ in range(count))
            )

        levels = range(len(encoder_blocks))
        self.intro = nn.Conv2d(image_channels, width, 3, padding=1)
        self.encoders = nn.ModuleList(blocks(count, level) for level, count in enumerate(encoder_blocks))
        self.downs = nn.ModuleList(
            nn.Conv2d(width * 2**level, width * 2 ** (level + 1), 2, stride=2) for level in levels
        )
        self.middle_blks = blocks(middle_blocks, len(encoder_blocks))
        self.ups = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width * 2 ** (level + 1), width * 2 ** (level + 2), 1, bias=False),
                nn.PixelShuffle(2),
            )
            for level in reversed(levels)
        )
        self.decoders = nn.ModuleList(
            blocks(count, level) for level, count in zip(reversed(levels), decoder_blocks, strict=True)
        )
        self.ending = nn.Conv2d(width, image_channels, 3, padding=1)

    def _tlc_windows(self, train_size: int | Sequence[int], *, levels: int) -> list[tuple[int, int]]:
        """TLC's averaging window at each level: 1.5× the training crop, at that level's resolution.

        As in the official conversion, the window is the level's feature size on a (padded) training
        crop times ``base / train`` with ``base = int(1.5 · train)``, rounded down.
        """
        sides = [train_size] * 2 if isinstance(train_size, int) else list(train_size)
        if len(sides) != 2 or min(sides) < 1:
            raise ValueError(f"train_size {train_size}; expected a positive side or (height, width)")
        train_height, train_width = sides
        base_height, base_width = int(1.5 * train_height), int(1.5 * train_width)
        padded_height = -(-train_height // self.size_multiple) * self.size_multiple
        padded_width = -(-train_width // self.size_multiple) * self.size_multiple
        return [
            (
                (padded_height >> level) * base_height // train_height,
                (padded_width >> level) * base_width // train_width,
            )
            for level in range(levels)
        ]

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        height, width = degraded.shape[-2:]
        padded = pad_to_multiple(degraded, self.size_multiple)
        features = self.intro(padded)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            features = encoder(features)
            skips.append(features)
            features = down(features)
        features = self.middle_blks(features)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            features = decoder(up(features) + skip)
        return (self.ending(features) + padded)[..., :height, :width]
