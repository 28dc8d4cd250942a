"""The datamodule: sources per split, loaders, and degradation synthesis on the training device.

The datamodule makes every input a stage sees; a stage only computes. Training batches of clean images
leave the loader as ``{"gt", "index", "label"}`` (and ``key``, an independent view, with ``key_view``) and
are degraded in :meth:`RestorationDataModule.on_after_batch_transfer`, i.e. after Lightning moved them to the
training device, so synthesis runs batched on the GPU and scales with GPUs. The generator is re-seeded from
``(seed, first stream position of the batch)``: deterministic, different on every rank and micro-batch, and
nothing to checkpoint. With :class:`~restoration.data.degradations.TaskPerStep` (IPT) the same hook draws the
optimizer step's task, takes its window of the clean crops and degrades it, and the batch carries ``task``.

``index`` stays on the host (:meth:`RestorationDataModule.on_before_batch_transfer` makes it a list), so
seeding from it never waits for the device. Every batch reaching a stage is a
:class:`~restoration.data.batch.Batch`: ``lq`` (N×3×h×w), ``gt`` (N×3×H×W), ``index``, ``label`` (class
label or -1) and ``type`` (degradation type id, see :attr:`degradation_names`).

A packed training split (:class:`~restoration.data.streaming.PackedImages`, ``datamodule=streaming``) is
streamed by LitData (:class:`~restoration.data.streaming.StreamingCrops`, a ``StreamingDataLoader`` whose
state Lightning saves in the checkpoint) instead of read by stream position; the datamodule numbers its
batches' positions itself, so degradations and IPT's task per step are seeded as on the folder path.

With a guide attached (:meth:`RestorationDataModule.attach_features`, PTG-RM's ``guide.input=frame``), the
guide's feature of every paired training and validation image's whole degraded image is computed once in
``setup`` (and kept on disk when a cache folder is given), and every sample carries its image's row as
``osf``: the stage then never runs the guide in a training step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from litdata import StreamingDataLoader
from torch.utils.data import DataLoader, Dataset

from restoration.data.batch import Batch, Stream, stream_seed
from restoration.data.datasets import (
    ShardSampler,
    StreamBatchSampler,
    TaggedImages,
    TaskMixCrops,
    TrainCrops,
    WholeImages,
)
from restoration.data.degradations import Degradation, TaskPerStep
from restoration.data.sources import ImageSource
from restoration.data.streaming import PackedImages, StreamingCrops
from restoration.errors import ConfigError, DataError
from restoration.signals import leave_sigterm_to_main_process

__all__ = ["MixedPairedDataModule", "RestorationDataModule"]

log = logging.getLogger(__name__)


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
        eval_crop: validate and test on the centre ``eval_crop`` GT pixels of each image (``None``:
            whole images, the default; ``trainer=smoke`` sets it for a quick end-to-end check).
        eval_every_type: with an all-in-one degradation, validate and test every image under every type
            (``<split>/<type>/psnr`` then covers all images) rather than under one drawn type each.
        grey: make every image grey as it is read, before any degradation: the BT.601 luma rounded to 8
            bits, as PIL's ``"L"`` and OpenCV give it, on three equal channels
            (:func:`~restoration.data.datasets.to_grey`); the grey denoising benchmarks, whose ground truth
            is grey too.
        crop: training crops: ``"random"`` windows of ``crop_size``, or ``"resized"`` (torchvision's
            RandomResizedCrop to ``crop_size``, of ``crop_scale`` of the area and ``crop_ratio`` aspect).
        resize: resize each training image so its shorter side has this many pixels before cropping
            (``None``: as they are). ConStyle v2: 256, then a resized crop of 224.
        crop_scale: area fraction range of the ``"resized"`` crop (torchvision's default).
        crop_ratio: aspect-ratio range of the ``"resized"`` crop (torchvision's default).
        key_view: training batches also carry ``key``, a second crop of each clean image drawn independently
            of the first (ConStyle v2's positive view).
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
        eval_crop: int | None = None,
        eval_every_type: bool = False,
        grey: bool = False,
        crop: str = "random",
        resize: int | None = None,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        key_view: bool = False,
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
        self.eval_crop = eval_crop
        self.eval_every_type = eval_every_type
        self.grey = grey
        self.crop = crop
        self.resize = resize
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.key_view = key_view
        self.datasets: dict[str, Dataset] = {}
        self._generators: dict[torch.device, torch.Generator] = {}
        self._warned_unused_degradation = False
        self.features: Callable[..., torch.Tensor] | None = None
        # the features of each source, by id: the test split is the val source by default
        self._features: dict[int, torch.Tensor] = {}
        # training batches read so far by a streamed training split (None: not streamed)
        self._streamed_batches: int | None = None

    @property
    def paired_training(self) -> bool:
        """Whether the training images are read as pairs (else their degraded views are synthesized)."""
        train = self.sources["train"]
        return train is None or train.paired

    def attach_features(self, features: Callable[..., torch.Tensor]) -> None:
        """Give each paired training and validation sample ``osf``, a guide's feature of its whole LQ image.

        ``features(source, device=, grey=, skip_bad_files=)`` gives the N×D table of a scanned paired source,
        row i = image i: :func:`restoration.guides.cache.precompute` with the guide and its cache folder
        bound (``restoration.run`` binds them). :meth:`setup` calls it once per source, on the training
        device. Training data synthesized every step has no fixed degraded image: a ConfigError.
        """
        if not self.paired_training:
            raise ConfigError(
                f"guide.input=frame encodes each whole degraded image once, but datamodule {self.name} "
                f"synthesizes its degraded images anew every step (degradation "
                f"{'/'.join(self.degradation_names)}); set guide.input=crop, or train on paired data"
            )
        self.features = features

    @property
    def degradation_names(self) -> tuple[str, ...]:
        """Names of the degradation type ids found in ``batch["type"]``."""
        return self.degradation.names if self.degradation is not None else (self.name,)

    def prepare_data(self) -> None:
        """One process per node, before every rank's ``setup``: folder sources write their header index.

        A missing folder or unmatched pairs are left to ``setup``, which reports them on every rank (a rank
        failing here alone would leave the others waiting at Lightning's barrier).
        """
        for source in self._all_sources():
            try:
                source.prepare()
            except DataError:
                continue

    def _all_sources(self) -> list[ImageSource]:
        return [source for source in self.sources.values() if source is not None]

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

    def _build(self, split: str) -> TrainCrops | TaskMixCrops | WholeImages | TaggedImages:
        source = self._source(split)
        self._prepare(source, split)
        if split == "train":
            return self._train_crops(source, seed=self.seed)
        return WholeImages(
            source,
            degradation=self.degradation,
            seed=self.val_seed,
            crop=self.eval_crop,
            # one task per step (IPT) is evaluated on every task
            every_type=self.eval_every_type or isinstance(self.degradation, TaskPerStep),
            grey=self.grey,
            osf=self._features_of(source),
        )

    def _features_of(self, source: ImageSource) -> torch.Tensor | None:
        """The attached features of a scanned paired ``source``'s images (``None``: none attached, or
        synthesized images, whose whole image the stage's guide sees at validation anyway)."""
        if self.features is None or not source.paired:
            return None
        if id(source) not in self._features:
            # the training device, known before Lightning moves the stage (and its guide) there
            device = self.trainer.strategy.root_device if self.trainer is not None else None
            self._features[id(source)] = self.features(
                source, device=device, grey=self.grey, skip_bad_files=self.skip_bad_files
            )
        return self._features[id(source)]

    def _prepare(self, source: ImageSource, split: str, task: str | None = None) -> None:
        """Scan ``source`` (once), warn when a configured degradation goes unused, log the split's size."""
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
        label = split if task is None else f"task {task}'s {split}"
        log.info(
            "datamodule %s: %s split has %d images (%s)", self.name, label, len(source), source.description
        )

    def _train_crops(self, source: ImageSource, *, seed: int) -> TrainCrops | StreamingCrops:
        tasks = self.degradation
        if isinstance(tasks, TaskPerStep) and self.crop_size < tasks.crop_size:
            raise ConfigError(
                f"datamodule {self.name}: crop_size={self.crop_size} but the tasks {list(tasks.names)} need "
                f"clean crops of {tasks.crop_size} ({tasks.patch_size} × the largest scale); "
                f"set datamodule.crop_size={tasks.crop_size}"
            )
        options: dict[str, Any] = {
            "crop_size": self.crop_size,
            "scale": self._data_scale(source),
            "hflip": self.hflip,
            "rotate": self.rotate,
            "seed": seed,
            "on_small": self.on_small,
            "skip_bad_files": self.skip_bad_files,
            "grey": self.grey,
            "crop": self.crop,
            "resize": self.resize,
            "crop_scale": self.crop_scale,
            "crop_ratio": self.crop_ratio,
            "key_view": self.key_view,
        }
        if isinstance(source, PackedImages):
            if self.cache_images:
                raise ConfigError(
                    f"datamodule {self.name}: cache_images=true keeps decoded images per worker, but "
                    f"{source.description} is streamed; set datamodule.cache_images=false"
                )
            return StreamingCrops(source, **options)
        return TrainCrops(source, cache_images=self.cache_images, osf=self._features_of(source), **options)

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
        assert isinstance(dataset, TrainCrops | TaskMixCrops | StreamingCrops)
        rank, world_size = self._rank_and_world()
        # Resuming: continue the stream where the checkpoint's step left it (see datasets.py).
        start_step = 0
        if self.trainer is not None:
            start_step = self.trainer.global_step * self.trainer.accumulate_grad_batches
        if isinstance(dataset, StreamingCrops):
            # LitData shards, orders and resumes the stream (its loader's state is in the checkpoint);
            # the batches' stream positions are numbered in on_before_batch_transfer from start_step.
            self._streamed_batches = start_step
            return StreamingDataLoader(
                dataset,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                worker_init_fn=leave_sigterm_to_main_process,
                generator=torch.Generator().manual_seed(stream_seed(self.seed, rank, Stream.WORKER)),
            )
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

    def _loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        rank, _ = self._rank_and_world()
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # a SIGTERM to the whole job stops the run through the main process, which then ends the workers
            worker_init_fn=leave_sigterm_to_main_process,
            # Starting an iteration draws the workers' seeds from this generator rather than the global
            # one, which then serves the network alone (dropout): validations, and resuming (which starts
            # iterations an uninterrupted run does not), leave the network's random stream as it was.
            generator=torch.Generator().manual_seed(stream_seed(self.seed, rank, Stream.WORKER)),
            **kwargs,
        )

    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        # the indices stay on the host: seeding from them must not wait for the device
        batch["index"] = batch["index"].tolist()
        if self.trainer is not None and self.trainer.training and self._streamed_batches is not None:
            # a streamed batch: its stream positions, as StreamBatchSampler numbers the folder path's
            rank, world_size = self._rank_and_world()
            first = (self._streamed_batches * world_size + rank) * self.batch_size
            batch["index"] = list(range(first, first + len(batch["index"])))
            self._streamed_batches += 1
        return batch

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> Batch:
        if "lq" in batch:
            return batch  # type: ignore[return-value]
        if self.degradation is None:
            raise ConfigError(
                f"datamodule {self.name}: clean training images but no degradation is configured"
            )
        gt = batch["gt"]
        position = batch["index"][0]
        generator = self._generators.get(gt.device)
        if generator is None:
            generator = self._generators[gt.device] = torch.Generator(device=gt.device)
        generator.manual_seed(stream_seed(self.seed, position, Stream.DEGRADATION))
        if isinstance(self.degradation, TaskPerStep):
            task = self.degradation.task_at(self.seed, self.optimizer_step_of(position))
            batch["lq"], batch["gt"], batch["type"] = self.degradation.make(
                gt, task=task, position=position, seed=self.seed, generator=generator
            )
            batch["task"] = self.degradation.names[task]
            return batch  # type: ignore[return-value]
        batch["lq"], batch["type"] = self.degradation(gt, generator)
        return batch  # type: ignore[return-value]

    def optimizer_step_of(self, position: int) -> int:
        """The optimizer step that reads stream position ``position`` (see :class:`StreamBatchSampler`)."""
        world_size, accumulate = 1, 1
        if self.trainer is not None:
            world_size, accumulate = self.trainer.world_size, self.trainer.accumulate_grad_batches
        return position // (self.batch_size * world_size) // accumulate


