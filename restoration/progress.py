"""How training goes, where users look: log lines (terminal, ``run.log``, SLURM logs) and a step bar.

Training here is iteration-based (one endless epoch, ``max_epochs=-1``), so Lightning's own display has
nothing to say: its bar reads ``Epoch 0/-2`` and, with ``verbose=False``, no score is ever printed. Two
callbacks (``conf/callbacks/default.yaml``) replace it:

- :class:`ProgressLog` writes through the ``logging`` module, which Hydra sends to the terminal and to
  ``run.log``: every ``trainer.log_every_n_steps`` optimizer steps a line with the step out of the total,
  the loss, the learning rate, the speed and the time left; at each validation a line with the step,
  ``val/psnr`` and ``val/ssim`` beside the degraded input's (the baseline), the best monitored score so
  far and the time since training started; after testing, the table of the test metrics.
- :class:`StepProgressBar` counts optimizer steps out of ``max_steps`` (``step 300/20000``). It only
  draws on a terminal: in a batch job's log a bar is noise, and the lines above say it all.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from restoration.errors import ConfigError

__all__ = ["ProgressLog", "StepProgressBar", "metrics_table"]

log = logging.getLogger(__name__)

# The scores of a validation line (with the monitored one), each with the degraded input's beside it.
_LINE_SCORES = ("psnr", "ssim")
# The restored images' metrics come first in the test table, in this order; other groups follow.
_TABLE_ORDER = ("psnr", "ssim", "psnr_y", "ssim_y")


def _duration(seconds: float) -> str:
    """``3725.4`` -> ``"1:02:05"``."""
    return str(timedelta(seconds=round(seconds)))


def _format_value(value: float, name: str) -> str:
    if "psnr" in name:
        return f"{value:.2f}"
    if "ssim" in name:
        return f"{value:.4f}"
    return f"{value:.4g}"


def _scalars(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The one-number metrics under ``prefix/``, without the prefix, as floats."""
    scalars = {}
    for key, value in metrics.items():
        if not key.startswith(f"{prefix}/"):
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        scalars[key[len(prefix) + 1 :]] = float(value)
    return scalars


def metrics_table(metrics: Mapping[str, Any], split: str) -> list[str]:
    """The ``split/*`` metrics as aligned text rows: metric | restored | degraded (the input's, the baseline).

    ``<split>/degraded/<name>`` fills the degraded column of ``<name>``; groups without a baseline of
    their own (intermediate outputs, degradation types) show ``-`` there. Empty when there is no metric.
    """
    scalars = _scalars(metrics, split)
    degraded = {
        name.removeprefix("degraded/"): value
        for name, value in scalars.items()
        if name.startswith("degraded/")
    }
    restored = {name: value for name, value in scalars.items() if not name.startswith("degraded/")}
    if not restored:
        return []
    names = [name for name in _TABLE_ORDER if name in restored]
    names += sorted(name for name in restored if name not in _TABLE_ORDER)
    rows = [
        (
            f"{split}/{name}",
            _format_value(restored[name], name),
            _format_value(degraded[name], name) if name in degraded else "-",
        )
        for name in names
    ]
    header = ("metric", "restored", "degraded")
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(3)]
    return [
        f"{name:<{widths[0]}}  {value:>{widths[1]}}  {baseline:>{widths[2]}}"
        for name, value, baseline in (header, *rows)
    ]


