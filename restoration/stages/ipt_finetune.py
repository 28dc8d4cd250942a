"""Stage ``ipt_finetune``: fine-tune one task of a pre-trained IPT.

H. Chen et al., "Pre-Trained Image Processing Transformer", CVPR 2021: after multi-task
pre-training, each task is fine-tuned on its own data keeping only its head, tail and task-embedding row
(the maintainers, huawei-noah/Pretrained-IPT#47), here :meth:`~restoration.archs.ipt.IPT.single_task`.

The pre-trained weights come through ``backbone_weights.path`` (the one door for weights, see
:func:`~restoration.run.build_backbone`), loaded into the multi-task network before this stage keeps a task:

- a Lightning checkpoint of the ``ipt_pretrain`` stage (``*.ckpt``): its EMA weights (``ema.module.*``)
  when it has them, else the trained network (``net.*``);
- an official-format state dict saved with ``torch.save`` (``IPT_pretrain.pt``, or a released
  single-task model with the matching single-task backbone), loaded strictly;
- none: the task is trained from random weights, i.e. IPT without pre-training (the paper's baseline), with
  one warning; this is what the experiments do when no weights are given.

Resuming (``ckpt_path``) then replaces them with the checkpoint's, as does testing a fine-tuned checkpoint.

The backbone must be the model the weights were saved from (``backbone=ipt_pretrain`` for
``IPT_pretrain.pt``, ``backbone=ipt_tiny`` for a tiny pre-training run); the task's weights are then taken
over bit for bit. Training batches are (degraded 48×48, ground truth 48·s) pairs: ``datamodule.crop_size``
is 48·s. Validation, test and prediction restore whole images through
:func:`~restoration.tiling.ipt_tiled_forward` (``tiling``: protocol, overlap, self-ensemble).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor, nn

from restoration.archs.ipt import IPT
from restoration.errors import ConfigError
from restoration.stages.base import RestorationStage
from restoration.stages.ipt_pretrain import IPTTiling

__all__ = ["IPTFinetuneStage"]

log = logging.getLogger(__name__)


class IPTFinetuneStage(RestorationStage):
    """Train one task of an IPT, started from pre-trained weights, on (degraded, ground truth) pairs.

    Args:
        net: the IPT the weights belong to (the six-task pre-training model, or a single-task one).
        task: the task to fine-tune (``sr_x2``, ``sr_x3``, ``sr_x4``, ``derain``, ``denoise_30``,
            ``denoise_50``); its head, tail and task-embedding row are kept.
        loss: ``(restored, target) -> scalar`` pixel loss (L1, IPT).
        tiling: how validation, test and prediction restore whole images
            (:class:`~restoration.stages.ipt_pretrain.IPTTiling`; default: the official protocol).
        crop_border: border excluded from the metrics; ``None``: the official protocol's, the scale for
            super-resolution and 0 for the other tasks.
        **base: the shared options of :class:`~restoration.stages.base.RestorationStage`
            (optimizer, scheduler, EMA, logged images).
    """

    def __init__(
        self,
        *,
        net: IPT,
        task: str,
        loss: nn.Module,
        tiling: IPTTiling | None = None,
        crop_border: int | None = None,
        **base: Any,
    ) -> None:
        if task not in net.tasks:
            raise ConfigError(f"stage.task={task!r} is not a task of the IPT backbone: {list(net.tasks)}")
        if getattr(net, "pretrained_mismatch", None) is None:  # load_pretrained marks what it loaded into
            log.warning(
                "no backbone_weights.path: the %s model starts from random weights (IPT without "
                "pre-training) unless ckpt_path restores a checkpoint; set backbone_weights.path to "
                "IPT_pretrain.pt or an ipt_pretrain checkpoint",
                task,
            )
        if crop_border is None:
            crop_border = net.scale_of(task) if net.scale_of(task) > 1 else 0
        super().__init__(net=net.single_task(task), crop_border=crop_border, **base)
        self.task = task
        self.loss = loss
        self.tiling = tiling if tiling is not None else IPTTiling()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        degraded, target = batch["lq"], batch["gt"]
        size, scale = self.net.patch_size, self.net.scale_of(0)
        if degraded.shape[-2:] != (size, size) or target.shape[-2:] != (size * scale, size * scale):
            raise ConfigError(
                f"IPT {self.task} trains on {size}×{size} inputs with {size * scale}×{size * scale} targets; "
                f"the datamodule gives {tuple(degraded.shape[-2:])} → {tuple(target.shape[-2:])}: set "
                f"datamodule.crop_size={size * scale} and data of scale {scale}"
            )
        loss = self.loss(self.net(degraded), target)
        self.log("train/loss", loss, prog_bar=True)
        return self.checked_loss(loss)

    def restore(self, degraded: Tensor) -> Tensor:
        """Restore whole images of any size through the IPT tiling."""
        return self.tiling(self.eval_net, degraded, 0)
