"""MAXIM-1S: the single-stage multi-axis MLP U-Net.

Tu, Talebi, Zhang, Yang, Milanfar, Bovik and Li, "MAXIM: Multi-Axis MLP for Image Processing",
CVPR 2022. This is the single-stage network as ConStyle v2 (Fan et al., arXiv 2406.18242, 2024)
trains it as its "Origin MAXIM" baseline, with the state-dict keys of that PyTorch port
(``archs/Maxim_arch.py``), so its checkpoints load with ``strict=True``. The building blocks are
exported for the prompted ConStyle-MAXIM U-Net:

- :class:`ResidualSplitHeadMultiAxisGmlpLayer` (MAB): half of the channels mix tokens across a fixed
  grid of cells (global, dilated), the other half within fixed-size blocks (local);
- :class:`CrossGatingBlock` (CGB): two feature maps gate each other with multi-axis spatial weights;
- :class:`RCAB` / :class:`RDCAB`: residual channel-attention blocks (conv or MLP);
- :class:`UNetEncoderBlock`, :class:`UNetDecoderBlock`, :class:`BottleneckBlock`, :class:`UpSampleRatio`.

Layout: blocks that take ``N×C×H×W`` maps (encoder, decoder, bottleneck, cross-gating) run their
token-wise layers on channels-last ``N×H×W×C`` views; the MAB, RCAB and RDCAB take ``N×H×W×C``.
Every layer norm normalises over the channels with ``eps=1e-6`` (the JAX default). The token-mixing
dense layers act on the token axis of each block or grid, so feature maps must divide into them:
:class:`Maxim` pads its input to :attr:`Maxim.size_multiple` and crops back.

Behaviour kept from the official port for weight compatibility:

- the first encoder concatenates the full-scale input features with themselves (``skip`` = input);
- low-resolution levels use ``block_size_lr`` as their *grid* size too (as the JAX original does);
  ``grid_size_lr`` only sets the bottleneck's grid;
- the port builds a cross-gating block in every encoder (multi-stage MAXIM fuses the previous stage
  there) and a down-sampling conv in every decoder, and a single-stage network calls neither:
  ``keep_unused_layers`` builds them (frozen) so checkpoints load strictly;
- some convs ignore ``use_bias`` (see :class:`RCAB`, :class:`UNetEncoderBlock`, :class:`BottleneckBlock`).

Dropout (rate 0 in every released configuration), the multi-stage SAM and the switch to drop the
MABs (``use_global_mlp``; the port builds them regardless) are not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from restoration.archs.common import pad_to_multiple

__all__ = [
    "RCAB",
    "RDCAB",
    "BlockGmlpLayer",
    "BottleneckBlock",
    "CALayer",
    "CrossGatingBlock",
    "GatingUnit",
    "GetSpatialGatingWeights",
    "GridGmlpLayer",
    "LayerNorm",
    "Maxim",
    "MlpBlock",
    "ResidualSplitHeadMultiAxisGmlpLayer",
    "UNetDecoderBlock",
    "UNetEncoderBlock",
    "UpSampleRatio",
    "mix_across_grid",
    "mix_within_blocks",
    "nearest_downsample",
]


def _pair(size: Sequence[int], name: str) -> tuple[int, int]:
    height, width = (int(value) for value in size)
    if height < 1 or width < 1:
        raise ValueError(f"{name}={tuple(size)}; expected two positive sizes (height, width)")
    return height, width


def _check_divisible(features: torch.Tensor, parts: tuple[int, int], what: str) -> None:
    height, width = features.shape[1:3]
    if height % parts[0] or width % parts[1]:
        raise ValueError(
            f"feature map {height}×{width} does not divide into {what} {parts[0]}×{parts[1]}; "
            "pad the input (Maxim pads to its size_multiple)"
        )


def mix_within_blocks(features: torch.Tensor, dense: nn.Linear, block_size: tuple[int, int]) -> torch.Tensor:
    """Apply ``dense`` over the ``bh·bw`` pixels of each non-overlapping block of an N×H×W×C map.

    The token index is ``row · bw + column`` inside the block, as in the official port.
    """
    _check_divisible(features, block_size, "blocks of")
    batch, height, width, channels = features.shape
    (block_h, block_w), grid_h, grid_w = block_size, height // block_size[0], width // block_size[1]
    # Tokens last so one GEMM applies the dense to every (block, channel) pair.
    tokens = features.reshape(batch, grid_h, block_h, grid_w, block_w, channels).permute(0, 1, 3, 5, 2, 4)
    mixed = dense(tokens.reshape(batch, grid_h, grid_w, channels, block_h * block_w))
    mixed = mixed.reshape(batch, grid_h, grid_w, channels, block_h, block_w).permute(0, 1, 4, 2, 5, 3)
    return mixed.reshape(batch, height, width, channels)


def mix_across_grid(features: torch.Tensor, dense: nn.Linear, grid_size: tuple[int, int]) -> torch.Tensor:
    """Apply ``dense`` over the ``gh·gw`` cells of a fixed grid, at each position inside a cell.

    Pixels ``H / gh`` rows and ``W / gw`` columns apart are mixed (a dilated, global mixing); the
    token index is ``cell_row · gw + cell_column``, as in the official port.
    """
    _check_divisible(features, grid_size, "a grid of")
    batch, height, width, channels = features.shape
    (grid_h, grid_w), cell_h, cell_w = grid_size, height // grid_size[0], width // grid_size[1]
    tokens = features.reshape(batch, grid_h, cell_h, grid_w, cell_w, channels).permute(0, 2, 4, 5, 1, 3)
    mixed = dense(tokens.reshape(batch, cell_h, cell_w, channels, grid_h * grid_w))
    mixed = mixed.reshape(batch, cell_h, cell_w, channels, grid_h, grid_w).permute(0, 4, 1, 5, 2, 3)
    return mixed.reshape(batch, height, width, channels)


def nearest_downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour down-sampling by an integer factor, sampling at pixel centres.

    Output pixel ``k`` takes input pixel ``floor((k + 0.5) · factor)``: every ``factor``-th pixel
    starting at ``factor // 2``, the official port's sampling.
    """
    offset = factor // 2
    return images[..., offset::factor, offset::factor]


