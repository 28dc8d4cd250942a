"""Image sources: which images a split holds, where they are, and how to read one.

A source is cheap to construct (Hydra builds it from the config); it touches the disk only in
:meth:`ImageSource.scan`, which the datamodule calls in ``setup``, and :meth:`ImageSource.prepare`. After the
scan it knows every image's name, size and class label. Three kinds:

- clean images (``paired = False``): :class:`EmbeddedPhotos`, :class:`ImageFolder`; the
  degraded input is synthesized (on the training device for training, per image with a fixed
  seed for validation);
- paired images (``paired = True``): :class:`PairedFolders` (LQ and GT files matched by key),
  :class:`SIDDBlocks` (the SIDD benchmark's ``.mat`` block files) and :class:`SIDNpyFrames` (SID's
  ``.npy`` frames in SNR-Aware's scene folders).

Bad input raises a one-line :class:`~restoration.errors.DataError` naming the path, or, with
``skip_bad_files``, is skipped with a warning that counts what was skipped.

The folder sources (:class:`ImageFolder`, :class:`PairedFolders`) take an ``index_cache`` folder: the image
headers a scan reads are kept there in an index keyed by the folder's listing
(:func:`~restoration.data.io.index_images`), so the next scan, on another process or after a restart, lists
the folder but opens no file. The index is written atomically and needs no lock: when every DDP rank scans at
once, each may build it (the same work repeated, never a torn file); :meth:`ImageSource.prepare` on one
process first lets the others read it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from restoration.data.io import (
    IMAGE_EXTENSIONS,
    ImageFiles,
    image_size,
    index_images,
    list_image_files,
    read_image,
)
from restoration.errors import ConfigError, DataError

__all__ = [
    "EMBEDDED_SPLITS",
    "EmbeddedPhotos",
    "ImageFolder",
    "ImageSource",
    "PairedFolders",
    "SIDDBlocks",
    "SIDNpyFrames",
]

log = logging.getLogger(__name__)

# The colour photos shipped inside scikit-image, and its grayscale photos (read as RGB). Synthetic
# images (chessboards, phantom, logo, horse silhouette), the motion-blurred clock and the 102-px
# microaneurysms crop are left out: they are not clean natural images. Three disjoint splits: training,
# validation (picks the checkpoint) and test (reported), each split holding colour and grayscale photos.
# The stereo pair motorcycle_left/right is kept together in training so no held-out view leaks into it.
EMBEDDED_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "motorcycle_left.png",
        "motorcycle_right.png",
        "hubble_deep_field.jpg",
        "retina.jpg",
        "ihc.png",
        "color.png",
        "moon.png",
        "brick.png",
        "page.png",
        "text.png",
        "cell.png",
    ),
    "val": ("chelsea.png", "coffee.png", "camera.png", "gravel.png"),
    "test": ("astronaut.png", "rocket.jpg", "coins.png", "grass.png"),
}

_SCAN_THREADS = 8


@dataclass(frozen=True)
class _Entry:
    name: str
    gt: Path | int
    lq: Path | int | None
    label: int
    size: tuple[int, int]  # (height, width) of the GT image


class ImageSource:
    """Base class: an indexed collection of GT images (and LQ images when ``paired``)."""

    paired: bool = False
    description: str = "images"

    def __init__(self) -> None:
        self._entries: list[_Entry] | None = None
        self.classes: tuple[str, ...] = ()

    def scan(self, *, skip_bad_files: bool = False, decode: bool = False) -> None:
        """Find the images and read their sizes; ``decode`` also decodes every file once."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Work for one process to do before every process scans (folder sources write their index)."""

    @property
    def scanned(self) -> bool:
        return self._entries is not None

    @property
    def entries(self) -> list[_Entry]:
        if self._entries is None:
            raise RuntimeError(f"{self.description}: call scan() before using the source")
        return self._entries

    def __len__(self) -> int:
        return len(self.entries)

    def name(self, index: int) -> str:
        return self.entries[index].name

    def label(self, index: int) -> int:
        return self.entries[index].label

    def label_range(self) -> tuple[int, int]:
        """(smallest, largest) class label of the images (-1: no labels)."""
        labels = [entry.label for entry in self.entries]
        return min(labels), max(labels)

    def size(self, index: int) -> tuple[int, int]:
        return self.entries[index].size

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(GT, LQ or None) as 3×H×W float32 tensors in [0, 1]."""
        entry = self.entries[index]
        lq = None if entry.lq is None else read_image(entry.lq)
        return read_image(entry.gt), lq

    def _checked(
        self, entries: list[_Entry], *, skip_bad_files: bool, decode: bool
    ) -> list[tuple[_Entry, tuple[int, int] | None]]:
        """Read every file's header (or decode it): entries with their GT size, and the LQ size.

        Raises on the first bad file, or skips bad files with one warning that counts them.
        """

        def check(entry: _Entry) -> tuple[_Entry, tuple[int, int] | None] | str:
            try:
                sizes = [
                    None if path is None or not isinstance(path, Path) else _size(path, decode)
                    for path in (entry.gt, entry.lq)
                ]
            except DataError as error:
                return str(error)
            gt_size = sizes[0] if sizes[0] is not None else entry.size
            return _Entry(entry.name, entry.gt, entry.lq, entry.label, gt_size), sizes[1]

        with ThreadPoolExecutor(_SCAN_THREADS) as pool:
            return self._kept(list(pool.map(check, entries)), skip_bad_files=skip_bad_files)

    def _kept(
        self, results: list[tuple[_Entry, tuple[int, int] | None] | str], *, skip_bad_files: bool
    ) -> list[tuple[_Entry, tuple[int, int] | None]]:
        """The checked entries of ``results``; its strings are the errors of bad files, raised or skipped."""
        errors = [result for result in results if isinstance(result, str)]
        if errors and not skip_bad_files:
            more = f" (and {len(errors) - 1} more bad files)" if len(errors) > 1 else ""
            raise DataError(f"{errors[0]}{more}; set datamodule.skip_bad_files=true to skip unreadable files")
        if errors:
            log.warning(
                "%s: skipped %d of %d unreadable files, e.g. %s",
                self.description,
                len(errors),
                len(results),
                errors[0],
            )
        kept = [result for result in results if not isinstance(result, str)]
        if not kept:
            raise DataError(f"{self.description}: none of the {len(results)} files could be read")
        return kept


def _size(path: Path, decode: bool) -> tuple[int, int]:
    if path.suffix == ".npy":
        height, width = _npy_frame(path, decode=decode).shape[:2]
        return height, width
    if not decode:
        return image_size(path)
    height, width = read_image(path).shape[1:]
    return height, width


class EmbeddedPhotos(ImageSource):
    """The photos that ship inside scikit-image: the offline default dataset (see ``EMBEDDED_SPLITS``)."""

    def __init__(self, *, split: str = "train") -> None:
        super().__init__()
        if split not in EMBEDDED_SPLITS:
            raise ConfigError(
                f"embedded split {split!r} is unknown; expected one of {sorted(EMBEDDED_SPLITS)}"
            )
        self.split = split
        self.description = f"embedded photos ({split})"

    def scan(self, *, skip_bad_files: bool = False, decode: bool = False) -> None:
        import skimage.data

        root = Path(skimage.data.data_dir)
        entries = []
        for file_name in EMBEDDED_SPLITS[self.split]:
            path = root / file_name
            if not path.is_file():
                raise DataError(
                    f"{path}: embedded photo missing; reinstall scikit-image (pip install scikit-image)"
                )
            entries.append(_Entry(Path(file_name).stem, path, None, -1, (0, 0)))
        self._entries = [
            entry for entry, _ in self._checked(entries, skip_bad_files=skip_bad_files, decode=decode)
        ]


def _hash_fraction(text: str) -> float:
    """A stable number in [0, 1) for a relative path: the hold-out split survives added files."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64


