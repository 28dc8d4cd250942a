"""Restormer against ``basicsr/models/archs/restormer_arch.py`` of https://github.com/swz30/Restormer.

Presets are the ``conf/backbone`` files, plus the two official variants of the default network: the
bias-free norm of the denoising models and the dual-pixel defocus-deblurring network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.official import import_official
from restoration.archs.restormer import Restormer

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"

# preset -> (conf/backbone file, overrides of its values)
_PRESETS = {
    "restormer": ("restormer", {}),
    "restormer_tiny": ("restormer_tiny", {}),
    "restormer bias_free": ("restormer", {"norm_type": "bias_free"}),
    "restormer dual_pixel": ("restormer", {"in_channels": 6, "dual_pixel": True}),
}
PRESETS = tuple(_PRESETS)

# Our argument names -> the official ones (Restormer.__init__ of restormer_arch.py).
_OFFICIAL_NAMES = {
    "in_channels": "inp_channels",
    "norm_type": "LayerNorm_type",
    "dual_pixel": "dual_pixel_task",
}
_OFFICIAL_NORM_TYPES = {"with_bias": "WithBias", "bias_free": "BiasFree"}


def build(root: str | Path, preset: str) -> tuple[nn.Module, nn.Module]:
    official_module = import_official(root, "basicsr/models/archs/restormer_arch.py")
    file, overrides = _PRESETS[preset]
    settings = OmegaConf.to_container(OmegaConf.load(CONF / f"{file}.yaml"))
    settings.pop("_target_")
    settings.update(overrides)
    official_settings = {_OFFICIAL_NAMES.get(name, name): value for name, value in settings.items()}
    official_settings["LayerNorm_type"] = _OFFICIAL_NORM_TYPES[settings["norm_type"]]
    official = official_module.Restormer(**official_settings)
    ours = Restormer(**settings)
    ours.load_state_dict(official.state_dict(), strict=True)
    return ours, official


def run_ours(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net(_inputs(net, images))


def run_official(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return net(_inputs(net, images))


def _inputs(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The dual-pixel networks take both views: the image and a copy shifted by one pixel."""
    if net.patch_embed.proj.in_channels == 6:
        return torch.cat([images, images.roll(1, dims=-1)], dim=1)
    return images