_TASK_KEYS = ("root", "train", "val", "test")


class MixedPairedDataModule(RestorationDataModule):
    """All-in-one restoration from real pairs: one paired dataset per task (degradation), mixed uniformly.

    Each training sample draws its task uniformly, then a crop of one of that task's images
    (:class:`~restoration.data.datasets.TaskMixCrops`), whatever the datasets' sizes; every batch carries
    ``type`` = the task's index, and :attr:`degradation_names` are the task names, so the stage logs
    ``val/<task>/psnr`` besides the mean over all validation images (the union of the tasks' val splits).

    Args:
        tasks: task name → ``{"train": source, "val": source, "test": source, "root": folder}``: the
            training source is required and paired; ``val`` (whole-image validation) and ``test``
            (default: ``val``) are optional per task; ``root`` is the task's dataset folder (for the
            config's paths; unused here).
        name: the dataset's name, used in messages and ``results.json``.
        **options: the loader and crop options of :class:`RestorationDataModule` (``crop_size``,
            ``batch_size``, ``seed``...); its ``train``/``val``/``test`` are the tasks' instead.
    """

    def __init__(
        self, *, tasks: Mapping[str, Mapping[str, Any]], name: str = "mixed_paired", **options: Any
    ) -> None:
        for split in ("train", "val", "test"):
            if options.pop(split, None) is not None:
                raise ConfigError(
                    f"datamodule {name}: set the {split} sources per task (tasks.<name>.{split})"
                )
        super().__init__(name=name, **options)
        if not isinstance(tasks, Mapping) or not tasks:
            raise ConfigError(
                f"datamodule {name}: tasks is empty; expected a mapping task name -> {{train: ..., val: ...}}"
            )
        self.tasks: dict[str, dict[str, ImageSource | None]] = {}
        for task, splits in tasks.items():
            if not isinstance(splits, Mapping):
                raise ConfigError(
                    f"datamodule {name}: tasks.{task} is {splits!r}; expected {{train: ..., val: ...}}"
                )
            unknown = sorted(set(splits) - set(_TASK_KEYS))
            if unknown:
                raise ConfigError(
                    f"datamodule {name}: tasks.{task} has unknown key(s) {unknown}; expected {_TASK_KEYS}"
                )
            for split in ("train", "val", "test"):
                source = splits.get(split)
                if source is not None and not (isinstance(source, ImageSource) and source.paired):
                    raise ConfigError(
                        f"datamodule {name}: tasks.{task}.{split} is {type(source).__name__}; "
                        "expected a paired source (restoration.data.sources.PairedFolders)"
                    )
            if splits.get("train") is None:
                raise ConfigError(
                    f"datamodule {name}: tasks.{task} has no train source; set tasks.{task}.train"
                )
            val = splits.get("val")
            test = splits.get("test")
            self.tasks[str(task)] = {
                "train": splits["train"],
                "val": val,
                "test": test if test is not None else val,
            }

    @property
    def degradation_names(self) -> tuple[str, ...]:
        return tuple(self.tasks)

    def _all_sources(self) -> list[ImageSource]:
        return [source for splits in self.tasks.values() for source in splits.values() if source is not None]

    def _build(self, split: str) -> TaskMixCrops | TaggedImages:
        if split == "train":
            crops = []
            for index, (task, sources) in enumerate(self.tasks.items()):
                source = sources["train"]
                assert source is not None
                self._prepare(source, split, task)
                crops.append(self._train_crops(source, seed=stream_seed(self.seed, index)))
            return TaskMixCrops(crops, seed=self.seed)
        images = []
        for task, sources in self.tasks.items():
            source = sources[split]
            if source is None:
                continue
            self._prepare(source, split, task)
            images.append(
                (
                    task,
                    WholeImages(
                        source,
                        degradation=None,
                        seed=self.val_seed,
                        crop=self.eval_crop,
                        grey=self.grey,
                        osf=self._features_of(source),
                    ),
                )
            )
        if not images:
            raise ConfigError(
                f"datamodule {self.name}: no task has a {split} split; set tasks.<name>.{split}"
            )
        return TaggedImages(images)
