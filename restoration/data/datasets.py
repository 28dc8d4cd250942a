"""Torch datasets and samplers over image sources.

Training reads an endless stream of random crops. A sample's content is a pure function of
``(seed, position)``: position ``p`` is image ``permutation(epoch)[p % n]`` of epoch ``p // n``,
and its crop and flips come from a generator seeded with ``(seed, p)`` (each draw has its own
:class:`~restoration.data.batch.Stream` tag). Step ``s`` on rank ``r``
of ``W`` ranks with batch ``B`` reads positions ``(s·W + r)·B ... + B``, so a run resumed at step
``s`` reads exactly the batches an uninterrupted run would, whatever the number of workers.

Validation and test read whole images; clean images are degraded here, on the CPU, with a
generator seeded by ``(val_seed, index)``, so every run, device and rank sees the same inputs.

With ``grey``, every image is made grey (:func:`to_grey`) as it is read, before any degradation: the
ground truth of a grey benchmark is grey too, not only its input.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from restoration.data.batch import Stream, stream_seed
from restoration.data.degradations import Degradation
from restoration.data.sources import ImageSource
from restoration.errors import ConfigError, DataError

__all__ = [
    "CropPipeline",
    "DegradedImages",
    "ShardSampler",
    "StreamBatchSampler",
    "TaggedImages",
    "TaskMixCrops",
    "TrainCrops",
    "WholeImages",
    "random_resized_box",
    "stream_seed",
    "to_grey",
]

log = logging.getLogger(__name__)

# ITU-R BT.601 luma weights, those of PIL's convert("L") and OpenCV's RGB2GRAY / IMREAD_GRAYSCALE.
_GREY_WEIGHTS = (0.299, 0.587, 0.114)


def to_grey(image: torch.Tensor) -> torch.Tensor:
    """A 3×H×W RGB image in [0, 1] as grey shown on three equal channels.

    The grey level is the BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` rounded to 8-bit levels, the image
    PIL's ``convert("L")`` and OpenCV's ``IMREAD_GRAYSCALE`` give the grey benchmarks (Restormer's grey
    training and test images), so RGB metrics on the result equal their grey metrics.
    """
    weights = image.new_tensor(_GREY_WEIGHTS).view(3, 1, 1)
    grey = (image * weights).sum(dim=0, keepdim=True).mul(255).round().div(255).clamp(0, 1)
    return grey.expand_as(image).contiguous()


def _generator(*values: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(*values))


_CROPS = ("random", "resized")


def _resize_shorter_side(image: torch.Tensor, side: int) -> torch.Tensor:
    """``image`` resized (bilinear, antialiased) so that its shorter side is ``side`` pixels."""
    height, width = image.shape[1:]
    factor = side / min(height, width)
    size = (max(side, round(height * factor)), max(side, round(width * factor)))
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized[0].clamp(0, 1)


def random_resized_box(
    height: int,
    width: int,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a box as torchvision's RandomResizedCrop draws it (else central)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        draws = torch.rand(2, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        box_width = round(math.sqrt(target_area * aspect))
        box_height = round(math.sqrt(target_area / aspect))
        if 0 < box_width <= width and 0 < box_height <= height:
            top = int(torch.randint(height - box_height + 1, (1,), generator=generator))
            left = int(torch.randint(width - box_width + 1, (1,), generator=generator))
            return top, left, box_height, box_width
    aspect = width / height
    if aspect < ratio[0]:
        box_width, box_height = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        box_height, box_width = height, round(height * ratio[1])
    else:
        box_width, box_height = width, height
    return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width


class CropPipeline:
    """The crop, views and flips that make a training sample of one image: shared by :class:`TrainCrops`
    (images of a source, by stream position) and
    :class:`~restoration.data.streaming.StreamingCrops` (images streamed from packed chunks).

    A sample is a pure function of the image and its ``key``: the crop and flips come from a generator
    seeded with ``(seed, key, Stream.CROP)``, the key view's from ``(seed, key, Stream.VIEW)``.
    The arguments are :class:`TrainCrops`'; ``paired`` says whether images come with their LQ image and
    ``description`` names the data in messages.
    """

    def __init__(
        self,
        *,
        crop_size: int,
        scale: int = 1,
        hflip: bool = True,
        rotate: bool = False,
        seed: int = 0,
        on_small: str = "error",
        grey: bool = False,
        crop: str = "random",
        resize: int | None = None,
        crop_scale: Sequence[float] = (0.08, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        key_view: bool = False,
        paired: bool = False,
        description: str = "images",
    ) -> None:
        if crop_size % scale:
            raise DataError(
                f"crop_size {crop_size} is not a multiple of the scale {scale}; choose e.g. {scale * 48}"
            )
        if crop not in _CROPS:
            raise ConfigError(f"datamodule.crop={crop!r}; expected one of {list(_CROPS)}")
        low, high = crop_scale
        if not 0.0 < low <= high <= 1.0 or not 0.0 < crop_ratio[0] <= crop_ratio[1]:
            raise ConfigError(
                f"datamodule.crop_scale={list(crop_scale)}, datamodule.crop_ratio={list(crop_ratio)}; "
                "expected area fractions 0 < low <= high <= 1 and a positive ratio range"
            )
        if (crop == "resized" or key_view or resize is not None) and paired:
            raise ConfigError(
                f"{description} is paired: datamodule.crop=resized, resize and key_view need clean "
                "images (their LQ view is synthesized after the crop)"
            )
        if resize is not None and resize < crop_size and crop == "random":
            raise ConfigError(
                f"datamodule.resize={resize} is below crop_size={crop_size}; raise resize or lower crop_size"
            )
        if on_small not in ("error", "skip", "resize"):
            raise DataError(f"on_small={on_small!r}; expected 'error', 'skip' or 'resize'")
        self.crop = crop
        self.resize = resize
        self.crop_scale = (float(low), float(high))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.key_view = key_view
        self.crop_size = crop_size
        self.scale = scale
        self.hflip = hflip
        self.rotate = rotate
        self.seed = seed
        self.on_small = on_small
        self.grey = grey

    def _fitted(self, gt: torch.Tensor, lq: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The image (pair) ready to crop: resized to ``resize``, or enlarged when ``on_small=resize``."""
        if self.resize is not None:
            return _resize_shorter_side(gt, self.resize), lq
        if self.on_small == "resize" and min(gt.shape[1:]) < self.crop_size:
            return self._enlarge(gt, lq)
        return gt, lq

    def _enlarge(self, gt: torch.Tensor, lq: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        factor = self.crop_size / min(gt.shape[1:])
        size = [max(self.crop_size, round(side * factor / self.scale) * self.scale) for side in gt.shape[1:]]

        def resize(image: torch.Tensor, sides: list[int]) -> torch.Tensor:
            return F.interpolate(image[None], size=sides, mode="bicubic", align_corners=False)[0].clamp(0, 1)

        return resize(gt, size), None if lq is None else resize(lq, [side // self.scale for side in size])

    def _sample(
        self, gt: torch.Tensor, lq: torch.Tensor | None, *, key: int, label: int
    ) -> dict[str, torch.Tensor | int]:
        """The training sample of a fitted image (pair): crop(s), grey, flips; ``index`` is ``key``."""
        generator = _generator(self.seed, key, Stream.CROP)
        if lq is None and (self.crop == "resized" or self.key_view):
            return self._views(gt, key, label, generator)
        patch = self.crop_size if lq is None else self.crop_size // self.scale
        reference = gt if lq is None else lq
        top, left = (
            int(torch.randint(side - patch + 1, (1,), generator=generator)) for side in reference.shape[1:]
        )
        if lq is not None:
            lq = lq[:, top : top + patch, left : left + patch]
            top, left = top * self.scale, left * self.scale
        gt = gt[:, top : top + self.crop_size, left : left + self.crop_size]
        if self.grey:  # the crop only: cheaper than the whole image
            gt, lq = to_grey(gt), None if lq is None else to_grey(lq)
        flips = torch.rand(3, generator=generator) < 0.5
        sample: dict[str, torch.Tensor | int] = {"gt": self._augment(gt, flips), "index": key, "label": label}
        if lq is not None:
            sample["lq"] = self._augment(lq, flips)
            sample["type"] = 0
        return sample

    def _views(
        self, image: torch.Tensor, key: int, label: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor | int]:
        """The crop of clean ``image`` (``gt``), and with ``key_view`` a second one drawn independently."""
        sample: dict[str, torch.Tensor | int] = {"index": key, "label": label}
        views = {"gt": generator}
        if self.key_view:
            views["key"] = _generator(self.seed, key, Stream.VIEW)
        for name, draws in views.items():
            view = self._crop(image, draws)
            if self.grey:
                view = to_grey(view)
            sample[name] = self._augment(view, torch.rand(3, generator=draws) < 0.5)
        return sample

    def _crop(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One ``crop_size`` crop of a clean image: a random window, or a random resized box."""
        height, width = image.shape[1:]
        if self.crop == "random":
            top, left = (
                int(torch.randint(side - self.crop_size + 1, (1,), generator=generator))
                for side in (height, width)
            )
            return image[:, top : top + self.crop_size, left : left + self.crop_size]
        top, left, box_height, box_width = random_resized_box(
            height, width, scale=self.crop_scale, ratio=self.crop_ratio, generator=generator
        )
        box = image[None, :, top : top + box_height, left : left + box_width]
        size = (self.crop_size, self.crop_size)
        resized = F.interpolate(box, size=size, mode="bilinear", align_corners=False, antialias=True)
        return resized[0].clamp(0, 1)

    def _augment(self, image: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        if self.hflip and flips[0]:
            image = image.flip(-1)
        if self.rotate and flips[1]:
            image = image.flip(-2)
        if self.rotate and flips[2]:
            image = image.transpose(-1, -2)
        return image.contiguous()


class TrainCrops(CropPipeline, Dataset):
    """Random ``crop_size`` crops (GT pixels) with flips, indexed by stream position.

    Args:
        source: scanned image source; paired sources give aligned LQ crops of ``crop_size / scale``.
        crop_size: GT crop side in pixels.
        scale: GT / LQ size ratio of the data: a paired source's, or the degradation's that will
            down-sample clean crops (crops must be a multiple of it).
        hflip: random horizontal flips.
        rotate: random vertical flips and transposes (with ``hflip``: all 8 dihedral transforms).
        seed: data seed of the run.
        on_small: images smaller than the crop: ``"error"``, ``"skip"`` them, or ``"resize"`` them
            up (bicubic, keeping the aspect ratio) until the crop fits.
        cache_images: keep decoded images in memory (per worker); for small datasets.
        skip_bad_files: an image that fails to decode is replaced by the next one, with a warning.
        grey: make the crops grey (:func:`to_grey`; LQ and GT of paired data alike).
        crop: ``"random"`` (a ``crop_size`` window) or ``"resized"`` (torchvision's RandomResizedCrop: a
            box of ``crop_scale`` of the area and ``crop_ratio`` aspect, resized to ``crop_size``; clean
            images only).
        resize: first resize each image so its shorter side has this many pixels (bilinear, antialiased,
            as torchvision's ``Resize`` on PIL images); ``None`` keeps the images as they are.
        crop_scale: area fraction range of the ``"resized"`` crop.
        crop_ratio: aspect-ratio range of the ``"resized"`` crop.
        key_view: also give ``key``, a second crop of the same clean image drawn independently of the first
            (ConStyle v2's positive view: the official recipe crops the query and the key independently).
        osf: N×D features of the source's whole degraded images (row i: image i, paired sources), given to
            each crop of image i as ``osf`` (PTG-RM's cached guide features,
            :func:`~restoration.guides.cache.precompute`); ``None``: none.
    """

    def __init__(
        self,
        source: ImageSource,
        *,
        crop_size: int,
        cache_images: bool = False,
        skip_bad_files: bool = False,
        osf: torch.Tensor | None = None,
        **options: Any,
    ) -> None:
        super().__init__(crop_size=crop_size, paired=source.paired, description=source.description, **options)
        self.source = source
        self.osf = _checked_features(osf, source)
        self.cache_images = cache_images
        self.skip_bad_files = skip_bad_files
        self.indices = self._usable_indices(self.on_small)
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._order: tuple[int, torch.Tensor] | None = None

    def _usable_indices(self, on_small: str) -> list[int]:
        if self.resize is not None or self.crop == "resized":
            return list(range(len(self.source)))  # every image is resized to fit
        small = [i for i in range(len(self.source)) if min(self.source.size(i)) < self.crop_size]
        if small and on_small == "error":
            height, width = self.source.size(small[0])
            raise DataError(
                f"{self.source.description}: image {self.source.name(small[0])!r} is {width}×{height}, "
                "smaller "
                f"than the training crop {self.crop_size}×{self.crop_size} ({len(small)} such images); lower "
                "datamodule.crop_size or set datamodule.on_small=skip|resize"
            )
        if small and on_small == "skip":
            log.warning("%s: skipping %d images smaller than the crop", self.source.description, len(small))
            skipped = set(small)
            return [i for i in range(len(self.source)) if i not in skipped]
        return list(range(len(self.source)))

    def __len__(self) -> int:
        return len(self.indices)

    def _image_at(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.indices))
        if self._order is None or self._order[0] != epoch:
            self._order = (
                epoch,
                torch.randperm(len(self.indices), generator=_generator(self.seed, epoch, Stream.ORDER)),
            )
        return self.indices[int(self._order[1][offset])]

    def _read(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if index in self._cache:
            return self._cache[index]
        gt, lq = self._fitted(*self.source.read(index))
        if self.cache_images:
            self._cache[index] = (gt, lq)
        return gt, lq

    def __getitem__(self, position: int) -> dict[str, torch.Tensor | int]:
        index = self._image_at(position)
        for attempt in range(len(self.indices)):
            try:
                gt, lq = self._read(index)
                break
            except DataError as error:
                if not self.skip_bad_files:
                    raise
                log.warning("skipping unreadable training image (%s)", error)
                index = self._image_at(position + attempt + 1)
        else:
            raise DataError(f"{self.source.description}: no training image could be read")
        sample = self._sample(gt, lq, key=position, label=self.source.label(index))
        if self.osf is not None:
            sample["osf"] = self.osf[index]
        return sample


class WholeImages(Dataset):
    """Whole images for validation and test; clean images are degraded with a per-image fixed seed.

    Args:
        source: scanned image source.
        degradation: synthesizes LQ from clean images (unused for paired sources); clean GT images
            are cropped to a multiple of its scale first ("modcrop").
        seed: validation seed; image ``i`` is degraded with a generator seeded by ``(seed, i)``.
        crop: evaluate the centre ``crop``×``crop`` GT pixels of each image (``None``: whole images);
            paired LQ images are cropped at the matching place. A quick check (``trainer=smoke``),
            not a benchmark protocol.
        every_type: with an all-in-one degradation (one that has ``ops`` and ``names``), evaluate every
            image under every type (``len(source) × len(names)`` items named ``<image>_<type>``) instead of
            under the one type its seed draws, so that each type's score covers every image.
        grey: make the images grey (:func:`to_grey`) before degrading them; paired LQ images too.
        osf: N×D features of the source's whole degraded images (row i: image i, paired sources), given to
            item i as ``osf``; with ``crop`` still the feature of the whole image.
    """

    def __init__(
        self,
        source: ImageSource,
        *,
        degradation: Degradation | None,
        seed: int = 1,
        crop: int | None = None,
        every_type: bool = False,
        grey: bool = False,
        osf: torch.Tensor | None = None,
    ) -> None:
        if not source.paired and degradation is None:
            raise DataError(f"{source.description} holds clean images but no degradation is configured")
        if crop is not None and crop < 1:
            raise DataError(f"evaluation crop={crop}; expected a positive size or null (whole images)")
        self.source = source
        self.degradation = degradation
        self.seed = seed
        self.crop = crop
        self.grey = grey
        self.osf = _checked_features(osf, source)
        names = getattr(degradation, "names", None) if every_type and not source.paired else None
        if every_type and not source.paired and not (names and hasattr(degradation, "ops")):
            raise DataError(
                f"evaluation every_type=true needs an all-in-one degradation (with ops and names); "
                f"got {type(degradation).__name__}"
            )
        self.types: tuple[str, ...] = tuple(names or ())

    def __len__(self) -> int:
        return len(self.source) * max(len(self.types), 1)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int | str]:
        if self.types:
            return self._typed_item(index)
        gt, lq = self._read(index)
        degradation_type = 0
        if lq is not None and self.crop is not None:
            gt, lq = _centre_crop_pair(gt, lq, self.crop)
        if lq is None:
            assert self.degradation is not None
            scale = self.degradation.scale
            if self.crop is not None:
                gt = _centre_crop(gt, self.crop - self.crop % scale or scale)
            gt = gt[:, : gt.shape[1] - gt.shape[1] % scale, : gt.shape[2] - gt.shape[2] % scale]
            degraded, types = self.degradation(gt[None], _generator(self.seed, index))
            lq, degradation_type = degraded[0], int(types[0])
        item = {
            "lq": lq,
            "gt": gt,
            "index": index,
            "name": self.source.name(index),
            "label": self.source.label(index),
            "type": degradation_type,
        }
        if self.osf is not None:
            item["osf"] = self.osf[index]
        return item

    def _read(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        gt, lq = self.source.read(index)
        if not self.grey:
            return gt, lq
        return to_grey(gt), None if lq is None else to_grey(lq)

    def _typed_item(self, index: int) -> dict[str, torch.Tensor | int | str]:
        """Item ``index`` of ``every_type``: image ``index // T`` under type ``index % T``; the image's
        seed is the same for all its types, so only the type differs between them."""
        image, type_id = divmod(index, len(self.types))
        gt, _ = self._read(image)
        op = self.degradation.ops[type_id]  # type: ignore[union-attr]
        if self.crop is not None:
            gt = _centre_crop(gt, self.crop - self.crop % op.scale or op.scale)
        gt = gt[:, : gt.shape[1] - gt.shape[1] % op.scale, : gt.shape[2] - gt.shape[2] % op.scale]
        return {
            "lq": op.apply(gt[None], _generator(self.seed, image))[0],
            "gt": gt,
            "index": index,
            "name": f"{self.source.name(image)}_{self.types[type_id]}",
            "label": self.source.label(image),
            "type": type_id,
        }


def _checked_features(osf: torch.Tensor | None, source: ImageSource) -> torch.Tensor | None:
    """``osf`` if it has one row per image of the paired ``source`` (or is ``None``)."""
    if osf is None:
        return None
    if not source.paired:
        raise ConfigError(
            f"{source.description}: cached features need paired images (osf={tuple(osf.shape)})"
        )
    if osf.ndim != 2 or len(osf) != len(source):
        raise ValueError(
            f"{source.description}: osf of shape {tuple(osf.shape)}; expected one row per image "
            f"({len(source)} images)"
        )
    return osf


def _centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size``×``size`` pixels of ``image`` (less along a side that is shorter)."""
    height, width = image.shape[-2:]
    crop_height, crop_width = min(size, height), min(size, width)
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return image[..., top : top + crop_height, left : left + crop_width]


def _centre_crop_pair(gt: torch.Tensor, lq: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre crops of a GT image and its LQ image (``scale`` times smaller) at the same place."""
    scale = max(1, gt.shape[-1] // lq.shape[-1])
    lq_size = max(1, size // scale)
    lq_crop = _centre_crop(lq, lq_size)
    top = (lq.shape[-2] - lq_crop.shape[-2]) // 2
    left = (lq.shape[-1] - lq_crop.shape[-1]) // 2
    gt_crop = gt[
        ...,
        top * scale : (top + lq_crop.shape[-2]) * scale,
        left * scale : (left + lq_crop.shape[-1]) * scale,
    ]
    return gt_crop, lq_crop


class TaskMixCrops(Dataset):
    """Training crops of several tasks (one dataset each): each sample draws its task uniformly.

    The task of stream position ``p`` is drawn from a generator seeded with ``(seed, p, Stream.MIX)``, then
    the task's crops give position ``p`` (an image of that task, cropped and flipped), so a sample stays a
    pure function of ``(seed, position)`` and resuming works as for :class:`TrainCrops`.
    Every sample carries ``type`` = its task's index.

    Args:
        tasks: one :class:`TrainCrops` per task, in type-id order.
        seed: data seed of the run.
    """

    def __init__(self, tasks: list[TrainCrops], *, seed: int = 0) -> None:
        if not tasks:
            raise DataError("TaskMixCrops needs at least one task")
        self.tasks = tasks
        self.seed = seed

    def __len__(self) -> int:
        return sum(len(task) for task in self.tasks)

    def task_at(self, position: int) -> int:
        """The task index drawn for stream position ``position``."""
        generator = _generator(self.seed, position, Stream.MIX)
        return int(torch.randint(len(self.tasks), (1,), generator=generator))

    def __getitem__(self, position: int) -> dict[str, torch.Tensor | int]:
        task = self.task_at(position)
        sample = self.tasks[task][position]
        sample["type"] = task
        return sample


class TaggedImages(Dataset):
    """Whole images of several tasks in one dataset, each tagged with its task index as ``type``.

    The tasks are interleaved (first image of every task, then the second...), so the first few
    images, those that get comparison grids, cover several tasks. Names get their task as a prefix.

    Args:
        tasks: ``(task name, whole images of the task)`` in type-id order.
    """

    def __init__(self, tasks: list[tuple[str, WholeImages]]) -> None:
        self.tasks = tasks
        longest = max(len(images) for _, images in tasks)
        self.order = [
            (task, index)
            for index in range(longest)
            for task, (_, images) in enumerate(tasks)
            if index < len(images)
        ]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int | str]:
        task, local_index = self.order[index]
        name, images = self.tasks[task]
        sample = images[local_index]
        sample.update(index=index, name=f"{name}_{sample['name']}", type=task)
        return sample


class DegradedImages(Dataset):
    """Degraded images with no ground truth, to be restored as they are (the ``predict`` path).

    Args:
        source: scanned image source; its images are taken as the degraded inputs.
    """

    def __init__(self, source: ImageSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int | str]:
        lq, _ = self.source.read(index)
        return {"lq": lq, "index": index, "name": self.source.name(index)}


class StreamBatchSampler(Sampler[list[int]]):
    """Endless batches of stream positions for one rank, starting at ``start_step``."""

    def __init__(self, *, batch_size: int, rank: int = 0, world_size: int = 1, start_step: int = 0) -> None:
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            first = (step * self.world_size + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))
            step += 1


class ShardSampler(Sampler[int]):
    """A contiguous 1/world_size share of ``range(length)``, without the padding of DistributedSampler.

    Shards may differ in size by one; metrics are summed over ranks, so every image counts once.
    """

    def __init__(self, length: int, *, rank: int = 0, world_size: int = 1) -> None:
        self.start = length * rank // world_size
        self.stop = length * (rank + 1) // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start
