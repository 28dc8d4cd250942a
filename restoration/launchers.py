"""Checks of a ``-m`` sweep's cluster launcher before anything is submitted.

``hydra/launcher=slurm`` (``conf/hydra/launcher/slurm.yaml``, hydra-submitit-launcher) asks SLURM for
``trainer.num_nodes`` nodes with ``trainer.devices`` tasks and GPUs each, the layout Lightning's SLURM
support expects. ``trainer=ddp`` sets ``devices: -1`` ("all GPUs of the machine"), which is no number of
tasks: SLURM would refuse the job on the cluster, after the sweep was submitted. :class:`CheckSlurmLauncher`
stops the sweep first, with one line naming the key to set.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

__all__ = ["CheckSlurmLauncher", "slurm_launcher_error"]

log = logging.getLogger(__name__)

# hydra-submitit-launcher's SLURM launcher, the _target_ of its submitit_slurm option
SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"

# the launcher keys SLURM needs as positive whole numbers: what each counts, and whether null (SLURM's
# default) is allowed
_COUNTS = {
    "nodes": ("nodes", False),
    "tasks_per_node": ("tasks per node (one per device)", False),
    "gpus_per_node": ("GPUs per node", True),
    "timeout_min": ("minutes", False),
}
_PLAIN_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def _setting(config: DictConfig, key: str) -> tuple[str, Any]:
    """``(key a user sets, its value)`` of launcher ``key``: ``trainer.devices`` for ``${trainer.devices}``.

    Read without the launcher's schema, which would refuse ``trainer.devices=auto`` with a traceback.
    """
    raw = OmegaConf.to_container(config.hydra.launcher, resolve=False).get(key)
    match = _PLAIN_INTERPOLATION.match(str(raw))
    if match:
        return match.group(1), OmegaConf.select(config, match.group(1))
    return f"hydra.launcher.{key}", raw


def slurm_launcher_error(config: DictConfig) -> str | None:
    """What is wrong with the SLURM launcher settings of ``config`` (one line), or ``None``."""
    launcher = OmegaConf.select(config, "hydra.launcher")
    if launcher is None or launcher.get("_target_") != SLURM_LAUNCHER:
        return None
    for key, (counted, nullable) in _COUNTS.items():
        source, value = _setting(config, key)
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return (
                f"hydra/launcher=slurm: {source}={value} is not a number of {counted}; "
                f"set {source} to a positive whole number"
                + (" (the GPUs per node, e.g. trainer.devices=4)" if source == "trainer.devices" else "")
            )
    return None


class CheckSlurmLauncher(Callback):
    """Hydra callback: before a multirun submits anything, stop it in one line on bad SLURM settings."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        message = slurm_launcher_error(config)
        if message is not None:
            log.error("%s", message)
            sys.exit(1)
