"""Finding image files on disk and reading them as float RGB tensors in [0, 1].

Every reader returns a 3×H×W float32 tensor whatever the file holds: grayscale is repeated to
three channels, alpha is dropped (not composited), palette images are expanded, and 16-bit PNG
and TIFF files keep their full precision (divided by 65535). EXIF orientation is not applied,
as in torchvision's and timm's ImageNet loaders, so paired LQ/GT files stay aligned.

Anything that cannot be decoded raises a :class:`~restoration.errors.DataError` naming the file.

A folder of images is listed once per scan (:func:`list_image_files`: names, byte sizes and modification
times, from ``os.scandir`` without opening a file); :func:`index_images` reads the files' headers and can
keep them in an index cache keyed by that listing, so that a large folder (ImageNet's 1.28M files) has its
headers read once, not on every process and at every restart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fnmatch import fnmatchcase
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from restoration.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFiles",
    "ImageIndex",
    "image_size",
    "index_images",
    "list_image_files",
    "list_images",
    "read_image",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageFiles:
    """The image files below ``root`` that match ``pattern``: what listing the folder tells, no file opened.

    ``names`` are the paths relative to ``root`` (posix), in the order of sorted :class:`~pathlib.Path`
    objects; ``sizes`` their sizes in bytes and ``mtimes`` their modification times in nanoseconds.
    """

    root: Path
    pattern: str
    names: list[str]
    sizes: np.ndarray
    mtimes: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def path(self, position: int) -> Path:
        return self.root / self.names[position]

    def key(self) -> str:
        """A hash of the listing: another file, or one resized, rewritten or touched, gives another key."""
        digest = hashlib.sha256(f"{_INDEX_FORMAT}\0{self.root.resolve()}\0{self.pattern}\0".encode())
        digest.update(_joined(self.names))
        digest.update(self.sizes.tobytes())
        digest.update(self.mtimes.tobytes())
        return digest.hexdigest()


def list_image_files(root: Path, *, pattern: str = "**/*") -> ImageFiles:
    """Image files under ``root`` matching the glob ``pattern``, hidden files and folders skipped.

    ``pattern`` is a :meth:`pathlib.Path.glob` pattern (``**`` is any number of folders); folders that
    cannot match it are not entered, and linked folders are followed (each real folder once per branch).
    """
    segments = [segment for segment in pattern.split("/") if segment not in ("", ".")]
    names: list[str] = []
    stats: list[tuple[int, int]] = []

    def advance(states: set[int], name: str) -> set[int]:
        """The pattern positions reachable after entering the folder ``name`` from ``states``."""
        entered = set()
        for state in states:
            if segments[state] == "**":
                entered.add(state)
            elif state < len(segments) - 1 and fnmatchcase(name, segments[state]):
                entered.add(state + 1)
        return _past_globstars(entered, segments)

    def walk(folder: str, prefix: str, states: set[int], ancestors: frozenset[tuple[int, int]]) -> None:
        try:
            with os.scandir(folder) as listing:
                found = sorted(listing, key=lambda entry: entry.name)  # the order of sorted Paths
        except (PermissionError, FileNotFoundError, NotADirectoryError):  # as Path.glob: skipped
            return
        last = len(segments) - 1
        for entry in found:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                inner = advance(states, entry.name)
                stat = entry.stat()
                if inner and (stat.st_dev, stat.st_ino) not in ancestors:  # a link back up is a loop
                    walk(
                        entry.path, f"{prefix}{entry.name}/", inner, ancestors | {(stat.st_dev, stat.st_ino)}
                    )
            elif (
                entry.is_file()
                and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                and last in states
                and segments[last] != "**"
                and fnmatchcase(entry.name, segments[last])
            ):
                stat = entry.stat()
                names.append(prefix + entry.name)
                stats.append((stat.st_size, stat.st_mtime_ns))

    if segments and root.is_dir():
        stat = root.stat()
        walk(str(root), "", _past_globstars({0}, segments), frozenset({(stat.st_dev, stat.st_ino)}))
    sizes = np.array([size for size, _ in stats], dtype=np.int64)
    mtimes = np.array([mtime for _, mtime in stats], dtype=np.int64)
    return ImageFiles(root, pattern, names, sizes, mtimes)


def _past_globstars(states: set[int], segments: list[str]) -> set[int]:
    """``states`` and the positions after each ``**`` in them, as ``**`` also matches no folder at all."""
    closed, pending = set(states), list(states)
    while pending:
        state = pending.pop()
        if segments[state] == "**" and state + 1 < len(segments) and state + 1 not in closed:
            closed.add(state + 1)
            pending.append(state + 1)
    return closed


def list_images(root: Path, *, pattern: str = "**/*") -> list[Path]:
    """Image files under ``root`` matching the glob ``pattern``, sorted, hidden files skipped."""
    files = list_image_files(root, pattern=pattern)
    return [files.path(position) for position in range(len(files))]


# Bump when the stored arrays change meaning: an index of another format is then rebuilt, never misread.
_INDEX_FORMAT = 1
_UNREAD = -2  # the height of a file whose header no scan has needed yet
_UNREADABLE = -1  # the height of a file whose header could not be read (its error is kept)
_HEADER_THREADS = 8
_HEADER_CHUNK = 256  # files per thread task: one task per file costs more than a PNG header


@dataclass(frozen=True)
class ImageIndex:
    """The headers of ``files``: each one's (height, width), or the one-line error reading it raised."""

    files: ImageFiles
    heights: np.ndarray
    widths: np.ndarray
    errors: dict[int, str]

    def header(self, position: int) -> tuple[int, int] | str:
        height = int(self.heights[position])
        if height == _UNREAD:
            raise KeyError(
                f"{self.files.path(position)}: header not indexed; pass its position to index_images"
            )
        if height == _UNREADABLE:
            return self.errors[position]
        return height, int(self.widths[position])