class ImageFolder(ImageSource):
    """Clean images under ``root`` (recursive), optionally with class sub-folders as labels.

    Args:
        root: the folder; images anywhere below it (png, jpg, jpeg, bmp, tif, tiff, webp).
        pattern: glob relative to ``root`` selecting the files.
        class_folders: ``"auto"`` gives class labels (sorted first-level sub-folder names, as in
            an ImageNet layout ``root/<class>/<image>``) when every image lies in such a
            sub-folder; ``True`` requires that layout; ``False`` gives no labels (-1).
        part: ``"all"`` images, or the ``"train"`` / ``"holdout"`` side of a split that puts a
            file in the hold-out with probability ``holdout`` by a hash of its relative path.
        holdout: fraction of files held out when ``part`` is ``"train"`` or ``"holdout"``.
        max_images: keep only the first N files (sorted by path) after the split.
        index_cache: folder of the image header index (see the module docstring): a scan that finds the
            folder's listing unchanged opens no file. ``None`` reads every header at every scan.
    """

    def __init__(
        self,
        *,
        root: str,
        pattern: str = "**/*",
        class_folders: bool | str = "auto",
        part: str = "all",
        holdout: float = 0.0,
        max_images: int | None = None,
        index_cache: str | None = None,
    ) -> None:
        super().__init__()
        if part not in ("all", "train", "holdout"):
            raise ConfigError(f"ImageFolder part={part!r}; expected 'all', 'train' or 'holdout'")
        if part != "all" and not 0.0 < holdout < 1.0:
            raise ConfigError(
                f"ImageFolder holdout={holdout} with part={part!r}; expected a fraction in (0, 1)"
            )
        if class_folders not in (True, False, "auto"):
            raise ConfigError(f"ImageFolder class_folders={class_folders!r}; expected true, false or 'auto'")
        self.root = Path(root)
        self.pattern = pattern
        self.class_folders = class_folders
        self.part = part
        self.holdout = holdout
        self.max_images = max_images
        self.index_cache = None if index_cache is None else Path(index_cache)
        self.description = f"{root}" if part == "all" else f"{root} ({part} part)"

    def prepare(self) -> None:
        """Write the header index of the files this source selects (when ``index_cache`` is set)."""
        if self.index_cache is not None:
            files = self._files()
            index_images(files, positions=self._selected(files), cache_dir=self.index_cache)

    def scan(self, *, skip_bad_files: bool = False, decode: bool = False) -> None:
        files = self._files()
        self.classes = self._classes(files)
        class_index = {name: i for i, name in enumerate(self.classes)}
        selected = self._selected(files)

        def entry(position: int, size: tuple[int, int]) -> _Entry:
            name = files.names[position]
            label = class_index[name.split("/", 1)[0]] if class_index else -1
            return _Entry(os.path.splitext(name)[0], files.path(position), None, label, size)

        if decode:  # decoding reads every byte anyway: no use for the header index
            entries = [entry(position, (0, 0)) for position in selected]
            checked = self._checked(entries, skip_bad_files=skip_bad_files, decode=True)
        else:
            index = index_images(files, positions=selected, cache_dir=self.index_cache)
            results: list[tuple[_Entry, tuple[int, int] | None] | str] = []
            for position in selected:
                header = index.header(position)
                results.append(header if isinstance(header, str) else (entry(position, header), None))
            checked = self._kept(results, skip_bad_files=skip_bad_files)
        self._entries = [checked_entry for checked_entry, _ in checked]

    def _files(self) -> ImageFiles:
        return _find_images(
            self.root, self.pattern, "clean images, optionally in class sub-folders root/<class>/"
        )

    def _classes(self, files: ImageFiles) -> tuple[str, ...]:
        in_subfolders = all("/" in name for name in files.names)
        if self.class_folders is True and not in_subfolders:
            loose = next(name for name in files.names if "/" not in name)
            raise DataError(
                f"{self.root}: class_folders=true but {loose} is not inside a class sub-folder; "
                "expected root/<class>/<image>"
            )
        if self.class_folders is not False and in_subfolders:
            return tuple(sorted({name.split("/", 1)[0] for name in files.names}))
        return ()

    def _selected(self, files: ImageFiles) -> list[int]:
        """Positions in ``files`` of the images of ``part``, at most ``max_images`` of them."""
        selected = [
            position
            for position, name in enumerate(files.names)
            if self.part == "all" or (_hash_fraction(name) < self.holdout) == (self.part == "holdout")
        ]
        if self.max_images is not None:
            selected = selected[: self.max_images]
        if not selected:
            raise DataError(f"{self.description}: the {self.part} part is empty; raise holdout or add images")
        return selected


