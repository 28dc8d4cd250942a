"""Checkpointing that never leaves a half-written or post-divergence file, and RNG state in checkpoints."""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

__all__ = ["AtomicCheckpointIO", "Checkpoint", "ConfigInCheckpoint", "RNGState"]

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file in the same folder, fsync, then rename over the target.

    A crash or a full disk during the write leaves the previous checkpoint intact and no partial
    file under the final name (Lightning's default goes through a temporary file in ``/tmp``
    and a copy, which is not atomic across filesystems).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


class Checkpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also

    - saves nothing once the stage reports a non-finite loss, so ``last.ckpt`` stays the last good state;
    - saves ``last.ckpt`` when training ends at a step that was not checkpointed yet;
    - keeps tracking the best score when a run is resumed into a new run directory (Lightning
      forgets it when the folder changes); the earlier best file stays where it is;
    - writes the state once when a validation both improves the best score and saves ``last.ckpt``: the
      best file is written and ``last.ckpt`` becomes a hard link to it (the same bytes, which a PTG-RM
      run with Adam states makes about 480 MB). A later ``last.ckpt`` replaces the link atomically and a
      newer best deletes only its own name, so neither file ever changes under the other. Where the
      filesystem has no hard links, the file is copied.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the best file the top-k save of this step just wrote, until the last.ckpt save that follows it
        self._link_source: str | None = None

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        self._link_source = None
        if self.save_last is not True:
            super()._save_topk_checkpoint(trainer, monitor_candidates)
            return
        last = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        # the first save of this folder: the best file's state then names last.ckpt as this step's will
        first = self.last_model_path == "" and not self.file_exists(last, trainer)
        if first:
            self.last_model_path = last
        saved = (self._last_global_step_saved, self._last_checkpoint_saved)
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        if (self._last_global_step_saved, self._last_checkpoint_saved) == saved:
            if first:
                self.last_model_path = ""  # nothing was written: no last.ckpt to name yet
        elif self.last_model_path == last:
            self._link_source = self._last_checkpoint_saved

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        try:
            super()._save_last_checkpoint(trainer, monitor_candidates)
        finally:
            self._link_source = None

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        # a link only for last.ckpt (Lightning names it last_model_path before saving it), right after the
        # best file of the same state: no other file was saved in between
        source = self._link_source
        if source is None or filepath != self.last_model_path or self._last_checkpoint_saved != source:
            super()._save_checkpoint(trainer, filepath)
            return
        if trainer.is_global_zero:
            _link_atomically(Path(source), Path(filepath))
        trainer.strategy.barrier()
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def _should_skip_saving_checkpoint(self, trainer: pl.Trainer) -> bool:
        # Skipping the whole save (not just the write) also keeps the earlier best file, which a
        # "better" score computed after the divergence would otherwise replace and delete.
        return _diverged(trainer) or super()._should_skip_saving_checkpoint(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        detect = getattr(pl_module, "detect_divergence", None)
        if detect is not None:
            detect()  # the last steps' losses, before the last checkpoint
        if self.save_last and not _diverged(trainer) and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Unlike Lightning, keep the ranking when the folder changed; the earlier files are never
        # deleted from here, as ModelCheckpoint only removes files inside its own dirpath.
        self.best_model_score = state_dict["best_model_score"]
        self.best_model_path = state_dict["best_model_path"]
        self.best_k_models = dict(state_dict.get("best_k_models", {}))
        self.kth_best_model_path = state_dict.get("kth_best_model_path", self.kth_best_model_path)
        self.kth_value = state_dict.get("kth_value", self.kth_value)
        if state_dict.get("dirpath") == self.dirpath:
            self.last_model_path = state_dict.get("last_model_path", self.last_model_path)
        elif self.best_model_path:
            log.info("resumed run: the best checkpoint so far stays %s", self.best_model_path)


def _link_atomically(source: Path, target: Path) -> None:
    """``target`` becomes a hard link to ``source`` (a copy where links are not supported), through a
    temporary name and a rename: never a missing or partial ``target``."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _diverged(trainer: pl.Trainer) -> bool:
    return getattr(trainer.lightning_module, "diverged_at", None) is not None


class RNGState(Callback):
    """Save and restore every rank's Python, NumPy, torch and CUDA generator states in checkpoints.

    Data order, crops and degradations do not depend on these (they are seeded per stream
    position); layers that draw random numbers during training (dropout, drop-path) do.
    """

    def state_dict(self) -> dict[str, Any]:
        # Only tensors and plain Python values, so checkpoints load with torch.load(weights_only=True).
        bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (
                bit_generator,
                torch.from_numpy(keys.astype(np.int64)),
                position,
                has_gauss,
                cached_gaussian,
            ),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        }
        if not (dist.is_available() and dist.is_initialized()):
            return {"ranks": [state]}
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, state)
        return {"ranks": gathered}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict["ranks"]
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if rank >= len(ranks):
            log.warning(
                "checkpoint holds RNG states of %d ranks; rank %d keeps its freshly seeded state",
                len(ranks),
                rank,
            )
            return
        state = ranks[rank]
        random.setstate(state["python"])
        bit_generator, keys, position, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state(
            (bit_generator, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian)
        )
        torch.set_rng_state(state["torch"].cpu())
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([cuda_state.cpu() for cuda_state in state["cuda"]])


class ConfigInCheckpoint(Callback):
    """Store the run's resolved config (key ``"config"``), its config-group choices (``"choices"``,
    e.g. ``{"backbone": "nafnet_tiny"}``) and the identity of its frozen towers (``"frozen_towers"``, from
    :func:`~restoration.checkpoints.frozen_tower_identity`) in every checkpoint: they say how it was made,
    and ``ckpt_path=last``, ``train=false`` and resuming read them (restoration/checkpoints.py)."""

    def __init__(
        self,
        config: dict[str, Any],
        choices: dict[str, str | None] | None = None,
        frozen_towers: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.choices = dict(choices or {})
        self.frozen_towers = frozen_towers

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["config"] = self.config
        checkpoint["choices"] = self.choices
        if self.frozen_towers is not None:
            checkpoint["frozen_towers"] = self.frozen_towers
