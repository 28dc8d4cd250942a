"""Entry point: compose the Hydra config, build the run, fit and/or test, write ``results.json``.

    python -m restoration.run experiment=restore_embedded_denoise
    python -m restoration.run experiment=restore_embedded_denoise trainer=smoke
    python -m restoration.run -m experiment=restore_embedded_denoise seed=1,2,3
    python -m restoration.run experiment=restore_embedded_denoise ckpt_path=last   # resume
    python -m restoration.run experiment=restore_embedded_denoise train=false test=false \
        ckpt_path=path/to/best.ckpt predict=path/to/degraded_images           # restore a folder

Expected mistakes (bad config values, missing or corrupt data) end the run with a one-line
error and exit status 1; anything else keeps its traceback.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import itertools
import json
import logging
import os
import platform
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_object, instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException
from torch.utils.data import DataLoader

from restoration.archs import load_pretrained, network_prefix
from restoration.callbacks import AtomicCheckpointIO, ConfigInCheckpoint, RNGState
from restoration.checkpoints import (
    NETWORK_KEYS,
    check_frozen_towers,
    check_state_dict,
    describe_mismatch,
    frozen_tower_identity,
    load_checkpoint_header,
    network_config,
    resolve_checkpoint,
)
from restoration.data.datasets import DegradedImages
from restoration.data.sources import ImageFolder
from restoration.errors import ConfigError, RestorationError, TrainingDiverged
from restoration.guides.cache import precompute
from restoration.loggers import build_loggers, finish_loggers
from restoration.signals import RunInterrupted, StopOnSignal, stop_on_sigterm

__all__ = [
    "apply_smoke",
    "build_backbone",
    "build_stage",
    "command_line_keys",
    "instantiate_network",
    "keep_freed_memory",
    "main",
    "parameter_counts",
    "run",
    "take_guide_options",
    "user_error_message",
]

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


# Folders this process claimed, so every resolution of hydra.run.dir in it gives the same one.
_CLAIMED_FOLDERS: dict[str, str] = {}


def _run_stamp(parent: str = "") -> str:
    """The run folder's name: a timestamp, or one name shared by all processes of a cluster job.

    The timestamped folder is claimed under ``parent`` with an atomic ``mkdir``; when another
    run took it in the same second, a ``-1``, ``-2``... suffix is added, so no run writes into
    another's folder.

    Processes started by ``srun`` or torchrun each compose the config themselves, at slightly
    different times, so they take the job's id instead: ``slurm-<job>[_<array task>].<step>``
    (a requeued job reuses it, so Lightning finds its own SLURM checkpoint) or
    ``torchrun-<run id>``. Lightning's own DDP launcher passes the parent's folder to its children.
    """
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    if os.environ.get("SLURM_JOB_ID") and os.environ.get("SLURM_STEP_ID"):
        array_task = os.environ.get("SLURM_ARRAY_TASK_ID")
        job = os.environ["SLURM_JOB_ID"] + (f"_{array_task}" if array_task else "")
        return f"slurm-{job}.{os.environ['SLURM_STEP_ID']}"
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if not parent:
        return stamp
    if parent not in _CLAIMED_FOLDERS:
        Path(parent).mkdir(parents=True, exist_ok=True)
        for suffix in itertools.count():
            candidate = stamp if suffix == 0 else f"{stamp}-{suffix}"
            try:
                (Path(parent) / candidate).mkdir()
            except FileExistsError:
                continue
            _CLAIMED_FOLDERS[parent] = candidate
            break
    return _CLAIMED_FOLDERS[parent]


def _rank_suffix() -> str:
    """``""`` for the first (or only) process, ``"_rank<N>"`` for the other ranks of a cluster launch.

    Under srun / torchrun every rank composes the config and logs into the shared run folder;
    each gets its own log file. (Lightning's own launcher names its children's logs itself.)
    """
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    return "" if rank == "0" else f"_rank{rank}"


def _is_global_zero() -> bool:
    """Whether this process is the first of its run (the one that writes ``results.json``).

    Read from the environment, so it holds before the Trainer exists: srun and torchrun set ``RANK`` /
    ``SLURM_PROCID`` on every process, Lightning's launcher ``LOCAL_RANK`` and ``NODE_RANK`` on its children.
    """
    names = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
    return all(os.environ.get(name, "0") == "0" for name in names)


def _data_scale(*, _root_: DictConfig) -> int:
    """GT / LQ size ratio of the configured data: the paired sources' ``scale``, else the degradation's.

    Backbones read it (``upscale: ${data_scale:}``), so choosing x3 data picks a x3 network.
    """
    for split in ("train", "val", "test"):
        source = OmegaConf.select(_root_, f"datamodule.{split}")
        if isinstance(source, DictConfig) and "scale" in source:
            return int(source.scale)
    return int(OmegaConf.select(_root_, "degradation.scale", default=1))


def _working_directory() -> str:
    """The directory the command was started from (``paths.root_dir``).

    Unlike ``${hydra:runtime.cwd}`` it also resolves while Hydra composes ``hydra.sweep.dir``, before
    any job's HydraConfig exists. Jobs do not change directory (``hydra.job.chdir: false``).
    """
    return os.getcwd()


def _eval_items_per_image(*, _root_: DictConfig) -> int:
    """How many validation items one image makes: its degradation types when each image is evaluated under
    every type (``datamodule.eval_every_type``, or one task per step as IPT's), else 1.

    ``trainer=smoke`` validates that many batches: one image, under every type.
    """
    degradation = OmegaConf.select(_root_, "degradation")
    if not isinstance(degradation, DictConfig) or not isinstance(degradation.get("ops"), DictConfig):
        return 1
    every_type = bool(OmegaConf.select(_root_, "datamodule.eval_every_type", default=False))
    if every_type or str(degradation.get("_target_", "")).endswith(".TaskPerStep"):
        return len(degradation.ops)
    return 1


OmegaConf.register_new_resolver("cwd", _working_directory, use_cache=True, replace=True)
OmegaConf.register_new_resolver("run_stamp", _run_stamp, use_cache=True, replace=True)
OmegaConf.register_new_resolver("rank_suffix", _rank_suffix, replace=True)
OmegaConf.register_new_resolver("data_scale", _data_scale, replace=True)
OmegaConf.register_new_resolver("eval_items_per_image", _eval_items_per_image, replace=True)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS; True if it applied.

    With glibc's defaults, every tensor above the (adaptive) mmap threshold, and every heap top above
    the trim threshold, goes back to the OS when freed, and the next step page-faults it in again:
    for CPU training on batches of 256² crops that system time exceeded the arithmetic
    (experiments/bench/README.md). A training process reuses the same sizes every step, so it keeps them.
    """
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def _missing_keys(node: DictConfig | ListConfig, prefix: str = "") -> Iterator[str]:
    """Keys left at ``???``, found without resolving interpolations (the ``hydra`` node is skipped)."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        if prefix == "" and key == "hydra":
            continue
        full_key = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            yield full_key
        elif not OmegaConf.is_interpolation(node, key):
            child = node._get_node(key)
            if isinstance(child, DictConfig | ListConfig) and not child._is_none():
                yield from _missing_keys(child, f"{full_key}.")


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a dict-valued group (the callbacks)."""
    if not group:
        return []
    return [
        instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node
    ]


def _hydra_choices() -> dict[str, str | None]:
    if not HydraConfig.initialized():
        return {}
    return {
        group: option for group, option in HydraConfig.get().runtime.choices.items() if "hydra/" not in group
    }


# Set by Lightning's DDP launcher in the parent process; a later job of the same sweep must not inherit them.
_DDP_ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def _ddp_sweep_job(world_size: int) -> Iterator[None]:
    """Let each job of a ``-m`` sweep launch and tear down its own DDP processes.

    Lightning starts ranks 1.. by re-running ``sys.argv`` with ``hydra.run.dir`` set to the
    parent's run folder. Under ``-m`` that command line is the whole sweep, so for the duration of
    the job it is replaced by the job's own overrides, and ``hydra.run.dir`` by the job's folder:
    every rank then writes into its job's one output directory. Afterwards the process group and
    the launcher's environment variables are removed, so the next job starts fresh ranks.
    """
    if world_size == 1 or not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    run_node = HydraConfig.instance().cfg.hydra.run
    # The unresolved value: resolving it would claim a new timestamped folder for nothing.
    saved_argv, saved_dir = sys.argv, OmegaConf.to_container(run_node)["dir"]
    saved_environment = {name: os.environ.get(name) for name in _DDP_ENVIRONMENT}
    flags = [arg for arg in sys.argv[1:] if arg not in ("-m", "--multirun") and "=" not in arg]
    sys.argv = [sys.argv[0], *flags, *HydraConfig.get().overrides.task]
    with read_write(run_node):
        run_node.dir = HydraConfig.get().runtime.output_dir
    try:
        yield
    finally:
        sys.argv = saved_argv
        with read_write(run_node):
            run_node.dir = saved_dir
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {key: float(value) for key, value in sorted(metrics.items()) if key.startswith(prefix)}


def _write_json(path: Path, content: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(content, indent=2, allow_nan=True) + "\n")
    os.replace(temporary, path)


def instantiate_network(node: DictConfig, key: str) -> Any:
    """``instantiate(node)`` for the network at config ``key``; a bad argument is a one-line ConfigError.

    An unknown or missing argument names ``<key>.<argument>`` and the arguments the class takes; an error the
    constructor raises (a ValueError, or torch refusing a size) names the argument it mentions and its value.
    """
    try:
        return instantiate(node)
    except InstantiationException as error:
        cause = error.__cause__
        if not isinstance(cause, TypeError | ValueError | RuntimeError):
            raise
        target = str(node.get("_target_", "?"))
        message = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        arguments = [name for name in node if not str(name).startswith("_")]
        try:
            accepted = [
                name
                for name in inspect.signature(get_object(target)).parameters
                if name not in ("self", "kwargs")
            ]
        except (TypeError, ValueError, ImportError):
            accepted = []
        unknown = re.search(r"unexpected keyword argument '(\w+)'", message)
        missing = re.search(r"missing \d+ required (?:keyword-only )?arguments?: '(\w+)'", message)
        if unknown:
            raise ConfigError(
                f"{key}.{unknown.group(1)}: not an argument of {target}; expected one of {accepted}"
            ) from None
        if missing:
            raise ConfigError(f"{key}.{missing.group(1)} is missing: {target} requires it") from None
        # the arguments the message names, else the one whose (scalar) value it quotes first
        named = [name for name in arguments if re.search(rf"\b{re.escape(str(name))}\b", message)]
        quoted = {
            name: found.start()
            for name in arguments
            if isinstance(node[name], int | float)
            and (found := re.search(rf"(?<![\w.]){re.escape(str(node[name]))}\b", message))
        }
        if not named and quoted:
            named = [min(quoted, key=quoted.get)]
        where = ", ".join(f"{key}.{name}={node[name]}" for name in named) or f"{key} ({target})"
        raise ConfigError(f"{where}: {message}") from None


def build_backbone(cfg: DictConfig) -> torch.nn.Module:
    """The backbone of ``cfg``, with the weights of ``backbone_weights.path`` if one is given.

    The one door for weights: released files of every method (in any container :func:`load_pretrained`
    unwraps, translated by the network's own ``checkpoint_filter_fn`` where it has one) and the network of one
    of our checkpoints (IPT fine-tuning from an ``ipt_pretrain`` run).
    """
    net = instantiate_network(cfg.backbone, "backbone")
    weights = cfg.get("backbone_weights") or {}
    if weights.get("path"):
        # one of our checkpoints (.ckpt) holds the network as ema.module.* (its EMA) or net.*: found here
        prefix = weights.get("prefix") or network_prefix(weights.path)
        load_pretrained(
            net,
            weights.path,
            key=weights.get("key"),
            prefix=prefix,
            exclude=tuple(weights.get("exclude") or ()),
            strict=weights.get("strict", True),
        )
        log.info("backbone weights loaded from %s", weights.path)
    return net


GUIDE_INPUTS = ("frame", "crop")


def take_guide_options(cfg: DictConfig) -> tuple[str, bool]:
    """Take ``guide.input`` and ``guide.cache`` out of the guide node (they are no guide arguments).

    ``input``: ``frame``, the guide's feature of the whole degraded image, computed once per image by the
    datamodule before training (paired data), or ``crop``, the training crop encoded in the step. ``cache``:
    keep the ``frame`` features on disk under ``paths.cache_dir/osf``. A guide node without them (a test's or
    a bench's own node) keeps the guide in the step: ``("crop", False)``. Calling it again gives that too.
    """
    guide = cfg.get("guide")
    if not isinstance(guide, DictConfig) or ("input" not in guide and "cache" not in guide):
        return "crop", False
    with open_dict(cfg):
        osf_input, cache = str(guide.pop("input", "frame")), guide.pop("cache", True)
    if osf_input not in GUIDE_INPUTS:
        raise ConfigError(f"guide.input={osf_input}; expected one of {list(GUIDE_INPUTS)}")
    if not isinstance(cache, bool):
        raise ConfigError(f"guide.cache={cache}; expected true or false")
    return osf_input, cache


def build_stage(cfg: DictConfig) -> pl.LightningModule:
    """The stage of ``cfg`` around its backbone (:func:`build_backbone`), with its guide and refiner."""
    take_guide_options(cfg)
    net = build_backbone(cfg)
    # a frozen pre-trained guide and a guided refinement module (PTG-RM), for the stages that take them
    extras = {name: instantiate_network(cfg[name], name) for name in ("guide", "refiner") if cfg.get(name)}
    return instantiate(cfg.stage, net=net, **extras)


def command_line_keys() -> set[str]:
    """The config keys set on the command line (``max_steps=10``, ``+a.b=1``, ``trainer=smoke``...)."""
    if not HydraConfig.initialized():
        return set()
    overrides = HydraConfig.get().overrides.task
    return {override.split("=", 1)[0].lstrip("+~") for override in overrides if "=" in override}


def apply_smoke(cfg: DictConfig) -> None:
    """``trainer=smoke``: take its ``smoke`` node out of the Trainer arguments and apply it to the run.

    It caps the steps (``max_steps``, ``val_every``), the batch size and the evaluated pixels
    (``datamodule.eval_crop``), leaving the network, crops and recipe as the experiment has them.
    A key given on the command line wins over the cap.
    """
    smoke = cfg.trainer.get("smoke")
    if smoke is None:
        return
    given = command_line_keys()
    with open_dict(cfg):
        del cfg.trainer["smoke"]
        for key in ("max_steps", "val_every"):
            if key not in given:
                cfg[key] = smoke[key]
        if "datamodule.batch_size" not in given:
            cfg.datamodule.batch_size = min(cfg.datamodule.batch_size, smoke.batch_size)
        if "datamodule.eval_crop" not in given:
            cfg.datamodule.eval_crop = smoke.eval_crop
    log.info(
        "trainer=smoke: %d steps, validation every %d, batch size %d, evaluation on the centre %s px",
        cfg.max_steps,
        cfg.val_every,
        cfg.datamodule.batch_size,
        cfg.datamodule.eval_crop,
    )


def _network_from_checkpoint(cfg: DictConfig, ckpt_path: str | None) -> None:
    """``train=false``: build the network the checkpoint was made with, unless the command line chose one.

    A network chosen on the command line (``backbone=...``, ``backbone.width=...``) that differs from
    the checkpoint's is refused with one line naming both.
    """
    if cfg.train or ckpt_path is None:
        return
    checkpoint = load_checkpoint_header(ckpt_path)
    mismatch = describe_mismatch(ckpt_path, checkpoint, cfg)
    if mismatch is None:
        return
    given = command_line_keys()
    chosen = sorted(key for key in given if key.split(".", 1)[0] in NETWORK_KEYS)
    if chosen:
        raise ConfigError(f"ckpt_path={mismatch}, but the command line sets {', '.join(chosen)}")
    saved = network_config(checkpoint["config"])
    with open_dict(cfg):
        for key in NETWORK_KEYS:
            cfg[key] = saved[key]
    names = ", ".join(
        f"{key}={value}"
        for key, value in (checkpoint.get("choices") or {}).items()
        if key in NETWORK_KEYS and value
    )
    log.info("train=false: the network is built from %s's config (%s)", ckpt_path, names or "its config")


def _failure(error: BaseException) -> str:
    """``failed: <one line>`` for results.json."""
    message = user_error_message(error)
    if message is None:
        text = str(error).strip().splitlines()
        message = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return f"failed: {message}"


def run(cfg: DictConfig) -> float | None:
    """Build the run from ``cfg``, train and/or test, write ``results.json``; return the monitored metric.

    ``results.json`` is written whatever happens, also when the run stops on a bad config or data
    before training starts (``"status": "failed: <the one-line error>"``).
    """
    output_dir = Path(cfg.paths.output_dir)
    choices = _hydra_choices()
    results: dict[str, Any] = {
        "experiment": choices.get("experiment"),
        "task_name": cfg.task_name,
        "choices": choices,
        "overrides": sorted(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "seed": cfg.get("seed"),
        "output_dir": str(output_dir),
        "status": "running",
    }
    # Loggers are finished after results.json is written, so that W&B gets the file as it ends.
    after_results = ExitStack()
    try:
        with stop_on_sigterm():
            value = _build_and_run(cfg, output_dir, choices, results, after_results)
    except RunInterrupted as interrupted:
        results["status"] = interrupted.status(resumed_from=results.get("resumed_from"))
        results.update(global_step=interrupted.step, last_checkpoint=interrupted.checkpoint)
        log.warning("%s", results["status"])
        raise
    except BaseException as error:
        if results["status"] == "running":
            results["status"] = _failure(error)
        if isinstance(error, KeyboardInterrupt):
            results["status"] = "interrupted"
        raise
    finally:
        if _is_global_zero():
            output_dir.mkdir(parents=True, exist_ok=True)
            _write_json(output_dir / "results.json", results)
            log.info("results: %s", output_dir / "results.json")
        after_results.close()
    return value


def _build_and_run(
    cfg: DictConfig,
    output_dir: Path,
    choices: dict[str, str | None],
    results: dict[str, Any],
    after_results: ExitStack,
) -> float | None:
    if not cfg.train and not cfg.test and not cfg.get("predict"):
        raise ConfigError("train=false, test=false and no predict folder: nothing to do")
    apply_smoke(cfg)
    osf_input, osf_cache = take_guide_options(cfg)
    # Hydra's instantiate passes a missing value (???) on as None; catch it here instead.
    missing = sorted(_missing_keys(cfg))
    if missing:
        key = missing[0]
        raise ConfigError(f"missing config value {key}: set it on the command line, e.g. {key}=...")
    keep_freed_memory()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    log.info("output directory: %s", output_dir)
    ckpt_path = resolve_checkpoint(cfg)
    _network_from_checkpoint(cfg, ckpt_path)

    degradation = instantiate(cfg.degradation)
    datamodule = instantiate(cfg.datamodule, degradation=degradation)
    stage = build_stage(cfg)
    _attach_guide_features(
        stage, datamodule, osf_input, folder=Path(cfg.paths.cache_dir) / "osf" if osf_cache else None
    )
    # the frozen towers (guide, teacher, VGG) are not in checkpoints: their identity is, hashed once per run
    towers = frozen_tower_identity(stage, cfg)
    if ckpt_path is not None:
        checkpoint = load_checkpoint_header(ckpt_path)
        check_state_dict(ckpt_path, checkpoint["state_dict"], stage.state_dict())
        check_frozen_towers(ckpt_path, checkpoint, towers, accept=bool(cfg.get("accept_tower_change")))
    results["parameters"] = parameter_counts(stage)

    # The config as plain containers, interpolations resolved, without Hydra's own node.
    resolved = {
        key: OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        for key, node in cfg.items()
        if key != "hydra"
    }
    callbacks = [
        *_instantiate_all(cfg.get("callbacks")),
        RNGState(),
        ConfigInCheckpoint(resolved, choices, towers),
        StopOnSignal(),
    ]
    loggers = build_loggers(cfg, ckpt_path=ckpt_path)
    after_results.callback(finish_loggers, loggers, results=results, output_dir=output_dir, stage=stage)
    if not loggers and any(isinstance(callback, LearningRateMonitor) for callback in callbacks):
        log.info("logger=none: the learning-rate monitor has nothing to write to and is left out")
        callbacks = [callback for callback in callbacks if not isinstance(callback, LearningRateMonitor)]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    for logger in loggers:
        logger.log_hyperparams(resolved)

    results.update(resumed_from=ckpt_path if cfg.train else None, world_size=trainer.world_size)
    with _ddp_sweep_job(trainer.world_size):
        return _fit_and_test(cfg, trainer, stage, datamodule, ckpt_path, results)


def _attach_guide_features(
    stage: pl.LightningModule, datamodule: pl.LightningDataModule, osf_input: str, *, folder: Path | None
) -> None:
    """``guide.input=frame``: the datamodule computes the stage's guide features once; ``crop``: the stage."""
    guide = getattr(stage, "osf_guide", None)
    if guide is None:
        return
    if osf_input == "crop":
        log.info("guide.input=crop: the guide encodes each training crop in the step")
        return
    datamodule.attach_features(functools.partial(precompute, guide, folder=folder))
    where = f"cached under {folder}" if folder is not None else "in memory (guide.cache=false)"
    log.info("guide.input=frame: the guide's features of the whole degraded images, computed once, %s", where)


def parameter_counts(stage: pl.LightningModule) -> dict[str, int]:
    """Trainable parameters (what the optimizer updates) and frozen ones (guides, prompters, VGG).

    The EMA copy of the network is neither: it is the same network averaged, not more parameters.
    """
    counts = {"trainable": 0, "frozen": 0}
    for name, parameter in stage.named_parameters():
        if name.startswith("ema."):
            continue
        counts["trainable" if parameter.requires_grad else "frozen"] += parameter.numel()
    return counts


def _fit_and_test(
    cfg: DictConfig,
    trainer: pl.Trainer,
    stage: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    ckpt_path: str | None,
    results: dict[str, Any],
) -> float | None:
    """Train (then validate the final weights) and/or test; fill ``results`` as it goes."""
    checkpoint = trainer.checkpoint_callback
    if cfg.train:
        trainer.fit(stage, datamodule=datamodule, ckpt_path=ckpt_path)
        results["global_step"] = trainer.global_step
        if stage.diverged_at is not None:
            step, loss = stage.diverged_at
            last = checkpoint.last_model_path if checkpoint is not None else None
            results.update(status="diverged", diverged_at_step=step, diverged_loss=loss, last_checkpoint=last)
            raise TrainingDiverged(
                f"training loss became {loss} at step {step}; stopped, last good checkpoint: {last or 'none'}"
            )
        if stage.last_validated_step != trainer.global_step:
            trainer.validate(stage, datamodule=datamodule, verbose=False)
        results["val"] = _metrics(trainer.callback_metrics, "val/")
    # after training: the best checkpoint; otherwise the one given (or none: random weights, said below)
    eval_ckpt = ckpt_path
    if cfg.train:
        eval_ckpt = "best" if checkpoint is not None and checkpoint.best_model_path else None
    elif ckpt_path is None:
        log.warning("no training and no ckpt_path: evaluating a randomly initialised network")
    if cfg.test:
        trainer.test(stage, datamodule=datamodule, ckpt_path=eval_ckpt, verbose=False)
        results["test"] = _metrics(trainer.callback_metrics, "test/")
        results["tested_checkpoint"] = eval_ckpt
    if cfg.get("predict"):
        results["predict"] = _predict(cfg, trainer, stage, eval_ckpt)

    monitor = cfg.get("optimized_metric")
    best = checkpoint.best_model_score if checkpoint is not None else None
    value = float(best) if best is not None else results.get("val", {}).get(monitor)
    if checkpoint is not None:
        results["best"] = {
            "metric": monitor,
            "value": value,
            "checkpoint": checkpoint.best_model_path or None,
        }
        results["last_checkpoint"] = checkpoint.last_model_path or None
    results["status"] = "finished"
    return value


def _predict(
    cfg: DictConfig, trainer: pl.Trainer, stage: pl.LightningModule, ckpt_path: str | None
) -> dict[str, Any]:
    """Restore every image under ``cfg.predict`` (degraded images, no ground truth) into images/predict."""
    source = ImageFolder(root=str(cfg.predict), class_folders=False)
    source.scan(skip_bad_files=bool(cfg.datamodule.get("skip_bad_files", False)))
    # one image per batch: the images may all differ in size
    loader = DataLoader(
        DegradedImages(source), batch_size=1, num_workers=cfg.datamodule.get("num_workers", 0)
    )
    trainer.predict(stage, dataloaders=loader, ckpt_path=ckpt_path, return_predictions=False)
    output = Path(trainer.default_root_dir) / "images" / "predict"
    log.info("restored %d images of %s into %s", len(source), cfg.predict, output)
    return {"input": str(cfg.predict), "images": len(source), "output": str(output), "checkpoint": ckpt_path}


def user_error_message(error: BaseException) -> str | None:
    """The one-line message for an expected mistake, or ``None`` for a bug (which keeps its traceback)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, RestorationError):
            text = str(seen)
            # DataLoader workers re-raise with the worker's traceback in the message; keep its last line.
            if "Original Traceback" in text:
                text = text.strip().splitlines()[-1].split(": ", 1)[-1]
            return text
        if isinstance(seen, InstantiationException) and isinstance(seen.__cause__, TypeError | ImportError):
            return " ".join(line.strip() for line in str(seen).splitlines() if line.strip())
        if isinstance(seen, MisconfigurationException):  # Lightning's word for a bad Trainer setting
            return f"trainer: {str(seen).strip().splitlines()[0]}"
        if isinstance(seen, OmegaConfBaseException) and not isinstance(seen, InstantiationException):
            return str(seen).strip().splitlines()[0]
        seen = seen.__cause__ or seen.__context__
    return None


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float | None:
    """One run, or one job of a ``-m`` sweep.

    An expected mistake is one line and exit status 1. In a sweep, a failing job (a mistake or a
    bug, whose traceback is logged) is recorded in its ``results.json`` and the sweep goes on; the
    sweep's callback (:class:`restoration.sweep.SweepSummary`) names the failed jobs and exits non-zero.
    """
    # Printed by Lightning 2.6 on torch 2.14 at every run; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning's caution for iterable datasets with a length; LitData's stream (datamodule=streaming) gives
    # each loader worker its own chunks, so its length is right.
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
    sweep_job = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        value = run(cfg)
    except Exception as error:
        message = user_error_message(error)
        if sweep_job:
            job = HydraConfig.get().job
            log.error("job %s failed: %s", job.num, message or "", exc_info=message is None)
            return None
        if message is None:
            raise
        log.error("%s", message)
        sys.exit(1)
    return value


if __name__ == "__main__":
    main()