class ProgressLog(Callback):
    """Log lines of training progress, validation scores and the test table (rank 0 only).

    Args:
        monitor: the score whose best value each validation line shows (``optimized_metric``).
        mode: ``"max"`` or ``"min"``: which value of ``monitor`` is the best.
    """

    def __init__(self, *, monitor: str = "val/psnr", mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ConfigError(f"callbacks.progress_log.mode={mode}: expected max or min")
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None
        self._started_at = time.monotonic()
        self._first_step = 0
        self._last_line_step: int | None = None
        # The interval since the last training line: its start, its first step, and the seconds spent
        # validating inside it, which the training speed leaves out.
        self._interval_at = self._started_at
        self._interval_step = 0
        self._validation_seconds = 0.0
        self._validation_at: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started_at = self._interval_at = time.monotonic()
        self._first_step = self._interval_step = trainer.global_step
        self._validation_seconds = 0.0
        self._last_line_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # With gradient accumulation several batches end at one step; one line per step.
        if step == self._last_line_step or not trainer.is_global_zero:
            return
        if step % max(1, trainer.log_every_n_steps) != 0 and step != trainer.max_steps:
            return
        self._last_line_step = step
        now = time.monotonic()
        # Speed: training steps per second since the last line, validation excluded. Time left: the
        # remaining steps at the overall pace since training started, validations included.
        rate = (step - self._interval_step) / (now - self._interval_at - self._validation_seconds)
        seconds_per_step = (now - self._started_at) / (step - self._first_step)
        parts = [_step_text(trainer)]
        loss = _scalars(trainer.callback_metrics, "train").get("loss")
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        parts.append(f"{rate:.2f} it/s")
        if trainer.max_steps > 0:
            parts.append(f"ETA {_duration((trainer.max_steps - step) * seconds_per_step)}")
        log.info("  ".join(parts))
        self._interval_at, self._interval_step, self._validation_seconds = now, step, 0.0

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validation_at = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validation_at is not None:
            self._validation_seconds += time.monotonic() - self._validation_at
            self._validation_at = None
        if trainer.sanity_checking:
            return
        scores = _scalars(trainer.callback_metrics, "val")
        current = scores.get(self.monitor.removeprefix("val/"))
        self.best = self._better(self.best, current, _checkpoint_best(trainer, self.monitor))
        if not trainer.is_global_zero:
            return
        parts = [_step_text(trainer)]
        shown = [name for name in _LINE_SCORES if name in scores]
        monitored = self.monitor.removeprefix("val/")
        if shown and monitored in scores and monitored not in shown:  # e.g. val/psnr_y
            shown.append(monitored)
        if not shown:  # a stage without image metrics (a prompter's pretext scores): show what it has
            shown = sorted(name for name in scores if not name.startswith("degraded/"))
        for name in shown:
            text = f"val/{name} {_format_value(scores[name], name)}"
            if f"degraded/{name}" in scores:
                text += f" (degraded {_format_value(scores[f'degraded/{name}'], name)})"
            parts.append(text)
        if self.best is not None:
            parts.append(f"best {self.monitor} {_format_value(self.best, self.monitor)}")
        parts.append(f"elapsed {_duration(time.monotonic() - self._started_at)}")
        log.info("  ".join(parts))

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for row in metrics_table(trainer.callback_metrics, "test"):
            log.info("%s", row)

    def _better(self, *values: float | None) -> float | None:
        known = [value for value in values if value is not None and math.isfinite(value)]
        if not known:
            return None
        return max(known) if self.mode == "max" else min(known)


def _step_text(trainer: pl.Trainer) -> str:
    """``step 300/20000``, or ``step 300`` when training has no step limit."""
    if trainer.max_steps > 0:
        return f"step {trainer.global_step}/{trainer.max_steps}"
    return f"step {trainer.global_step}"


def _checkpoint_best(trainer: pl.Trainer, monitor: str) -> float | None:
    """The checkpoint callback's best score of ``monitor``: it survives a resume, this callback does not."""
    checkpoint = trainer.checkpoint_callback
    if not isinstance(checkpoint, ModelCheckpoint) or checkpoint.monitor != monitor:
        return None
    best = checkpoint.best_model_score
    return float(best) if best is not None else None


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar counting optimizer steps out of ``max_steps``: ``step 300/20000``.

    It draws only when standard output is a terminal. While it draws, log lines are written through
    tqdm, so they appear above the bar instead of being broken by it.
    """

    TRAIN_BAR_FORMAT = "step {n_fmt}/{total_fmt} |{bar}| [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def __init__(self, *, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._on_terminal = sys.stdout.isatty()
        self._redirect = ExitStack()

    @property
    def is_enabled(self) -> bool:
        return self._on_terminal and super().is_enabled

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.is_enabled:
            self._redirect.enter_context(logging_redirect_tqdm(tqdm_class=Tqdm))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._redirect.close()
        super().teardown(trainer, pl_module, stage)

    def init_train_tqdm(self) -> Tqdm:
        # One endless epoch: the bar counts the steps of the whole run, from the step a resumed run starts at.
        max_steps = self.trainer.max_steps
        return Tqdm(
            initial=self.trainer.global_step,
            total=max_steps if max_steps > 0 else None,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.TRAIN_BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        """Keep counting: Lightning's bar would start again at 0 for the batches of a new epoch."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bar = self.train_progress_bar
        if self.is_enabled and not bar.disable and trainer.global_step % self.refresh_rate == 0:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version: "csv" or a W&B id, nothing to watch
        if trainer.optimizers:
            metrics["lr"] = f"{trainer.optimizers[0].param_groups[0]['lr']:.3g}"
        return metrics
