"""No training step of any stage waits for the device, except at logging steps (issue 12).

A device→host sync (``.item()``, ``bool()``, ``int()``, ``float()`` of a tensor) dispatches
``aten._local_scalar_dense``; ``.tolist()`` and ``.numpy()`` read a tensor's values on the host, and
``nonzero`` (boolean indexing) must read its result size. On a GPU each one stalls the step until the device
has caught up. This CPU test runs real training steps of every stage, from the moment the batch reaches the
device (the datamodule's ``on_after_batch_transfer``) through the optimizer step, under a
``TorchDispatchMode`` that counts those operators, and asserts that none happens at non-logging steps.

Host work that cannot stay on the device says so: the libjpeg/nvjpeg codec of :class:`~restoration.data.
degradations.JPEG` reads the images on the host by nature (``backend=kornia`` stays on the device); reads
inside it are allowed, and nowhere else.
"""

from __future__ import annotations

import functools
import inspect
import traceback
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from restoration.data.degradations import JPEG
from restoration.run import run

from .guide_models import save_official_constyle_prompter, save_tiny_open_clip

# operators that read device values on the host
_SYNCING = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
}
# documented host work: reads inside these functions are allowed
_HOST_WORK = (JPEG.apply,)
# four training steps, no logging step among the first three, no validation; every stage at a small size
STEPS = (
    "trainer=smoke",
    "max_steps=4",
    "val_every=1000",
    "trainer.log_every_n_steps=50",
    "test=false",
    "logger=none",
    "datamodule.batch_size=2",
    f"+callbacks.syncs._target_={__name__}.SyncCounter",
)


def _where(stack: traceback.StackSummary) -> str:
    frames = [
        frame for frame in stack if "/restoration/" in frame.filename and "/tests/" not in frame.filename
    ]
    frame = frames[-1] if frames else stack[-1]
    return f"{frame.filename.split('/restoration/', 1)[-1]}:{frame.lineno} {frame.name}"


class _Counter(TorchDispatchMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SYNCING:
            _record(self.found, func.__name__)
        return func(*args, **(kwargs or {}))


@functools.cache
def _host_work_lines() -> tuple[tuple[str, range], ...]:
    spans = []
    for function in _HOST_WORK:
        lines, start = inspect.getsourcelines(function)
        spans.append((inspect.getsourcefile(function), range(start, start + len(lines))))
    return tuple(spans)


def _record(found: list[str], what: str) -> None:
    stack = traceback.extract_stack()[:-2]
    # torch.optim keeps the step counts of its non-capturable optimizers on the host (torch's design): reading
    # them waits for nothing
    ours = [i for i, frame in enumerate(stack) if "/restoration/" in frame.filename]
    if any("/torch/optim/" in frame.filename for frame in stack[ours[-1] if ours else 0 :]):
        return
    allowed = _host_work_lines()
    if not any(
        frame.filename == file and frame.lineno in lines for frame in stack for file, lines in allowed
    ):
        found.append(f"{what} at {_where(stack)}")


class SyncCounter(pl.Callback):
    """Counts host reads from the batch's arrival on the device to the end of each training step."""

    steps: ClassVar[list[list[str]]] = []

    def __init__(self) -> None:
        self.mode: _Counter | None = None
        self.patched: list[tuple[str, Any]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        original = datamodule.on_after_batch_transfer

        def counted(batch: Any, dataloader_idx: int) -> Any:
            if trainer.training and not trainer.sanity_checking:
                self._open()
            return original(batch, dataloader_idx)

        datamodule.on_after_batch_transfer = counted

    def _open(self) -> None:
        found: list[str] = []
        SyncCounter.steps.append(found)
        self.mode = _Counter(found)
        self.mode.__enter__()
        for name in ("tolist", "numpy"):
            method = getattr(torch.Tensor, name)

            def reading(tensor: torch.Tensor, *args: Any, _method=method, _name=name, **kwargs: Any) -> Any:
                _record(found, f"Tensor.{_name}")
                return _method(tensor, *args, **kwargs)

            self.patched.append((name, method))
            setattr(torch.Tensor, name, reading)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.mode = None
        for name, method in self.patched:
            setattr(torch.Tensor, name, method)
        self.patched = []


def _prompter(folder: Path) -> tuple[str, ...]:
    return (f"guide.checkpoint={save_official_constyle_prompter(folder / 'prompter.pth')}",)


def _tiny_clip(folder: Path) -> tuple[str, ...]:
    clip = save_tiny_open_clip(folder / "clip")
    return (
        f"guide.model={clip.model}",
        f"guide.model_config={clip.model_config}",
        f"guide.pretrained={clip.pretrained}",
    )


STAGES = {
    # stage: (overrides, extra overrides built in the test's folder)
    "restore": (("experiment=restore_embedded_denoise", "backbone=cnn_unet_tiny"), None),
    "restore_allinone": (
        ("experiment=restore_embedded_denoise", "backbone=cnn_unet_tiny", "degradation=allinone"),
        None,
    ),
    "ptgrm": (
        (
            "experiment=ptgrm_lowlight",
            "backbone=snr_aware_tiny",
            "refiner=ptgrm_tiny",
            "datamodule.crop_size=64",
        ),
        _tiny_clip,
    ),
    "ipt_pretrain": (("experiment=ipt_pretrain", "backbone=ipt_tiny"), None),
    "ipt_finetune": (("experiment=ipt_finetune_sr_x2", "backbone=ipt_tiny"), None),
    "constyle_pretrain": (
        ("experiment=constyle_pretrain", "datamodule.crop_size=64", "datamodule.resize=72"),
        None,
    ),
    "prompted_restore": (("experiment=constyle_allinone", "backbone=constyle_nafnet_tiny"), _prompter),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_training_steps_never_wait_for_the_device(stage: str, make_config, tmp_path: Path) -> None:
    overrides, extra = STAGES[stage]
    more = extra(tmp_path) if extra is not None else ()
    SyncCounter.steps = []
    run(make_config(*overrides, *more, *STEPS))
    assert len(SyncCounter.steps) == 4
    # the last step writes the progress line (a logging step) and is left out
    reads = [f"step {step}: {read}" for step, found in enumerate(SyncCounter.steps[:3]) for read in found]
    assert reads == [], "\n".join(sorted(set(reads)))