class LayerNorm(nn.Module):
    """Layer norm over the last (channel) axis with ``eps=1e-6``.

    The official port names the affine parameters ``gamma`` and ``beta`` (its state-dict keys).
    """

    def __init__(self, channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(features, self.gamma.shape, self.gamma, self.beta, self.eps)


class GatingUnit(nn.Module):
    """gMLP spatial gating (Liu et al., NeurIPS 2021): ``u · (1 + dense_tokens(norm(v)))``.

    The input's channels split into halves ``u`` and ``v``; the dense mixes the tokens of ``v``
    within blocks or across the grid.

    Args:
        channels: channels of the input (both halves).
        partition: ``"block"`` (local mixing inside ``size``-pixel blocks) or ``"grid"`` (global
            mixing across a ``size`` grid of cells).
        size: block size or grid size, (height, width).
        use_bias: bias of the token-mixing dense.
    """

    def __init__(self, *, channels: int, partition: str, size: Sequence[int], use_bias: bool = True) -> None:
        super().__init__()
        if partition not in ("block", "grid"):
            raise ValueError(f"partition={partition!r}; expected 'block' or 'grid'")
        self.partition = partition
        self.size = _pair(size, f"{partition}_size")
        self.intermediate_layernorm = LayerNorm(channels // 2)
        self.Dense_0 = nn.Linear(self.size[0] * self.size[1], self.size[0] * self.size[1], bias=use_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        gate, gated = features.chunk(2, dim=-1)
        mix = mix_within_blocks if self.partition == "block" else mix_across_grid
        mixed = mix(self.intermediate_layernorm(gated), self.Dense_0, self.size)
        return torch.addcmul(gate, gate, mixed)  # gate · (1 + mixed)


class _GmlpLayer(nn.Module):
    """Pre-norm residual gMLP layer: ``x + out(gating(gelu(in(norm(x)))))`` on N×H×W×C maps."""

    def __init__(self, *, channels: int, factor: int, use_bias: bool) -> None:
        super().__init__()
        self.LayerNorm = LayerNorm(channels)
        self.in_project = nn.Linear(channels, channels * factor, bias=use_bias)
        self.out_project = nn.Linear(channels * factor // 2, channels, bias=use_bias)

    @property
    def gating_unit(self) -> GatingUnit:
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = F.gelu(self.in_project(self.LayerNorm(features)))
        return features + self.out_project(self.gating_unit(projected))


class GridGmlpLayer(_GmlpLayer):
    """gMLP layer mixing tokens across a fixed ``grid_size`` grid (global branch of the MAB).

    Args:
        channels: input and output channels.
        grid_size: number of grid cells, (height, width).
        factor: expansion of the input projection.
        use_bias: biases of the in/out projections (the gating unit always has one, as the official code).
    """

    def __init__(
        self, *, channels: int, grid_size: Sequence[int], factor: int = 2, use_bias: bool = True
    ) -> None:
        super().__init__(channels=channels, factor=factor, use_bias=use_bias)
        self.GridGatingUnit = GatingUnit(
            # always with a bias: the official gMLP layers build their gating unit without passing use_bias
            channels=channels * factor,
            partition="grid",
            size=grid_size,
            use_bias=True,
        )

    @property
    def gating_unit(self) -> GatingUnit:
        return self.GridGatingUnit


class BlockGmlpLayer(_GmlpLayer):
    """gMLP layer mixing tokens inside ``block_size`` blocks (local branch of the MAB).

    Args:
        channels: input and output channels.
        block_size: block size in pixels, (height, width).
        factor: expansion of the input projection.
        use_bias: biases of the in/out projections (the gating unit always has one, as the official code).
    """

    def __init__(
        self, *, channels: int, block_size: Sequence[int], factor: int = 2, use_bias: bool = True
    ) -> None:
        super().__init__(channels=channels, factor=factor, use_bias=use_bias)
        self.BlockGatingUnit = GatingUnit(
            # always with a bias: the official gMLP layers build their gating unit without passing use_bias
            channels=channels * factor,
            partition="block",
            size=block_size,
            use_bias=True,
        )

    @property
    def gating_unit(self) -> GatingUnit:
        return self.BlockGatingUnit


class ResidualSplitHeadMultiAxisGmlpLayer(nn.Module):
    """Multi-axis gated MLP block (MAB), on N×H×W×C maps.

    After a pre-norm projection, one half of the channels goes through a grid gMLP (global) and the
    other through a block gMLP (local); both are projected back and added to the input.

    Args:
        channels: input and output channels.
        block_size: block size of the local branch, (height, width) in pixels.
        grid_size: grid of the global branch, (height, width) in cells.
        input_proj_factor: expansion of the input projection (split between the branches).
        block_gmlp_factor: expansion inside the block gMLP.
        grid_gmlp_factor: expansion inside the grid gMLP.
        use_bias: biases of the dense layers.
    """

    def __init__(
        self,
        *,
        channels: int,
        block_size: Sequence[int],
        grid_size: Sequence[int],
        input_proj_factor: int = 2,
        block_gmlp_factor: int = 2,
        grid_gmlp_factor: int = 2,
        use_bias: bool = True,
    ) -> None:
        super().__init__()
        branch_channels = channels * input_proj_factor // 2
        self.LayerNorm_in = LayerNorm(channels)
        self.in_project = nn.Linear(channels, channels * input_proj_factor, bias=use_bias)
        self.GridGmlpLayer = GridGmlpLayer(
            channels=branch_channels, grid_size=grid_size, factor=grid_gmlp_factor, use_bias=use_bias
        )
        self.BlockGmlpLayer = BlockGmlpLayer(
            channels=branch_channels, block_size=block_size, factor=block_gmlp_factor, use_bias=use_bias
        )
        self.out_project = nn.Linear(channels * input_proj_factor, channels, bias=use_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = F.gelu(self.in_project(self.LayerNorm_in(features)))
        global_half, local_half = projected.chunk(2, dim=-1)
        mixed = torch.cat([self.GridGmlpLayer(global_half), self.BlockGmlpLayer(local_half)], dim=-1)
        return features + self.out_project(mixed)


class CALayer(nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al., CVPR 2018) on N×H×W×C maps.

    Args:
        channels: input and output channels.
        reduction: channel reduction of the squeeze.
        use_bias: biases of the two 1×1 convs.
    """

    def __init__(self, *, channels: int, reduction: int = 4, use_bias: bool = True) -> None:
        super().__init__()
        self.Conv_0 = nn.Conv2d(channels, channels // reduction, 1, bias=use_bias)
        self.Conv_1 = nn.Conv2d(channels // reduction, channels, 1, bias=use_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        squeezed = features.mean(dim=(1, 2))[:, :, None, None]
        weights = torch.sigmoid(self.Conv_1(F.relu(self.Conv_0(squeezed))))
        return features * weights.flatten(1)[:, None, None, :]


class RCAB(nn.Module):
    """Residual channel-attention block: ``x + CA(conv3×3(lrelu(conv3×3(norm(x)))))``, N×H×W×C.

    Args:
        channels: input and output channels.
        reduction: channel reduction of the attention.
        lrelu_slope: negative slope of the leaky ReLU.
        use_bias: biases of the 3×3 convs; the attention always has biases (as in the official port).
    """

    def __init__(
        self, *, channels: int, reduction: int = 4, lrelu_slope: float = 0.2, use_bias: bool = True
    ) -> None:
        super().__init__()
        self.lrelu_slope = lrelu_slope
        self.LayerNorm = LayerNorm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=use_bias)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=use_bias)
        self.channel_attention = CALayer(channels=channels, reduction=reduction)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        residual = self.LayerNorm(features).permute(0, 3, 1, 2)
        residual = self.conv2(F.leaky_relu(self.conv1(residual), self.lrelu_slope))
        return features + self.channel_attention(residual.permute(0, 2, 3, 1))


class MlpBlock(nn.Module):
    """Two dense layers with a GELU between them, over the channels.

    Args:
        channels: input, hidden and output channels.
        use_bias: biases of the dense layers.
    """

    def __init__(self, *, channels: int, use_bias: bool = True) -> None:
        super().__init__()
        self.Dense_0 = nn.Linear(channels, channels, bias=use_bias)
        self.Dense_1 = nn.Linear(channels, channels, bias=use_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.Dense_1(F.gelu(self.Dense_0(features)))


class RDCAB(nn.Module):
    """Residual dense channel-attention block of the bottleneck: ``x + CA(MLP(norm(x)))``, N×H×W×C.

    Args:
        channels: input and output channels.
        reduction: channel reduction of the attention.
        use_bias: biases of the dense layers and of the attention.
    """

    def __init__(self, *, channels: int, reduction: int = 4, use_bias: bool = True) -> None:
        super().__init__()
        self.LayerNorm = LayerNorm(channels)
        self.channel_mixing = MlpBlock(channels=channels, use_bias=use_bias)
        self.channel_attention = CALayer(channels=channels, reduction=reduction, use_bias=use_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.channel_attention(self.channel_mixing(self.LayerNorm(features)))


class GetSpatialGatingWeights(nn.Module):
    """Multi-axis spatial weights of the cross-gating block, on N×H×W×C maps.

    Like the MAB without its gating: half of the projected channels mix across the grid, half within
    blocks, and the concatenation is projected back.

    Args:
        channels: input and output channels.
        block_size: block size of the local half, (height, width) in pixels.
        grid_size: grid of the global half, (height, width) in cells.
        input_proj_factor: expansion of the input projection.
        use_bias: biases of the dense layers.
    """

    def __init__(
        self,
        *,
        channels: int,
        block_size: Sequence[int],
        grid_size: Sequence[int],
        input_proj_factor: int = 2,
        use_bias: bool = True,
    ) -> None:
        super().__init__()
        self.block_size = _pair(block_size, "block_size")
        self.grid_size = _pair(grid_size, "grid_size")
        grid_tokens, block_tokens = math.prod(self.grid_size), math.prod(self.block_size)
        self.LayerNorm_in = LayerNorm(channels)
        self.in_project = nn.Linear(channels, channels * input_proj_factor, bias=use_bias)
        self.Dense_0 = nn.Linear(grid_tokens, grid_tokens, bias=use_bias)
        self.Dense_1 = nn.Linear(block_tokens, block_tokens, bias=use_bias)
        self.out_project = nn.Linear(channels * input_proj_factor, channels, bias=use_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = F.gelu(self.in_project(self.LayerNorm_in(features)))
        global_half, local_half = projected.chunk(2, dim=-1)
        mixed = torch.cat(
            [
                mix_across_grid(global_half, self.Dense_0, self.grid_size),
                mix_within_blocks(local_half, self.Dense_1, self.block_size),
            ],
            dim=-1,
        )
        return self.out_project(mixed)


class CrossGatingBlock(nn.Module):
    """Cross-gating block (CGB): ``x`` and ``y`` gate each other with multi-axis spatial weights.

    Takes and returns N×C×H×W maps. ``y`` (the coarser, global signal) is optionally up-sampled ×2 by
    a transposed conv; both are projected to ``channels`` by 1×1 convs and must then have the same
    size. Returns ``(x', y')``: ``y' = y + out_y(y · w(x))`` and ``x' = x + y' + out_x(x · w(y))``.

    Args:
        x_channels: channels of ``x``.
        y_channels: channels of ``y``.
        channels: working and output channels.
        block_size: block size of the spatial weights, (height, width) in pixels.
        grid_size: grid of the spatial weights, (height, width) in cells.
        upsample_y: up-sample ``y`` ×2 first (a 2×2 stride-2 transposed conv).
        use_bias: biases of every conv and dense layer.
    """

    def __init__(
        self,
        *,
        x_channels: int,
        y_channels: int,
        channels: int,
        block_size: Sequence[int],
        grid_size: Sequence[int],
        upsample_y: bool = True,
        use_bias: bool = True,
    ) -> None:
        super().__init__()
        self.upsample_y = upsample_y
        if upsample_y:
            self.ConvTranspose_0 = nn.ConvTranspose2d(y_channels, channels, 2, stride=2, bias=use_bias)
        self.Conv_0 = nn.Conv2d(x_channels, channels, 1, bias=use_bias)
        self.Conv_1 = nn.Conv2d(channels if upsample_y else y_channels, channels, 1, bias=use_bias)
        # The port's spatial weights always expand ×2, whatever the MAB's input_proj_factor.
        weights = dict(channels=channels, block_size=block_size, grid_size=grid_size, use_bias=use_bias)
        self.LayerNorm_x = LayerNorm(channels)
        self.in_project_x = nn.Linear(channels, channels, bias=use_bias)
        self.SplitHeadMultiAxisGating_x = GetSpatialGatingWeights(**weights)
        self.LayerNorm_y = LayerNorm(channels)
        self.in_project_y = nn.Linear(channels, channels, bias=use_bias)
        self.SplitHeadMultiAxisGating_y = GetSpatialGatingWeights(**weights)
        self.out_project_y = nn.Linear(channels, channels, bias=use_bias)
        self.out_project_x = nn.Linear(channels, channels, bias=use_bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.upsample_y:
            y = self.ConvTranspose_0(y)
        x = self.Conv_0(x).permute(0, 2, 3, 1)
        y = self.Conv_1(y).permute(0, 2, 3, 1)
        if x.shape != y.shape:
            raise ValueError(
                f"cross-gating inputs differ after projection: x {tuple(x.shape)}, y {tuple(y.shape)} "
                "(N×H×W×C)"
            )
        x_projected = F.gelu(self.in_project_x(self.LayerNorm_x(x)))
        y_projected = F.gelu(self.in_project_y(self.LayerNorm_y(y)))
        x_weights = self.SplitHeadMultiAxisGating_x(x_projected)
        y_weights = self.SplitHeadMultiAxisGating_y(y_projected)
        y_out = y + self.out_project_y(y_projected * x_weights)
        x_out = x + y_out + self.out_project_x(x_projected * y_weights)
        return x_out.permute(0, 3, 1, 2), y_out.permute(0, 3, 1, 2)


class UNetEncoderBlock(nn.Module):
    """Encoder block: 1×1 input conv, ``num_groups`` × (MAB → RCAB), long residual. N×C×H×W.

    ``forward(x, skip)`` concatenates ``skip`` (if any) to ``x`` on the channels and returns the
    block's features; :meth:`downsample` halves them for the next level.

    Args:
        in_channels: channels of ``x`` plus those of ``skip``.
        channels: working and output channels.
        block_size: block size of the MABs, (height, width) in pixels.
        grid_size: grid of the MABs, (height, width) in cells.
        num_groups: number of (MAB, RCAB) pairs.
        lrelu_slope: negative slope of the RCABs' leaky ReLU.
        block_gmlp_factor: expansion inside the block gMLPs.
        grid_gmlp_factor: expansion inside the grid gMLPs.
        input_proj_factor: expansion of the MABs' input projection.
        channels_reduction: channel reduction of the RCABs' attention.
        use_bias: biases of the convs and dense layers (the down-sampling conv always has one, as
            in the official port).
        downsample: build the 4×4 stride-2 conv of :meth:`downsample`.
        unused_cross_gating: build the (frozen, never called) cross-gating block that multi-stage
            MAXIM uses to fuse the previous stage's features; the official ports have it in every
            encoder, so their checkpoints need it to load strictly.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        channels: int,
        block_size: Sequence[int],
        grid_size: Sequence[int],
        num_groups: int = 2,
        lrelu_slope: float = 0.2,
        block_gmlp_factor: int = 2,
        grid_gmlp_factor: int = 2,
        input_proj_factor: int = 2,
        channels_reduction: int = 4,
        use_bias: bool = True,
        downsample: bool = True,
        unused_cross_gating: bool = False,
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.Conv_0 = nn.Conv2d(in_channels, channels, 1, bias=use_bias)
        # Keys SplitHeadMultiAxisGmlpLayer_{i} and channel_attention_block_1{i}: the port's names.
        for index in range(num_groups):
            mab = ResidualSplitHeadMultiAxisGmlpLayer(
                channels=channels,
                block_size=block_size,
                grid_size=grid_size,
                input_proj_factor=input_proj_factor,
                block_gmlp_factor=block_gmlp_factor,
                grid_gmlp_factor=grid_gmlp_factor,
                use_bias=use_bias,
            )
            rcab = RCAB(
                channels=channels, reduction=channels_reduction, lrelu_slope=lrelu_slope, use_bias=use_bias
            )
            self.add_module(f"SplitHeadMultiAxisGmlpLayer_{index}", mab)
            self.add_module(f"channel_attention_block_1{index}", rcab)
        if unused_cross_gating:
            self.cross_gating_block = CrossGatingBlock(
                x_channels=channels,
                y_channels=channels,
                channels=channels,
                block_size=block_size,
                grid_size=grid_size,
                upsample_y=False,
                use_bias=use_bias,
            ).requires_grad_(False)
        if downsample:
            self.Conv_1 = nn.Conv2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        features = self.Conv_0(x)
        tokens = features.permute(0, 2, 3, 1)
        for index in range(self.num_groups):
            tokens = getattr(self, f"SplitHeadMultiAxisGmlpLayer_{index}")(tokens)
            tokens = getattr(self, f"channel_attention_block_1{index}")(tokens)
        return features + tokens.permute(0, 3, 1, 2)

    def downsample(self, features: torch.Tensor) -> torch.Tensor:
        """Halve the height and width (4×4 conv, stride 2)."""
        return self.Conv_1(features)


class UNetDecoderBlock(nn.Module):
    """Decoder block: optional ×2 transposed-conv up-sampling, then an encoder block on ``[x, bridge]``.

    Args:
        in_channels: channels of ``x``.
        bridge_channels: channels of the skip signal ``bridge``.
        channels: working and output channels.
        block_size: block size of the MABs, (height, width) in pixels.
        grid_size: grid of the MABs, (height, width) in cells.
        upsample: up-sample ``x`` ×2 (2×2 stride-2 transposed conv to ``channels``) first.
        unused_downsample: build the inner encoder block's down-sampling conv (frozen, never called),
            which the official MAXIM port has.
        unused_cross_gating: see :class:`UNetEncoderBlock`.
        num_groups, lrelu_slope, block_gmlp_factor, grid_gmlp_factor, input_proj_factor,
        channels_reduction: those of the inner :class:`UNetEncoderBlock`.
        use_bias: biases of the transposed conv and of the inner block.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        bridge_channels: int,
        channels: int,
        block_size: Sequence[int],
        grid_size: Sequence[int],
        upsample: bool = True,
        unused_downsample: bool = False,
        unused_cross_gating: bool = False,
        num_groups: int = 2,
        lrelu_slope: float = 0.2,
        block_gmlp_factor: int = 2,
        grid_gmlp_factor: int = 2,
        input_proj_factor: int = 2,
        channels_reduction: int = 4,
        use_bias: bool = True,
    ) -> None:
        super().__init__()
        self.upsample = upsample
        if upsample:
            self.ConvTranspose_0 = nn.ConvTranspose2d(in_channels, channels, 2, stride=2, bias=use_bias)
        self.UNetEncoderBlock_0 = UNetEncoderBlock(
            in_channels=(channels if upsample else in_channels) + bridge_channels,
            channels=channels,
            block_size=block_size,
            grid_size=grid_size,
            num_groups=num_groups,
            lrelu_slope=lrelu_slope,
            block_gmlp_factor=block_gmlp_factor,
            grid_gmlp_factor=grid_gmlp_factor,
            input_proj_factor=input_proj_factor,
            channels_reduction=channels_reduction,
            use_bias=use_bias,
            downsample=unused_downsample,
            unused_cross_gating=unused_cross_gating,
        )
        if unused_downsample:
            self.UNetEncoderBlock_0.Conv_1.requires_grad_(False)

    def forward(self, x: torch.Tensor, bridge: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = self.ConvTranspose_0(x)
        return self.UNetEncoderBlock_0(x, skip=bridge)


class BottleneckBlock(nn.Module):
    """Bottleneck block: 1×1 conv, ``num_groups`` × (MAB → RDCAB), long residual. N×C×H×W.

    Args:
        channels: input and output channels.
        block_size: block size of the MABs, (height, width) in pixels.
        grid_size: grid of the MABs, (height, width) in cells.
        num_groups: number of (MAB, RDCAB) pairs.
        block_gmlp_factor: expansion inside the block gMLPs.
        grid_gmlp_factor: expansion inside the grid gMLPs.
        input_proj_factor: expansion of the MABs' input projection.
        channels_reduction: channel reduction of the RDCABs' attention.
        use_bias: biases of the dense layers (the input conv always has one, as in the official port).
    """

    def __init__(
        self,
        *,
        channels: int,
        block_size: Sequence[int],
        grid_size: Sequence[int],
        num_groups: int = 2,
        block_gmlp_factor: int = 2,
        grid_gmlp_factor: int = 2,
        input_proj_factor: int = 2,
        channels_reduction: int = 4,
        use_bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.input_proj = nn.Conv2d(channels, channels, 1)
        # Keys SplitHeadMultiAxisGmlpLayer_{i} and channel_attention_block_1_{i}: the port's names.
        for index in range(num_groups):
            mab = ResidualSplitHeadMultiAxisGmlpLayer(
                channels=channels,
                block_size=block_size,
                grid_size=grid_size,
                input_proj_factor=input_proj_factor,
                block_gmlp_factor=block_gmlp_factor,
                grid_gmlp_factor=grid_gmlp_factor,
                use_bias=use_bias,
            )
            rdcab = RDCAB(channels=channels, reduction=channels_reduction, use_bias=use_bias)
            self.add_module(f"SplitHeadMultiAxisGmlpLayer_{index}", mab)
            self.add_module(f"channel_attention_block_1_{index}", rdcab)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.input_proj(features)
        tokens = features.permute(0, 2, 3, 1)
        for index in range(self.num_groups):
            tokens = getattr(self, f"SplitHeadMultiAxisGmlpLayer_{index}")(tokens)
            tokens = getattr(self, f"channel_attention_block_1_{index}")(tokens)
        return features + tokens.permute(0, 3, 1, 2)


class UpSampleRatio(nn.Module):
    """Resize an N×C×H×W map by ``ratio`` (anti-aliased bilinear) and project it with a 1×1 conv.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        ratio: output size / input size; 1 skips the resize.
        use_bias: bias of the conv.
    """

    def __init__(self, *, in_channels: int, out_channels: int, ratio: float, use_bias: bool = True) -> None:
        super().__init__()
        if ratio <= 0:
            raise ValueError(f"UpSampleRatio ratio={ratio}; expected > 0")
        self.ratio = ratio
        self.Conv_0 = nn.Conv2d(in_channels, out_channels, 1, bias=use_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.ratio != 1:
            height, width = features.shape[-2:]
            size = (int(height * self.ratio), int(width * self.ratio))
            features = F.interpolate(features, size=size, mode="bilinear", antialias=True)
        return self.Conv_0(features)


class Maxim(nn.Module):
    """Single-stage MAXIM (MAXIM-1S), with the ConStyle v2 port's keys and defaults.

    A ``depth``-level U-Net of encoder blocks fed with the input at ``num_supervision_scales``
    scales, a bottleneck of ``num_bottleneck_blocks`` blocks, one cross-gating block per level that
    mixes all encoder levels with the (up-sampled) global feature, decoder blocks fed with all the
    cross-gated skips, and a 3×3 output conv added to the input. Channels double at each level.

    Args:
        in_channels: channels of the degraded input.
        out_channels: channels of the output (the global residual needs ``out == in``).
        features: channels at full resolution.
        depth: number of encoder/decoder levels (down-samplings).
        num_groups: (MAB, channel-attention) pairs per encoder, decoder and bottleneck block.
        num_bottleneck_blocks: bottleneck blocks.
        num_supervision_scales: input scales fed to the encoders (1 to ``depth``).
        high_res_stages: levels (from full resolution) that use the ``*_hr`` block and grid sizes.
        block_size_hr: block size of the high-resolution levels, pixels.
        block_size_lr: block size of the other levels and the bottleneck; also the grid of the
            other levels (official behaviour).
        grid_size_hr: grid of the high-resolution levels, cells.
        grid_size_lr: grid of the bottleneck, cells.
        block_gmlp_factor: expansion inside the block gMLPs.
        grid_gmlp_factor: expansion inside the grid gMLPs.
        input_proj_factor: expansion of the MABs' input projection.
        channels_reduction: channel reduction of the channel attention.
        lrelu_slope: negative slope of the leaky ReLUs.
        use_bias: biases of the convs and dense layers (a few always have one, as in the port).
        keep_unused_layers: build the layers the official port has but never calls (a cross-gating
            block in every encoder, a down-sampling conv in every decoder: 2.0M of its 8.2M
            parameters), frozen, so its checkpoints load with ``strict=True``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        features: int = 32,
        depth: int = 3,
        num_groups: int = 2,
        num_bottleneck_blocks: int = 2,
        num_supervision_scales: int = 3,
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
        use_bias: bool = True,
        keep_unused_layers: bool = True,
    ) -> None:
        super().__init__()
        if in_channels != out_channels:
            raise ValueError(
                f"Maxim needs in_channels == out_channels for its residual; got {in_channels}, {out_channels}"
            )
        if min(features, depth, num_groups, num_bottleneck_blocks) < 1:
            raise ValueError(
                f"Maxim features={features}, depth={depth}, num_groups={num_groups}, "
                f"num_bottleneck_blocks={num_bottleneck_blocks}; expected >= 1"
            )
        if not 1 <= num_supervision_scales <= depth:
            raise ValueError(f"num_supervision_scales={num_supervision_scales}; expected 1 to depth={depth}")
        if not 0 <= high_res_stages <= depth:
            raise ValueError(f"high_res_stages={high_res_stages}; expected 0 to depth={depth}")
        if features // channels_reduction < 1:
            raise ValueError(f"features={features} < channels_reduction={channels_reduction}")
        block_hr, block_lr = _pair(block_size_hr, "block_size_hr"), _pair(block_size_lr, "block_size_lr")
        grid_hr, grid_lr = _pair(grid_size_hr, "grid_size_hr"), _pair(grid_size_lr, "grid_size_lr")
        # (block, grid) per level; low-res levels use block_size_lr for both, as the JAX original does.
        self.level_sizes = [
            (block_hr, grid_hr) if level < high_res_stages else (block_lr, block_lr) for level in range(depth)
        ]
        self.depth, self.num_supervision_scales = depth, num_supervision_scales
        self.num_bottleneck_blocks = num_bottleneck_blocks
        # Every level's map must divide into its blocks and grid, the bottleneck's too.
        self.size_multiple = math.lcm(
            *(2**level * math.lcm(*block, *grid) for level, (block, grid) in enumerate(self.level_sizes)),
            2**depth * math.lcm(*block_lr, *grid_lr),
        )
        widths = [features * 2**level for level in range(depth)]
        bottleneck_width = widths[-1]
        block_options = dict(
            num_groups=num_groups,
            block_gmlp_factor=block_gmlp_factor,
            grid_gmlp_factor=grid_gmlp_factor,
            input_proj_factor=input_proj_factor,
            channels_reduction=channels_reduction,
            use_bias=use_bias,
        )

        # Attribute names stage_0_*, UpSampleRatio_{k}: the port's state-dict keys.
        for scale in range(num_supervision_scales):
            self.add_module(
                f"stage_0_input_conv_{scale}",
                nn.Conv2d(in_channels, widths[scale], 3, padding=1, bias=use_bias),
            )
        for level, (block, grid) in enumerate(self.level_sizes):
            # The first level's input is the full-scale features concatenated with themselves.
            incoming = widths[0] if level == 0 else widths[level - 1]
            scale_input = widths[level] if level < num_supervision_scales else 0
            encoder = UNetEncoderBlock(
                in_channels=incoming + scale_input,
                channels=widths[level],
                block_size=block,
                grid_size=grid,
                lrelu_slope=lrelu_slope,
                unused_cross_gating=keep_unused_layers,
                **block_options,
            )
            self.add_module(f"stage_0_encoder_block_{level}", encoder)
        for index in range(num_bottleneck_blocks):
            bottleneck = BottleneckBlock(
                channels=bottleneck_width,
                block_size=block_lr,
                grid_size=grid_lr,
                **block_options,
            )
            self.add_module(f"stage_0_global_block_{index}", bottleneck)

        # UpSampleRatio_{k}: before the cross-gating block (then the decoder block) of the n-th level
        # from the bottom, modules n·depth to n·depth + depth - 1 resize each encoder level (each
        # cross-gated skip, deepest first) to this level; the official numbering.
        for step, level in enumerate(reversed(range(depth))):
            for source in range(depth):
                self._add_resampler(step * depth + source, widths, source, level, use_bias)
            block, grid = self.level_sizes[level]
            gating = CrossGatingBlock(
                x_channels=depth * widths[level],
                y_channels=widths[min(level + 1, depth - 1)],
                channels=widths[level],
                block_size=block,
                grid_size=grid,
                upsample_y=True,
                use_bias=use_bias,
            )
            self.add_module(f"stage_0_cross_gating_block_{level}", gating)
        for step, level in enumerate(reversed(range(depth))):
            for index, source in enumerate(reversed(range(depth))):
                self._add_resampler((depth + step) * depth + index, widths, source, level, use_bias)
            block, grid = self.level_sizes[level]
            decoder = UNetDecoderBlock(
                in_channels=widths[min(level + 1, depth - 1)],
                bridge_channels=depth * widths[level],
                channels=widths[level],
                block_size=block,
                grid_size=grid,
                lrelu_slope=lrelu_slope,
                unused_downsample=keep_unused_layers,
                unused_cross_gating=keep_unused_layers,
                **block_options,
            )
            self.add_module(f"stage_0_decoder_block_{level}", decoder)
        self.stage_0_output_conv_0 = nn.Conv2d(widths[0], out_channels, 3, padding=1, bias=use_bias)

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        height, width = degraded.shape[-2:]
        padded = pad_to_multiple(degraded, self.size_multiple).contiguous(memory_format=torch.channels_last)
        scales = [
            getattr(self, f"stage_0_input_conv_{scale}")(nearest_downsample(padded, 2**scale))
            for scale in range(self.num_supervision_scales)
        ]
        features, encoded = scales[0], []
        for level in range(self.depth):
            encoder = getattr(self, f"stage_0_encoder_block_{level}")
            bridge = encoder(features, skip=scales[level] if level < self.num_supervision_scales else None)
            encoded.append(bridge)
            features = encoder.downsample(bridge)
        for index in range(self.num_bottleneck_blocks):
            features = getattr(self, f"stage_0_global_block_{index}")(features)

        # The global feature starts as the bottleneck output and goes up one level per cross-gating.
        global_feature, skips = features, []
        for step, level in enumerate(reversed(range(self.depth))):
            signal = self._resize_and_join(step * self.depth, encoded)
            skip, global_feature = getattr(self, f"stage_0_cross_gating_block_{level}")(
                signal, global_feature
            )
            skips.append(skip)
        for step, level in enumerate(reversed(range(self.depth))):
            bridge = self._resize_and_join((self.depth + step) * self.depth, skips)
            features = getattr(self, f"stage_0_decoder_block_{level}")(features, bridge=bridge)
        restored = padded + self.stage_0_output_conv_0(features)
        return restored[..., :height, :width].contiguous()

    def _add_resampler(self, index: int, widths: list[int], source: int, level: int, use_bias: bool) -> None:
        resample = UpSampleRatio(
            in_channels=widths[source],
            out_channels=widths[level],
            ratio=2.0 ** (source - level),
            use_bias=use_bias,
        )
        self.add_module(f"UpSampleRatio_{index}", resample)

    def _resize_and_join(self, first: int, feature_maps: list[torch.Tensor]) -> torch.Tensor:
        """Resize every map to one level with UpSampleRatio_{first}, ... and concatenate them."""
        resized = [
            getattr(self, f"UpSampleRatio_{first + index}")(feature_map)
            for index, feature_map in enumerate(feature_maps)
        ]
        return torch.cat(resized, dim=1)
