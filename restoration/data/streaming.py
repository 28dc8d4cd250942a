"""Packed images streamed with LitData (``datamodule=streaming``).

``python -m restoration.data.pack SRC OUT`` (:mod:`restoration.data.pack`) writes each split as LitData
chunks of the files' own bytes. :class:`PackedImages` is the source of one split, in a local folder or at
any URI LitData reads (``s3://``, ``gs://``, ``azure://``, ``hf://``; remote chunks are downloaded into
``cache_dir`` as they are needed):

- as a **training** source it is streamed (:class:`StreamingCrops`): LitData shards the chunks across DDP
  ranks and loader workers, shuffles chunks and the items within them with ``(seed, epoch)``, and the
  :class:`~litdata.StreamingDataLoader`'s state goes into the checkpoint, so a resumed run reads exactly the
  batches an uninterrupted one reads. Each item is decoded and cropped by the same
  :class:`~restoration.data.datasets.CropPipeline` as the folder path, and degraded on the training device
  by the datamodule, which numbers the batches' stream positions itself as the folder path does;
- as a **validation or test** source its first ``max_images`` items are read by index, like any source.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from litdata import StreamingDataset

from restoration.data.datasets import CropPipeline
from restoration.data.io import read_image
from restoration.data.pack import METADATA_KEY
from restoration.data.sources import ImageSource
from restoration.errors import ConfigError, DataError

__all__ = ["PackedImages", "StreamingCrops"]

log = logging.getLogger(__name__)


def _is_uri(root: str) -> bool:
    return "://" in root


class PackedImages(ImageSource):
    """One split packed by :mod:`restoration.data.pack`: clean images with class labels.

    Args:
        root: the split's folder (``OUT/train``, ``OUT/val``) or URI.
        max_images: read only the first N items (validation and test).
        cache_dir: where chunks of a remote ``root`` are kept while they are read (unused for a local one).
    """

    def __init__(self, *, root: str, max_images: int | None = None, cache_dir: str | None = None) -> None:
        super().__init__()
        if max_images is not None and max_images < 1:
            raise ConfigError(f"PackedImages max_images={max_images}; expected a positive count or null")
        self.root = str(root)
        self.max_images = max_images
        self.cache_dir = cache_dir if _is_uri(self.root) else None
        self.description = f"{root} (packed)"
        self._count: int | None = None
        self._labels: tuple[int, int] = (-1, -1)
        self._items: dict[int, dict[str, Any]] = {}
        self._dataset: StreamingDataset | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_dataset"] = None  # each loader worker opens its own reader
        return state

    def open(self) -> StreamingDataset:
        """The LitData dataset of the split (item access by index); a missing pack is one line."""
        if self._dataset is None:
            if not _is_uri(self.root) and not (Path(self.root) / "index.json").is_file():
                raise DataError(
                    f"{self.root}: no index.json; expected a split packed by "
                    "`python -m restoration.data.pack SRC OUT` (OUT/train, and OUT/val unless packed with "
                    "--holdout 0: then set datamodule.val.root to another pack's split)"
                )
            self._dataset = StreamingDataset(self.root, cache_dir=self.cache_dir)
        return self._dataset

    def metadata(self) -> dict[str, Any]:
        """What the pack recorded of the split: ``classes``, ``labels`` (min, max), ``count``, ``source``."""
        dataset = self.open()
        index = Path(dataset.input_dir.path) / "index.json"
        metadata = json.loads(index.read_text()).get(METADATA_KEY)
        if metadata is None:
            raise DataError(
                f"{self.root}: index.json has no {METADATA_KEY!r} entry; expected a split packed by "
                "`python -m restoration.data.pack`"
            )
        return metadata

    @property
    def scanned(self) -> bool:
        return self._count is not None

    def scan(self, *, skip_bad_files: bool = False, decode: bool = False) -> None:
        """Read the split's metadata; ``decode`` also decodes every item this source gives (validation)."""
        metadata = self.metadata()
        self.classes = tuple(metadata["classes"])
        self._labels = (int(metadata["labels"][0]), int(metadata["labels"][1]))
        count = len(self.open())
        self._count = count if self.max_images is None else min(count, self.max_images)
        if decode:
            bad = [str(error) for index in range(self._count) if (error := self._decode_error(index))]
            if bad and not skip_bad_files:
                more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                raise DataError(
                    f"{bad[0]}{more}; set datamodule.skip_bad_files=true to skip unreadable files"
                )
            if bad:
                log.warning("%s: %d unreadable items, e.g. %s", self.description, len(bad), bad[0])

    def _decode_error(self, index: int) -> DataError | None:
        try:
            self.read(index)
        except DataError as error:
            return error
        return None

    def __len__(self) -> int:
        if self._count is None:
            raise RuntimeError(f"{self.description}: call scan() before using the source")
        return self._count

    def item(self, index: int) -> dict[str, Any]:
        """The packed fields of item ``index`` but its bytes: ``name``, ``label``, ``height``, ``width``."""
        if index not in self._items:
            self._read_item(index)
        return self._items[index]

    def _read_item(self, index: int) -> dict[str, Any]:
        """Item ``index`` whole (``image``: the file's bytes); its other fields are kept for :meth:`item`."""
        item = self.open()[index]
        self._items[index] = {key: value for key, value in item.items() if key != "image"}
        return item

    def name(self, index: int) -> str:
        return str(Path(self.item(index)["name"]).with_suffix(""))

    def label(self, index: int) -> int:
        return int(self.item(index)["label"])

    def label_range(self) -> tuple[int, int]:
        return self._labels

    def size(self, index: int) -> tuple[int, int]:
        item = self.item(index)
        return int(item["height"]), int(item["width"])

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return decode(self._read_item(index), self.root), None