class PairedFolders(ImageSource):
    """Degraded (LQ) and ground-truth (GT) images in two folders, matched by a key.

    The key of a file is its path relative to its folder, without the extension, or, with
    ``key_regex``, the concatenated groups (or the whole match) of that regex searched in it:
    e.g. ``(\\d+)$`` pairs LOL-v2's ``low00001.png`` with ``normal00001.png``.

    Args:
        lq_dir: folder of degraded images.
        gt_dir: folder of ground-truth images (may equal ``lq_dir`` with different patterns).
        lq_pattern: glob relative to ``lq_dir`` selecting LQ files.
        gt_pattern: glob relative to ``gt_dir`` selecting GT files.
        key_regex: regex that extracts the matching key from the relative path (posix, no extension).
        scale: GT size / LQ size (super-resolution pairs); 1 means equal sizes.
        modcrop: accept GT images up to ``scale - 1`` pixels larger than ``scale`` × LQ along a side and
            crop them to ``scale`` × LQ from the top left, as EDSR's benchmark loader does with the HR images
            of Set14, B100 and Urban100 whose sides are not multiples of 3 or 4.
        index_cache: folder of the image header index of both folders (see the module docstring).
            ``None`` reads every header at every scan.
    """

    paired = True

    def __init__(
        self,
        *,
        lq_dir: str,
        gt_dir: str,
        lq_pattern: str = "**/*",
        gt_pattern: str = "**/*",
        key_regex: str | None = None,
        scale: int = 1,
        modcrop: bool = False,
        index_cache: str | None = None,
    ) -> None:
        super().__init__()
        self.modcrop = modcrop
        self.lq_dir = Path(lq_dir)
        self.gt_dir = Path(gt_dir)
        self.lq_pattern = lq_pattern
        self.gt_pattern = gt_pattern
        try:
            self.key_regex = None if key_regex is None else re.compile(key_regex)
        except re.error as error:
            raise ConfigError(f"key_regex {key_regex!r} is not a valid regular expression: {error}") from None
        if scale < 1:
            raise ConfigError(f"PairedFolders scale={scale}; expected an integer >= 1")
        self.scale = scale
        self.index_cache = None if index_cache is None else Path(index_cache)
        self.description = f"pairs {lq_dir} -> {gt_dir}"

    def _keyed(self, folder: Path, pattern: str, role: str) -> tuple[ImageFiles, dict[str, int]]:
        """The files of one folder, and each one's position among them by key."""
        files = _find_images(folder, pattern, f"{role} images matched to the other folder by file name")
        keyed: dict[str, int] = {}
        for position, relative in enumerate(files.names):
            key = self._key(os.path.splitext(relative)[0], files.path(position))
            if key in keyed:
                raise DataError(
                    f"{files.path(position)} and {files.path(keyed[key])} both have the key {key!r}; "
                    "keys must be unique per folder"
                )
            keyed[key] = position
        return files, keyed

    def _key(self, relative: str, path: Path) -> str:
        if self.key_regex is None:
            return relative
        match = self.key_regex.search(relative)
        if match is None:
            raise DataError(f"{path}: key_regex {self.key_regex.pattern!r} does not match {relative!r}")
        return "".join(group for group in match.groups() if group) if match.groups() else match.group(0)

    def _matched(self) -> tuple[ImageFiles, dict[str, int], ImageFiles, dict[str, int]]:
        """Both folders' files and positions by key; every file has its partner."""
        lq_files, lq = self._keyed(self.lq_dir, self.lq_pattern, "degraded (LQ)")
        gt_files, gt = self._keyed(self.gt_dir, self.gt_pattern, "ground-truth (GT)")
        lq_only, gt_only = sorted(lq.keys() - gt.keys()), sorted(gt.keys() - lq.keys())
        if lq_only or gt_only:
            raise DataError(
                f"{self.description}: unmatched files: "
                + "; ".join(
                    f"{len(names)} {role} without {other} ({_preview(names)})"
                    for names, role, other in ((lq_only, "LQ", "GT"), (gt_only, "GT", "LQ"))
                    if names
                )
            )
        return lq_files, lq, gt_files, gt

    def prepare(self) -> None:
        """Write the header index of both folders (when ``index_cache`` is set)."""
        if self.index_cache is not None:
            lq_files, _, gt_files, _ = self._matched()
            for files in (gt_files, lq_files):
                index_images(files, cache_dir=self.index_cache)

    def scan(self, *, skip_bad_files: bool = False, decode: bool = False) -> None:
        lq_files, lq, gt_files, gt = self._matched()
        entries = [
            _Entry(key, gt_files.path(gt[key]), lq_files.path(lq[key]), -1, (0, 0)) for key in sorted(gt)
        ]
        if decode:  # decoding reads every byte anyway: no use for the header index
            checked = self._checked(entries, skip_bad_files=skip_bad_files, decode=True)
        else:
            gt_index, lq_index = (
                index_images(files, cache_dir=self.index_cache) for files in (gt_files, lq_files)
            )
            checked = self._kept(
                [
                    _indexed_pair(entry, gt_index.header(gt[entry.name]), lq_index.header(lq[entry.name]))
                    for entry in entries
                ],
                skip_bad_files=skip_bad_files,
            )
        sized = []
        for entry, lq_size in checked:
            gt_size = entry.size
            assert lq_size is not None
            excess = (gt_size[0] - lq_size[0] * self.scale, gt_size[1] - lq_size[1] * self.scale)
            if excess != (0, 0) and not (self.modcrop and all(0 <= extra < self.scale for extra in excess)):
                expected = "the same size" if self.scale == 1 else f"GT = {self.scale} × LQ"
                raise DataError(
                    f"size mismatch: {entry.lq} is {lq_size[1]}×{lq_size[0]} but {entry.gt} is "
                    f"{gt_size[1]}×{gt_size[0]} (width×height); expected {expected}"
                )
            sized.append(replace(entry, size=(lq_size[0] * self.scale, lq_size[1] * self.scale)))
        self._entries = sized

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        gt, lq = super().read(index)
        if self.modcrop and lq is not None:
            gt = gt[:, : lq.shape[1] * self.scale, : lq.shape[2] * self.scale]
        return gt, lq


