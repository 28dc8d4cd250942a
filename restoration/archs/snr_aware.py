"""The SNR-aware low-light enhancement network, as the target network of PTG-RM.

Xu, Wang, Fu and Jia, "SNR-Aware Low-Light Image Enhancement", CVPR 2022; in the form released with
PTG-RM (Xu, Kong, Hu, Liu and Bao, "Boosting Image Restoration via Priors from Pre-trained Models",
CVPR 2024): official ``models/archs/low_light_transformer648_final.py``, class
``low_light_transformer2`` without its ``refinement11`` module (the PTG-RM refiner, not part of this
file), configured as in the official ``options/train/SID.yml``.

The network down-samples by 4 with strided convolutions and splits the features into two branches:
residual conv blocks (short range) and a transformer over 4×4 feature patches whose attention only
looks at patches of high signal-to-noise ratio (long range). The SNR map blends them per pixel, the
short-range branch where the SNR is high, and a U-shaped decoder with PixelShuffle brings the result
back to full resolution as a correction added to the input. The output is not clamped (the official
target output ``out_noise2`` is not; PTG-RM clamps it before refining).

The SNR map (:func:`compute_snr_map`) is computed inside ``forward`` as the official training wrapper
does (``models/Video_base_model8_cos11_final.py`` with the 5×5 ``cv2.blur`` of ``data/dataset_SID.py``);
pass ``snr_map=`` to use another. It is normalised by its per-image maximum, so a map computed on tiles
or on padded images differs from the whole image's. On natural images that maximum is often set by a
few very flat pixels, and then no patch passes the attention's 0.5 threshold: the official code (scores
filled with -1e9) then attends uniformly to every patch, and so does this one.

Released weights: the original SNR-Aware checkpoints hold exactly this network's keys; PTG-RM's also hold
the refiner's ``refinement11.*`` keys. Both load strictly with ``load_pretrained(net, path)`` (and so with
``backbone_weights.path``): :meth:`SNRAware.checkpoint_filter_fn` sets the refiner's keys aside (listed in
``net.pretrained_mismatch["unexpected"]``) and any other missing or unexpected key is still an error. The
refiner itself loads with ``load_pretrained(PTGRM(...), path, prefix="refinement11.")``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restoration.archs.common import pad_to_multiple

__all__ = ["REFINER_PREFIX", "SNRAware", "compute_snr_map"]

# The PTG-RM refiner's attribute in the official low_light_transformer2.
REFINER_PREFIX = "refinement11."

# Resolution of the features: two stride-2 convolutions.
_DOWNSCALE = 4
# Patch side of the transformer's tokens, on the 1/4-resolution features (official unfold kernel).
_PATCH = 4
# Patches whose mean SNR is at most this are hidden from the attention's keys (official threshold).
_SNR_THRESHOLD = 0.5


def compute_snr_map(images: torch.Tensor) -> torch.Tensor:
    """The normalised signal-to-noise map of N×3×H×W images in [0, 1], N×1×H×W in [0, 1].

    With Y the luminance 0.299R + 0.587G + 0.114B and Ỹ its 5×5 box blur (the "noise-free" signal,
    reflect-101 borders as ``cv2.blur``): ``Ỹ / (|Y − Ỹ| + 1e-4)``, divided by its per-image maximum
    plus 1e-4 and clamped to [0, 1], as the official PTG-RM / SNR-Aware training wrapper.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"compute_snr_map expects N×3×H×W RGB images, got shape {tuple(images.shape)}")
    # The 1e-4 guards are below half precision's resolution: compute in at least float32.
    red, green, blue = images.to(torch.promote_types(images.dtype, torch.float32)).unbind(dim=1)
    luminance = (0.299 * red + 0.587 * green + 0.114 * blue).unsqueeze(1)
    # Reflection needs sides of at least 3 pixels; smaller images replicate their border.
    mode = "reflect" if min(images.shape[-2:]) > 2 else "replicate"
    blurred = F.avg_pool2d(F.pad(luminance, (2, 2, 2, 2), mode=mode), 5, stride=1)
    snr = blurred / ((luminance - blurred).abs() + 1e-4)
    peak = snr.amax(dim=(-2, -1), keepdim=True)
    return (snr / (peak + 1e-4)).clamp(0.0, 1.0).to(images.dtype)


class ResidualBlockNoBN(nn.Module):
    """conv3×3 → ReLU → conv3×3, plus the input (EDSR-style, no normalisation)."""

    def __init__(self, *, channels: int) -> None:
        """
        Args:
            channels: width of the block.
        """
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        # Official initialisation: Kaiming-normal scaled by 0.1, zero bias, so that a deep stack of
        # blocks starts close to the identity.
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
            with torch.no_grad():
                conv.weight.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.conv2(F.relu(self.conv1(features)))


def _residual_blocks(count: int, *, channels: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlockNoBN(channels=channels) for _ in range(count)))


class SNRMaskedSelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over patch tokens, keys limited to high-SNR patches.

    The attribute names are the official ``MultiHeadAttention4`` state-dict keys.
    """

    def __init__(self, *, dim: int, heads: int, head_dim: int) -> None:
        """
        Args:
            dim: token width.
            heads: attention heads.
            head_dim: width of each head's queries, keys and values.
        """
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.w_qs = nn.Linear(dim, heads * head_dim, bias=False)
        self.w_ks = nn.Linear(dim, heads * head_dim, bias=False)
        self.w_vs = nn.Linear(dim, heads * head_dim, bias=False)
        self.fc = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor, attend: torch.Tensor, has_bright: torch.Tensor) -> torch.Tensor:
        """``attend``: N×1×1×L booleans, the keys each query may see; ``has_bright``: N×1×1×1, 1 where the
        image has a patch above the SNR threshold and 0 where it has none (in the tokens' dtype)."""
        batch, length, _ = tokens.shape
        # Queries, keys and values all come from the same normalised tokens: one matrix product.
        weight = torch.cat([self.w_qs.weight, self.w_ks.weight, self.w_vs.weight])
        qkv = F.linear(self.layer_norm(tokens), weight).view(batch, length, 3, self.heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        # The official code fills hidden scores with -1e9, so an image without any high-SNR patch gets
        # uniform attention over all keys: zero queries (and ``attend`` all true there) give the same.
        query = query * has_bright
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attend)
        return tokens + self.fc(attended.transpose(1, 2).reshape(batch, length, -1))


class PositionwiseFeedForward(nn.Module):
    """Pre-norm two-layer ReLU MLP with a residual (official ``PositionwiseFeedForward4`` keys)."""

    def __init__(self, *, dim: int, hidden_dim: int) -> None:
        """
        Args:
            dim: token width.
            hidden_dim: width of the hidden layer.
        """
        super().__init__()
        self.layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.w_1 = nn.Linear(dim, hidden_dim)
        self.w_2 = nn.Linear(hidden_dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.w_2(F.relu(self.w_1(self.layer_norm(tokens))))


class SNRTransformerLayer(nn.Module):
    """SNR-masked self-attention, then the feed-forward MLP (official ``EncoderLayer3`` keys)."""

    def __init__(self, *, dim: int, heads: int, head_dim: int, hidden_dim: int) -> None:
        """
        Args:
            dim: token width.
            heads: attention heads.
            head_dim: width of each attention head.
            hidden_dim: width of the MLP's hidden layer.
        """
        super().__init__()
        self.slf_attn = SNRMaskedSelfAttention(dim=dim, heads=heads, head_dim=head_dim)
        self.pos_ffn = PositionwiseFeedForward(dim=dim, hidden_dim=hidden_dim)

    def forward(self, tokens: torch.Tensor, attend: torch.Tensor, has_bright: torch.Tensor) -> torch.Tensor:
        return self.pos_ffn(self.slf_attn(tokens, attend, has_bright))


class SNRTransformer(nn.Module):
    """A stack of :class:`SNRTransformerLayer` (official ``Encoder_patch66``; no positional encoding)."""

    def __init__(self, *, dim: int, layers: int, heads: int, head_dim: int, hidden_dim: int) -> None:
        """
        Args:
            dim: token width.
            layers: transformer layers.
            heads: attention heads.
            head_dim: width of each attention head.
            hidden_dim: width of the MLPs' hidden layer.
        """
        super().__init__()
        self.layer_stack = nn.ModuleList(
            SNRTransformerLayer(dim=dim, heads=heads, head_dim=head_dim, hidden_dim=hidden_dim)
            for _ in range(layers)
        )

    def forward(self, tokens: torch.Tensor, patch_snr: torch.Tensor) -> torch.Tensor:
        """``patch_snr``: the N×L mean SNR of each token's patch."""
        attend = patch_snr > _SNR_THRESHOLD
        has_bright = attend.any(dim=1, keepdim=True)
        attend = (attend | ~has_bright)[:, None, None, :]
        has_bright = has_bright[:, :, None, None].to(tokens.dtype)
        for layer in self.layer_stack:
            tokens = layer(tokens, attend, has_bright)
        return tokens


class SNRAware(nn.Module):
    """SNR-aware low-light enhancer (official ``low_light_transformer2`` minus the PTG-RM refiner).

    Inputs of any size are reflect-padded to a multiple of 16 (two stride-2 convolutions, then 4×4
    patches) and the output cropped back. The attribute names (``conv_first_1``, ``recon_trunk_light``,
    ``HRconv``, ...) are the official state-dict keys, kept so that released weights load strictly.
    """

    def __init__(
        self,
        *,
        width: int = 64,
        front_blocks: int = 1,
        back_blocks: int = 1,
        short_range_blocks: int = 6,
        transformer_layers: int = 6,
        heads: int = 8,
        head_dim: int = 64,
    ) -> None:
        """
        Args:
            width: channels of the conv features (official ``nf``: 64).
            front_blocks: residual blocks before the two branches (official ``front_RBs``: 1 in SID.yml).
            back_blocks: residual blocks after the blend (official ``back_RBs``: 1 in SID.yml).
            short_range_blocks: residual blocks of the short-range branch (official: fixed at 6).
            transformer_layers: layers of the long-range transformer (official: 6).
            heads: its attention heads (official: 8).
            head_dim: width of each head (official ``d_k = d_v``: 64). Tokens are 4×4 patches of the
                features, ``16 · width`` wide; the MLP hidden layer is twice that (official ``d_inner``).
        """
        super().__init__()
        for name, value, least in (
            ("width", width, 1),
            ("front_blocks", front_blocks, 0),
            ("back_blocks", back_blocks, 0),
            ("short_range_blocks", short_range_blocks, 0),
            ("transformer_layers", transformer_layers, 0),
            ("heads", heads, 1),
            ("head_dim", head_dim, 1),
        ):
            if value < least:
                raise ValueError(f"SNRAware {name}={value}; expected >= {least}")
        self.size_multiple = _DOWNSCALE * _PATCH
        token_dim = width * _PATCH**2
        self.conv_first_1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv_first_2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.conv_first_3 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.feature_extraction = _residual_blocks(front_blocks, channels=width)
        self.recon_trunk_light = _residual_blocks(short_range_blocks, channels=width)
        self.transformer = SNRTransformer(
            dim=token_dim, layers=transformer_layers, heads=heads, head_dim=head_dim, hidden_dim=2 * token_dim
        )
        self.recon_trunk = _residual_blocks(back_blocks, channels=width)
        self.upconv1 = nn.Conv2d(2 * width, 4 * width, 3, padding=1)
        self.upconv2 = nn.Conv2d(2 * width, 4 * width, 3, padding=1)
        self.HRconv = nn.Conv2d(2 * width, width, 3, padding=1)
        self.conv_last = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, degraded: torch.Tensor, snr_map: torch.Tensor | None = None) -> torch.Tensor:
        """Enhance N×3×H×W ``degraded`` images; ``snr_map`` (N×1×H×W) defaults to :func:`compute_snr_map`."""
        if degraded.ndim != 4 or degraded.shape[1] != 3:
            raise ValueError(f"SNRAware expects N×3×H×W RGB images, got shape {tuple(degraded.shape)}")
        batch, _, height, width = degraded.shape
        if snr_map is None:
            snr_map = compute_snr_map(degraded)
        elif snr_map.shape != (batch, 1, height, width):
            raise ValueError(
                f"snr_map of shape {tuple(snr_map.shape)}; expected {(batch, 1, height, width)} for the input"
            )
        padded = pad_to_multiple(degraded, self.size_multiple)
        snr = pad_to_multiple(snr_map, self.size_multiple)
        full = F.leaky_relu(self.conv_first_1(padded), 0.1, inplace=True)
        half = F.leaky_relu(self.conv_first_2(full), 0.1, inplace=True)
        quarter = F.leaky_relu(self.conv_first_3(half), 0.1, inplace=True)
        features = self.feature_extraction(quarter)
        # Nearest-neighbour down-sampling, what the official F.interpolate(mode="nearest") does here.
        snr = snr[..., ::_DOWNSCALE, ::_DOWNSCALE]
        short_range = self.recon_trunk_light(features)
        long_range = self._long_range(features, snr)
        features = self.recon_trunk(torch.lerp(long_range, short_range, snr.to(long_range.dtype)))
        decoded = self._up(self.upconv1, torch.cat([features, quarter], dim=1))
        decoded = self._up(self.upconv2, torch.cat([decoded, half], dim=1))
        decoded = F.leaky_relu(self.HRconv(torch.cat([decoded, full], dim=1)), 0.1, inplace=True)
        restored = self.conv_last(decoded) + padded
        return restored[..., :height, :width]

    def _long_range(self, features: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
        """The transformer branch: 4×4 patches as tokens (``F.unfold`` channel order), and back."""
        batch, channels, height, width = features.shape
        rows, cols = height // _PATCH, width // _PATCH
        tokens = features.view(batch, channels, rows, _PATCH, cols, _PATCH)
        tokens = tokens.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, channels * _PATCH**2)
        tokens = self.transformer(tokens, F.avg_pool2d(snr, _PATCH).flatten(1))
        patches = tokens.view(batch, rows, cols, channels, _PATCH, _PATCH).permute(0, 3, 1, 4, 2, 5)
        return patches.reshape(batch, channels, height, width)

    @staticmethod
    def _up(conv: nn.Conv2d, features: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(F.pixel_shuffle(conv(features), 2), 0.1, inplace=True)

    @staticmethod
    def checkpoint_filter_fn(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """A released state without PTG-RM's refiner keys (``refinement11.*``), and those keys' names."""
        aside = [name for name in state if name.startswith(REFINER_PREFIX)]
        return {name: tensor for name, tensor in state.items() if not name.startswith(REFINER_PREFIX)}, aside
