"""The plain CNN U-Net of ConStyle v2 ("OriginConv", the "Conv" origin model).

Fan, Zhang and Chang, "ConStyle v2: A Strong Prompter for All-in-One Image Restoration", arXiv 2024
(official code: ``archs/Conv_arch.py``, class ``OriginConv``). The network that ConStyle v2 turns into
its prompted ConStyle-Conv: a bias-free 3×3 conv + PReLU stem, one residual block of two conv + PReLU
layers at each of three encoder levels, the bottleneck and three decoder levels, PixelUnshuffle
down-sampling and PixelShuffle up-sampling, and a global residual. Unlike a textbook U-Net it has no
skip connections between encoder and decoder (the official network has none; ConStyle-Conv adds them).

The blocks are public so that ConStyle-Conv (``archs/ConStyle_Conv_arch.py``) is built from the same
pieces with the same state-dict keys.
"""

from __future__ import annotations

import torch
from torch import nn

from restoration.archs.common import pad_to_multiple

__all__ = ["CNNUNet", "ConvPReLU", "PixelShuffleUp", "PixelUnshuffleDown", "ResidualConvBlock"]


class ConvPReLU(nn.Sequential):
    """Bias-free conv with "same" padding, then a per-channel PReLU (ConStyle v2's ``ConvAct``)."""

    def __init__(self, *, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        """
        Args:
            in_channels: input channels.
            out_channels: output channels (and PReLU slopes).
            kernel_size: odd conv kernel size; ConStyle v2 uses 3, and 1 for its prompt projections.
        """
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvPReLU kernel_size={kernel_size}; expected an odd size ('same' padding)")
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.PReLU(out_channels),
        )


class ResidualConvBlock(nn.Sequential):
    """``convs`` × (conv3×3 → PReLU) at constant width, plus the input.

    The official networks add the input outside the block (``Process_Module_l1(x) + x``); the keys
    (``0.0.weight`` conv, ``0.1.weight`` PReLU, ...) are those of the official ``nn.Sequential``.
    """

    def __init__(self, *, channels: int, convs: int = 2) -> None:
        """
        Args:
            channels: width of the block.
            convs: conv + PReLU layers in the residual branch (2 in every ConStyle v2 network).
        """
        if convs < 1:
            raise ValueError(f"ResidualConvBlock convs={convs}; expected >= 1")
        super().__init__(*(ConvPReLU(in_channels=channels, out_channels=channels) for _ in range(convs)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + super().forward(features)


class PixelUnshuffleDown(nn.Sequential):
    """Halve the resolution: bias-free conv3×3 to ``out_channels / 4``, then PixelUnshuffle(2)."""

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        """
        Args:
            in_channels: channels at the higher resolution.
            out_channels: channels at the lower resolution; a multiple of 4.
        """
        if out_channels % 4:
            raise ValueError(f"PixelUnshuffleDown out_channels={out_channels}; expected a multiple of 4")
        super().__init__(
            nn.Conv2d(in_channels, out_channels // 4, 3, padding=1, bias=False), nn.PixelUnshuffle(2)
        )


class PixelShuffleUp(nn.Sequential):
    """Double the resolution: bias-free conv3×3 to ``4 · out_channels``, then PixelShuffle(2)."""

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        """
        Args:
            in_channels: channels at the lower resolution.
            out_channels: channels at the higher resolution.
        """
        super().__init__(
            nn.Conv2d(in_channels, out_channels * 4, 3, padding=1, bias=False), nn.PixelShuffle(2)
        )


class CNNUNet(nn.Module):
    """ConStyle v2's plain CNN U-Net restorer (official ``OriginConv``).

    Widths per level are ``width``, ``2·width``, ``4·width``, and ``4·width`` again in the bottleneck
    (the official third down-sampling keeps the width). Inputs of any size are reflect-padded to a
    multiple of 8 (three halvings) and the output cropped back.

    The attribute names (``Preprocess_Module``, ``Process_Module_l1``, ``down1``, ...) are the official
    state-dict keys, kept so that released weights load strictly.
    """

    def __init__(self, *, in_channels: int = 3, out_channels: int = 3, width: int = 48) -> None:
        """
        Args:
            in_channels: channels of the degraded input.
            out_channels: channels of the output; the global residual needs ``out == in``.
            width: channels at full resolution (official ``dim``: 48); even, since the first
                down-sampling convolves to ``width / 2`` channels before PixelUnshuffle.
        """
        super().__init__()
        if in_channels != out_channels:
            raise ValueError(
                "CNNUNet needs in_channels == out_channels for its global residual; "
                f"got {in_channels}, {out_channels}"
            )
        if width < 2 or width % 2:
            raise ValueError(f"CNNUNet width={width}; expected an even number >= 2")
        self.size_multiple = 8
        self.Preprocess_Module = ConvPReLU(in_channels=in_channels, out_channels=width)
        self.Process_Module_l1 = ResidualConvBlock(channels=width)
        self.down1 = PixelUnshuffleDown(in_channels=width, out_channels=2 * width)
        self.Process_Module_l2 = ResidualConvBlock(channels=2 * width)
        self.down2 = PixelUnshuffleDown(in_channels=2 * width, out_channels=4 * width)
        self.Process_Module_l3 = ResidualConvBlock(channels=4 * width)
        self.down3 = PixelUnshuffleDown(in_channels=4 * width, out_channels=4 * width)
        self.Process_Module_bottom = ResidualConvBlock(channels=4 * width)
        self.up3 = PixelShuffleUp(in_channels=4 * width, out_channels=4 * width)
        self.Process_Module_r3 = ResidualConvBlock(channels=4 * width)
        self.up2 = PixelShuffleUp(in_channels=4 * width, out_channels=2 * width)
        self.Process_Module_r2 = ResidualConvBlock(channels=2 * width)
        # The official decoder stays at 2·width at full resolution (up1 keeps the width).
        self.up1 = PixelShuffleUp(in_channels=2 * width, out_channels=2 * width)
        self.Process_Module_r1 = ResidualConvBlock(channels=2 * width)
        self.Finetune_Module = nn.Sequential(
            ConvPReLU(in_channels=2 * width, out_channels=width),
            ConvPReLU(in_channels=width, out_channels=out_channels),
        )

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        height, width = degraded.shape[-2:]
        padded = pad_to_multiple(degraded, self.size_multiple)
        features = self.Process_Module_l1(self.Preprocess_Module(padded))
        features = self.Process_Module_l2(self.down1(features))
        features = self.Process_Module_l3(self.down2(features))
        features = self.Process_Module_bottom(self.down3(features))
        features = self.Process_Module_r3(self.up3(features))
        features = self.Process_Module_r2(self.up2(features))
        features = self.Process_Module_r1(self.up1(features))
        restored = self.Finetune_Module(features) + padded
        return restored[..., :height, :width]