def _indexed_pair(
    entry: _Entry, gt_header: tuple[int, int] | str, lq_header: tuple[int, int] | str
) -> tuple[_Entry, tuple[int, int] | None] | str:
    """A pair's entry with its GT size, and its LQ size; or the error of its first unreadable file."""
    if isinstance(gt_header, str):
        return gt_header
    if isinstance(lq_header, str):
        return lq_header
    return replace(entry, size=gt_header), lq_header


class SIDDBlocks(ImageSource):
    """The SIDD sRGB validation/benchmark blocks: 40 images × 32 blocks of 256×256 in two ``.mat`` files.

    Abdelhamed et al., "A High-Quality Denoising Dataset for Smartphone Cameras", CVPR 2018. The
    files are ``ValidationNoisyBlocksSrgb.mat`` / ``ValidationGtBlocksSrgb.mat`` as downloaded
    (variables of the same names, uint8 arrays of shape 40×32×256×256×3).
    """

    paired = True

    def __init__(self, *, noisy_mat: str, gt_mat: str) -> None:
        super().__init__()
        self.noisy_mat = Path(noisy_mat)
        self.gt_mat = Path(gt_mat)
        self.description = f"SIDD blocks {noisy_mat}"
        self._noisy: torch.Tensor | None = None
        self._gt: torch.Tensor | None = None

    @staticmethod
    def _load(path: Path) -> torch.Tensor:
        import scipy.io

        if not path.is_file():
            raise DataError(f"{path}: file not found; expected the SIDD block file as downloaded")
        try:
            variables = scipy.io.loadmat(path)
        except Exception as error:
            raise DataError(f"{path}: cannot read the .mat file ({error})") from None
        arrays = [value for key, value in variables.items() if not key.startswith("__")]
        if len(arrays) != 1 or arrays[0].ndim != 5 or arrays[0].shape[-1] != 3:
            shapes = [getattr(value, "shape", None) for value in arrays]
            raise DataError(f"{path}: expected one uint8 array of shape images×blocks×H×W×3, found {shapes}")
        blocks = torch.from_numpy(arrays[0])
        return blocks.reshape(-1, *blocks.shape[2:])

    def scan(self, *, skip_bad_files: bool = False, decode: bool = False) -> None:
        self._noisy, self._gt = self._load(self.noisy_mat), self._load(self.gt_mat)
        if self._noisy.shape != self._gt.shape:
            raise DataError(
                f"size mismatch: {self.noisy_mat} holds {tuple(self._noisy.shape)} but {self.gt_mat} holds "
                f"{tuple(self._gt.shape)}"
            )
        height, width = self._gt.shape[1:3]
        self._entries = [_Entry(f"{i:04d}", i, i, -1, (height, width)) for i in range(len(self._gt))]

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert self._gt is not None and self._noisy is not None
        gt, noisy = (blocks[index].permute(2, 0, 1).float().div(255.0) for blocks in (self._gt, self._noisy))
        return gt, noisy


