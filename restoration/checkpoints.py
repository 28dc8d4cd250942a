"""Which checkpoint a run resumes or evaluates, and whether it fits the network being built.

A checkpoint of this framework holds the run's resolved config (``"config"``) and its config-group
choices (``"choices"``, e.g. ``backbone: nafnet_tiny``), written by
:class:`~restoration.callbacks.ConfigInCheckpoint`. From them:

- ``ckpt_path=last`` takes the newest ``last.ckpt`` of the task whose network config (backbone and
  refiner) is the current one, and says which newer ones it skipped (a sweep over backbones leaves
  several networks under one ``task_name``);
- a file that is not a checkpoint, a checkpoint of another network, or one whose weights miss or add
  keys is refused with one line naming the file and the difference, before Lightning loads it;
- ``train=false`` builds the network from the checkpoint's own config unless the command line chose one
  (``restoration.run``);
- the frozen towers a stage builds from its config (a guide, a distillation teacher, the VGG19 of a
  perceptual loss; the stage's ``frozen_towers``) are left out of the checkpoint, so it records their
  identity instead (``"frozen_towers"``: class, config node and a SHA-256 of the weights,
  :func:`frozen_tower_identity`), and resuming or testing with other tower weights is refused in one line
  naming both, unless ``accept_tower_change=true`` (:func:`check_frozen_towers`).
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from restoration.errors import ConfigError

__all__ = [
    "NETWORK_KEYS",
    "check_frozen_towers",
    "check_state_dict",
    "describe_mismatch",
    "frozen_tower_identity",
    "load_checkpoint_header",
    "network_config",
    "network_difference",
    "resolve_checkpoint",
]

log = logging.getLogger(__name__)

# The config nodes that define the trained network's weights.
NETWORK_KEYS = ("backbone", "refiner")


def network_config(config: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """The resolved ``backbone`` and ``refiner`` nodes of a config (``None`` where absent)."""
    network = {}
    for key in NETWORK_KEYS:
        node = config.get(key)
        network[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return network


def network_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """The first difference between two network configs as ``backbone.width: 32 vs 16``, or ``None``."""

    def walk(a: Any, b: Any, key: str) -> str | None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for name in sorted(set(a) | set(b), key=lambda name: (name != "_target_", str(name))):
                found = walk(a.get(name, "<unset>"), b.get(name, "<unset>"), f"{key}.{name}")
                if found:
                    return found
            return None
        return None if a == b else f"{key}: {a} vs {b}"

    for key in NETWORK_KEYS:
        found = walk(saved.get(key), current.get(key), key)
        if found:
            return found
    return None


def load_checkpoint_header(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path``, memory-mapped (tensors are not read), or a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: file not found")
    if not zipfile.is_zipfile(path):
        raise ConfigError(
            f"ckpt_path={path}: not a checkpoint (not the zip archive torch.save writes); "
            "expected a .ckpt written by restoration.run"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"ckpt_path={path}: not a checkpoint that torch.load can read ({detail[:160]}); "
            "expected a .ckpt written by restoration.run"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = sorted(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ConfigError(
            f"ckpt_path={path}: not a Lightning checkpoint of this framework (found {found}); for released "
            "weights use backbone_weights.path=... instead"
        )
    return checkpoint


def _choice(checkpoint: Mapping[str, Any], key: str) -> str:
    choice = (checkpoint.get("choices") or {}).get(key)
    return f"{key}={choice}" if choice else key


def describe_mismatch(
    path: str | Path, checkpoint: Mapping[str, Any], current: Mapping[str, Any]
) -> str | None:
    """One line saying how the network of ``checkpoint`` differs from ``current``'s, or ``None``."""
    saved = checkpoint.get("config")
    if not isinstance(saved, Mapping):
        return None
    difference = network_difference(network_config(saved), network_config(current))
    if difference is None:
        return None
    group = difference.split(".", 1)[0].split(":", 1)[0]
    return f"{path} holds another network ({_choice(checkpoint, group)}; {difference})"


