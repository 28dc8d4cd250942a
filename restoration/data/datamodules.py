"""The datamodule: sources per split, loaders, and degradation synthesis on the training device.

Training batches of clean images leave the loader as ``{"gt", "index", "label"}`` and are
degraded in :meth:`RestorationDataModule.on_after_batch_transfer`, i.e. after Lightning moved
them to the training device, so synthesis runs batched on the GPU and scales with GPUs. The
generator is re-seeded from ``(seed, first stream position of the batch)``: deterministic,
different on every rank and micro-batch, and nothing to checkpoint.

Every batch reaching a stage holds ``lq`` (N×3×h×w), ``gt`` (N×3×H×W), ``index``, ``label``
(class label or -1) and ``type`` (degradation type id, see :attr:`degradation_names`).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from restoration.data.datasets import ShardSampler, StreamBatchSampler, TrainCrops, WholeImages, stream_seed
from restoration.data.degradations import Degradation
from restoration.data.sources import ImageSource
from restoration.errors import ConfigError

__all__ = ["RestorationDataModule"]

log = logging.getLogger(__name__)

# Tags the degradation stream so it never shares a seed with the crop stream of the same position.
_DEGRADATION_STREAM = 1


class RestorationDataModule(pl.LightningDataModule):
    """Train / val / test splits, each an :class:`~restoration.data.sources.ImageSource` or ``None``.

    Args:
        name: the dataset's name (config option), used in messages and ``results.json``.
        root: the dataset folder the split paths are built from (presets), for messages.
        train: training source (``None``: evaluation-only dataset).
        val: validation source, whole images.
        test: test source; ``None`` tests on ``val``.
        degradation: synthesizes LQ images from clean sources; paired sources ignore it.
        crop_size: training crop side in GT pixels.
        batch_size: training batch size per device.
        num_workers: loader worker processes per device.
        hflip: random horizontal flips in training.
        rotate: random vertical flips and transposes in training.
        cache_images: keep decoded training images in memory (small datasets).
        skip_bad_files: skip unreadable images with a warning instead of stopping.
        on_small: training images smaller than the crop: ``"error"``, ``"skip"`` or ``"resize"``.
        seed: data seed (crops, order, degradations in training).
        val_seed: seed of the validation/test degradations, fixed so numbers compare across runs.
        pin_memory: pin loader memory; ``None`` pins when CUDA is available.
    """

    def __init__(
        self,
        *,
        name: str,
        root: str | None = None,
        train: ImageSource | None = None,
        val: ImageSource | None = None,
        test: ImageSource | None = None,
        degradation: Degradation | None = None,
        crop_size: int = 128,
        batch_size: int = 8,
        num_workers: int = 2,
        hflip: bool = True,
        rotate: bool = False,
        cache_images: bool = False,
        skip_bad_files: bool = False,
        on_small: str = "error",
        seed: int = 0,
        val_seed: int = 1,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        if crop_size < 1 or batch_size < 1 or num_workers < 0:
            raise ConfigError(
                f"datamodule {name}: crop_size={crop_size}, batch_size={batch_size}, "
                f"num_workers={num_workers}; "
                "expected positive sizes and num_workers >= 0"
            )
        self.name = name
        self.root = root
        self.sources = {"train": train, "val": val, "test": test if test is not None else val}
        self.degradation = degradation
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.hflip = hflip
        self.rotate = rotate
        self.cache_images = cache_images
        self.skip_bad_files = skip_bad_files
        self.on_small = on_small
        self.seed = seed
        self.val_seed = val_seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.datasets: dict[str, TrainCrops | WholeImages] = {}
        self._generators: dict[torch.device, torch.Generator] = {}
        self._warned_unused_degradation = False

    @property
    def degradation_names(self) -> tuple[str, ...]:
        """Names of the degradation type ids found in ``batch["type"]``."""
        return self.degradation.names if self.degradation is not None else (self.name,)

    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}[
            stage
        ]
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = self._build(split)

    def _source(self, split: str) -> ImageSource:
        source = self.sources[split]
        if source is None:
            hint = {
                "train": "it is an evaluation-only dataset: train on another one (e.g. datamodule=div2k) "
                "or run train=false test=true ckpt_path=...",
                "val": "set datamodule.val",
                "test": "set datamodule.test or datamodule.val",
            }[split]
            raise ConfigError(f"datamodule {self.name} has no {split} split; {hint}")
        return source

    def _build(self, split: str) -> TrainCrops | WholeImages:
        source = self._source(split)
        # Validation and test images are decoded once now, so a corrupt file fails the run at the
        # start rather than at the first validation hours later; training files get a header check.
        # The test split defaults to the val source itself: scan (and decode) it once.
        if not source.scanned:
            source.scan(skip_bad_files=self.skip_bad_files, decode=split != "train")
        if source.paired and self.degradation is not None and not self._warned_unused_degradation:
            log.warning(
                "datamodule %s: the %s split is paired, so degradation %s is not applied to it",
                self.name,
                split,
                "/".join(self.degradation.names),
            )
            self._warned_unused_degradation = True
        log.info(
            "datamodule %s: %s split has %d images (%s)", self.name, split, len(source), source.description
        )
        if split == "train":
            return TrainCrops(
                source,
                crop_size=self.crop_size,
                scale=self._data_scale(source),
                hflip=self.hflip,
                rotate=self.rotate,
                seed=self.seed,
                on_small=self.on_small,
                cache_images=self.cache_images,
                skip_bad_files=self.skip_bad_files,
            )
        return WholeImages(source, degradation=self.degradation, seed=self.val_seed)

    def _data_scale(self, source: ImageSource) -> int:
        """GT / LQ size ratio: the paired source's, else the degradation's (crops must be multiples of it)."""
        if source.paired:
            return getattr(source, "scale", 1)
        return self.degradation.scale if self.degradation is not None else 1

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        assert isinstance(dataset, TrainCrops)
        rank, world_size = self._rank_and_world()
        # Resuming: continue the stream where the checkpoint's step left it (see datasets.py).
        start_step = 0
        if self.trainer is not None:
            start_step = self.trainer.global_step * self.trainer.accumulate_grad_batches
        sampler = StreamBatchSampler(
            batch_size=self.batch_size, rank=rank, world_size=world_size, start_step=start_step
        )
        return self._loader(dataset, batch_sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._whole_image_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._whole_image_loader("test")

    def _whole_image_loader(self, split: str) -> DataLoader:
        dataset = self.datasets[split]
        rank, world_size = self._rank_and_world()
        # Whole images differ in size, so they go one per batch.
        return self._loader(
            dataset, batch_size=1, sampler=ShardSampler(len(dataset), rank=rank, world_size=world_size)
        )

    def _loader(self, dataset: TrainCrops | WholeImages, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        if "lq" in batch:
            return batch
        if self.degradation is None:
            raise ConfigError(
                f"datamodule {self.name}: clean training images but no degradation is configured"
            )
        gt = batch["gt"]
        generator = self._generators.get(gt.device)
        if generator is None:
            generator = self._generators[gt.device] = torch.Generator(device=gt.device)
        generator.manual_seed(stream_seed(self.seed, int(batch["index"][0]), _DEGRADATION_STREAM))
        batch["lq"], batch["type"] = self.degradation(gt, generator)
        return batch
