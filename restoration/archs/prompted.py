"""The prompt-guided restoration U-Nets of ConStyle (ConStyle-NAFNet, -Restormer, -MAXIM, -Conv).

Fan, Zhang and Chang, "ConStyle v2: A Strong Prompter for All-in-One Image Restoration", arXiv 2406.18242
(2024), and "IRConStyle" (ConStyle v1), arXiv 2402.15784 (2024); official code: ``archs/ConStyle_{NAFNet,
Restormer,Maxim,Conv}_arch.py`` of ConStyle v2.

ConStyle re-designs each backbone as the same 3-level U-Net and injects the prompter's outputs
(:class:`restoration.archs.constyle.ConStyleEncoder`) into its encoder and bottleneck:

- each down-sampling (a bias-free 3×3 conv to a quarter of the channels, then PixelUnshuffle) is
  concatenated with a visual prompt projected to ``dim`` channels by a 1×1 conv and an activation:
  the prompter's H/2, H/4 and H/8 maps enter levels 2, 3 and the bottleneck, which therefore run at
  2, 3 and 4 × ``dim`` channels;
- the bottleneck output ``b`` is modulated by the latent ``q1``: ``conv1×1([b, b · Linear(q1)])``,
  back to 3 × ``dim`` channels (channel-wise scaling; no AdaIN, no cross-attention);
- the decoder up-samples (3×3 conv to 4× the channels, PixelShuffle), concatenates the skip and fuses
  with a 1×1 conv (at 4, 3 and 2 × ``dim``); it gets no prompts. A 3×3 conv adds the result to the input.

MAXIM keeps its multi-scale inputs and cross-gated skips around the same prompted encoder.

The networks do not hold the prompter: ``forward(degraded, latent, prompts)`` takes the prompter's
``q1`` and ``(fea0, fea1, fea2)`` of the same image, as the official ``forward(inp_img, q, feas)``. They
do not pad either, since the prompts must come from the padded image: inputs must be a multiple of
``size_multiple`` (pad with :func:`restoration.archs.common.pad_to_multiple` before the prompter).
State-dict keys are the official ones without the official modules' prompter (``ConStyle.*``), so
official checkpoints load with ``load_pretrained(net, path, exclude=("ConStyle.",))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from restoration.archs.cnn_unet import ConvPReLU, PixelShuffleUp, PixelUnshuffleDown, ResidualConvBlock
from restoration.archs.maxim import (
    BottleneckBlock,
    CrossGatingBlock,
    UNetDecoderBlock,
    UNetEncoderBlock,
    UpSampleRatio,
    nearest_downsample,
)
from restoration.archs.nafnet import NAFBlock
from restoration.archs.restormer import TransformerBlock, _PatchEmbed

__all__ = [
    "PROMPT_ACTIVATIONS",
    "ConStyleCNN",
    "ConStyleMaxim",
    "ConStyleNAFNet",
    "ConStyleRestormer",
    "PromptedUNet",
]

PROMPT_ACTIVATIONS = ("leaky_relu", "prelu")


class _DownAndJoin(nn.Module):
    """Halve the resolution keeping the channels (official ``DC``), then concatenate the prompt."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.down = PixelUnshuffleDown(in_channels=channels, out_channels=channels)

    def forward(self, features: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.down(features), prompt], dim=1)


class _Up(nn.Module):
    """Double the resolution keeping the channels (official ``UC``); optionally join a skip.

    With ``skip_channels`` and ``out_channels`` the skip is concatenated and a bias-free 1×1 conv fuses
    the two (its official key is ``down``); MAXIM's ``UC`` only up-samples.
    """

    def __init__(self, channels: int, *, skip_channels: int = 0, out_channels: int | None = None) -> None:
        super().__init__()
        self.up = PixelShuffleUp(in_channels=channels, out_channels=channels)
        if out_channels is not None:
            self.down = nn.Conv2d(channels + skip_channels, out_channels, 1, bias=False)

    def forward(self, features: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        features = self.up(features)
        if skip is None:
            return features
        return self.down(torch.cat([features, skip], dim=1))


def _prompt_projection(in_channels: int, out_channels: int, activation: str) -> nn.Sequential:
    # keys "0.weight" (conv) and "1.weight" (PReLU slopes): the official ConvAct
    if activation == "prelu":
        return ConvPReLU(in_channels=in_channels, out_channels=out_channels, kernel_size=1)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.LeakyReLU(0.1))


