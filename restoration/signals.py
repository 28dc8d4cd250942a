"""Stopping a run cleanly when it is asked to: on SIGTERM a run saves ``last.ckpt`` and ends within seconds.

``timeout``, ``kill``, a cluster's preemption and the end of a SLURM time limit all send SIGTERM. The
handler only records the request; the run stops at the next *stop point*, in a state that
``ckpt_path=last`` resumes exactly (the same weights as an uninterrupted run):

- in training, at the end of the optimizer step in progress (the state ``ModelCheckpoint`` saves with
  ``every_n_train_steps``). When a validation is due after that step, the stop is left to the validation,
  so that the resumed run repeats it rather than skipping it;
- in validation, test and prediction, before each forward pass of the network: before each image, and
  between the batches of tiles of a tiled inference (:func:`stop_point`, called by the stages' forward
  functions), so that one long image (IPT's official tiling takes minutes) does not hold the stop up.
  Lightning resumes a checkpoint taken inside a validation by running that validation again from its
  first image.

Stopped in training, the run saves ``last.ckpt`` through the trainer's checkpoint IO (atomically, see
:class:`~restoration.callbacks.AtomicCheckpointIO`) and raises :class:`RunInterrupted`: ``results.json`` says
``interrupted (SIGTERM) at step N; resume with ckpt_path=last`` and the process exits with status 143
(128 + 15), as a process killed by SIGTERM does, so shells, ``timeout`` and schedulers see a terminated job.
Stopped in evaluation after training, the run keeps the ``last.ckpt`` training wrote. A second SIGTERM
changes nothing; SIGKILL still ends the process at once.

Lightning 2.x has a SIGTERM handler of its own (a flag its loops check, raising ``SIGTERMException``). Its
checks come after a finished validation batch (the resumed run then skips that validation) and at the end
of a step that validated (the resumed run then logs its training metrics one step late); it never stops
inside a validation step, and ``SIGTERMException``, a ``SystemExit`` without a code, ends the process with
status 0. So while a trainer runs, :class:`StopOnSignal` puts this module's handler back in place of
Lightning's; Lightning restores it when the trainer call ends. SIGUSR1 stays Lightning's: under SLURM with
auto-requeue (``SLURMEnvironment``, on by default) it still saves ``hpc_ckpt_<n>.ckpt`` and requeues the job.

``timeout`` and SLURM signal every process of the job; the data loader workers leave that SIGTERM to the
main process (:func:`leave_sigterm_to_main_process`), which ends them when it stops.

Under DDP the ranks agree at the end of every optimizer step whether any of them was asked to stop (one
all-reduce of a flag) and stop there together. A validation or test in progress runs to its end: ranks hold
different numbers of images, so there is no point inside it that all of them reach.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

__all__ = ["RunInterrupted", "StopOnSignal", "leave_sigterm_to_main_process", "stop_on_sigterm", "stop_point"]

log = logging.getLogger(__name__)


@dataclass
class _StopRequest:
    """What the signal handler recorded. Process-wide, as signals are."""

    signum: int | None = None
    # whether stop_point() may raise now: StopOnSignal arms it in single-process evaluation
    armed: bool = False


_REQUEST = _StopRequest()


class RunInterrupted(SystemExit):
    """The run stopped because the process received signal ``signum``; exit status ``128 + signum``.

    A ``SystemExit``, so that no ``except Exception`` (the job error handling of ``restoration.run``, Hydra's)
    takes it for a failed job: the process ends, and a sweep does not go on to its next job.
    :class:`StopOnSignal` fills in where the run stopped.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.phase: str | None = None  # what the trainer was doing: "fit", "validate", "test" or "predict"
        self.step: int | None = None  # trainer.global_step when it stopped
        self.checkpoint: str | None = None  # this run's last.ckpt, if it has one

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def status(self, *, resumed_from: str | None = None) -> str:
        """The ``results.json`` status: ``interrupted (SIGTERM) at step 300; resume with ckpt_path=last``."""
        if self.phase is None:
            where = "before training started"
        elif self.phase == TrainerFn.FITTING.value:
            where = f"at step {self.step}"
        else:
            where = f"during {self.phase} at step {self.step}"
        if self.checkpoint is not None or resumed_from is not None:
            advice = "resume with ckpt_path=last"
        else:
            advice = "no checkpoint yet: start the run again"
        return f"interrupted ({self.signal_name}) {where}; {advice}"


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _REQUEST.signum is None:
        log.warning(
            "%s received: the run stops at its next stop point (the end of the training step, or between "
            "images or tiles), saving last.ckpt when it trains",
            signal.Signals(signum).name,
        )
        _REQUEST.signum = signum


def _install_handler() -> None:
    # Python runs signal handlers in the main thread only, and only the main thread may set them.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Record SIGTERM instead of dying at once, for the duration; :class:`StopOnSignal` takes the stop.

    A SIGTERM that arrives before the trainer runs (while data and networks are built) stops the run at
    its first stop point. A process asked to stop earlier (a sweep's finished job) raises
    :class:`RunInterrupted` at once, so the sweep's next job does not start.
    """
    if _REQUEST.signum is not None:
        raise RunInterrupted(_REQUEST.signum)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        # None: a handler not installed from Python, which signal.signal cannot put back
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def leave_sigterm_to_main_process(worker_id: int) -> None:
    """``worker_init_fn`` of the data loaders: a SIGTERM sent to the whole job is left to the main process.

    ``timeout`` and SLURM signal every process of a job, and PyTorch's workers die of SIGTERM: the main
    process would then fail ("DataLoader worker is killed by signal") instead of stopping cleanly. A SIGTERM
    from the worker's own main process (which ends its workers with it, also at exit) still ends the worker,
    so the signal is blocked and a thread takes it and looks at the sender.
    """
    if not hasattr(signal, "sigwaitinfo"):  # macOS and Windows: the sender is not known, workers die of it
        return
    # the process that started the worker (with forkserver, not the worker's OS parent)
    parent = multiprocessing.parent_process()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(
        target=_end_on_sigterm_from, args=(parent.pid if parent else os.getppid(),), daemon=True
    ).start()


def _end_on_sigterm_from(parent: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    # The main process ends a worker this way at its exit or when the worker missed its shutdown. Exit
    # status 0: PyTorch's main process reports a worker killed by a signal as a failed data loader.
    os._exit(0)


def stop_point() -> None:
    """Raise :class:`RunInterrupted` if SIGTERM arrived and the run may stop here.

    The stages call it before each forward pass of their network in evaluation: before each image and
    between the batches of tiles of :mod:`restoration.tiling`. It raises only while
    :class:`StopOnSignal` has armed it (single-process validation, test and prediction); elsewhere it
    does nothing, so the same code runs unchanged outside a run.
    """
    if _REQUEST.armed and _REQUEST.signum is not None:
        raise RunInterrupted(_REQUEST.signum)


def _validation_due(trainer: pl.Trainer) -> bool:
    """Whether Lightning validates right after the training batch that just ended.

    This is the schedule of this project's trainers: every ``val_check_interval`` batches over one endless
    epoch (``check_val_every_n_epoch: null``). Other schedules count as not due: a stop then skips that
    validation, in the resumed run too.
    """
    interval = trainer.val_check_batch
    if not trainer.enable_validation or trainer.check_val_every_n_epoch is not None:
        return False
    if not isinstance(interval, int):
        return False
    return (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % interval == 0


class StopOnSignal(Callback):
    """Take the stop that SIGTERM requests at the points described in the module doc; save ``last.ckpt``.

    ``restoration.run`` adds it to every run, beside :func:`stop_on_sigterm`.
    """

    def __init__(self) -> None:
        self._step_at_batch_start = 0
        self._first_step = 0  # global step when fit started: a stop saves only if this run trained
        self._deferred = False

    # ---- owning SIGTERM and arming the stop points while the trainer runs --------------------

    def _enter(self, trainer: pl.Trainer, *, evaluation: bool) -> None:
        # Lightning installed its own SIGTERM handler just before this phase started (see the module doc).
        _install_handler()
        _REQUEST.armed = evaluation and trainer.world_size == 1

    def _stop_before_evaluation(self, trainer: pl.Trainer) -> None:
        """Stop before a validation, test or prediction that is not part of training, if asked to."""
        requested = _REQUEST.signum is not None
        if trainer.world_size > 1:
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            raise RunInterrupted(_REQUEST.signum or signal.SIGTERM)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._enter(trainer, evaluation=False)
        self._first_step = trainer.global_step

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._enter(trainer, evaluation=True)
        if trainer.state.fn != TrainerFn.FITTING:
            self._stop_before_evaluation(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._enter(trainer, evaluation=True)
        self._stop_before_evaluation(trainer)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._enter(trainer, evaluation=True)
        self._stop_before_evaluation(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _REQUEST.armed = False

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _REQUEST.armed = False

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _REQUEST.armed = False

    # ---- the stop in training ------------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._step_at_batch_start:
            return  # no optimizer step in this batch (gradient accumulation, or a skipped non-finite loss)
        requested = _REQUEST.signum is not None
        if trainer.world_size > 1:
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if not requested:
            return
        if not self._deferred and _validation_due(trainer):
            # The validation's first stop point takes it (or, under DDP or without stop points, the end
            # of the next optimizer step).
            self._deferred = True
            return
        raise RunInterrupted(_REQUEST.signum or signal.SIGTERM)

    # ---- saving ------------------------------------------------------------------------------

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        _REQUEST.armed = False
        if not isinstance(exception, RunInterrupted):
            return
        exception.phase = trainer.state.fn.value if trainer.state.fn is not None else None
        exception.step = trainer.global_step
        checkpoint = trainer.checkpoint_callback
        # where ModelCheckpoint keeps last.ckpt, which ckpt_path=last looks for
        if checkpoint is not None and checkpoint.dirpath:
            path = Path(checkpoint.dirpath) / "last.ckpt"
        else:
            path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        if self._should_save(trainer, pl_module):
            trainer.save_checkpoint(path)
            if trainer.is_global_zero:
                log.warning("%s: saved %s at step %d", exception.signal_name, path, trainer.global_step)
        exception.checkpoint = str(path) if path.is_file() else None

    def _should_save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Save when training ran at least one step in this run, and never after a non-finite loss."""
        detect = getattr(pl_module, "detect_divergence", None)
        if detect is not None and trainer.state.fn == TrainerFn.FITTING:
            detect()
        return (
            trainer.state.fn == TrainerFn.FITTING
            and not trainer.sanity_checking
            and trainer.global_step > self._first_step
            and getattr(pl_module, "diverged_at", None) is None
        )