# SNR-Aware's SID release: low-light frames and long-exposure references, one sub-folder per scene.
_SID_LAYOUT = "root/short_sid2/<scene>/*.npy and root/long_sid2/<scene>/*.npy (SNR-Aware's SID release)"
# SID's scene ids start with 0 (train), 1 (test) or 2 (validation); the official loader trains on 0 and 2.
_SID_SPLITS = {"train": ("0", "2"), "test": ("1",)}


class SIDNpyFrames(ImageSource):
    """SID Sony frames as SNR-Aware releases them: ``.npy`` arrays in one folder per scene.

    Chen, Chen, Xu and Koltun, "Learning to See in the Dark", CVPR 2018 (the data); Xu, Wang, Fu and Jia,
    "SNR-Aware Low-Light Image Enhancement", CVPR 2022 (this processed release, ``short_sid2`` and
    ``long_sid2``). PTG-RM's only released config reads it (official ``options/train/SID.yml``,
    ``data/dataset_SID.py``, the same as SNR-Aware's). As the official loader:

    - ``root/short_sid2/<scene>/*.npy`` are the low-light inputs; every one of a scene is paired with the
      first (sorted) frame of ``root/long_sid2/<scene>/``, the scene's reference;
    - the scenes whose id starts with 0 or 2 are the ``"train"`` split, those starting with 1 the ``"test"``
      split (which the official code also validates on);
    - a frame is an H×W×3 array on the 0-255 scale (uint8; a float array is taken on the same scale),
      resized to ``resize`` with bilinear interpolation (``cv2.resize``'s default; uint8 frames are rounded
      back to 8-bit levels as OpenCV does, to within one level), then divided by 255; channels past the
      third are dropped.

    Unlike the official loader, scenes are paired by folder name (it zips the two sorted folder lists), and a
    scene without its reference folder is an error.

    Args:
        root: the folder holding ``short_sid2`` and ``long_sid2``.
        split: ``"train"`` (scenes 0xxxx and 2xxxx) or ``"test"`` (scenes 1xxxx).
        resize: ``[width, height]`` every frame is resized to (official ``train_size: [960, 512]``, passed to
            ``cv2.resize`` as its (width, height)); ``None`` keeps the frames' own size.
        channel_order: ``"bgr"``: the arrays hold B, G, R, which the official loader assumes (it reverses
            the channels after reading); ``"rgb"``: they are read as they are.
    """

    paired = True

    def __init__(
        self,
        *,
        root: str,
        split: str = "train",
        resize: Sequence[int] | None = (960, 512),
        channel_order: str = "bgr",
    ) -> None:
        super().__init__()
        if split not in _SID_SPLITS:
            raise ConfigError(f"SIDNpyFrames split={split!r}; expected one of {list(_SID_SPLITS)}")
        if resize is not None and (len(resize) != 2 or min(resize) < 1):
            raise ConfigError(f"SIDNpyFrames resize={list(resize)}; expected [width, height] or null")
        if channel_order not in ("bgr", "rgb"):
            raise ConfigError(f"SIDNpyFrames channel_order={channel_order!r}; expected 'bgr' or 'rgb'")
        self.root = Path(root)
        self.split = split
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        self.channel_order = channel_order
        self.description = f"SID frames {root} ({split})"

    def scan(self, *, skip_bad_files: bool = False, decode: bool = False) -> None:
        short, long = self.root / "short_sid2", self.root / "long_sid2"
        for folder in (short, long):
            if not folder.is_dir():
                raise DataError(f"{folder}: folder not found; expected {_SID_LAYOUT}")
        digits = _SID_SPLITS[self.split]
        scenes = sorted(
            path.name for path in short.iterdir() if path.is_dir() and path.name.startswith(digits)
        )
        if not scenes:
            raise DataError(
                f"{short}: no scene folder of the {self.split} split (names starting with "
                f"{' or '.join(digits)}); expected {_SID_LAYOUT}"
            )
        entries = []
        for scene in scenes:
            frames = _npy_files(short / scene)
            references = _npy_files(long / scene)
            entries += [_Entry(f"{scene}/{frame.stem}", references[0], frame, -1, (0, 0)) for frame in frames]
        checked = []
        for entry, lq_size in self._checked(entries, skip_bad_files=skip_bad_files, decode=decode):
            if self.resize is not None:
                width, height = self.resize
                checked.append(_Entry(entry.name, entry.gt, entry.lq, entry.label, (height, width)))
                continue
            if lq_size != entry.size:
                raise DataError(
                    f"size mismatch: {entry.lq} is {lq_size[1]}×{lq_size[0]} but {entry.gt} is "
                    f"{entry.size[1]}×{entry.size[0]} (width×height); expected the same size, or set resize"
                )
            checked.append(entry)
        self._entries = checked

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        entry = self.entries[index]
        assert isinstance(entry.gt, Path) and isinstance(entry.lq, Path)
        return self._frame(entry.gt), self._frame(entry.lq)

    def _frame(self, path: Path) -> torch.Tensor:
        """One frame as a 3×H×W float32 RGB tensor in [0, 1], resized as the official loader does."""
        array = _npy_frame(path, decode=True)
        frame = torch.from_numpy(np.ascontiguousarray(array[..., :3], dtype=np.float32)).permute(2, 0, 1)
        size = None if self.resize is None else self.resize[::-1]  # (height, width)
        if size is not None and tuple(frame.shape[1:]) != size:
            # cv2.resize's INTER_LINEAR: half-pixel centres, no antialiasing when shrinking
            frame = F.interpolate(frame[None], size=size, mode="bilinear", align_corners=False)[0]
            if array.dtype == np.uint8:  # back to 8-bit levels, rounded half up as OpenCV's fixed point
                frame = frame.add(0.5).floor().clamp(0, 255)
        if self.channel_order == "bgr":
            frame = frame.flip(0)
        return frame.div(255).clamp(0, 1).contiguous()


