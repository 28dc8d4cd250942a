"""The training chassis every stage is built on: what training does the same way in every stage.

- optimisation of the trainable network only (frozen towers stay out of the optimizer), per-iteration
  learning-rate schedules, and an EMA copy of the network (parameters and buffers);
- a NaN/inf loss check that never waits for the device: a flag on the device, read at logging steps, before
  each validation and checkpoint and at the end of training, which then stops training and names the first bad
  step (see :meth:`TrainingChassis.checked_loss`);
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
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from restoration.errors import ConfigError

__all__ = ["EMA", "HostCopies", "TrainingChassis"]

log = logging.getLogger(__name__)


class HostCopies(nn.Module):
    """A module that keeps host copies of integer buffers it updates every step (a count, a pointer), so
    reading them never waits for the device. The buffers stay the truth in checkpoints and broadcasts: after
    loading (here) or a broadcast (:meth:`TrainingChassis.on_train_start`), :meth:`forget_host_copies` makes
    the next :meth:`host_value` read each buffer once."""

    def __init__(self) -> None:
        super().__init__()
        self._host: dict[str, int] = {}

    def host_value(self, name: str) -> int:
        """The value of integer buffer ``name``, from the host copy (read from the buffer once if stale)."""
        if name not in self._host:
            self._host[name] = int(getattr(self, name))
        return self._host[name]

    def set_host_value(self, name: str, value: int) -> None:
        """Record that buffer ``name`` now holds ``value`` (the caller writes the buffer itself)."""
        self._host[name] = value

    def forget_host_copies(self) -> None:
        """The buffers changed outside the module's own updates (loaded, broadcast): read them again, once."""
        self._host.clear()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.forget_host_copies()


class EMA(HostCopies):
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
        self.set_host_value("num_updates", 0)  # the decay never waits for the device

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        updates = self.host_value("num_updates")
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
        self.set_host_value("num_updates", updates + 1)


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

    bookkeeping: tuple[str, ...] = ("ema",)
    """Attributes holding buffers every rank keeps identical by itself (the EMA copy, a MoCo queue): DDP
    leaves them out of the broadcast it makes before every forward pass (the MoCo queue alone is 33.7 MB);
    they are broadcast from rank 0 once, when training starts (also after a resume), and their modules then
    re-read the host copies they keep of buffer values (``forget_host_copies``)."""

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
        # on the training device: the first step whose loss was not finite (-1: none yet) and that loss
        self._bad_step: torch.Tensor | None = None
        self._bad_loss: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        frozen = self._frozen_tower_prefixes()
        bookkeeping = tuple(f"{name}." for name in self.bookkeeping)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self,
            [
                *(
                    name
                    for name, _ in (*self.named_parameters(), *self.named_buffers())
                    if name.startswith(frozen)
                ),
                *(name for name, _ in self.named_buffers() if name.startswith(bookkeeping)),
            ],
        )

    def on_train_start(self) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for name in self.bookkeeping:
                module = getattr(self, name, None)
                if isinstance(module, nn.Module):
                    for buffer in module.buffers():
                        dist.broadcast(buffer, src=0)
                    if isinstance(module, HostCopies):
                        module.forget_host_copies()

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

    def checked_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Return ``loss``, noting on the device whether it is finite, without waiting for the device.

        Reading the loss at every step would stall a GPU, so a non-finite loss is found at the next
        :meth:`detect_divergence`: at logging steps (``trainer.log_every_n_steps``), before each validation,
        before the last checkpoint and when a signal stops the run. Training then stops; no checkpoint is
        written after the bad step (the last one on disk holds the weights of the last good one), and the
        step and loss reported are those of the first non-finite loss.
        """
        value = loss.detach().float()
        if self._bad_step is None or self._bad_step.device != value.device:
            self._bad_step = torch.full((), -1, dtype=torch.long, device=value.device)
            self._bad_loss = torch.zeros((), device=value.device)
        first = ~torch.isfinite(value) & (self._bad_step < 0)
        self._bad_step = torch.where(first, torch.full_like(self._bad_step, self.global_step), self._bad_step)
        self._bad_loss = torch.where(first, value, self._bad_loss)
        return loss

    def detect_divergence(self) -> bool:
        """Whether a training loss was not finite on any rank; if so stop training (a device→host sync).

        Every rank must call it at the same point (it reduces the decision across ranks).
        """
        if self.diverged_at is not None:
            return True
        local = self._bad_step is not None and bool(self._bad_step >= 0)
        if not self.trainer.strategy.reduce_boolean_decision(local, all=False):
            return False
        assert self._bad_loss is not None
        self.diverged_at = (
            (int(self._bad_step), float(self._bad_loss)) if local else (self.global_step, math.nan)
        )
        log.error(
            "non-finite training loss %s at step %d; stopping", self.diverged_at[1], self.diverged_at[0]
        )
        self.trainer.should_stop = True
        return True

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % self.trainer.log_every_n_steps == 0:  # a logging step reads values anyway
            self.detect_divergence()

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.detect_divergence()  # before this validation's checkpoint

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