def decode(item: dict[str, Any], root: str) -> torch.Tensor:
    """The packed image of ``item`` as a 3×H×W float tensor; a bad one is a DataError naming it."""
    name = str(item["name"])
    try:
        return read_image(Path(name), bytes(item["image"]))
    except DataError as error:
        raise DataError(f"{root}: packed item {error}") from None


class StreamingCrops(CropPipeline, StreamingDataset):
    """Training samples streamed from a packed split: LitData's order and sharding, our crops.

    An item's crop is seeded by its key ``epoch · N + item`` (N items in the split), so a sample is a pure
    function of the seed, the epoch and the item, whatever rank or worker reads it. The crop options are
    :class:`~restoration.data.datasets.TrainCrops`'; ``on_small=skip`` cannot keep a stream's batches full
    and is refused (an image smaller than the crop is an error, or is enlarged with ``resize``).

    Args:
        source: the packed training split.
        crop_size: GT crop side in pixels.
        seed: data seed of the run (LitData's shuffle is seeded from it).
        skip_bad_files: an item that fails to decode is replaced by the worker's previous image, with a
            warning (the pack already left out files whose header could not be read).
        **options: the crop options of :class:`~restoration.data.datasets.CropPipeline`.
    """

    def __init__(
        self,
        source: PackedImages,
        *,
        crop_size: int,
        seed: int = 0,
        skip_bad_files: bool = False,
        **options: Any,
    ) -> None:
        CropPipeline.__init__(self, crop_size=crop_size, seed=seed, description=source.description, **options)
        if self.on_small == "skip":
            raise ConfigError(
                f"datamodule.on_small=skip: {source.description} is streamed, and a stream cannot skip an "
                "image without breaking its batches; use on_small=error or resize"
            )
        StreamingDataset.__init__(
            self,
            source.root,
            cache_dir=source.cache_dir,
            shuffle=True,
            seed=seed,  # LitData shuffles with (seed, epoch); the crops use the same data seed
            # items one at a time: a window of 256 encoded images copied at once bought nothing but memory
            # (experiments/bench/README.md, "Packed streaming data")
            batch_decode=False,
        )
        self.source = source
        self.items = len(source)
        self.skip_bad_files = skip_bad_files
        self._last_good: tuple[torch.Tensor, int] | None = None

    def __getitem__(self, index: Any) -> dict[str, torch.Tensor | int]:
        item = super().__getitem__(index)
        number = int(getattr(index, "index", index))
        label = int(item["label"])
        try:
            image = decode(item, self.source.root)
            self._check_size(image, item)
        except DataError as error:
            if not self.skip_bad_files or self._last_good is None:
                raise
            log.warning("skipping unreadable training item (%s); its previous image stands in", error)
            image, label = self._last_good
        self._last_good = (image, label)
        gt, _ = self._fitted(image, None)
        key = (self.current_epoch - 1) * self.items + number
        return self._sample(gt, None, key=key, label=label)

    def _check_size(self, image: torch.Tensor, item: dict[str, Any]) -> None:
        fits = self.resize is not None or self.crop == "resized" or self.on_small == "resize"
        height, width = image.shape[1:]
        if not fits and min(height, width) < self.crop_size:
            raise DataError(
                f"{self.source.root}: packed image {item['name']!r} is {width}×{height}, smaller than the "
                f"training crop {self.crop_size}×{self.crop_size}; lower datamodule.crop_size or set "
                "datamodule.on_small=resize"
            )
