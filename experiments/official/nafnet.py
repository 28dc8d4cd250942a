"""NAFNet against ``basicsr/models/archs/NAFNet_arch.py`` of https://github.com/megvii-research/NAFNet.

Presets are the ``conf/backbone`` files; the ``tlc`` rows compare ``pooling_type="tlc"`` with the
official ``NAFNetLocal`` (exact ``AvgPool2d``, ``fast_imp=False``) trained at 32×32, so that the
64×64 test input is larger than the 48×48 TLC window and the local statistics are exercised.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

from omegaconf import OmegaConf
from torch import nn

from experiments.official import import_official
from restoration.archs.nafnet import NAFNet

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"

# preset -> (conf/backbone file, overrides of its values)
_PRESETS = {
    "nafnet_w32_sidd": ("nafnet_w32_sidd", {}),
    "nafnet_w64_gopro": ("nafnet_w64_gopro", {}),
    "nafnet_w64_sidd": ("nafnet_w64_sidd", {}),
    "nafnet_tiny": ("nafnet_tiny", {}),
    "nafnet_w64_gopro tlc": ("nafnet_w64_gopro", {"pooling_type": "tlc", "train_size": 32}),
    "nafnet_tiny tlc": ("nafnet_tiny", {"pooling_type": "tlc", "train_size": 32}),
}
PRESETS = tuple(_PRESETS)

# Our argument names -> the official ones (NAFNet.__init__ of NAFNet_arch.py).
_OFFICIAL_NAMES = {
    "image_channels": "img_channel",
    "width": "width",
    "encoder_blocks": "enc_blk_nums",
    "middle_blocks": "middle_blk_num",
    "decoder_blocks": "dec_blk_nums",
}


def _official_module(root: str | Path) -> types.ModuleType:
    """NAFNet_arch.py without executing the ``basicsr`` package, whose imports need cv2, lmdb, etc.

    The three packages on the way are empty modules whose ``__path__`` is the real folder, so
    ``arch_util`` and ``local_arch`` load from the checkout; ``basicsr.utils`` (used by ``arch_util``
    for a logger only) is a one-function stand-in.
    """
    root = Path(root).expanduser().resolve()
    for package in ("basicsr", "basicsr.models", "basicsr.models.archs"):
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = [str(root.joinpath(*package.split(".")))]
            sys.modules[package] = module
    if "basicsr.utils" not in sys.modules:
        utils = types.ModuleType("basicsr.utils")
        utils.get_root_logger = lambda *args, **kwargs: logging.getLogger("basicsr")
        sys.modules["basicsr.utils"] = utils
    return import_official(root, "basicsr/models/archs/NAFNet_arch.py")


def build(root: str | Path, preset: str) -> tuple[nn.Module, nn.Module]:
    official_module = _official_module(root)
    file, overrides = _PRESETS[preset]
    settings = OmegaConf.to_container(OmegaConf.load(CONF / f"{file}.yaml"))
    settings.pop("_target_")
    settings.update(overrides)
    official_settings = {_OFFICIAL_NAMES[name]: settings[name] for name in _OFFICIAL_NAMES}
    if settings["pooling_type"] == "tlc":
        side = settings["train_size"]
        official = official_module.NAFNetLocal(
            train_size=(1, settings["image_channels"], side, side), **official_settings
        )
    else:
        official = official_module.NAFNet(**official_settings)
    # Random residual scales: the official zero initialisation would hide every block's output.
    for name, parameter in official.named_parameters():
        if name.endswith(("beta", "gamma")):
            nn.init.uniform_(parameter, -0.5, 0.5)
    ours = NAFNet(**settings)
    ours.load_state_dict(official.state_dict(), strict=True)
    return ours, official
