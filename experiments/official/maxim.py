"""MAXIM-1S against ``archs/Maxim_arch.py`` of ConStyle v2 (https://github.com/Dongqi-Fan/ConStyle_v2).

The official class is built with its defaults (the ``maxim_1s`` preset); a second preset shrinks the
features and the block and grid sizes, keeping the official layout. The tiny preset's single group per
block has no official counterpart. The input size is not a multiple of the blocks and grids: the
official network cannot take it, so it gets the input padded as ours pads it, and its output cropped.

The official file imports ``einops`` and the repository's ``utils.registry`` (which imports the whole
training package); both are replaced by minimal shims while it is imported when they are missing.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.official import import_official
from restoration.archs.common import pad_to_multiple
from restoration.archs.maxim import Maxim

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"

_SMALL = {
    "features": 8,
    "block_size_hr": [4, 4],
    "block_size_lr": [2, 2],
    "grid_size_hr": [4, 4],
    "grid_size_lr": [2, 2],
}
# preset -> overrides of maxim_1s.yaml
_PRESETS = {"maxim_1s": {}, "maxim_1s small windows": _SMALL}
PRESETS = tuple(_PRESETS)
INPUT_SHAPE = (2, 3, 100, 140)

# Our arguments with the official names (Maxim.__init__ of Maxim_arch.py) ...
_OFFICIAL_NAMES = {"out_channels": "num_outputs"}
# ... and those the official class does not have (fixed there: 2 groups, 2 bottleneck blocks, 3 channels,
# the never-called layers always built).
_FIXED = {"in_channels": 3, "num_groups": 2, "num_bottleneck_blocks": 2, "keep_unused_layers": True}


def _rearrange(tensor: torch.Tensor, pattern: str, *, gh: int, gw: int, fh: int, fw: int) -> torch.Tensor:
    """The two ``einops.rearrange`` patterns of Maxim_arch.py (image <-> blocks)."""
    batch, channels = tensor.shape[0], tensor.shape[-1]
    if pattern == "n (gh fh) (gw fw) c -> n (gh gw) (fh fw) c":
        split = tensor.reshape(batch, gh, fh, gw, fw, channels)
        return split.permute(0, 1, 3, 2, 4, 5).reshape(batch, gh * gw, fh * fw, channels)
    if pattern == "n (gh gw) (fh fw) c -> n (gh fh) (gw fw) c":
        split = tensor.reshape(batch, gh, gw, fh, fw, channels)
        return split.permute(0, 1, 3, 2, 4, 5).reshape(batch, gh * fh, gw * fw, channels)
    raise NotImplementedError(pattern)


def _import_maxim_arch(root: str | Path) -> types.ModuleType:
    registry = types.ModuleType("utils.registry")
    registry.ARCH_REGISTRY = types.SimpleNamespace(register=lambda: lambda cls: cls)
    shims = {"utils": types.ModuleType("utils"), "utils.registry": registry}
    shims["utils"].registry = registry
    if importlib.util.find_spec("einops") is None:
        shims["einops"] = types.ModuleType("einops")
        shims["einops"].rearrange = _rearrange
    saved = {name: sys.modules.get(name) for name in shims}
    sys.modules.update(shims)
    try:
        return import_official(root, "archs/Maxim_arch.py")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name)
            else:
                sys.modules[name] = module


def official_settings(settings: dict) -> dict:
    """Our ``Maxim`` arguments as the official class's, checking those it cannot take."""
    for name, value in _FIXED.items():
        if settings.get(name, value) != value:
            raise ValueError(f"the official Maxim has {name}={value}; got {settings[name]}")
    official = {
        _OFFICIAL_NAMES.get(name, name): value for name, value in settings.items() if name not in _FIXED
    }
    return {name: tuple(value) if isinstance(value, list) else value for name, value in official.items()}


def build(root: str | Path, preset: str) -> tuple[nn.Module, nn.Module]:
    official_module = _import_maxim_arch(root)
    settings = OmegaConf.to_container(OmegaConf.load(CONF / "maxim_1s.yaml"))
    settings.pop("_target_")
    settings.update(_PRESETS[preset])
    official = official_module.Maxim(**official_settings(settings))
    ours = Maxim(**settings)
    ours.load_state_dict(official.state_dict(), strict=True)
    official.size_multiple = ours.size_multiple  # for run_official
    return ours, official


def run_official(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    height, width = images.shape[-2:]
    return net(pad_to_multiple(images, net.size_multiple))[..., :height, :width]