def index_images(
    files: ImageFiles, *, positions: Sequence[int] | None = None, cache_dir: Path | None = None
) -> ImageIndex:
    """Read the headers of ``files`` (those at ``positions``; all by default), through an index cache.

    With ``cache_dir`` the headers are kept in ``<cache_dir>/<folder>-<key>.npz``, named by the listing's
    :meth:`ImageFiles.key`: a header found there is not read again, and the headers read now are added to
    it. The index is written to a temporary file renamed over it (``os.replace``), so no process ever reads
    a half-written index and concurrent processes (DDP ranks) need no lock: at worst they read the same
    headers twice. A changed folder has another key and is read again; deleting ``cache_dir`` rebuilds all.
    """
    wanted = np.arange(len(files)) if positions is None else np.asarray(positions, dtype=np.int64)
    path = None if cache_dir is None else Path(cache_dir) / f"{_slug(files.root)}-{files.key()[:32]}.npz"
    cached = None if path is None else _load_index(path, files)
    if cached is None:
        cached = ImageIndex(
            files, np.full(len(files), _UNREAD, np.int32), np.full(len(files), _UNREAD, np.int32), {}
        )
    missing = wanted[cached.heights[wanted] == _UNREAD].tolist()
    if not missing:
        if path is not None:
            log.info("%s: %d image headers read from the index %s", files.root, len(wanted), path)
        return cached
    start = time.perf_counter()
    headers = _read_headers([files.path(position) for position in missing])
    for position, header in zip(missing, headers, strict=True):
        if isinstance(header, str):
            cached.heights[position] = cached.widths[position] = _UNREADABLE
            cached.errors[position] = header
        else:
            cached.heights[position], cached.widths[position] = header
    if path is not None:
        _save_index(path, cached)
        log.info(
            "%s: read %d image headers in %.1f s (%d unreadable); index written to %s",
            files.root,
            len(missing),
            time.perf_counter() - start,
            sum(isinstance(header, str) for header in headers),
            path,
        )
    return cached


def _read_headers(paths: list[Path]) -> list[tuple[int, int] | str]:
    def read(chunk: list[Path]) -> list[tuple[int, int] | str]:
        headers: list[tuple[int, int] | str] = []
        for path in chunk:
            try:
                headers.append(image_size(path))
            except DataError as error:
                headers.append(str(error))
        return headers

    chunks = [paths[start : start + _HEADER_CHUNK] for start in range(0, len(paths), _HEADER_CHUNK)]
    with ThreadPoolExecutor(_HEADER_THREADS) as pool:
        return [header for headers in pool.map(read, chunks) for header in headers]


def _joined(names: Sequence[str]) -> bytes:
    return os.fsencode("\0".join(names))  # no file name holds a NUL


