"""Building the run's loggers from ``cfg.logger`` and finishing them; Weights & Biases as its users expect.

Every entry of the ``logger`` group with a ``_target_`` is instantiated (``logger=[csv,wandb]`` combines
options, each file holding its own key). A W&B run is then set up so that a dashboard reads well:

- its **name** says what differs: the experiment, plus the swept values of a ``-m`` sweep job
  (``restore_embedded_denoise backbone=nafnet_tiny lr=0.001``); its **group** is the sweep
  (``<task_name>/multiruns/<stamp>``) or, for a single run, ``task_name``; ``logger.wandb.name`` and
  ``logger.wandb.group`` override both;
- its summary holds the **best** ``optimized_metric`` (``define_metric(..., summary="max")``), not the last;
- its **id** is kept in ``<run dir>/wandb_id.txt``, and a run resumed from a checkpoint (``ckpt_path=last``
  or a path) continues the W&B run of the checkpoint's run folder, as does a requeued SLURM job in its
  own folder;
- ``logger.wandb.offline=true`` runs W&B in offline mode (``wandb sync`` uploads later), where checkpoints
  can be logged too: ``logger.wandb.log_model=true`` adds the best and last checkpoints as a model artifact
  at the end of training (Lightning's ``WandbLogger`` with the checkpoint callback);
- when the run ends, :func:`finish_loggers` adds ``results.json`` as a file, the final metrics as a table
  (``results``), the per-image test scores as a table (``test/images``) and closes the run, marked failed
  unless the run finished.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

__all__ = [
    "WANDB_ID_FILE",
    "build_loggers",
    "finish_loggers",
    "run_group",
    "run_name",
    "sweep_label",
]

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_id.txt"
"""In the run folder: the id of the W&B run the folder's run logged to."""


def build_loggers(cfg: DictConfig, *, ckpt_path: str | None) -> list[Logger]:
    """Every logger of ``cfg.logger``; a run resuming from ``ckpt_path`` continues that run's W&B run."""
    group = cfg.get("logger")
    if not group:
        return []
    loggers = []
    for node in group.values():
        if not (isinstance(node, DictConfig) and "_target_" in node):
            continue
        target = get_object(node._target_)
        if isinstance(target, type) and issubclass(target, WandbLogger):
            loggers.append(_wandb_logger(cfg, node, resumed_from=ckpt_path if cfg.train else None))
        else:
            loggers.append(instantiate(node))
    return loggers


def _wandb_logger(cfg: DictConfig, node: DictConfig, *, resumed_from: str | None) -> WandbLogger:
    output_dir = Path(cfg.paths.output_dir)
    # WandbLogger passes resume="allow": a known id continues that run, None starts a new one.
    settings: dict[str, Any] = {"id": node.get("id") or _earlier_run_id(output_dir, resumed_from)}
    if node.get("name") is None:
        settings["name"] = run_name(cfg)
    if node.get("group") is None:
        settings["group"] = run_group(cfg)
    if node.get("offline"):
        # Lightning's offline flag refuses log_model (and sets WANDB_MODE for the whole process, later jobs
        # of a sweep included); W&B's own offline mode keeps artifacts for `wandb sync` and ends with the run.
        settings |= {"offline": False, "mode": "offline"}
    logger = instantiate(node, **settings)
    if rank_zero_only.rank == 0:  # the other ranks log nothing to W&B
        run = logger.experiment
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / WANDB_ID_FILE).write_text(f"{run.id}\n")
        if cfg.get("optimized_metric"):
            # The summary keeps the best score (what sweeps and run tables compare), not the last one.
            run.define_metric(cfg.optimized_metric, summary="max")
    return logger


def _earlier_run_id(output_dir: Path, resumed_from: str | None) -> str | None:
    """The W&B id to continue: the run folder's own (a requeued job), else the resumed checkpoint's run's."""
    folders = [output_dir]
    if resumed_from is not None:
        folders.append(Path(resumed_from).resolve().parent.parent)  # <run dir>/checkpoints/<file>.ckpt
    for folder in folders:
        path = folder / WANDB_ID_FILE
        if path.is_file() and path.read_text().strip():
            run_id = path.read_text().strip()
            log.info("W&B: continuing run %s (id from %s)", run_id, path)
            return run_id
    return None


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_name(cfg: DictConfig) -> str:
    """The experiment (or ``task_name``), plus the swept values for a job of a ``-m`` sweep."""
    experiment = HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None
    label = experiment or cfg.task_name
    if not _multirun():
        return label
    hydra = HydraConfig.get()
    swept = _swept_keys(sys.argv[1:], hydra.sweeper.get("params") or {})
    return " ".join([label, *sweep_label(list(hydra.overrides.task), swept)])


