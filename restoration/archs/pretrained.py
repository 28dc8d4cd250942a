"""Loading released weights into the networks of :mod:`restoration.archs`.

Official releases wrap the state dict in different containers: BasicSR-style ``{"params": ...}`` or
``{"params_ema": ...}`` (Restormer, NAFNet, ConStyle), ``{"state_dict": ...}`` (Lightning and many
others), ``{"model": ...}``, or nothing at all (IPT). DDP-saved files prefix every key with
``module.``. :func:`load_pretrained` unwraps all of these, loads strictly by default, and reports what
does not match in one error that names the file and the first keys of each kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from restoration.errors import ConfigError

__all__ = ["CONTAINER_KEYS", "load_pretrained", "network_prefix", "read_state_dict"]

# Tried in this order: BasicSR saves the EMA weights as params_ema beside params; the EMA is what
# the official evaluations use.
CONTAINER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "network")


def read_state_dict(
    path: str | Path,
    *,
    key: str | None = None,
    prefix: str = "",
    exclude: Sequence[str] = (),
    map_location: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, out of their container.

    Args:
        path: a ``torch.save`` file (``.pth``, ``.pt``, ``.ckpt``) or a ``.safetensors`` file.
        key: the container entry to take (``"params"``); ``None`` takes the first of
            :data:`CONTAINER_KEYS` present, or the file itself when it is already a state dict.
        prefix: keep only keys starting with this and strip it (``"net."`` for the network of one of
            our Lightning checkpoints, ``"encoder_q."`` for ConStyle's query encoder).
        exclude: drop keys starting with any of these (after ``prefix`` is stripped), e.g. ``"ConStyle."``
            for the prompter held inside the official ConStyle restoration checkpoints.
        map_location: device the tensors are loaded to.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pretrained weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        content: object = load_file(str(path), device=str(map_location))
    else:
        try:
            content = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as error:  # pickle, zip and version errors all mean "not loadable"
            raise ConfigError(f"pretrained weights {path}: cannot be read by torch.load ({error})") from error
    if not isinstance(content, Mapping):
        raise ConfigError(
            f"pretrained weights {path}: expected a dict of tensors, got {type(content).__name__}"
        )
    if key is not None:
        if key not in content:
            raise ConfigError(f"pretrained weights {path}: no entry {key!r}; it has {sorted(content)[:10]}")
        content = content[key]
    elif not _is_state_dict(content):
        found = next((name for name in CONTAINER_KEYS if name in content), None)
        if found is None:
            raise ConfigError(
                f"pretrained weights {path}: neither a state dict nor a container with one of "
                f"{list(CONTAINER_KEYS)}; its entries are {sorted(content)[:10]}"
            )
        content = content[found]
    if not isinstance(content, Mapping) or not _is_state_dict(content):
        raise ConfigError(f"pretrained weights {path}: the selected entry is not a dict of tensors")
    state = dict(content)
    if state and all(name.startswith("module.") for name in state):
        state = {name.removeprefix("module."): tensor for name, tensor in state.items()}
    if prefix:
        state = {
            name.removeprefix(prefix): tensor for name, tensor in state.items() if name.startswith(prefix)
        }
        if not state:
            raise ConfigError(f"pretrained weights {path}: no key starts with {prefix!r}")
    if exclude:
        state = {name: tensor for name, tensor in state.items() if not name.startswith(tuple(exclude))}
    return state


def load_pretrained(
    module: nn.Module,
    path: str | Path,
    *,
    key: str | None = None,
    prefix: str = "",
    exclude: Sequence[str] = (),
    strict: bool = True,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Load the weights in ``path`` into ``module`` and return it.

    With ``strict=True`` (the default) any missing or unexpected key, and any shape mismatch, is a
    :class:`~restoration.errors.ConfigError` naming the file and the keys. With ``strict=False``
    shape mismatches are still errors; missing and unexpected keys are allowed (and logged by the
    caller if it wants: the returned module carries them as ``module.pretrained_mismatch``).

    See :func:`read_state_dict` for ``key``, ``prefix``, ``exclude`` and the containers understood. A module
    with a ``checkpoint_filter_fn(state) -> (state, set_aside_names)`` method filters the file's state first;
    the names it sets aside are listed in ``module.pretrained_mismatch["unexpected"]``, and the file in
    ``module.pretrained_path`` (PTG-RM's stage takes its refiner from there).
    """
    state = read_state_dict(path, key=key, prefix=prefix, exclude=exclude, map_location=map_location)
    # A network whose releases hold foreign keys translates them beside itself (timm's checkpoint_filter_fn):
    # it returns the state it takes and the names it sets aside (e.g. PTG-RM's refiner in SNR-Aware files).
    set_aside: list[str] = []
    if callable(filter_fn := getattr(module, "checkpoint_filter_fn", None)):
        state, set_aside = filter_fn(state)
    own = module.state_dict()
    missing = [name for name in own if name not in state]
    unexpected = [name for name in state if name not in own]
    wrong_shape = [
        f"{name} {tuple(state[name].shape)} (expected {tuple(own[name].shape)})"
        for name in own
        if name in state and state[name].shape != own[name].shape
    ]
    problems = []
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} with the wrong shape: {_first(wrong_shape)}")
    if strict and missing:
        problems.append(f"{len(missing)} missing: {_first(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_first(unexpected)}")
    if problems:
        raise ConfigError(
            f"pretrained weights {path} do not fit {type(module).__name__}: " + "; ".join(problems)
        )
    module.load_state_dict(state, strict=strict)
    module.pretrained_mismatch = {"missing": missing, "unexpected": [*set_aside, *unexpected]}
    module.pretrained_path = str(path)
    return module


def network_prefix(path: str | Path) -> str:
    """Where a checkpoint keeps the network: ``ema.module.`` or ``net.`` in ours, nothing in official files.

    Our Lightning checkpoints (``*.ckpt``) are read memory-mapped, so finding the prefix costs no full read.
    """
    path = Path(path)
    if path.suffix != ".ckpt":
        return ""
    if not path.is_file():
        raise ConfigError(f"pretrained weights {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("state_dict", {})
    for prefix in ("ema.module.", "net."):
        if any(name.startswith(prefix) for name in state):
            return prefix
    raise ConfigError(f"pretrained weights {path}: a .ckpt without net.* or ema.module.* weights")


def _is_state_dict(content: Mapping) -> bool:
    return bool(content) and all(isinstance(value, torch.Tensor) for value in content.values())


def _first(names: list[str], count: int = 5) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", ... ({len(names) - count} more)" if len(names) > count else "")
