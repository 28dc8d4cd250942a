"""The training chassis every stage is built on: what training does the same way in every stage.

- optimisation of the trainable network only (frozen towers stay out of the optimizer), per-iteration
  learning-rate schedules, and an EMA copy of the network (parameters and buffers);
- a NaN/inf loss check that stops training cleanly at the bad step (see :meth:`TrainingChassis.checked_loss`);
- frozen towers (guides, prompters, teachers, loss networks): left out of checkpoints, rebuilt from the
  config, and neither reduced nor broadcast by DDP;
- evaluation metrics logged at ``trainer.global_step`` (:meth:`TrainingChassis.log_evaluation`).

The evaluation part of the stages that produce images (whole-image restoration, metrics per image and per
degradation type, tiling, grids, prediction) is :class:`~restoration.stages.base.RestorationStage`, built on
this chassis; a stage that produces no image (ConStyle prompter pre-training) uses the chassis alone, as
BasicSR's ``BaseModel`` (optimizers, EMA, save/load) stands beside ``SRModel`` (validation, metrics, images).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from restoration.errors import ConfigError

__all__ = ["EMA", "TrainingChassis"]

log = logging.getLogger(__name__)


class EMA(nn.Module):
    """Exponential moving average of a network's parameters and floating-point buffers.

    With ``warmup`` the decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates
    (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``), so early averages are not
    dominated by the random initialisation; without it the decay is constant from the first step,
    as in BasicSR (and so NAFNet, Restormer, ConStyle v2). Integer buffers (e.g. BatchNorm's step
    counter) are copied.

    Args:
        net: the network to average; a frozen deep copy is kept as ``module``.
        decay: the target decay, e.g. 0.999 as BasicSR / ConStyle v2.
        warmup: ramp the decay up over the first updates.
    """

    def __init__(self, net: nn.Module, *, decay: float, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"EMA decay={decay}; expected a number in (0, 1)")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(net).requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        updates = int(self.num_updates)
        decay = min(self.decay, (1 + updates) / (10 + updates)) if self.warmup else self.decay
        averaged = list(self.module.parameters())
        current = [param.detach() for param in net.parameters()]
        torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for averaged_buffer, buffer in zip(self.module.buffers(), net.buffers(), strict=True):
            if averaged_buffer.is_floating_point():
                averaged_buffer.lerp_(buffer, 1.0 - decay)
            else:
                averaged_buffer.copy_(buffer)
        self.num_updates += 1


class TrainingChassis(pl.LightningModule):
    """A LightningModule that trains ``net``: optimizer, schedule, EMA, NaN stop and frozen towers.

    Subclasses implement ``training_step`` (returning :meth:`checked_loss`) and their evaluation.

    Args:
        net: the network being trained.
        optimizer: ``_partial_`` optimizer factory (called with the trainable parameters).
        scheduler: ``_partial_`` LR scheduler factory stepped every iteration, or ``None``.
        ema_decay: decay of the EMA copy of ``net`` used for validation, test and the best checkpoint;
            ``None`` disables the EMA.
        ema_warmup: ramp the EMA decay up over the first updates (see :class:`EMA`).
    """

    frozen_towers: tuple[str, ...] = ("guide",)
    """Attributes holding frozen pre-trained modules (guides, teachers, loss networks). They are built from
    the config, so checkpoints leave them out (CLIP alone would add 600 MB to each) and loading takes the
    ones just built; DDP neither reduces nor broadcasts them."""

    def __init__(
        self,
        *,
        net: nn.Module,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[[Optimizer], LRScheduler] | None = None,
        ema_decay: float | None = 0.999,
        ema_warmup: bool = True,
    ) -> None:
        super().__init__()
        self.net = net
        self.ema = EMA(net, decay=ema_decay, warmup=ema_warmup) if ema_decay is not None else None
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.diverged_at: tuple[int, float] | None = None
        self.last_validated_step: int | None = None

    def setup(self, stage: str) -> None:
        frozen = self._frozen_tower_prefixes()
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self,
            [
                name
                for name, _ in (*self.named_parameters(), *self.named_buffers())
                if name.startswith(frozen)
            ],
        )

    def _frozen_tower_prefixes(self, prefix: str = "") -> tuple[str, ...]:
        return tuple(f"{prefix}{tower}." for tower in self.frozen_towers)

    def state_dict(
        self, *, destination: dict[str, Any] | None = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        state = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        for name in [name for name in state if name.startswith(self._frozen_tower_prefixes(prefix))]:
            del state[name]
        return state

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        built = {
            name: value
            for tower in self.frozen_towers
            if isinstance(getattr(self, tower, None), nn.Module)
            for name, value in getattr(self, tower).state_dict(prefix=f"{tower}.").items()
        }
        return super().load_state_dict({**state_dict, **built}, strict=strict, assign=assign)

    # ---- training ---------------------------------------------------------------------------

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """What the optimizer updates: the network's parameters that require gradients."""
        return (param for param in self.net.parameters() if param.requires_grad)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(list(self.trainable_parameters()))
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def checked_loss(self, loss: torch.Tensor) -> torch.Tensor | None:
        """Return ``loss``, or ``None`` (skipping the optimizer step) and stop training if it is not finite.

        The decision is taken jointly by all ranks, so DDP never waits on a rank that skipped.
        The weights are those of the last good step; the checkpoint callback saves nothing after this.
        """
        finite = bool(self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True))
        if finite:
            return loss
        self.diverged_at = (self.global_step, float(loss.detach()))
        log.error("non-finite training loss %s at step %d; stopping", self.diverged_at[1], self.global_step)
        self.trainer.should_stop = True
        return None

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.net)

    @property
    def eval_net(self) -> nn.Module:
        """The network used for validation and test: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.net

    def on_validation_epoch_end(self) -> None:
        self.last_validated_step = self.global_step

    def log_evaluation(self, values: Mapping[str, torch.Tensor]) -> None:
        """Log validation or test metrics at ``trainer.global_step``, the step in checkpoint and grid names.

        Lightning logs a validation run during training at its count of optimizer steps before the step just
        made (``best_step0000004.ckpt`` and ``chelsea_step0000004.png`` would meet ``val/psnr`` at step 3), so
        the loggers get the metrics here; Lightning gets them only for ``trainer.callback_metrics``, which the
        checkpoint callback, the progress log and ``results.json`` read.
        """
        self.log_dict(dict(values), logger=False, sync_dist=False)
        if self.trainer.sanity_checking:
            return
        scalars = {key: float(value) for key, value in values.items()}
        for logger in self.loggers:
            logger.log_metrics(scalars, step=self.global_step)
            logger.save()
