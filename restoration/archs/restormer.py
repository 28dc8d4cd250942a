"""Restormer: Efficient Transformer for High-Resolution Image Restoration.

Zamir, Arora, Khan, Hayat, Khan and Yang, CVPR 2022 (https://arxiv.org/abs/2111.09881).

A four-level U-Net of Transformer blocks whose attention is *transposed*: each head attends across
its channels (a C×C map of channel affinities over all pixels), so the cost grows linearly with the
image size (MDTA). The feed-forward part is a depthwise-conv GELU gate (GDFN). Level 1 of the
decoder keeps the concatenated skip at twice the width, followed by refinement blocks. The
dual-pixel variant (defocus deblurring from the two views of a dual-pixel sensor, 6 input channels)
replaces the image residual by a 1×1 conv skip from the embedded input.

The attribute names are those of the official state dict, so released checkpoints
(``{"params": ...}``) load strictly with :func:`restoration.archs.load_pretrained`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from restoration.archs.common import ChannelLayerNorm, pad_to_multiple

__all__ = [
    "NORM_TYPES",
    "BiasFreeLayerNorm",
    "ChannelLayerNorm",
    "FeedForward",
    "Restormer",
    "TransformerBlock",
    "TransposedAttention",
]

NORM_TYPES = ("with_bias", "bias_free")


class BiasFreeLayerNorm(nn.Module):
    """Restormer's ``BiasFree`` norm over channels: ``x / sqrt(var(x) + eps) · weight``.

    The mean is used for the variance but not subtracted from the features, so this is neither a
    layer norm without bias nor an RMS norm. The official denoising models use it.
    """

    def __init__(self, channels: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        variance = features.var(dim=1, keepdim=True, correction=0)
        return features * torch.rsqrt(variance + self.eps) * self.weight[:, None, None]


class _Norm(nn.Module):
    """The norm of a :class:`TransformerBlock`, chosen by ``norm_type``."""

    def __init__(self, channels: int, *, norm_type: str) -> None:
        super().__init__()
        if norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type {norm_type!r}; expected one of {NORM_TYPES}")
        # `body` only because the official state dict names the parameters `norm1.body.weight`.
        if norm_type == "with_bias":
            self.body: nn.Module = ChannelLayerNorm(channels, eps=1e-5)
        else:
            self.body = BiasFreeLayerNorm(channels, eps=1e-5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


class TransposedAttention(nn.Module):
    """Multi-Dconv head transposed attention (MDTA): attention across channels, not pixels.

    Queries, keys and values come from a 1×1 conv followed by a 3×3 depthwise conv (local context).
    Per head, queries and keys are L2-normalised over the pixels and their C×C dot products scaled by
    a learned temperature before the softmax.

    Args:
        channels: feature channels; must divide into ``num_heads``.
        num_heads: attention heads, each over ``channels // num_heads`` channels.
        bias: biases in the convolutions (the official models have none).
    """

    def __init__(self, channels: int, *, num_heads: int, bias: bool = False) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention over {channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(channels * 3, channels * 3, 3, padding=1, groups=channels * 3, bias=bias)
        self.project_out = nn.Conv2d(channels, channels, 1, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        height = features.shape[-2]
        queries, keys, values = (
            rearrange(part, "b (head c) h w -> b head c (h w)", head=self.num_heads)
            for part in self.qkv_dwconv(self.qkv(features)).chunk(3, dim=1)
        )
        # Multiplying the queries by the temperature is the same as scaling the logits, which lets
        # the fused attention kernel run with scale 1.
        queries = F.normalize(queries, dim=-1) * self.temperature
        keys = F.normalize(keys, dim=-1)
        attended = F.scaled_dot_product_attention(queries, keys, values, scale=1.0)
        return self.project_out(rearrange(attended, "b head c (h w) -> b (head c) h w", h=height))


class FeedForward(nn.Module):
    """Gated-Dconv feed-forward network (GDFN): 1×1 expand, 3×3 depthwise, GELU gate, 1×1 back.

    Args:
        channels: input and output channels.
        expansion_factor: hidden channels are ``int(channels · expansion_factor)``.
        bias: biases in the convolutions.
    """

    def __init__(self, channels: int, *, expansion_factor: float = 2.66, bias: bool = False) -> None:
        super().__init__()
        hidden = int(channels * expansion_factor)
        self.project_in = nn.Conv2d(channels, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        gate, content = self.dwconv(self.project_in(features)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * content)


class TransformerBlock(nn.Module):
    """Pre-norm Restormer block: ``x + MDTA(norm(x))``, then ``x + GDFN(norm(x))``.

    Its state-dict keys are the official ones (``norm1.body.weight``, ``attn.temperature``,
    ``attn.qkv``, ``attn.qkv_dwconv``, ``attn.project_out``, ``norm2...``, ``ffn.project_in``,
    ``ffn.dwconv``, ``ffn.project_out``), so networks built from it load official weights strictly.

    Args:
        channels: feature channels.
        num_heads: heads of the transposed attention.
        ffn_expansion_factor: hidden width of the feed-forward part relative to ``channels``.
        bias: biases in the convolutions.
        norm_type: ``"with_bias"`` (layer norm) or ``"bias_free"`` (see :class:`BiasFreeLayerNorm`).
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int,
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        norm_type: str = "with_bias",
    ) -> None:
        super().__init__()
        self.norm1 = _Norm(channels, norm_type=norm_type)
        self.attn = TransposedAttention(channels, num_heads=num_heads, bias=bias)
        self.norm2 = _Norm(channels, norm_type=norm_type)
        self.ffn = FeedForward(channels, expansion_factor=ffn_expansion_factor, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features + self.attn(self.norm1(features))
        return features + self.ffn(self.norm2(features))


class _PatchEmbed(nn.Module):
    """3×3 conv embedding (a module of its own for the official key ``patch_embed.proj``)."""

    def __init__(self, in_channels: int, channels: int, *, bias: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, channels, 3, padding=1, bias=bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images)


class _Resample(nn.Module):
    """3×3 conv then pixel (un)shuffle: halves the size and doubles the channels, or the reverse."""

    def __init__(self, channels: int, *, direction: str) -> None:
        super().__init__()
        # `body` is the official key (`down1_2.body.0.weight`).
        if direction == "down":
            self.body = nn.Sequential(
                nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2)
            )
        else:
            self.body = nn.Sequential(
                nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False), nn.PixelShuffle(2)
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


