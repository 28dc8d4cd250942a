"""The evaluation part of the stages that produce images, on the training chassis (stages/chassis.py).

:class:`RestorationStage` adds to :class:`~restoration.stages.chassis.TrainingChassis` (optimizer, schedule,
EMA, NaN stop, frozen towers) what every image-producing stage does the same way:

- validation and test on whole images: padding to the network's size multiple, optional tiling,
  PSNR/SSIM (RGB and Y) through :class:`~restoration.metrics.ImageQuality` of the restored images
  and, as the baseline, of the degraded inputs (``val/degraded/psnr``; scored once per image, as the
  validation inputs are the same at every validation), and captioned degraded | restored | ground-truth
  grids for a fixed set of images, written as PNG files under ``<run dir>/images`` and sent to the loggers;
- the per-image scores of the last validation and test (:attr:`RestorationStage.image_scores`);
- evaluation metrics logged at ``trainer.global_step``, the step in the names of the checkpoints and
  grids (:meth:`RestorationStage.log_evaluation`);
- stop points between images and batches of tiles, where a SIGTERM stops the run (restoration/signals.py);
- when the data mixes several degradation types (all-in-one), the same metrics per type
  (``val/<type>/psnr``; the un-prefixed ``val/psnr`` stays the mean over all images);
- intermediate outputs a stage names in :attr:`RestorationStage.scored_outputs` (e.g. PTG-RM's target
  network output, ``val/target/psnr``), scored and shown in the grids beside the final output.

``restoration.evaluate`` uses this part without a Trainer: :meth:`RestorationStage.restore_for_evaluation` on
each image of a benchmark.

A stage subclass implements ``training_step`` and, if its network takes more than the degraded
image, overrides :meth:`RestorationStage.run_network` (one forward pass on a padded image or tile) or
:meth:`RestorationStage.restore` (used by validation, test and prediction), or
:meth:`RestorationStage.restore_for_evaluation` when it has intermediate outputs to score.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from restoration.archs.common import pad_to_multiple
from restoration.errors import ConfigError
from restoration.metrics import ImageQuality
from restoration.signals import stop_point
from restoration.stages.chassis import TrainingChassis
from restoration.tiling import tiled_forward
from restoration.visualize import comparison_grid, log_images, save_png, to_uint8

__all__ = ["RestorationStage"]

log = logging.getLogger(__name__)


class RestorationStage(TrainingChassis):
    """Base LightningModule of the image-producing stages: a trainable restoration network ``net``.

    Subclasses with intermediate outputs list their names in ``scored_outputs`` and return them from
    :meth:`restore_for_evaluation`; each gets the metrics ``<split>/<name>/psnr`` etc.

    Args:
        net: the network being trained; it maps a degraded batch to a restored batch. Validation, test and
            the best checkpoint use its EMA copy when the chassis keeps one.
        crop_border: border pixels excluded from the metrics (the SR convention: the scale).
        pad_multiple: pad whole images to this multiple before the forward pass; ``None`` uses the
            network's ``size_multiple`` attribute (1 if it has none).
        tile: run validation/test in tiles of this size (``None``: whole images at once).
        tile_overlap: overlap of the tiles in pixels.
        num_logged_images: how many validation images (the first ones) get a comparison grid.
        save_test_images: write every restored test image as a PNG under ``images/test/restored``.
        **chassis: ``optimizer``, ``scheduler``, ``ema_decay`` and ``ema_warmup`` of
            :class:`~restoration.stages.chassis.TrainingChassis`.
    """

    def __init__(
        self,
        *,
        net: nn.Module,
        crop_border: int = 0,
        pad_multiple: int | None = None,
        tile: int | None = None,
        tile_overlap: int = 32,
        num_logged_images: int = 4,
        save_test_images: bool = False,
        **chassis: Any,
    ) -> None:
        super().__init__(net=net, **chassis)
        self.pad_multiple = pad_multiple if pad_multiple is not None else getattr(net, "size_multiple", 1)
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.num_logged_images = num_logged_images
        self.save_test_images = save_test_images
        # "<split>_degraded" scores the degraded input itself (bicubic-enlarged for SR): the baseline
        # every restored number is compared with, logged as <split>/degraded/psnr etc.
        self.metrics = nn.ModuleDict(
            {
                name: ImageQuality(crop_border=crop_border)
                for name in ("val", "test", "val_degraded", "test_degraded")
            }
        )
        self.crop_border = crop_border
        # degradation type names of the data, when it mixes several (set in setup)
        self.type_names: tuple[str, ...] = ()
        self.image_scores: dict[str, list[dict[str, Any]]] = {"val": [], "test": []}
        """Per image of the last validation / test, in dataset order, on every rank: ``name``, ``type`` (the
        degradation type's name when the data mixes several, else ``None``), ``psnr``, ``ssim``, ``psnr_y``,
        ``ssim_y``, ``degraded_psnr``, ``degraded_ssim``."""
        self._image_records: dict[str, list[tuple[int, dict[str, Any]]]] = {"val": [], "test": []}
        self._grids: list[tuple[int, str, np.ndarray, str]] = []
        # fingerprint of a degraded and a ground-truth image -> the degraded image's scores
        self._degraded_scores: dict[bytes, dict[str, float]] = {}

    scored_outputs: tuple[str, ...] = ()
    """Names of the intermediate outputs of :meth:`restore_for_evaluation` that get their own metrics."""

    scores_per_type: bool = True
    """Whether the data's degradation types get their own metrics here (a stage that scores them its own way,
    as IPT with a border per task, sets it to ``False``)."""

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # Metrics for each degradation type and each intermediate output, created before Lightning moves
        # the module to its device. Their states are not saved in checkpoints (torchmetrics default).
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = tuple(getattr(datamodule, "degradation_names", ()) or ())
        self.type_names = names if len(names) > 1 and self.scores_per_type else ()
        clashes = sorted({"degraded", *self.scored_outputs} & set(self.type_names))
        if clashes:
            raise ConfigError(
                f"degradation type name(s) {clashes} clash with the metric groups degraded/"
                f"{'/'.join(self.scored_outputs)}; rename the type(s) in the degradation or datamodule config"
            )
        for split in ("val", "test"):
            for group in self.scored_outputs:
                if f"{split}_{group}" not in self.metrics:
                    self.metrics[f"{split}_{group}"] = ImageQuality(crop_border=self.crop_border)

    # ---- inference --------------------------------------------------------------------------

    def run_network(self, net: nn.Module, degraded: torch.Tensor) -> torch.Tensor:
        """One forward pass of ``net`` (the training or the EMA network) on a padded batch.

        Stages whose network takes more than the degraded image (e.g. prompts) override this.
        """
        return net(degraded)

    def restore(self, degraded: torch.Tensor) -> torch.Tensor:
        """Restore whole images: pad to the size multiple, optionally tile, crop back."""
        net = self.eval_net

        def forward(images: torch.Tensor) -> torch.Tensor:
            stop_point()  # before each image or batch of tiles, a requested stop is taken here
            height, width = images.shape[-2:]
            padded = pad_to_multiple(images, self.pad_multiple)
            restored = self.run_network(net, padded)
            scale = restored.shape[-1] // padded.shape[-1]
            return restored[..., : height * scale, : width * scale]

        if self.tile is None:
            return forward(degraded)
        return tiled_forward(forward, degraded, tile=self.tile, overlap=self.tile_overlap)

    def restore_for_evaluation(self, degraded: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The restored images and the intermediate outputs named in :attr:`scored_outputs`."""
        return self.restore(degraded), {}

    # ---- validation and test ----------------------------------------------------------------

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[str]:
        """Restore degraded images (no ground truth) into ``<run dir>/images/predict``; return the files."""
        restored = self.restore(batch["lq"]).float().clamp(0, 1)
        output_dir = Path(self.trainer.default_root_dir) / "images" / "predict"
        written = []
        for image, name in zip(restored, batch["name"], strict=True):
            save_png(to_uint8(image), output_dir / f"{name}.png")
            written.append(str(output_dir / f"{name}.png"))
        return written

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _evaluate(self, batch: dict[str, Any], split: str) -> None:
        degraded, target = batch["lq"], batch["gt"]
        restored, extras = self.restore_for_evaluation(degraded)
        restored = restored.float().clamp(0, 1)
        extras = {name: extras[name].float().clamp(0, 1) for name in self.scored_outputs}
        if restored.shape != target.shape:
            raise ConfigError(
                f"the network maps {tuple(degraded.shape[1:])} to {tuple(restored.shape[1:])} but the ground "
                f"truth is {tuple(target.shape[1:])}: does the backbone's upscale match the data's scale?"
            )
        indices = [int(index) for index in batch["index"]]
        baseline = _as_large_as(degraded.float(), target)
        # Each image is scored once per output; the metrics, the captions and the per-image table share it.
        scores = self.metrics[split].per_image(restored, target)
        before = self._baseline_scores(degraded, baseline, target)
        middle = {name: self.metrics[split].per_image(images, target) for name, images in extras.items()}
        self.metrics[split].update(scores=scores)
        self.metrics[f"{split}_degraded"].update(scores=before)
        for name, values in middle.items():
            self.metrics[f"{split}_{name}"].update(scores=values)
        types: list[str | None] = [None] * len(indices)
        if self.type_names and "type" in batch:
            # the means per type come from these per-image records, gathered once (_finish_evaluation)
            types = [self.type_names[type_id] for type_id in batch["type"].tolist()]
        output_dir = Path(self.trainer.default_root_dir)
        for i, index in enumerate(indices):
            name = batch["name"][i]
            self._image_records[split].append(
                (
                    index,
                    {
                        "name": name,
                        "type": types[i],
                        **{key: float(values[i]) for key, values in scores.items()},
                        "degraded_psnr": float(before["psnr"][i]),
                        "degraded_ssim": float(before["ssim"][i]),
                    },
                )
            )
            if split == "test" and self.save_test_images:
                save_png(to_uint8(restored[i]), output_dir / "images" / "test" / "restored" / f"{name}.png")
            if split == "val" and index < self.num_logged_images:
                steps = {
                    "degraded": (degraded[i], before),
                    **{key: (images[i], middle[key]) for key, images in extras.items()},
                    "restored": (restored[i], scores),
                }
                panels = {label: (image, _scores_of(values, i)) for label, (image, values) in steps.items()}
                self._grids.append((index, name, *self._grid(panels, target[i])))

    def _baseline_scores(
        self, degraded: torch.Tensor, baseline: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-image scores of the degraded inputs (``baseline``: at the target's size), each computed once.

        Validation inputs are the same at every validation (degraded with the fixed
        ``datamodule.val_seed``, or read from files), so their scores are kept, under a fingerprint of the
        degraded and ground-truth pixels: an input that differs in any pixel from those scored before
        (another datamodule or ``val_seed``) is scored anew. Hashing an image costs a small part of
        scoring it (SSIM in float64).
        """
        fingerprints = [_fingerprint(degraded[i], target[i]) for i in range(len(target))]
        new = [i for i, fingerprint in enumerate(fingerprints) if fingerprint not in self._degraded_scores]
        if new:
            fresh = self.metrics["val"].per_image(baseline[new], target[new])
            for row, i in enumerate(new):
                self._degraded_scores[fingerprints[i]] = {
                    key: float(values[row]) for key, values in fresh.items()
                }
        rows = [self._degraded_scores[fingerprint] for fingerprint in fingerprints]
        return {
            key: torch.tensor([row[key] for row in rows], dtype=torch.float64, device=target.device)
            for key in rows[0]
        }

    def _grid(
        self, panels: Mapping[str, tuple[torch.Tensor, Mapping[str, float]]], target: torch.Tensor
    ) -> tuple[np.ndarray, str]:
        """The comparison grid of one image and its caption.

        ``panels`` maps labels to (image, its PSNR/SSIM): the degraded input first, then any intermediate
        outputs, the restored image last; the ground truth ``target`` closes the row.
        """
        labels = [f"{label} {values['psnr']:.2f} dB" for label, (_, values) in panels.items()]
        steps = [values for _, values in panels.values()]
        caption = (
            "PSNR " + " -> ".join(f"{values['psnr']:.2f}" for values in steps) + " dB, "
            "SSIM " + " -> ".join(f"{values['ssim']:.4f}" for values in steps)
        )
        images = [image for image, _ in panels.values()]
        return comparison_grid([*images, target], [*labels, "ground truth"]), caption

    def _finish_evaluation(self, split: str) -> None:
        values = {f"{split}/{key}": value for key, value in self.metrics[split].compute().items()}
        for group in ("degraded", *self.scored_outputs):
            scores = self.metrics[f"{split}_{group}"].compute()
            values |= {f"{split}/{group}/{key}": value for key, value in scores.items()}
        for name in (split, "degraded", *self.scored_outputs):
            self.metrics[name if name == split else f"{split}_{name}"].reset()
        # every rank's per-image records, gathered once: the per-image table and the means per type
        records = sorted(_gather_objects(self._image_records[split]), key=lambda item: item[0])
        self.image_scores[split] = [record for _, record in records]
        self._image_records[split] = []
        values |= _means_per_type(split, self.image_scores[split], self.type_names)
        self.log_evaluation(values)
        if split != "val":
            return
        grids = sorted(_gather_objects(self._grids), key=lambda item: item[0])
        self._grids = []
        if not self.trainer.is_global_zero or not grids:
            return
        step = self.global_step
        for _, name, image, _ in grids:
            save_png(
                image, Path(self.trainer.default_root_dir) / "images" / "val" / f"{name}_step{step:07d}.png"
            )
        log_images(
            self.loggers,
            key="val/images",
            images=[image for _, _, image, _ in grids],
            names=[name for _, name, _, _ in grids],
            captions=[f"{name}: {caption}" for _, name, _, caption in grids],
            step=step,
        )


def _means_per_type(
    split: str, records: list[dict[str, Any]], type_names: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """``<split>/<type>/<metric>``: the mean of each metric over the images of each type (a type with no image
    in this split has no score rather than NaN)."""
    means = {}
    for name in type_names:
        rows = [record for record in records if record["type"] == name]
        if not rows:
            continue
        for key in ImageQuality.KEYS:
            total = sum(row[key] for row in rows)
            means[f"{split}/{name}/{key}"] = torch.tensor(total / len(rows), dtype=torch.float64)
    return means


def _scores_of(values: Mapping[str, torch.Tensor], i: int) -> dict[str, float]:
    """The PSNR and SSIM of image ``i`` of a batch's per-image scores."""
    return {key: float(values[key][i]) for key in ("psnr", "ssim")}


def _fingerprint(*images: torch.Tensor) -> bytes:
    """A digest of the images' sizes and pixels: equal digests mean equal images."""
    digest = hashlib.blake2b(digest_size=16)
    for image in images:
        pixels = image.detach().float().cpu().contiguous()
        digest.update(str(tuple(pixels.shape)).encode())
        digest.update(pixels.numpy().tobytes())
    return digest.digest()


def _as_large_as(degraded: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The degraded input as a baseline at the target's size: bicubic up-sampling for super-resolution."""
    if degraded.shape[-2:] == target.shape[-2:]:
        return degraded
    return F.interpolate(degraded, size=target.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)


def _gather_objects(items: list[Any]) -> list[Any]:
    """All ranks' items on every rank (DDP), or the items themselves in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    gathered: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, items)
    return [item for rank_items in gathered for item in rank_items]
