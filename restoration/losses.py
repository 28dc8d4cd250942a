"""Losses for restoration.

Pixel losses map (restored, target) to a scalar: L1, Charbonnier and PSNR loss.
:class:`VGGPerceptualLoss` compares VGG19 features instead of pixels (Johnson et al., ECCV 2016), in the form
of the PTG-RM / SNR-Aware release (Xu et al., "Boosting Image Restoration via Priors from Pre-trained
Models", CVPR 2024: official ``models/loss.py`` ``VGGLoss``).
:class:`PatchContrastiveLoss` maps a batch of token features to a scalar: the contrastive term of IPT's
pre-training (Chen et al., "Pre-Trained Image Processing Transformer", CVPR 2021).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from restoration.errors import ConfigError

__all__ = [
    "VGG19_FILE",
    "CharbonnierLoss",
    "L1Loss",
    "PSNRLoss",
    "PatchContrastiveLoss",
    "VGGPerceptualLoss",
]

# torchvision's ImageNet VGG19 weights (VGG19_Weights.IMAGENET1K_V1), the file the official code downloads.
VGG19_FILE = "vgg19-dcbb9e9d.pth"


class L1Loss(nn.Module):
    """Mean absolute error (IPT, ConStyle v2 restoration)."""

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (restored - target).abs().mean()


class CharbonnierLoss(nn.Module):
    """Charbonnier loss ``mean(sqrt((x - y)^2 + eps^2))``: a smooth L1 (Lai et al., LapSRN, CVPR 2017).

    Args:
        eps: smoothing constant; 1e-3 as in Restormer / MPRNet.
        reduction: ``"mean"``, or ``"sum"`` as in the PTG-RM / SNR-aware release.
    """

    def __init__(self, *, eps: float = 1e-3, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"CharbonnierLoss reduction={reduction!r}; expected 'mean' or 'sum'")
        self.eps = eps
        self.reduction = reduction

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = torch.sqrt((restored - target).square() + self.eps**2)
        return loss.mean() if self.reduction == "mean" else loss.sum()


class PSNRLoss(nn.Module):
    """Negative PSNR averaged over images (NAFNet, Chen et al., ECCV 2022): ``10·log10(mse + 1e-8)``.

    Minimising it maximises the mean per-image PSNR for images in [0, 1].
    """

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mse = (restored - target).square().flatten(1).mean(dim=1)
        return (10.0 / math.log(10.0)) * torch.log(mse + 1e-8).mean()


class PatchContrastiveLoss(nn.Module):
    """SupCon loss over the patch tokens of a batch, with the image as the label (IPT pre-training).

    Every token is an anchor; its positives are the other tokens of the same image and everything else in
    the batch is a negative, so patches of one image are pulled together and patches of different images
    pushed apart (IPT; MindSpore ``SupConLoss`` with the tokens as the views of an image). With
    L2-normalised tokens ``z`` and ``s(i, a) = z_i·z_a / temperature``, anchor ``i`` costs

        -(temperature / base_temperature) · mean over positives p of [s(i, p) - log sum_{a != i} exp s(i, a)]

    and the loss is the mean over all anchors. It is computed in float32 even under autocast: the logits are
    scaled by 1 / 0.07. The similarity matrix has (N·P)² entries: 1 GiB for IPT's 64 images per device.

    Args:
        temperature: the softmax temperature; 0.07 as IPT (MindSpore ``MyTrain``).
        base_temperature: SupCon's reference temperature; the loss is scaled by ``temperature /
            base_temperature`` (1 with IPT's values).
    """

    def __init__(self, *, temperature: float = 0.07, base_temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError(
                f"PatchContrastiveLoss temperature={temperature}, base_temperature={base_temperature}; "
                "expected positive numbers"
            )
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens``: N×P×D, P tokens of dimension D for each of N >= 2 images (IPT: N×256×576)."""
        if tokens.ndim != 3 or tokens.shape[0] < 2 or tokens.shape[1] < 2:
            raise ValueError(
                "PatchContrastiveLoss expects N×P×D tokens with N >= 2 images (the negatives) and P >= 2 "
                f"tokens per image (the positives); got shape {tuple(tokens.shape)}"
            )
        num_images, num_tokens, _ = tokens.shape
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            features = F.normalize(tokens.float(), dim=-1).flatten(0, 1)
            logits = features @ features.T / self.temperature
            others = logits.clone()
            others.diagonal().fill_(-torch.inf)  # an anchor is not its own positive or negative
            log_denominator = torch.logsumexp(others, dim=1)
            # Tokens are grouped by image, so the positives of a token are its block of the similarity
            # matrix without the diagonal.
            block_sums = logits.view(-1, num_images, num_tokens).sum(dim=2)
            own_block = torch.arange(num_images, device=features.device).repeat_interleave(num_tokens)
            positive_logits = (block_sums.gather(1, own_block[:, None]).squeeze(1) - logits.diagonal()) / (
                num_tokens - 1
            )
            loss = -(positive_logits - log_denominator)
        return (self.temperature / self.base_temperature) * loss.mean()


class VGGPerceptualLoss(nn.Module):
    """Weighted L1 distance between VGG19 features of the restored and the target images.

    The features are the outputs of relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1 of torchvision's
    ImageNet VGG19 (``features[:30]``), weighted 1/32, 1/16, 1/8, 1/4 and 1 as the official PTG-RM
    ``VGGLoss``; the target's features carry no gradient. The network is frozen (eval mode, no gradients)
    and stays so under ``train()``.

    The weights are read from a local file only, never downloaded: ``weights``, or the torch hub cache
    (``<torch hub dir>/checkpoints/vgg19-dcbb9e9d.pth``, where torchvision itself would put them). A missing
    file is a :class:`~restoration.errors.ConfigError` saying where to put it.

    Args:
        weights: torchvision's ``vgg19-dcbb9e9d.pth`` (full model or only its ``features.*`` keys);
            ``None`` looks in the torch hub cache.
        normalize: apply the ImageNet mean/std the weights were trained with to images in [0, 1]; the
            official ``VGGLoss`` feeds the [0, 1] images unnormalised (``False``).
        reduction: ``"mean"`` per feature map, or ``"sum"`` as the official ``L1Loss(reduction="sum")``.
    """

    layer_weights = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    # End index (exclusive) in torchvision's vgg19().features of relu1_1 ... relu5_1.
    _layer_ends = (2, 7, 12, 21, 30)

    def __init__(
        self, *, weights: str | None = None, normalize: bool = True, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"VGGPerceptualLoss reduction={reduction!r}; expected 'mean' or 'sum'")
        self.reduction = reduction
        self.normalize = normalize
        # torchvision's vgg19().features, without building (and initialising) its 120M-parameter classifier
        features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
        features = features[: self._layer_ends[-1]]
        features.load_state_dict(_read_vgg19_features(weights, features))
        bounds = zip((0, *self._layer_ends[:-1]), self._layer_ends, strict=True)
        self.slices = nn.ModuleList(features[start:end] for start, end in bounds)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        return super().train(False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The relu1_1 ... relu5_1 activations of N×3×H×W ``images`` in [0, 1]."""
        if self.normalize:
            images = (images - self.mean) / self.std
        activations = []
        for layers in self.slices:
            images = layers(images)
            activations.append(images)
        return activations

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_features = self.features(target)
        loss = restored.new_zeros(())
        for weight, ours, theirs in zip(
            self.layer_weights, self.features(restored), target_features, strict=True
        ):
            distance = (ours - theirs).abs()
            loss = loss + weight * (distance.mean() if self.reduction == "mean" else distance.sum())
        return loss


def _read_vgg19_features(weights: str | None, features: nn.Sequential) -> dict[str, torch.Tensor]:
    """The state dict of ``features`` (VGG19 up to relu5_1) from a local torchvision weights file."""
    path = Path(weights) if weights else Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE
    if not path.is_file():
        where = f"put torchvision's {VGG19_FILE} there" if weights is None else "check the path"
        raise ConfigError(
            f"VGG19 perceptual loss: weights file {path} not found ({where}; it is never downloaded at run "
            f"time: https://download.pytorch.org/models/{VGG19_FILE})"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    expected = features.state_dict()
    # torchvision's file holds the whole classifier network: keep the feature layers up to relu5_1.
    chosen = {name: state.get(f"features.{name}", state.get(name)) for name in expected}
    wrong = [
        name
        for name, tensor in chosen.items()
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[name].shape
    ]
    if wrong:
        raise ConfigError(
            f"{path}: not torchvision VGG19 weights: missing or misshapen features.{wrong[0]} "
            f"({len(wrong)} of {len(expected)} layers)"
        )
    return {name: tensor.float() for name, tensor in chosen.items()}