class Restormer(nn.Module):
    """Restormer restorer (see the module docstring). Any input size: pads to a multiple of 8.

    Args:
        in_channels: channels of the degraded input (6 for the dual-pixel variant: both views).
        out_channels: channels of the output; must equal ``in_channels`` unless ``dual_pixel``.
        dim: channels at full resolution; level ``i`` has ``dim · 2^i``.
        num_blocks: Transformer blocks at levels 1-3 of the encoder (and decoder) and at level 4.
        num_refinement_blocks: blocks after the decoder, at full resolution.
        heads: attention heads at each of the four levels.
        ffn_expansion_factor: hidden width of the feed-forward parts relative to their input.
        bias: biases in the convolutions of the blocks.
        norm_type: ``"with_bias"`` or ``"bias_free"`` (the official denoising models).
        dual_pixel: the dual-pixel defocus-deblurring variant: no image residual (input and output
            channels differ) but a 1×1 conv skip from the embedded input to the refined features.
    """

    size_multiple = 8  # three 2× down-samplings

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        norm_type: str = "with_bias",
        dual_pixel: bool = False,
    ) -> None:
        super().__init__()
        num_blocks, heads = list(num_blocks), list(heads)
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(
                f"Restormer has four levels: num_blocks={num_blocks} and heads={heads} need four entries each"
            )
        if not dual_pixel and in_channels != out_channels:
            raise ValueError(
                f"Restormer adds its input to its output, so in_channels ({in_channels}) must equal "
                f"out_channels ({out_channels}); only dual_pixel=True allows them to differ"
            )
        widths = [dim * 2**level for level in range(4)]

        def blocks(count: int, channels: int, num_heads: int) -> nn.Sequential:
            return nn.Sequential(
                *(
                    TransformerBlock(
                        channels,
                        num_heads=num_heads,
                        ffn_expansion_factor=ffn_expansion_factor,
                        bias=bias,
                        norm_type=norm_type,
                    )
                    for _ in range(count)
                )
            )

        self.dual_pixel = dual_pixel
        self.patch_embed = _PatchEmbed(in_channels, dim, bias=False)
        self.encoder_level1 = blocks(num_blocks[0], widths[0], heads[0])
        self.down1_2 = _Resample(widths[0], direction="down")
        self.encoder_level2 = blocks(num_blocks[1], widths[1], heads[1])
        self.down2_3 = _Resample(widths[1], direction="down")
        self.encoder_level3 = blocks(num_blocks[2], widths[2], heads[2])
        self.down3_4 = _Resample(widths[2], direction="down")
        self.latent = blocks(num_blocks[3], widths[3], heads[3])
        self.up4_3 = _Resample(widths[3], direction="up")
        self.reduce_chan_level3 = nn.Conv2d(widths[3], widths[2], 1, bias=bias)
        self.decoder_level3 = blocks(num_blocks[2], widths[2], heads[2])
        self.up3_2 = _Resample(widths[2], direction="up")
        self.reduce_chan_level2 = nn.Conv2d(widths[2], widths[1], 1, bias=bias)
        self.decoder_level2 = blocks(num_blocks[1], widths[1], heads[1])
        # Level 1 keeps the concatenation at 2·dim channels: no reduction conv.
        self.up2_1 = _Resample(widths[1], direction="up")
        self.decoder_level1 = blocks(num_blocks[0], widths[1], heads[0])
        self.refinement = blocks(num_refinement_blocks, widths[1], heads[0])
        if dual_pixel:
            self.skip_conv = nn.Conv2d(dim, widths[1], 1, bias=bias)
        self.output = nn.Conv2d(widths[1], out_channels, 3, padding=1, bias=bias)

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        height, width = degraded.shape[-2:]
        padded = pad_to_multiple(degraded, self.size_multiple)
        embedded = self.patch_embed(padded)
        level1 = self.encoder_level1(embedded)
        level2 = self.encoder_level2(self.down1_2(level1))
        level3 = self.encoder_level3(self.down2_3(level2))
        features = self.latent(self.down3_4(level3))
        features = self.reduce_chan_level3(torch.cat([self.up4_3(features), level3], dim=1))
        features = self.decoder_level3(features)
        features = self.reduce_chan_level2(torch.cat([self.up3_2(features), level2], dim=1))
        features = self.decoder_level2(features)
        features = self.decoder_level1(torch.cat([self.up2_1(features), level1], dim=1))
        features = self.refinement(features)
        if self.dual_pixel:
            restored = self.output(features + self.skip_conv(embedded))
        else:
            restored = self.output(features) + padded
        return restored[..., :height, :width]