def _slug(root: Path) -> str:
    """A readable file-name prefix for the index of ``root``: its last two folder names."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(root.resolve().parts[-2:])).strip("_") or "root"


def _save_index(path: Path, index: ImageIndex) -> None:
    files = index.files
    bad = sorted(index.errors)
    arrays = {
        "format": np.array(_INDEX_FORMAT),
        "root": np.frombuffer(os.fsencode(str(files.root.resolve())), np.uint8),
        "pattern": np.frombuffer(files.pattern.encode(), np.uint8),
        "names": np.frombuffer(_joined(files.names), np.uint8),
        "sizes": files.sizes,
        "mtimes": files.mtimes,
        "heights": index.heights,
        "widths": index.widths,
        "bad": np.array(bad, dtype=np.int64),
        "reasons": np.frombuffer(
            _joined([index.errors[position].replace("\0", "") for position in bad]), np.uint8
        ),
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            np.savez_compressed(file, **arrays)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        log.warning(
            "%s: cannot write the image index (%s); the headers will be read again next time", path, error
        )


def _load_index(path: Path, files: ImageFiles) -> ImageIndex | None:
    """The index stored at ``path`` if it is one of ``files`` (None when absent or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        reasons = os.fsdecode(arrays["reasons"].tobytes()).split("\0") if len(arrays["bad"]) else []
        same = (
            int(arrays["format"]) == _INDEX_FORMAT
            and arrays["names"].tobytes() == _joined(files.names)
            and np.array_equal(arrays["sizes"], files.sizes)
            and np.array_equal(arrays["mtimes"], files.mtimes)
            and len(reasons) == len(arrays["bad"])
        )
    except FileNotFoundError:
        return None
    except (
        Exception
    ) as error:  # a damaged file raises many types (BadZipFile, OSError, KeyError, ValueError...)
        log.warning("%s: unreadable image index (%s); reading the headers again", path, _reason(error))
        return None
    if not same:
        log.warning(
            "%s: the image index does not match the folder's listing; reading the headers again", path
        )
        return None
    errors = dict(zip(arrays["bad"].tolist(), reasons, strict=True))
    return ImageIndex(files, arrays["heights"].astype(np.int32), arrays["widths"].astype(np.int32), errors)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) read from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"{path}: cannot read the image header ({_reason(error)})") from None
    return height, width


def read_image(path: Path, data: bytes | None = None) -> torch.Tensor:
    """Decode ``path`` to a 3×H×W float32 tensor in [0, 1].

    With ``data``, decode those bytes instead: the content of a file named ``path`` (a packed image, see
    :mod:`restoration.data.pack`), read exactly as the file would be.
    """
    header = data[:25] if data is not None else None
    source = path if data is None else BytesIO(data)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = _read_tiff(source)
        elif _is_16bit_png(path, header):
            array = _read_png16(path if data is None else data)
        else:
            array = _read_pillow(source, path)
    except DataError:
        raise
    except Exception as error:  # decoders raise many types (OSError, RuntimeError, SyntaxError...)
        raise DataError(f"{path}: cannot decode the image ({_reason(error)})") from None
    return _to_tensor(array, path)


def _reason(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _read_pillow(source: Path | BytesIO, path: Path) -> np.ndarray:
    with Image.open(source) as image:
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return np.asarray(image, dtype=np.uint16)
        if image.mode in ("I", "F"):
            raise DataError(
                f"{path}: unsupported pixel mode {image.mode!r} (32-bit integer or float); "
                "expected 8- or 16-bit grayscale, RGB, RGBA or palette"
            )
        if image.mode != "RGB":
            image = image.convert("RGBA" if image.mode == "P" else "RGB").convert("RGB")
        return np.asarray(image)


def _is_16bit_png(path: Path, header: bytes | None = None) -> bool:
    # Pillow reads 16-bit RGB PNGs as 8-bit, so those go through libpng (torchvision) instead.
    if path.suffix.lower() != ".png":
        return False
    if header is None:
        with open(path, "rb") as file:
            header = file.read(25)
    return len(header) == 25 and header[:8] == _PNG_SIGNATURE and header[24] == 16


def _read_png16(source: Path | bytes) -> np.ndarray:
    from torchvision.io import ImageReadMode, decode_png, read_file

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of torchcodec; libpng is what we need here.
        warnings.simplefilter("ignore", DeprecationWarning)
        if isinstance(source, bytes):
            encoded = torch.frombuffer(bytearray(source), dtype=torch.uint8)
        else:
            encoded = read_file(str(source))
        image = decode_png(encoded, mode=ImageReadMode.UNCHANGED)
    return image.permute(1, 2, 0).numpy()


def _read_tiff(source: Path | BytesIO) -> np.ndarray:
    import tifffile

    array = tifffile.imread(source)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (C×H×W) TIFF
    return array


def _to_tensor(array: np.ndarray, path: Path) -> torch.Tensor:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise DataError(f"{path}: unexpected image shape {array.shape}; expected H×W or H×W×C with C in 1-4")
    channels = array.shape[-1]
    if channels in (1, 2):  # grayscale, grayscale + alpha
        array = np.repeat(array[:, :, :1], 3, axis=-1)
    elif channels == 4:
        array = array[:, :, :3]
    if array.dtype == np.uint8:
        scale = 255.0
    elif array.dtype == np.uint16:
        scale = 65535.0
    elif array.dtype == bool or np.issubdtype(array.dtype, np.floating):
        scale = 1.0
    else:
        raise DataError(f"{path}: unsupported sample type {array.dtype}; expected 8- or 16-bit integers")
    if not array.flags.writeable:  # Pillow's buffers are read-only; torch wants to own writable memory
        array = array.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(scale)
    return tensor.clamp_(0.0, 1.0)