def run_group(cfg: DictConfig) -> str:
    """A sweep's folder relative to the log folder (``<task_name>/multiruns/<stamp>``), else ``task_name``."""
    if not _multirun():
        return str(cfg.task_name)
    sweep_dir = Path(HydraConfig.get().sweep.dir).resolve()
    log_dir = Path(cfg.paths.log_dir).resolve()
    return str(sweep_dir.relative_to(log_dir)) if sweep_dir.is_relative_to(log_dir) else sweep_dir.name


def _swept_keys(arguments: Sequence[str], sweeper_params: Iterable[str]) -> set[str]:
    """The keys a sweep varies: ``key=a,b`` / ``range(...)`` arguments, and ``hydra.sweeper.params``.

    Hydra parsed the same arguments to launch the sweep. A launcher that runs each job in a process of
    its own (submitit) leaves no override there: nothing is known swept, and the label shows every override.
    """
    candidates = [argument for argument in arguments if "=" in argument and not argument.startswith("-")]
    overrides = OverridesParser.create().parse_overrides(candidates)
    return {override.key_or_group for override in overrides if override.is_sweep_override()} | set(
        sweeper_params
    )


def sweep_label(task_overrides: list[str], swept: set[str]) -> list[str]:
    """The ``key=value`` overrides of a sweep job that differ between its jobs, with short keys.

    ``swept`` names the varied keys; when it is empty (the sweep's command line is not known) every
    override but the experiment is shown. A dotted key is cut to its last part unless two would clash
    (``stage.optimizer.lr`` -> ``lr``).
    """
    overrides = OverridesParser.create().parse_overrides(task_overrides)
    shown = [
        (override.key_or_group, text.split("=", 1)[1])
        for override, text in zip(overrides, task_overrides, strict=True)
        if "=" in text
        and override.key_or_group != "experiment"
        and (not swept or override.key_or_group in swept)
    ]

    def last_part(key: str) -> str:
        return key.rsplit(".", 1)[-1]

    clashes = Counter(last_part(key) for key, _ in shown)
    return [f"{last_part(key) if clashes[last_part(key)] == 1 else key}={value}" for key, value in shown]


def finish_loggers(
    loggers: Sequence[Logger], *, results: dict[str, Any], output_dir: Path, stage: pl.LightningModule
) -> None:
    """Add the run's results to its W&B run and close it, so the next job of a multirun starts its own.

    ``results.json`` (already written) goes in as a file, ``results["val"]`` / ``results["test"]`` as the
    ``results`` table (restored and degraded side by side), the stage's per-image test scores
    (``stage.image_scores["test"]``) as the ``test/images`` table. The run is marked failed unless
    ``results["status"]`` is ``"finished"``.
    """
    if not any(isinstance(logger, WandbLogger) for logger in loggers):
        return
    import wandb

    run = wandb.run
    if run is None:  # a rank other than 0, or the run never started
        return
    results_file = output_dir / "results.json"
    if results_file.is_file():
        run.save(str(results_file), base_path=str(output_dir), policy="now")
    rows = [
        [split, metric, value, results[split].get(f"{split}/degraded/{metric.split('/', 1)[1]}")]
        for split in ("val", "test")
        for metric, value in results.get(split, {}).items()
        if not metric.startswith(f"{split}/degraded/")
    ]
    tables: dict[str, Any] = {}
    if rows:
        tables["results"] = wandb.Table(columns=["split", "metric", "restored", "degraded"], data=rows)
    scores = (getattr(stage, "image_scores", None) or {}).get("test") or []
    if scores:
        columns = list(dict.fromkeys(key for image in scores for key in image))
        tables["test/images"] = wandb.Table(
            columns=columns, data=[[image.get(column) for column in columns] for image in scores]
        )
    if tables:
        run.log(tables)
    run.finish(exit_code=0 if results.get("status") == "finished" else 1)
