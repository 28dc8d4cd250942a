"""Networks trained by this framework, rebuilt from their own Lightning checkpoints.

Every checkpoint written by ``restoration.run`` holds the resolved run config (key ``"config"``, see
:class:`~restoration.callbacks.ConfigInCheckpoint`), so the network can be rebuilt at the size it was
trained at (a ``*_tiny`` preset stays tiny) and its weights (the EMA copy when there is one) loaded
strictly. Guides use this to turn a pre-training run into a frozen feature extractor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from restoration.archs import load_pretrained, network_prefix
from restoration.errors import ConfigError

__all__ = ["checkpoint_config", "trained_network"]


def checkpoint_config(path: str | Path) -> dict[str, Any] | None:
    """The run config stored in one of our checkpoints, or ``None`` for any other weights file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path}: no such file")
    if path.suffix != ".ckpt":
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # pickle, zip and version errors all mean "not loadable"
        raise ConfigError(f"checkpoint {path}: cannot be read by torch.load ({error})") from error
    config = content.get("config") if isinstance(content, dict) else None
    return config if isinstance(config, dict) else None


def trained_network(
    path: str | Path, *, expected: type[nn.Module] | None = None, hint: str = ""
) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone of one of our checkpoints with its weights (EMA when saved), and the run config.

    With ``expected``, a backbone of another class is a ConfigError that names both and adds ``hint``.
    """
    config = checkpoint_config(path)
    if config is None or not isinstance(config.get("backbone"), dict):
        raise ConfigError(
            f"checkpoint {path}: not a checkpoint written by restoration.run (no stored config with a "
            "backbone); pass a .ckpt from a run's checkpoints/ folder"
        )
    net = instantiate(OmegaConf.create(config["backbone"]))
    if expected is not None and not isinstance(net, expected):
        raise ConfigError(
            f"guide.checkpoint={path}: its backbone is {type(net).__name__}, "
            f"expected {expected.__name__}{hint}"
        )
    load_pretrained(net, path, key="state_dict", prefix=network_prefix(path))
    return net, config
