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
  (``restoration.run``).
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from restoration.errors import ConfigError

__all__ = [
    "NETWORK_KEYS",
    "check_state_dict",
    "describe_mismatch",
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
