"""The prompted ConStyle U-Nets against `archs/ConStyle_{NAFNet,Restormer,Maxim,Conv}_arch.py` (ConStyle v2).

    python -m experiments.official constyle --root PATH_TO/ConStyle_v2

Each official class is built with ``Train=True`` (its prompter ``ConStyle`` then holds the query and
the momentum encoder, 2 × 1,190,832 parameters, as in training) from the values of a ``conf/backbone``
preset; ours is loaded strictly from its random state dict without ``ConStyle.*``. Both networks get
the same prompts, computed by the official ``ConStyle.encoder_q`` (in eval mode) of the same images.
The compared "ours" is our restoration network plus that official prompter, so the two parameter
columns of the table count the same modules: they are the totals of the official constructors.

The official files import ``utils.registry`` (which imports the repository's training package) and
the ``archs`` package (whose ``__init__`` imports every network of the repository); both are replaced
by minimal shims while a file is imported.
"""

from __future__ import annotations

import functools
import sys
import types
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from experiments.official import import_official

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"

# MAXIM needs a multiple of 64 (16×16 blocks at H/2, 8×8 at H/8); the official networks do not pad.
INPUT_SHAPE = (2, 3, 64, 64)

_FILES = {
    "ConStyleNAFNet": "ConStyle_NAFNet_arch.py",
    "ConStyleRestormer": "ConStyle_Restormer_arch.py",
    "ConStyleMaxim": "ConStyle_Maxim_arch.py",
    "ConStyleCNN": "ConStyle_Conv_arch.py",
}
# Our class -> the official one, and our argument names -> the official ones.
_OFFICIAL_CLASSES = {"ConStyleCNN": "ConStyleConv"}
_OFFICIAL_NAMES = {
    "encoder_blocks": "left_blk_num",
    "bottleneck_blocks": "bottom_blk_num",
    "decoder_blocks": "right_blk_num",
    "norm_type": "LayerNorm_type",
    "use_bias": "bias",
}
_OFFICIAL_NORM_TYPES = {"with_bias": "WithBias", "bias_free": "BiasFree"}
# What the official classes cannot change (they are not arguments there): RGB images, the 128-d latent
# and 32/64/128-channel prompts, and in MAXIM 2 (MAB, attention) groups and the never-called layers.
_FIXED = {
    "image_channels": 3,
    "latent_dim": 128,
    "prompt_channels": [32, 64, 128],
    "num_groups": 2,
    "keep_unused_layers": True,
}

# preset -> (conf/backbone file, overrides of its values)
_PRESETS = {
    "constyle_nafnet": ("constyle_nafnet", {}),
    "constyle_restormer": ("constyle_restormer", {}),
    "constyle_maxim": ("constyle_maxim", {}),
    "constyle_cnn": ("constyle_cnn", {}),
    "constyle_nafnet_tiny": ("constyle_nafnet_tiny", {}),
    "constyle_restormer_tiny": ("constyle_restormer_tiny", {}),
    "constyle_restormer bias_free, bias": (
        "constyle_restormer_tiny",
        {"norm_type": "bias_free", "bias": True},
    ),
    # The tiny MAXIM preset's single group per block has no official counterpart: two groups here.
    "constyle_maxim_tiny, 2 groups, bias": (
        "constyle_maxim_tiny",
        {"num_groups": 2, "keep_unused_layers": True, "use_bias": True},
    ),
    "constyle_cnn_tiny": ("constyle_cnn_tiny", {}),
}
PRESETS = tuple(_PRESETS)


@functools.cache
def _import_arch(root: str | Path, filename: str) -> types.ModuleType:
    root = Path(root).expanduser().resolve()
    registry = types.ModuleType("utils.registry")
    registry.ARCH_REGISTRY = types.SimpleNamespace(register=lambda: lambda cls: cls)
    utils = types.ModuleType("utils")
    utils.registry = registry
    # A package without its __init__: `from archs.ConStyle_arch import ConStyle` loads that file only.
    archs = types.ModuleType("archs")
    archs.__path__ = [str(root / "archs")]
    shims = {"utils": utils, "utils.registry": registry, "archs": archs}
    saved = {name: sys.modules.get(name) for name in (*shims, "archs.ConStyle_arch")}
    sys.modules.update(shims)
    try:
        return import_official(root, f"archs/{filename}")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _settings(preset: str) -> dict:
    """The preset's values (a tiny preset's parent resolved) with the overrides of ``_PRESETS``."""
    file, overrides = _PRESETS[preset]
    return {**_read(file), **overrides}


def _read(file: str) -> dict:
    settings = OmegaConf.to_container(OmegaConf.load(CONF / f"{file}.yaml"))
    parents = [parent for parent in settings.pop("defaults", []) if parent != "_self_"]
    inherited = {name: value for parent in parents for name, value in _read(parent).items()}
    return {**inherited, **settings}


def official_settings(class_name: str, settings: dict) -> dict:
    """Our constructor arguments as the official class's, checking those it cannot take."""
    official = {}
    for name, value in settings.items():
        if name == "norm_type":
            value = _OFFICIAL_NORM_TYPES[value]
        if name not in _FIXED:
            official[_OFFICIAL_NAMES.get(name, name)] = value
        elif value != _FIXED[name]:
            raise ValueError(f"the official {class_name} has {name}={_FIXED[name]}; got {value}")
    return official


class _Prompted(nn.Module):
    """Our restoration network fed by the official prompter's query encoder."""

    def __init__(self, restorer: nn.Module, prompter: nn.Module) -> None:
        super().__init__()
        self.restorer, self.prompter = restorer, prompter

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        (_, latent), prompts = self.prompter.encoder_q(images)
        return self.restorer(images, latent, prompts)


def build(root: str | Path, preset: str) -> tuple[nn.Module, nn.Module]:
    settings = _settings(preset)
    target = settings.pop("_target_")
    class_name = target.rsplit(".", 1)[1]
    official_module = _import_arch(root, _FILES[class_name])
    official_class = getattr(official_module, _OFFICIAL_CLASSES.get(class_name, class_name))
    official = official_class(**official_settings(class_name, settings), Train=True)
    # PReLU slopes all start at 0.25 and NAFNet's residual scales at 0: draw them at random so that a
    # parameter copied to the wrong place shows in the outputs.
    with torch.no_grad():
        for name, parameter in official.named_parameters():
            if isinstance(official.get_submodule(name.rsplit(".", 1)[0]), nn.PReLU) or name.endswith(
                (".beta", ".gamma")
            ):
                parameter.uniform_(0.0, 0.5)
    restorer = instantiate({"_target_": target, **settings})
    state = {name: value for name, value in official.state_dict().items() if not name.startswith("ConStyle.")}
    restorer.load_state_dict(state, strict=True)
    return _Prompted(restorer, official.ConStyle), official


def run_official(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    (_, latent), prompts = net.ConStyle.encoder_q(images)
    return net(images, latent, prompts)