def check_state_dict(path: str | Path, saved: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose state dict misses keys, adds keys or changes shapes, in one line."""
    missing = [key for key in expected if key not in saved]
    extra = [key for key in saved if key not in expected]
    shapes = [
        f"{key} {tuple(saved[key].shape)} vs {tuple(expected[key].shape)}"
        for key in expected
        if key in saved
        and isinstance(saved[key], torch.Tensor)
        and isinstance(expected[key], torch.Tensor)
        and saved[key].shape != expected[key].shape
    ]
    if not (missing or extra or shapes):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", extra), ("different shapes", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
    raise ConfigError(f"ckpt_path={path}: its weights do not fit this network ({'; '.join(parts)})")


def _weights_sha256(module: nn.Module) -> str:
    """SHA-256 over the module's state dict in key order: each entry's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        if not isinstance(value, torch.Tensor):
            digest.update(f"{name}|{value!r}|".encode())
            continue
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(value.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def _tower_config(config: Mapping[str, Any] | DictConfig | None, tower: str) -> dict[str, Any] | None:
    """The config node a tower is built from: the top-level group (``guide``) or ``stage.<tower>``."""
    if config is None:
        return None
    stage = config.get("stage")
    for node in (config.get(tower), stage.get(tower) if isinstance(stage, Mapping | DictConfig) else None):
        if OmegaConf.is_config(node):
            node = OmegaConf.to_container(node, resolve=True)
        if isinstance(node, Mapping):
            return dict(node)
    return None


def frozen_tower_identity(
    stage: nn.Module, config: Mapping[str, Any] | DictConfig | None = None
) -> dict[str, dict[str, Any]]:
    """What each frozen tower of ``stage`` is: ``{tower: {"class", "config", "sha256"}}``.

    The towers are the attributes named in the stage's ``frozen_towers`` that hold a module; ``class`` is
    its import path, ``config`` the node of ``config`` it was built from (``guide``, or ``stage.<tower>``;
    ``None`` when there is none) and ``sha256`` the digest of its weights (0.3 s for the 88M parameters of
    CLIP ViT-B/32's image tower on one CPU core). Computed once per run, on the towers as built.
    """
    identity = {}
    for tower in getattr(stage, "frozen_towers", ()):
        module = getattr(stage, tower, None)
        if isinstance(module, nn.Module):
            identity[tower] = {
                "class": f"{type(module).__module__}.{type(module).__qualname__}",
                "config": _tower_config(config, tower),
                "sha256": _weights_sha256(module),
            }
    return identity


def _describe_tower(record: Mapping[str, Any]) -> str:
    """``ClipGuide (model=ViT-B-32, pretrained=openai; weights 1a2b3c4d5e6f)``: class, its config's names and
    paths, and the start of the weights' digest."""
    config = record.get("config") or {}
    names = [
        f"{key}={value}" for key, value in config.items() if key != "_target_" and isinstance(value, str)
    ]
    details = [", ".join(names)] if names else []
    details.append(f"weights {str(record.get('sha256'))[:12]}")
    return f"{str(record.get('class')).rsplit('.', 1)[-1]} ({'; '.join(details)})"


def check_frozen_towers(
    path: str | Path,
    checkpoint: Mapping[str, Any],
    towers: Mapping[str, Any],
    *,
    accept: bool = False,
) -> None:
    """Refuse, in one line naming both, a checkpoint whose frozen towers had other weights than today's.

    Args:
        path: the checkpoint's path, for the message.
        checkpoint: its content (:func:`load_checkpoint_header`).
        towers: the :func:`frozen_tower_identity` record of the stage about to load it.
        accept: log the change instead of refusing it (``accept_tower_change=true``).

    A checkpoint written before towers were recorded loads with a warning that nothing could be checked.
    Only towers present on both sides are compared; the same weights under another path or tag pass.
    """
    saved = checkpoint.get("frozen_towers")
    if not isinstance(saved, Mapping):
        if towers:
            log.warning(
                "ckpt_path=%s records no frozen towers (written before they were recorded): cannot check "
                "that its %s match the ones built now",
                path,
                ", ".join(towers),
            )
        return
    changed = [
        tower
        for tower in towers
        if isinstance(saved.get(tower), Mapping) and saved[tower].get("sha256") != towers[tower]["sha256"]
    ]
    if not changed:
        return
    tower = changed[0]
    more = f" (and {', '.join(changed[1:])})" if len(changed) > 1 else ""
    difference = (
        f"frozen tower {tower}{more} differs: saved {_describe_tower(saved[tower])} vs now "
        f"{_describe_tower(towers[tower])}"
    )
    if accept:
        log.warning("ckpt_path=%s: %s; accepted (accept_tower_change=true)", path, difference)
        return
    raise ConfigError(f"ckpt_path={path}: {difference}; set accept_tower_change=true to accept the change")


def resolve_checkpoint(cfg: DictConfig) -> str | None:
    """``ckpt_path``: ``None``, a file, or ``"last"``: the newest fitting ``last.ckpt`` of the task.

    "Fitting" means made with the same network config (backbone and refiner); newer checkpoints of
    other networks are skipped with a log line naming them.
    """
    requested = cfg.get("ckpt_path")
    if requested is None:
        return None
    if requested != "last":
        load_checkpoint_header(requested)
        return str(requested)
    runs = Path(cfg.paths.log_dir) / cfg.task_name
    current = Path(cfg.paths.output_dir).resolve()
    candidates = sorted(
        (path for path in runs.glob("**/checkpoints/last.ckpt") if current not in path.resolve().parents),
        key=lambda path: path.stat().st_mtime,
        reverse=True,
    )
    if not candidates:
        raise ConfigError(
            f"ckpt_path=last: no last.ckpt under {runs} (earlier runs of task_name={cfg.task_name}); "
            "start the run without ckpt_path first, or pass ckpt_path=/path/to/file.ckpt"
        )
    skipped = []
    for path in candidates:
        try:
            mismatch = describe_mismatch(path, load_checkpoint_header(path), cfg)
        except ConfigError as error:
            mismatch = str(error)
        if mismatch is None:
            for reason in skipped:
                log.info("ckpt_path=last: skipped %s", reason)
            log.info("resuming from %s", path)
            return str(path)
        skipped.append(mismatch)
    raise ConfigError(
        f"ckpt_path=last: none of the {len(candidates)} last.ckpt of task_name={cfg.task_name} was made with "
        f"this network; newest: {skipped[0]}"
    )
