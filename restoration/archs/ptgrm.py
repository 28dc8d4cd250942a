"""PTG-RM, the Pre-Train-Guided Refinement Module.

Xu, Kong, Hu, Liu and Bao, "Boosting Image Restoration via Priors from Pre-trained Models", CVPR 2024
(https://arxiv.org/abs/2403.06793); official ``models/archs/low_light_transformer648_final.py``, class
``refinement2``.

PTG-RM refines the output ``target_out`` (Î_c) of a target restoration network from that output, the
``degraded`` input (I_d) and ``osf`` (g): a 1-D off-the-shelf feature of the degraded input from a frozen
pre-trained model (the 512-d CLIP ViT-B/32 image embedding in the release). Three strided convs encode
Î_c and I_d to ``width`` channels at 1/4 resolution, then:

- PTG-SVE (spatially varying enhancement): a per-pixel map M, predicted from the features, the tiled
  projection T_m(g) and a learned embedding S_m of the pixel coordinates, blends a long-range branch
  (four Restormer blocks) with a short-range one (a residual block): ``M·long + (1−M)·short``. The
  paper's Eq. 3 swaps the roles of M and 1−M; that is a labelling of the same learned map.
- PTG-CSA (channel-spatial attention): channel weights from the pooled features and T_c(g); spatial
  weights from the features filtered by per-pixel, per-channel 3×3 kernels predicted from the
  features, T_c(g) and a second coordinate embedding S_c (:func:`spatially_varying_conv`). A 1×1 conv
  fuses both weighted copies, plus the features themselves (a residual of the code, absent from the
  paper's Eq. 7; ``fusion_residual``).
- A PixelShuffle decoder predicts the full-resolution correction I_r.

The released code outputs ``clamp(Î_c, 0, 1) + I_r`` (``output="residual"``); the paper's Eq. 1 also
predicts a mask I_m: ``I_d + (Î_c − I_d)·I_m + I_r`` (``output="masked"``). Switches remove the parts
ablated in the paper's Table 3, and ``wide_plain`` builds its "4× wider R without SVE/CSA" control.

The attribute names are the official state-dict keys, so the refiner's weights load strictly from an
official PTG-RM checkpoint: ``load_pretrained(PTGRM(), path, prefix="refinement11.")``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restoration.archs.common import pad_to_multiple
from restoration.archs.restormer import TransformerBlock
from restoration.archs.snr_aware import ResidualBlockNoBN

__all__ = ["MASK_ACTIVATIONS", "OUTPUTS", "PTGRM", "spatially_varying_conv"]

OUTPUTS = ("residual", "masked")
MASK_ACTIVATIONS = ("sigmoid", "clamp")

# Two stride-2 convolutions down, two PixelShuffle ×2 up.
_DOWNSCALE = 4
# Side of the per-pixel kernels of the spatial attention (official kh = kw = 3).
_KERNEL = 3
# Hidden width of the two OSF projections T_m and T_c (official Linear(512, 256), whatever nf is).
_OSF_HIDDEN = 256
# Official refinement2: num_blocks[0] = 4 Restormer blocks of heads[0] = 1 head, GDFN expansion 2.66.
_TRANSFORMER_BLOCKS = 4
_FFN_EXPANSION = 2.66
_SLOPE = 0.1


def spatially_varying_conv(features: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Depthwise 3×3 convolution with a different kernel at every pixel, replicate-padded borders.

    Args:
        features: N×C×H×W.
        kernels: N×(C·9)×H×W; channel ``9c + 3·dy + dx`` weights the neighbour at row offset ``dy − 1``
            and column offset ``dx − 1`` of feature channel ``c`` (the official ``kernel2d_conv`` order).

    Returns:
        N×C×H×W.
    """
    batch, channels, height, width = features.shape
    taps = _KERNEL * _KERNEL
    if kernels.shape != (batch, channels * taps, height, width):
        raise ValueError(
            f"kernels of shape {tuple(kernels.shape)}; expected {(batch, channels * taps, height, width)} "
            f"for features of shape {tuple(features.shape)}"
        )
    padded = F.pad(features, (_KERNEL // 2,) * 4, mode="replicate")
    # F.unfold orders its output (channel, row, column): the kernels' layout, so one view pairs them.
    neighbours = F.unfold(padded, _KERNEL).view(batch, channels, taps, height, width)
    return (neighbours * kernels.view(batch, channels, taps, height, width)).sum(dim=2)


def _condition_conv(
    conv: nn.Conv2d, features: torch.Tensor, guide: torch.Tensor, positions: torch.Tensor | None
) -> torch.Tensor:
    """``conv`` (3×3, zero padding, no bias) over concat(features, guide tiled over the image, positions).

    The official code concatenates the N×C×H×W features, the N×G guide projection repeated at every pixel
    and the position embedding repeated for every image, and convolves the whole stack. The guide's
    channels are constant over the image, so their share of the convolution is, at each pixel, the sum of
    the kernel taps that fall inside the image, weighted by the guide: a convolution of an all-ones image
    with per-image 3×3 kernels. The position channels are the same for every image: convolved once. Only
    the features pay a full convolution (PTG-CSA's ``mapp11``: 16 of its 96 input channels), and the
    result equals the official stack's to float32 rounding.
    """
    width, guide_width = features.shape[1], guide.shape[1]
    weight = conv.weight
    out = F.conv2d(features, weight[:, :width], padding=1)
    taps = torch.einsum("ocyx,nc->noyx", weight[:, width : width + guide_width], guide)
    ones = features.new_ones(1, 1, *features.shape[-2:])
    out = out + F.conv2d(ones, taps.reshape(-1, 1, *taps.shape[-2:]), padding=1).view_as(out)
    if positions is not None:
        out = out + F.conv2d(positions, weight[:, width + guide_width :], padding=1)
    return out


def _osf_projection(osf_dim: int, out_features: int) -> tuple[nn.Linear, nn.Linear]:
    return nn.Linear(osf_dim, _OSF_HIDDEN, bias=False), nn.Linear(_OSF_HIDDEN, out_features, bias=False)


def _position_embedding(width: int) -> tuple[nn.Conv2d, nn.Conv2d]:
    return nn.Conv2d(2, width, 3, padding=1, bias=False), nn.Conv2d(width, width, 1, bias=False)


class PTGRM(nn.Module):
    """PTG-RM refiner (see the module docstring): ``forward(target_out, degraded, osf) -> refined``.

    Inputs of any size are reflect-padded to a multiple of 4 and the output cropped back. Each
    ablation switch removes its part and that part's parameters from the network. The attribute names
    (``r1``, ``mapp11``, ``refine11``, ``conv_last3``, ...) are the official state-dict keys, kept so that
    released weights load strictly.
    """

    size_multiple = _DOWNSCALE  # the multiple it pads to; a caller padding to it makes that a no-op

    def __init__(
        self,
        *,
        osf_dim: int = 512,
        width: int = 16,
        output: str = "residual",
        mask_channels: int = 1,
        mask_activation: str = "sigmoid",
        use_sve: bool = True,
        use_channel_attention: bool = True,
        use_spatial_attention: bool = True,
        use_position: bool = True,
        fusion_residual: bool = True,
        wide_plain: bool = False,
    ) -> None:
        """
        Args:
            osf_dim: width D of the off-the-shelf feature (512 for CLIP ViT-B/32). The parameter
                count is 409,591 + 512·D at the official width.
            width: channels of the 1/4-resolution features (official ``nf``: 16).
            output: ``"residual"``, the released code: ``clamp(target_out, 0, 1) + I_r``; or
                ``"masked"``, the paper's Eq. 1: ``degraded + (target_out − degraded)·I_m + I_r``, with
                the mask I_m predicted by an extra 3×3 conv ``mask_head`` beside ``conv_last3`` (so the
                official weights still fit every other key).
            mask_channels: channels of I_m, 1 (one mask for all colours) or 3; ``"masked"`` only.
            mask_activation: ``"sigmoid"`` or ``"clamp"`` (to [0, 1]) on the mask head's output. Neither
                the paper nor the code gives the head's channels or activation.
            use_sve: keep PTG-SVE (T_m, S_m, the range map, both branches); without it the encoder's
                features go straight to PTG-CSA (Table 3 "w/o SVE").
            use_channel_attention: keep the channel attention of PTG-CSA.
            use_spatial_attention: keep the spatial attention (per-pixel kernels) of PTG-CSA.
            use_position: keep the coordinate embeddings S_m and S_c.
            fusion_residual: add the attention's input to the fusion conv's output, as the code does
                (absent from the paper's Eq. 7).
            wide_plain: Table 3's control: encoder and decoder alone at ``4·width`` channels, no SVE
                or CSA, and so no use of ``osf``; the five switches above then have nothing to remove.
        """
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"PTGRM output={output!r}; expected one of {OUTPUTS}")
        if mask_channels not in (1, 3):
            raise ValueError(f"PTGRM mask_channels={mask_channels}; expected 1 or 3")
        if mask_activation not in MASK_ACTIVATIONS:
            raise ValueError(f"PTGRM mask_activation={mask_activation!r}; expected one of {MASK_ACTIVATIONS}")
        for name, value in (("osf_dim", osf_dim), ("width", width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PTGRM {name}={value!r}; expected a positive integer")
        self.osf_dim = osf_dim
        self.output = output
        self.mask_activation = mask_activation
        self.fusion_residual = fusion_residual
        self.wide_plain = wide_plain
        self.use_sve = use_sve and not wide_plain
        self.use_channel_attention = use_channel_attention and not wide_plain
        self.use_spatial_attention = use_spatial_attention and not wide_plain
        self.use_position = use_position and (self.use_sve or self.use_spatial_attention)
        # Whether forward reads osf: a caller may skip computing it (and pass None) when not.
        self.uses_osf = self.use_sve or self.use_channel_attention or self.use_spatial_attention
        channels = 4 * width if wide_plain else width
        guide = 4 * width  # channels of T_m(g) and T_c(g)
        position = width if self.use_position else 0

        # The official names, as in its state dict: r* (encoder), mapp_space* (T), mapp_position* (S),
        # r*_mask (range map), mapping1* (channel attention), mapp1* (kernels and spatial weights),
        # refine11 (fusion), r*_decoder and conv_last* (decoder).
        self.r1 = nn.Conv2d(6, channels, 3, padding=1, bias=False)
        self.r1norm = nn.InstanceNorm2d(channels, affine=True)
        self.r2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False)
        self.r2norm = nn.InstanceNorm2d(channels, affine=True)
        self.r22 = nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False)

        if self.use_sve:
            self.mapp_space1, self.mapp_space2 = _osf_projection(osf_dim, guide)
            if self.use_position:
                self.mapp_position1, self.mapp_position2 = _position_embedding(width)
            self.r1_mask = nn.Conv2d(width + guide + position, width, 3, padding=1, bias=False)
            self.r2_mask = nn.Conv2d(width, 1, 3, padding=1, bias=False)
            self.transformer = nn.Sequential(
                *(
                    TransformerBlock(width, num_heads=1, ffn_expansion_factor=_FFN_EXPANSION)
                    for _ in range(_TRANSFORMER_BLOCKS)
                )
            )
            self.resnet = ResidualBlockNoBN(channels=width)
            # The refiner's block is a file-local class in the official code, without the SNR trunk's
            # 0.1-scaled initialisation: PyTorch's default.
            self.resnet.conv1.reset_parameters()
            self.resnet.conv2.reset_parameters()

        if self.use_channel_attention or self.use_spatial_attention:
            self.mapp_space11, self.mapp_space22 = _osf_projection(osf_dim, guide)
        if self.use_channel_attention:
            self.mapping11 = nn.Linear(width + guide, width, bias=False)
            self.mapping12 = nn.Linear(width, width, bias=False)
        if self.use_spatial_attention:
            if self.use_position:
                self.mapp_position11, self.mapp_position22 = _position_embedding(width)
            taps = width * _KERNEL * _KERNEL
            self.mapp11 = nn.Conv2d(width + guide + position, taps, 3, padding=1, bias=False)
            self.mapp12 = nn.Conv2d(taps, taps, 3, padding=1, bias=False)
            self.mapp1 = nn.Conv2d(width, 1, 3, padding=1, bias=False)
        attentions = int(self.use_channel_attention) + int(self.use_spatial_attention)
        if attentions:
            self.refine11 = nn.Conv2d(attentions * width, width, 1, bias=False)

        self.r1_decoder = nn.Conv2d(channels, 4 * channels, 3, padding=1, bias=False)
        self.r2_decoder = nn.Conv2d(channels, 4 * channels, 3, padding=1, bias=False)
        self.conv_last2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_last3 = nn.Conv2d(channels, 3, 3, padding=1)
        if output == "masked":
            self.mask_head = nn.Conv2d(channels, mask_channels, 3, padding=1)

    def forward(
        self, target_out: torch.Tensor, degraded: torch.Tensor, osf: torch.Tensor | None
    ) -> torch.Tensor:
        """Refine ``target_out`` (N×3×H×W) given ``degraded`` (N×3×H×W) and ``osf`` (N×D, D = ``osf_dim``).

        ``osf`` may be ``None`` when :attr:`uses_osf` is false.
        """
        if target_out.ndim != 4 or target_out.shape[1] != 3:
            raise ValueError(f"PTGRM target_out of shape {tuple(target_out.shape)}; expected N×3×H×W")
        if degraded.shape != target_out.shape:
            raise ValueError(
                f"PTGRM degraded of shape {tuple(degraded.shape)}; expected the shape of target_out "
                f"{tuple(target_out.shape)}"
            )
        height, width = target_out.shape[-2:]
        inputs = pad_to_multiple(torch.cat([target_out, degraded], dim=1), _DOWNSCALE)
        features = self._encode(inputs)
        if self.uses_osf:
            if osf is None or osf.shape != (len(target_out), self.osf_dim):
                shape = None if osf is None else tuple(osf.shape)
                raise ValueError(f"PTGRM osf of shape {shape}; expected {(len(target_out), self.osf_dim)}")
            # The official refiner casts the (half-precision on CUDA) CLIP embedding to float.
            osf = osf.to(features.dtype)
        if self.use_sve:
            features = self._spatially_varying_enhancement(features, osf)
        if self.use_channel_attention or self.use_spatial_attention:
            features = self._channel_spatial_attention(features, osf)
        decoded = self._decode(features)
        correction = self.conv_last3(decoded)[..., :height, :width]
        if self.output == "residual":
            return target_out.clamp(0.0, 1.0) + correction
        mask = self.mask_head(decoded)[..., :height, :width]
        mask = torch.sigmoid(mask) if self.mask_activation == "sigmoid" else mask.clamp(0.0, 1.0)
        return degraded + (target_out - degraded) * mask + correction

    def _encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """R_e: concat(Î_c, I_d) to ``width`` channels at 1/4 resolution (no activation at the end)."""
        features = F.leaky_relu(self.r1norm(self.r1(inputs)), _SLOPE)
        return self.r22(self.r2norm(self.r2(features)))

    def _spatially_varying_enhancement(self, features: torch.Tensor, osf: torch.Tensor) -> torch.Tensor:
        """PTG-SVE: ``M·long_range + (1−M)·short_range`` with M from the features, T_m(g) and S_m."""
        guide = self.mapp_space2(F.leaky_relu(self.mapp_space1(osf), _SLOPE))
        positions = (
            self._embed_positions(self.mapp_position1, self.mapp_position2, features)
            if self.use_position
            else None
        )
        range_map = torch.sigmoid(
            self.r2_mask(F.leaky_relu(_condition_conv(self.r1_mask, features, guide, positions), _SLOPE))
        )
        long_range = self.transformer(features)
        short_range = self.resnet(features)
        return long_range * range_map + short_range * (1 - range_map)

    def _channel_spatial_attention(self, features: torch.Tensor, osf: torch.Tensor) -> torch.Tensor:
        """PTG-CSA: features weighted per channel and per pixel, fused by a 1×1 conv (plus the input)."""
        guide = self.mapp_space22(F.leaky_relu(self.mapp_space11(osf), _SLOPE))
        attended = []
        if self.use_channel_attention:
            pooled = features.mean(dim=(-2, -1))
            logits = self.mapping12(F.leaky_relu(self.mapping11(torch.cat([pooled, guide], dim=1)), _SLOPE))
            attended.append(features * torch.sigmoid(logits)[..., None, None])
        if self.use_spatial_attention:
            positions = (
                self._embed_positions(self.mapp_position11, self.mapp_position22, features)
                if self.use_position
                else None
            )
            kernels = self.mapp12(
                F.leaky_relu(_condition_conv(self.mapp11, features, guide, positions), _SLOPE)
            )
            filtered = spatially_varying_conv(features, kernels)
            attended.append(features * torch.sigmoid(self.mapp1(F.leaky_relu(filtered, _SLOPE))))
        fused = self.refine11(torch.cat(attended, dim=1))
        return fused + features if self.fusion_residual else fused

    def _decode(self, features: torch.Tensor) -> torch.Tensor:
        """R_d up to the last conv: two PixelShuffle ×2 steps and a 3×3 conv, at full resolution."""
        features = F.leaky_relu(F.pixel_shuffle(self.r1_decoder(features), 2), _SLOPE)
        features = F.leaky_relu(F.pixel_shuffle(self.r2_decoder(features), 2), _SLOPE)
        return F.leaky_relu(self.conv_last2(features), _SLOPE)

    @staticmethod
    def _embed_positions(first: nn.Conv2d, second: nn.Conv2d, like: torch.Tensor) -> torch.Tensor:
        """S(grid): channel 0 of the grid runs from −1 to 1 down the rows, channel 1 along the columns."""
        height, width = like.shape[-2:]
        rows = torch.linspace(-1, 1, height, device=like.device, dtype=like.dtype)
        cols = torch.linspace(-1, 1, width, device=like.device, dtype=like.dtype)
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))[None]
        # The grid is the same for every image: embed it once (1×C×H×W), shared across the batch.
        return second(F.leaky_relu(first(grid), _SLOPE))