def _npy_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; every scene needs both folders of {_SID_LAYOUT}")
    files = sorted(path for path in folder.glob("*.npy") if not path.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: no .npy frames; expected {_SID_LAYOUT}")
    return files


def _npy_frame(path: Path, *, decode: bool) -> np.ndarray:
    """The H×W×C array (C >= 3) of a SID ``.npy`` file; memory-mapped (header only) unless ``decode``."""
    try:
        array = np.load(path, mmap_mode=None if decode else "r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path}: cannot read the .npy file ({reason[:160]})") from None
    if array.ndim != 3 or array.shape[2] < 3 or not (array.dtype == np.uint8 or array.dtype.kind == "f"):
        raise DataError(
            f"{path}: holds a {array.dtype} array of shape {array.shape}; expected an H×W×3 uint8 frame "
            "(0-255) as in SNR-Aware's SID release"
        )
    return array


def _find_images(folder: Path, pattern: str, expected: str) -> ImageFiles:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; expected a folder of {expected}")
    files = list_image_files(folder, pattern=pattern)
    if not files.names:
        extensions = ", ".join(IMAGE_EXTENSIONS)
        raise DataError(f"{folder}: no images match {pattern!r} ({extensions}); expected {expected}")
    return files


def _preview(names: Sequence[str], shown: int = 5) -> str:
    more = f", ... {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
