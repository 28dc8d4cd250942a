"""ConStyle v2's plain CNN U-Net (``OriginConv``) against ``restoration.archs.cnn_unet.CNNUNet``.

python -m experiments.official cnn_unet --root PATH_TO/ConStyle_v2
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from experiments.official import import_official

PRESETS = ("cnn_unet", "cnn_unet_tiny")
# The official network does not pad: a size divisible by 8 (three halvings).
INPUT_SHAPE = (2, 3, 64, 96)

_CONF = Path(__file__).resolve().parents[2] / "conf"


# The official file registers OriginConv in BasicSR's registry, which refuses a second import.
_import_official = functools.cache(import_official)


def build(root: str | Path, preset: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    official_module = _import_official(root, "archs/Conv_arch.py")
    with initialize_config_dir(version_base="1.3", config_dir=str(_CONF)):
        config = compose(config_name="config", overrides=[f"backbone={preset}"]).backbone
    ours = instantiate(config)
    official = official_module.OriginConv(
        inp_channels=config.in_channels, dim=config.width, out_channels=config.out_channels
    )
    # PReLU slopes all start at 0.25: draw them at random so that a slope copied to the wrong channel
    # or layer shows in the outputs.
    with torch.no_grad():
        for module in official.modules():
            if isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(0.0, 0.5)
    ours.load_state_dict(official.state_dict(), strict=True)
    return ours, official