def _resize(features: torch.Tensor, ratio: float) -> torch.Tensor:
    """Anti-aliased bilinear resize by ``ratio`` (MAXIM's parameter-free ``UpSampleRatio_``)."""
    if ratio == 1:
        return features
    height, width = features.shape[-2:]
    size = (int(height * ratio), int(width * ratio))
    return F.interpolate(features, size=size, mode="bilinear", antialias=True)


class PromptedUNet(nn.Module):
    """The prompt injection shared by the ConStyle U-Nets; subclasses build the levels.

    Holds the latent projection ``mlp``, the prompt projections ``AffineTransform{0,1,2}``, the
    down-sampling joins ``DC{1,2,3}`` and the bottleneck fusion ``local_fusion`` (official names).

    Args:
        image_channels: channels of the degraded input and of the restored output.
        dim: channels at full resolution; a multiple of 4 (the down-sampling convs go to a quarter).
        prompt_activation: ``"leaky_relu"`` (slope 0.1; NAFNet, MAXIM) or ``"prelu"`` (Restormer, Conv)
            after the prompts' 1×1 convs.
        fusion_bias: bias of the bottleneck's 1×1 fusion conv.
        latent_dim: width of the prompter's latent q1.
        prompt_channels: channels of the prompter's H/2, H/4 and H/8 maps.
    """

    size_multiple = 8  # three PixelUnshuffle halvings

    def __init__(
        self,
        *,
        image_channels: int,
        dim: int,
        prompt_activation: str,
        fusion_bias: bool,
        latent_dim: int = 128,
        prompt_channels: Sequence[int] = (32, 64, 128),
    ) -> None:
        super().__init__()
        prompt_channels = tuple(prompt_channels)
        if dim < 4 or dim % 4:
            raise ValueError(f"{type(self).__name__} dim={dim}; expected a positive multiple of 4")
        if len(prompt_channels) != 3:
            raise ValueError(f"prompt_channels={prompt_channels}; expected three (the H/2, H/4, H/8 prompts)")
        if prompt_activation not in PROMPT_ACTIVATIONS:
            raise ValueError(f"prompt_activation {prompt_activation!r}; expected one of {PROMPT_ACTIVATIONS}")
        self.image_channels, self.latent_dim, self.prompt_channels = (
            image_channels,
            latent_dim,
            prompt_channels,
        )
        self.mlp = nn.Sequential(nn.Linear(latent_dim, 4 * dim))
        for index, channels in enumerate(prompt_channels):
            self.add_module(f"AffineTransform{index}", _prompt_projection(channels, dim, prompt_activation))
        self.DC1, self.DC2, self.DC3 = (_DownAndJoin(level * dim) for level in (1, 2, 3))
        self.local_fusion = nn.Conv2d(8 * dim, 3 * dim, 1, bias=fusion_bias)

    def forward(
        self,
        degraded: torch.Tensor,
        latent: torch.Tensor,
        prompts: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Restore an N×C×H×W batch (H, W multiples of ``size_multiple``) from its prompts.

        Args:
            degraded: the (padded) degraded images.
            latent: the prompter's N×128 latent q1 of the same images.
            prompts: the prompter's (fea0, fea1, fea2) of the same images, at H/2, H/4 and H/8.
        """
        self._check_inputs(degraded, latent, prompts)
        scale = self.mlp(latent)[..., None, None]
        projected = [getattr(self, f"AffineTransform{index}")(prompt) for index, prompt in enumerate(prompts)]
        return self._restore(degraded, scale, projected)

    def _restore(
        self, degraded: torch.Tensor, scale: torch.Tensor, prompts: list[torch.Tensor]
    ) -> torch.Tensor:
        raise NotImplementedError

    def _modulate(self, bottom: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The bottleneck's latent modulation: ``conv1×1([b, b · Linear(q1)])``."""
        return self.local_fusion(torch.cat([bottom, bottom * scale], dim=1))

    def _check_inputs(
        self, degraded: torch.Tensor, latent: torch.Tensor, prompts: Sequence[torch.Tensor]
    ) -> None:
        name = type(self).__name__
        if degraded.ndim != 4 or degraded.shape[1] != self.image_channels:
            raise ValueError(
                f"{name} expects N×{self.image_channels}×H×W images, got {tuple(degraded.shape)}"
            )
        batch, _, height, width = degraded.shape
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(
                f"{name} input {height}×{width} is not a multiple of size_multiple={self.size_multiple}; "
                "pad it (restoration.archs.common.pad_to_multiple) before computing the prompts"
            )
        if tuple(latent.shape) != (batch, self.latent_dim):
            raise ValueError(
                f"{name} latent of shape {tuple(latent.shape)}; expected ({batch}, {self.latent_dim}), "
                "the prompter's q1 of the same batch"
            )
        if len(prompts) != len(self.prompt_channels):
            raise ValueError(f"{name} takes 3 prompts (fea0, fea1, fea2), got {len(prompts)}")
        for level, (prompt, channels) in enumerate(zip(prompts, self.prompt_channels, strict=True), start=1):
            expected = (batch, channels, height >> level, width >> level)
            if tuple(prompt.shape) != expected:
                raise ValueError(
                    f"{name} prompt fea{level - 1} of shape {tuple(prompt.shape)}; expected {expected} "
                    f"for {height}×{width} images (the prompter's H/{2**level} map of the same images)"
                )


class _SymmetricPromptedUNet(PromptedUNet):
    """The NAFNet, Restormer and Conv layout: one block stack per level, decoder ups with 1×1 fusion.

    Subclasses set ``Preprocess_Module``, ``Process_Module_{l1,l2,l3,bottom,r3,r2,r1}`` and
    ``Finetune_Module`` (official names).
    """

    def __init__(self, *, dim: int, **options) -> None:
        super().__init__(dim=dim, **options)
        self.UC3 = _Up(3 * dim, skip_channels=3 * dim, out_channels=4 * dim)
        self.UC2 = _Up(4 * dim, skip_channels=2 * dim, out_channels=3 * dim)
        self.UC1 = _Up(3 * dim, skip_channels=dim, out_channels=2 * dim)

    def _restore(
        self, degraded: torch.Tensor, scale: torch.Tensor, prompts: list[torch.Tensor]
    ) -> torch.Tensor:
        level1 = self.Process_Module_l1(self.Preprocess_Module(degraded))
        level2 = self.Process_Module_l2(self.DC1(level1, prompts[0]))
        level3 = self.Process_Module_l3(self.DC2(level2, prompts[1]))
        features = self._modulate(self.Process_Module_bottom(self.DC3(level3, prompts[2])), scale)
        features = self.Process_Module_r3(self.UC3(features, level3))
        features = self.Process_Module_r2(self.UC2(features, level2))
        features = self.Process_Module_r1(self.UC1(features, level1))
        return self.Finetune_Module(features) + degraded


def _three_levels(blocks: Sequence[int], name: str) -> list[int]:
    blocks = [int(count) for count in blocks]
    if len(blocks) != 3 or min(blocks) < 0:
        raise ValueError(f"{name}={blocks}; expected three block counts >= 0 (levels 1, 2, 3)")
    return blocks


class ConStyleNAFNet(_SymmetricPromptedUNet):
    """ConStyle-NAFNet (official ``ConStyleNAFNet``): the prompted U-Net of NAFNet blocks.

    Levels run at ``dim``, 2·``dim``, 3·``dim``; the bottleneck at 4·``dim``; the decoder at 4, 3 and
    2 × ``dim``. Prompt projections use LeakyReLU(0.1); the output is a 3×3 conv plus the input.

    Args:
        image_channels: channels of the degraded input and the restored output.
        dim: channels at full resolution (official default 48); a multiple of 4.
        encoder_blocks: NAFBlocks at encoder levels 1-3 (official ``left_blk_num``).
        bottleneck_blocks: NAFBlocks in the bottleneck (official ``bottom_blk_num``).
        decoder_blocks: NAFBlocks at decoder levels 1-3, full resolution first (``right_blk_num``).
        latent_dim: width of the prompter's latent q1.
        prompt_channels: channels of the prompter's H/2, H/4 and H/8 maps.
    """

    def __init__(
        self,
        *,
        image_channels: int = 3,
        dim: int = 48,
        encoder_blocks: Sequence[int] = (7, 8, 9),
        bottleneck_blocks: int = 9,
        decoder_blocks: Sequence[int] = (7, 8, 9),
        latent_dim: int = 128,
        prompt_channels: Sequence[int] = (32, 64, 128),
    ) -> None:
        super().__init__(
            image_channels=image_channels,
            dim=dim,
            prompt_activation="leaky_relu",
            fusion_bias=False,
            latent_dim=latent_dim,
            prompt_channels=prompt_channels,
        )
        encoder_blocks = _three_levels(encoder_blocks, "encoder_blocks")
        decoder_blocks = _three_levels(decoder_blocks, "decoder_blocks")

        def blocks(count: int, channels: int) -> nn.Sequential:
            return nn.Sequential(*(NAFBlock(channels) for _ in range(count)))

        # A Sequential for the official key Preprocess_Module.0.weight.
        self.Preprocess_Module = nn.Sequential(nn.Conv2d(image_channels, dim, 3, padding=1, bias=False))
        self.Process_Module_l1 = blocks(encoder_blocks[0], dim)
        self.Process_Module_l2 = blocks(encoder_blocks[1], 2 * dim)
        self.Process_Module_l3 = blocks(encoder_blocks[2], 3 * dim)
        self.Process_Module_bottom = blocks(bottleneck_blocks, 4 * dim)
        self.Process_Module_r3 = blocks(decoder_blocks[2], 4 * dim)
        self.Process_Module_r2 = blocks(decoder_blocks[1], 3 * dim)
        self.Process_Module_r1 = blocks(decoder_blocks[0], 2 * dim)
        self.Finetune_Module = nn.Sequential(nn.Conv2d(2 * dim, image_channels, 3, padding=1, bias=False))


class ConStyleRestormer(_SymmetricPromptedUNet):
    """ConStyle-Restormer (official ``ConStyleRestormer``): the prompted U-Net of Restormer blocks.

    Widths as :class:`ConStyleNAFNet`; ``num_refinement_blocks`` more blocks at 2·``dim`` before the
    output conv. Prompt projections use PReLU.

    Args:
        image_channels: channels of the degraded input and the restored output.
        dim: channels at full resolution (official default 48); a multiple of 4.
        encoder_blocks: Transformer blocks at encoder levels 1-3 (official ``left_blk_num``).
        bottleneck_blocks: Transformer blocks in the bottleneck (official ``bottom_blk_num``).
        decoder_blocks: blocks at decoder levels 1-3, full resolution first (``right_blk_num``).
        num_refinement_blocks: blocks at full resolution after the decoder.
        heads: attention heads at levels 1, 2, 3 and the bottleneck; decoder level ``i`` and the
            refinement use those of encoder level ``i`` (level 1), as the official code.
        ffn_expansion_factor: hidden width of the feed-forward parts relative to their input.
        bias: biases of the blocks' convs, the bottleneck fusion and the output conv.
        norm_type: ``"with_bias"`` or ``"bias_free"`` layer norms (official ``WithBias``/``BiasFree``).
        latent_dim: width of the prompter's latent q1.
        prompt_channels: channels of the prompter's H/2, H/4 and H/8 maps.
    """

    def __init__(
        self,
        *,
        image_channels: int = 3,
        dim: int = 48,
        encoder_blocks: Sequence[int] = (4, 6, 6),
        bottleneck_blocks: int = 8,
        decoder_blocks: Sequence[int] = (4, 6, 6),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        norm_type: str = "with_bias",
        latent_dim: int = 128,
        prompt_channels: Sequence[int] = (32, 64, 128),
    ) -> None:
        super().__init__(
            image_channels=image_channels,
            dim=dim,
            prompt_activation="prelu",
            fusion_bias=bias,
            latent_dim=latent_dim,
            prompt_channels=prompt_channels,
        )
        encoder_blocks = _three_levels(encoder_blocks, "encoder_blocks")
        decoder_blocks = _three_levels(decoder_blocks, "decoder_blocks")
        heads = list(heads)
        if len(heads) != 4:
            raise ValueError(f"heads={heads}; expected four (levels 1, 2, 3 and the bottleneck)")

        def blocks(count: int, channels: int, num_heads: int) -> list[TransformerBlock]:
            options = dict(ffn_expansion_factor=ffn_expansion_factor, bias=bias, norm_type=norm_type)
            return [TransformerBlock(channels, num_heads=num_heads, **options) for _ in range(count)]

        self.Preprocess_Module = _PatchEmbed(image_channels, dim, bias=False)
        self.Process_Module_l1 = nn.Sequential(*blocks(encoder_blocks[0], dim, heads[0]))
        self.Process_Module_l2 = nn.Sequential(*blocks(encoder_blocks[1], 2 * dim, heads[1]))
        self.Process_Module_l3 = nn.Sequential(*blocks(encoder_blocks[2], 3 * dim, heads[2]))
        self.Process_Module_bottom = nn.Sequential(*blocks(bottleneck_blocks, 4 * dim, heads[3]))
        self.Process_Module_r3 = nn.Sequential(*blocks(decoder_blocks[2], 4 * dim, heads[2]))
        self.Process_Module_r2 = nn.Sequential(*blocks(decoder_blocks[1], 3 * dim, heads[1]))
        self.Process_Module_r1 = nn.Sequential(*blocks(decoder_blocks[0], 2 * dim, heads[0]))
        self.Finetune_Module = nn.Sequential(
            *blocks(num_refinement_blocks, 2 * dim, heads[0]),
            nn.Conv2d(2 * dim, image_channels, 3, padding=1, bias=bias),
        )


class ConStyleCNN(_SymmetricPromptedUNet):
    """ConStyle-Conv (official ``ConStyleConv``): the prompted U-Net of plain conv + PReLU blocks.

    Every level is one residual block of two bias-free 3×3 conv + PReLU layers (the blocks of
    :class:`restoration.archs.cnn_unet.CNNUNet`); the stem is a conv + PReLU and the output two
    conv + PReLU layers (2·``dim`` → ``dim`` → image) plus the input. Prompt projections use PReLU.

    Args:
        image_channels: channels of the degraded input and the restored output.
        dim: channels at full resolution (official default 48); a multiple of 4.
        bias: bias of the bottleneck's fusion conv (the official ``bias``; every other conv has none).
        latent_dim: width of the prompter's latent q1.
        prompt_channels: channels of the prompter's H/2, H/4 and H/8 maps.
    """

    def __init__(
        self,
        *,
        image_channels: int = 3,
        dim: int = 48,
        bias: bool = False,
        latent_dim: int = 128,
        prompt_channels: Sequence[int] = (32, 64, 128),
    ) -> None:
        super().__init__(
            image_channels=image_channels,
            dim=dim,
            prompt_activation="prelu",
            fusion_bias=bias,
            latent_dim=latent_dim,
            prompt_channels=prompt_channels,
        )
        self.Preprocess_Module = ConvPReLU(in_channels=image_channels, out_channels=dim)
        self.Process_Module_l1 = ResidualConvBlock(channels=dim)
        self.Process_Module_l2 = ResidualConvBlock(channels=2 * dim)
        self.Process_Module_l3 = ResidualConvBlock(channels=3 * dim)
        self.Process_Module_bottom = ResidualConvBlock(channels=4 * dim)
        self.Process_Module_r3 = ResidualConvBlock(channels=4 * dim)
        self.Process_Module_r2 = ResidualConvBlock(channels=3 * dim)
        self.Process_Module_r1 = ResidualConvBlock(channels=2 * dim)
        self.Finetune_Module = nn.Sequential(
            ConvPReLU(in_channels=2 * dim, out_channels=dim),
            ConvPReLU(in_channels=dim, out_channels=image_channels),
        )


class ConStyleMaxim(PromptedUNet):
    """ConStyle-MAXIM (official ``ConStyleMaxim``): prompted single-stage MAXIM.

    The prompted encoder of the other ConStyle nets with MAXIM encoder blocks (levels at ``features``,
    2·, 3·``features``; the bottleneck's MAXIM blocks at 4·``features``), each encoder block also fed
    the input at its scale (nearest down-sampling and a 3×3 conv; level 1 takes the full-scale
    features concatenated with themselves, as the official code). After the latent modulation, one
    cross-gating block per level (deepest first) mixes all encoder levels, resized to it, with the
    global feature, which goes up one level each time; each decoder level up-samples (3×3 conv,
    PixelShuffle) and runs a MAXIM decoder block on it with all cross-gated skips resized to it. The
    output is a 3×3 conv at 2·``features`` plus the input. Prompt projections use LeakyReLU(0.1).

    Args:
        image_channels: channels of the degraded input and the restored output.
        features: channels at full resolution (official default 32); a multiple of 4.
        num_groups: (MAB, channel-attention) pairs per encoder, decoder and bottleneck block (2 in
            the official code, which has no such argument).
        bottleneck_blocks: MAXIM bottleneck blocks (official ``bottom_blk_num``).
        high_res_stages: levels (from full resolution) that use the ``*_hr`` block and grid sizes.
        block_size_hr: block size of the high-resolution levels, pixels.
        block_size_lr: block size of the other levels and of the bottleneck; also the grid of the
            other levels (official behaviour).
        grid_size_hr: grid of the high-resolution levels, cells.
        grid_size_lr: grid of the bottleneck, cells.
        block_gmlp_factor: expansion inside the block gMLPs.
        grid_gmlp_factor: expansion inside the grid gMLPs.
        input_proj_factor: expansion of the MABs' input projection.
        channels_reduction: channel reduction of the channel attention.
        lrelu_slope: negative slope of the RCABs' leaky ReLUs.
        use_bias: biases of the convs and dense layers (official ``bias``: False; a few always have
            one, as in the official code).
        keep_unused_layers: build the cross-gating block the official code puts in every encoder and
            decoder block but never calls (frozen), so official checkpoints load strictly.
        latent_dim: width of the prompter's latent q1.
        prompt_channels: channels of the prompter's H/2, H/4 and H/8 maps.
    """

    def __init__(
        self,
        *,
        image_channels: int = 3,
        features: int = 32,
        num_groups: int = 2,
        bottleneck_blocks: int = 2,
        high_res_stages: int = 2,
        block_size_hr: Sequence[int] = (16, 16),
        block_size_lr: Sequence[int] = (8, 8),
        grid_size_hr: Sequence[int] = (16, 16),
        grid_size_lr: Sequence[int] = (8, 8),
        block_gmlp_factor: int = 2,
        grid_gmlp_factor: int = 2,
        input_proj_factor: int = 2,
        channels_reduction: int = 4,
        lrelu_slope: float = 0.2,
        use_bias: bool = False,
        keep_unused_layers: bool = True,
        latent_dim: int = 128,
        prompt_channels: Sequence[int] = (32, 64, 128),
    ) -> None:
        super().__init__(
            image_channels=image_channels,
            dim=features,
            prompt_activation="leaky_relu",
            fusion_bias=False,
            latent_dim=latent_dim,
            prompt_channels=prompt_channels,
        )
        if min(num_groups, bottleneck_blocks) < 1:
            raise ValueError(f"num_groups={num_groups}, bottleneck_blocks={bottleneck_blocks}; expected >= 1")
        if not 0 <= high_res_stages <= 3:
            raise ValueError(f"high_res_stages={high_res_stages}; expected 0 to 3")
        block_hr, block_lr = tuple(block_size_hr), tuple(block_size_lr)
        grid_hr, grid_lr = tuple(grid_size_hr), tuple(grid_size_lr)
        # (block, grid) of levels 1-3; low-resolution levels use block_size_lr as their grid too.
        level_sizes = [
            (block_hr, grid_hr) if level < high_res_stages else (block_lr, block_lr) for level in range(3)
        ]
        # Every level's map must divide into its blocks and grid, the bottleneck's (H/8) too.
        self.size_multiple = math.lcm(
            PromptedUNet.size_multiple,
            *(2**level * math.lcm(*block, *grid) for level, (block, grid) in enumerate(level_sizes)),
            8 * math.lcm(*block_lr, *grid_lr),
        )
        options = dict(
            num_groups=num_groups,
            block_gmlp_factor=block_gmlp_factor,
            grid_gmlp_factor=grid_gmlp_factor,
            input_proj_factor=input_proj_factor,
            channels_reduction=channels_reduction,
            use_bias=use_bias,
        )
        widths = [features, 2 * features, 3 * features]
        # Scale inputs all at `features` channels (official stage_input_conv_{0,1,2}).
        for scale in range(3):
            conv = nn.Conv2d(image_channels, features, 3, padding=1, bias=use_bias)
            self.add_module(f"stage_input_conv_{scale}", conv)
        # Inputs: level 1 [features, itself]; levels 2, 3 [down-sampled level, prompt, scale input].
        for level, incoming in enumerate((2 * features, 3 * features, 4 * features)):
            block, grid = level_sizes[level]
            encoder = UNetEncoderBlock(
                in_channels=incoming,
                channels=widths[level],
                block_size=block,
                grid_size=grid,
                lrelu_slope=lrelu_slope,
                downsample=False,
                unused_cross_gating=keep_unused_layers,
                **options,
            )
            self.add_module(f"Process_Module_l{level + 1}", encoder)
        self.Process_Module_bottom = nn.Sequential(
            *(
                BottleneckBlock(channels=4 * features, block_size=block_lr, grid_size=grid_lr, **options)
                for _ in range(bottleneck_blocks)
            )
        )

        # Cross-gating of level L (3, 2, 1) by the global feature (the fused bottleneck, 3·features
        # at H/8, then each gating's `features`-channel output): the three encoder levels resized to L.
        # UpSampleRatio_{3·step + source} resizes encoder level `source`; the official numbering, in
        # which the parameter-free resizes of level 1's features (and all decoder resizes) are functions.
        for step, level in enumerate((2, 1, 0)):
            for source in (1, 2):
                resample = UpSampleRatio(
                    in_channels=widths[source],
                    out_channels=features,
                    ratio=2.0 ** (source - level),
                    use_bias=use_bias,
                )
                self.add_module(f"UpSampleRatio_{3 * step + source}", resample)
            block, grid = level_sizes[level]
            gating = CrossGatingBlock(
                x_channels=3 * features,
                y_channels=3 * features if level == 2 else features,
                channels=features,
                block_size=block,
                grid_size=grid,
                upsample_y=True,
                use_bias=use_bias,
            )
            self.add_module(f"cross_gating_block_{level}", gating)

        # Decoder levels 3, 2, 1: up-sample, then a decoder block on [features, the three skips].
        self.UC3, self.UC2, self.UC1 = _Up(3 * features), _Up(3 * features), _Up(2 * features)
        for level, (incoming, width) in enumerate(((2, 2), (3, 2), (3, 3))):
            block, grid = level_sizes[level]
            decoder = UNetDecoderBlock(
                in_channels=incoming * features,
                bridge_channels=3 * features,
                channels=width * features,
                block_size=block,
                grid_size=grid,
                upsample=False,
                unused_cross_gating=keep_unused_layers,
                lrelu_slope=lrelu_slope,
                **options,
            )
            self.add_module(f"Process_Module_r{level + 1}", decoder)
        self.Finetune_Module = nn.Sequential(
            nn.Conv2d(2 * features, image_channels, 3, padding=1, bias=use_bias)
        )

    def _restore(
        self, degraded: torch.Tensor, scale: torch.Tensor, prompts: list[torch.Tensor]
    ) -> torch.Tensor:
        scale_inputs = [
            getattr(self, f"stage_input_conv_{scale_index}")(nearest_downsample(degraded, 2**scale_index))
            for scale_index in range(3)
        ]
        level1 = self.Process_Module_l1(scale_inputs[0], skip=scale_inputs[0])
        level2 = self.Process_Module_l2(self.DC1(level1, prompts[0]), skip=scale_inputs[1])
        level3 = self.Process_Module_l3(self.DC2(level2, prompts[1]), skip=scale_inputs[2])
        features = self._modulate(self.Process_Module_bottom(self.DC3(level3, prompts[2])), scale)

        global_feature, skips = features, []
        for step, level in enumerate((2, 1, 0)):
            signal = torch.cat(
                [
                    _resize(level1, 2.0**-level),
                    getattr(self, f"UpSampleRatio_{3 * step + 1}")(level2),
                    getattr(self, f"UpSampleRatio_{3 * step + 2}")(level3),
                ],
                dim=1,
            )
            skip, global_feature = getattr(self, f"cross_gating_block_{level}")(signal, global_feature)
            skips.append(skip)

        # skips[i] is at level 2 - i: join them deepest first, each resized to the decoder's level.
        for level in (2, 1, 0):
            bridge = torch.cat(
                [_resize(skip, 2.0 ** (2 - index - level)) for index, skip in enumerate(skips)], 1
            )
            features = getattr(self, f"UC{level + 1}")(features)
            features = getattr(self, f"Process_Module_r{level + 1}")(features, bridge=bridge)
        return self.Finetune_Module(features) + degraded
