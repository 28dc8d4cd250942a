"""Stage ``ipt_pretrain``: multi-task pre-training of IPT on synthesized pairs.

H. Chen et al., "Pre-Trained Image Processing Transformer", CVPR 2021, as trained by the MindSpore port of the
official code (``research/cv/IPT``): the datamodule makes each step's input for one task, drawn uniformly from
the model's tasks (×2/×3/×4 bicubic super-resolution, deraining, denoising σ 30 and 50), with
``degradation=ipt_tasks`` (:class:`~restoration.data.degradations.TaskPerStep`: the step's task, its window of
the clean crops, degraded on the training device; the batch's ``task``); the loss is L1 on the restored image
plus 0.1 × a patch-contrastive term on the decoder tokens (:class:`~restoration.losses.PatchContrastiveLoss`).
Unlike the MindSpore code the L1 path goes through the transformer.

**The balance of the two terms depends on the pixel scale.** MindSpore computes L1 on images in 0-255
(``rgb_range`` 255), so its L1 is 255 times ours on [0, 1] while the contrastive term is scale-free: with
the same λ = 0.1, an L1 on [0, 1] makes the contrastive term about 255 times heavier. ``pixel_scale``
(default 255) scores the pixel loss on images multiplied by it, the official balance; 1 keeps L1 on [0, 1].

**One task per step, the same on every rank.** The task of step ``s`` is a pure function of ``(seed, s)``
(drawn on the data side): every DDP rank draws the same task, a resumed run draws what an uninterrupted one
would, and the micro-batches of an accumulated step share their task. Only that task's head and tail take part
in the step, so the other heads and tails get no gradient; DDP must then run with
``find_unused_parameters=True`` (``trainer.strategy=ddp_find_unused_parameters_true``), which leaves the
gradient of a parameter unused on every rank at ``None``: the optimizer skips it, so Adam's momentum does
not move the heads of the tasks not drawn. :meth:`IPTPretrainStage.on_fit_start` stops a DDP run that
lacks it with that override in the message.

**Validation and test** run every task on every image: the datamodule degrades each clean image for every task
on the CPU with a generator seeded by ``(val_seed, image index)`` (the same inputs on any device and in every
run; items ``<image>_<task>``, ``type`` = the task's id), and the stage restores each through
:func:`~restoration.tiling.ipt_tiled_forward` and scores it on RGB and Y, with a border of ``scale`` pixels
cropped for super-resolution (the official protocol). Logged: ``<split>/<task>/<metric>`` and
``<split>/<task>/degraded/<metric>`` per task, and ``<split>/<metric>``, ``<split>/degraded/<metric>``, the
means over tasks (every task sees the same images), which the checkpoints and sweeps optimise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from restoration.archs.ipt import IPT
from restoration.data.batch import Batch
from restoration.data.degradations import TaskPerStep
from restoration.errors import ConfigError
from restoration.metrics import ImageQuality
from restoration.signals import stop_point
from restoration.stages.base import RestorationStage, _as_large_as, _scores_of
from restoration.tiling import ipt_tiled_forward
from restoration.visualize import save_png, to_uint8

__all__ = ["IPTPretrainStage", "IPTTiling"]

_PROTOCOLS = ("official", "fast")


@dataclass(frozen=True)
class IPTTiling:
    """How IPT restores whole images: 48×48 tiles through :func:`~restoration.tiling.ipt_tiled_forward`.

    Images with a side under 48 pixels (an ×4 input of a small photo) are padded by replicating their
    last row/column, and the output is cropped back.

    Args:
        protocol: ``"official"`` (the official ``forward_chop``: stride 12, averaged centres) or
            ``"fast"`` (configurable overlap, far fewer tiles).
        overlap: tile overlap of the fast protocol in input pixels; ``None``: the tiler's default (12, the
            MindSpore evaluation).
        blend: ``"seam"`` or ``"average"``, fast protocol only; ``None``: the tiler's default (seam).
        self_ensemble: average the ×8 flips and transposes (off in the official evaluation).
        batch_size: tiles per forward pass (the official ``--crop_batch_size``, 64).
    """

    protocol: str = "official"
    overlap: int | None = None
    blend: str | None = None
    self_ensemble: bool = False
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.protocol not in _PROTOCOLS:
            raise ConfigError(f"IPT tiling protocol={self.protocol!r}; expected one of {list(_PROTOCOLS)}")
        if self.protocol == "official" and (self.overlap is not None or self.blend is not None):
            raise ConfigError(
                f"IPT tiling overlap={self.overlap}, blend={self.blend} with protocol=official, whose "
                "tiling is fixed (stride 12, averaged); set protocol=fast to choose them"
            )

    def __call__(self, net: IPT, degraded: Tensor, task: str | int) -> Tensor:
        """Restore an N×3×H×W batch of any size with ``task`` of ``net``."""
        options = {name: value for name in ("overlap", "blend") if (value := getattr(self, name)) is not None}
        height, width = degraded.shape[-2:]
        size, scale = net.patch_size, net.scale_of(task)
        padded = F.pad(degraded, (0, max(0, size - width), 0, max(0, size - height)), mode="replicate")

        def forward(tiles: Tensor) -> Tensor:
            stop_point()  # between batches of tiles, a requested stop is taken here (restoration/signals.py)
            return net(tiles, task=task)

        restored = ipt_tiled_forward(
            forward,
            padded,
            scale=scale,
            protocol=self.protocol,
            tile=size,
            batch_size=self.batch_size,
            self_ensemble=self.self_ensemble,
            **options,
        )
        return restored[..., : height * scale, : width * scale]


class IPTPretrainStage(RestorationStage):
    """Pre-train a multi-task :class:`~restoration.archs.ipt.IPT` on clean crops degraded per task.

    Expects the datamodule's :class:`~restoration.data.degradations.TaskPerStep` (``degradation=ipt_tasks``)
    with one degradation per task of ``net``, at the task's scale: training batches then hold one task
    (``batch["task"]``), its 48×48 inputs and ``48·s`` targets.

    Args:
        net: the multi-task IPT being trained.
        loss: ``(restored, target) -> scalar`` pixel loss (L1).
        contrastive: ``tokens -> scalar`` loss on the N×256×576 decoder tokens, or ``None``.
        contrastive_weight: its weight λ (0.1, IPT).
        pixel_scale: the pixel loss compares ``restored`` and ``target`` multiplied by this: 255 scores
            them on the 0-255 scale as MindSpore does (for L1, 255 × the L1 on [0, 1]), the official balance
            with the contrastive term; 1 scores them on [0, 1].
        tiling: how validation, test and prediction restore whole images (default: the official protocol).
        predict_task: the task :meth:`restore` applies when none is given (prediction); ``None``: the first.
        **base: the shared options of :class:`~restoration.stages.base.RestorationStage` (optimizer,
            scheduler, EMA, logged images); the metrics' border crop is set per task here.
    """

    def __init__(
        self,
        *,
        net: IPT,
        loss: nn.Module,
        contrastive: nn.Module | None,
        contrastive_weight: float = 0.1,
        pixel_scale: float = 255.0,
        tiling: IPTTiling | None = None,
        predict_task: str | None = None,
        **base: Any,
    ) -> None:
        if pixel_scale <= 0:
            raise ConfigError(
                f"stage.pixel_scale={pixel_scale}; expected a positive scale (255: official, 1: [0, 1])"
            )
        super().__init__(net=net, crop_border=0, **base)
        self.loss = loss
        self.contrastive = contrastive
        self.contrastive_weight = contrastive_weight
        self.pixel_scale = float(pixel_scale)
        self.tiling = tiling if tiling is not None else IPTTiling()
        self.predict_task = net.tasks[net.task_index(predict_task if predict_task is not None else 0)]
        # Per task; the base's "val"/"test" metrics receive border-cropped images and give the means.
        self.task_metrics = nn.ModuleDict(
            {
                f"{split}_{task}{kind}": ImageQuality(crop_border=self._border(task))
                for split in ("val", "test")
                for task in net.tasks
                for kind in ("", "_degraded")
            }
        )
        self.last_task: str | None = None
        # the task of each type id of the data (the datamodule's TaskPerStep names), set in setup
        self.data_tasks: tuple[str, ...] = tuple(net.tasks)

    # IPT scores each task with its own border (the scale), in task_metrics
    scores_per_type = False

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            self.data_tasks = self.check_tasks(getattr(datamodule, "degradation", None))

    def check_tasks(self, tasks: object) -> tuple[str, ...]:
        """The data's task names, checked against the backbone's tasks and scales."""
        if not isinstance(tasks, TaskPerStep):
            raise ConfigError(
                f"ipt_pretrain needs one task per step made by the data, got degradation "
                f"{type(tasks).__name__}; set degradation=ipt_tasks"
            )
        if set(tasks.names) != set(self.net.tasks):
            raise ConfigError(
                f"degradation.ops has the tasks {sorted(tasks.names)} but the IPT backbone has "
                f"{list(self.net.tasks)}; give one degradation per task of the backbone"
            )
        for task, op in zip(tasks.names, tasks.ops, strict=True):
            if op.scale != self.net.scale_of(task):
                raise ConfigError(
                    f"degradation.ops.{task} down-samples by {op.scale} but task {task} upscales by "
                    f"{self.net.scale_of(task)}"
                )
        return tasks.names

    def on_fit_start(self) -> None:
        model = self.trainer.strategy.model
        if isinstance(model, DistributedDataParallel) and not model.find_unused_parameters:
            raise ConfigError(
                "ipt_pretrain trains one task's head and tail per step, so the others get no gradient and "
                "DDP must allow unused parameters: add trainer.strategy=ddp_find_unused_parameters_true"
            )

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        task = self.last_task = batch["task"]
        degraded, target = batch["lq"], batch["gt"]
        restored, tokens = self.net(degraded, task, return_tokens=True)
        pixel_loss = self.loss(restored * self.pixel_scale, target * self.pixel_scale)
        loss = pixel_loss
        if self.contrastive is not None and self.contrastive_weight:
            contrastive_loss = self.contrastive(tokens)
            loss = pixel_loss + self.contrastive_weight * contrastive_loss
            self.log("train/contrastive", contrastive_loss)
        self.log_dict({"train/pixel": pixel_loss, "train/task": float(self.net.task_index(task))})
        self.log("train/loss", loss, prog_bar=True)
        return self.checked_loss(loss)

    # ---- inference --------------------------------------------------------------------------

    def restore(self, degraded: Tensor, task: str | None = None) -> Tensor:
        """Restore whole images with ``task`` (default ``predict_task``) through the IPT tiling."""
        return self.tiling(self.eval_net, degraded, task if task is not None else self.predict_task)

    # ---- validation and test ----------------------------------------------------------------

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate_tasks(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate_tasks(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_task_metrics("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._log_task_metrics("test")
        super().on_test_epoch_end()

    def _border(self, task: str) -> int:
        """Pixels cropped from each side before scoring: the scale for super-resolution (official)."""
        scale = self.net.scale_of(task)
        return scale if scale > 1 else 0

    def _evaluate_tasks(self, batch: Batch, split: str) -> None:
        """Restore each item (an image degraded for one task by the datamodule) with its task and score it."""
        for i, (index, type_id) in enumerate(zip(batch["index"], batch["type"].tolist(), strict=True)):
            task = self.data_tasks[type_id]
            border = self._border(task)
            degraded, target = batch["lq"][i : i + 1], batch["gt"][i : i + 1]
            restored = self.restore(degraded, task).float().clamp(0, 1)
            baseline = _as_large_as(degraded, target)
            # scored once with the task's border: for the task, the means over tasks and the caption
            scores = self.task_metrics[f"{split}_{task}"].per_image(restored, target)
            before = self.task_metrics[f"{split}_{task}_degraded"].per_image(baseline, target)
            self.task_metrics[f"{split}_{task}"].update(scores=scores)
            self.task_metrics[f"{split}_{task}_degraded"].update(scores=before)
            name = batch["name"][i]
            if split == "test" and self.save_test_images:
                output_dir = Path(self.trainer.default_root_dir) / "images" / "test" / "restored"
                save_png(to_uint8(restored[0]), output_dir / f"{name}.png")
            # the means over tasks (the base metrics have no border of their own)
            self.metrics[split].update(scores=scores)
            self.metrics[f"{split}_degraded"].update(scores=before)
            if split == "val" and index // len(self.data_tasks) < self.num_logged_images:
                height, width = target.shape[-2:]
                inner = (..., slice(border, height - border), slice(border, width - border))
                panels = {
                    "degraded": (degraded[0], _scores_of(before, 0)),
                    "restored": (restored[0][inner], _scores_of(scores, 0)),
                }
                self._grids.append((index, name, *self._grid(panels, target[0][inner])))

    def _log_task_metrics(self, split: str) -> None:
        values = {}
        for task in self.net.tasks:
            for kind, suffix in (("", ""), ("degraded/", "_degraded")):
                metrics = self.task_metrics[f"{split}_{task}{suffix}"]
                if int(metrics.count):  # a task with no image in this split has no score rather than NaN
                    values |= {
                        f"{split}/{task}/{kind}{key}": value for key, value in metrics.compute().items()
                    }
                metrics.reset()
        self.log_evaluation(values)
