"""Finding image files on disk and reading them as float RGB tensors in [0, 1].

Every reader returns a 3×H×W float32 tensor whatever the file holds: grayscale is repeated to
three channels, alpha is dropped (not composited), palette images are expanded, and 16-bit PNG
and TIFF files keep their full precision (divided by 65535). EXIF orientation is not applied,
as in torchvision's and timm's ImageNet loaders, so paired LQ/GT files stay aligned.

Anything that cannot be decoded raises a :class:`~restoration.errors.DataError` naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from restoration.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "image_size", "list_images", "read_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def list_images(root: Path, *, pattern: str = "**/*") -> list[Path]:
    """Image files under ``root`` matching the glob ``pattern``, sorted, hidden files skipped."""
    return sorted(
        path
        for path in root.glob(pattern)
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) read from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"{path}: cannot read the image header ({_reason(error)})") from None
    return height, width


def read_image(path: Path) -> torch.Tensor:
    """Decode ``path`` to a 3×H×W float32 tensor in [0, 1]."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = _read_tiff(path)
        elif _is_16bit_png(path):
            array = _read_png16(path)
        else:
            array = _read_pillow(path)
    except DataError:
        raise
    except Exception as error:  # decoders raise many types (OSError, RuntimeError, SyntaxError...)
        raise DataError(f"{path}: cannot decode the image ({_reason(error)})") from None
    return _to_tensor(array, path)


def _reason(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _read_pillow(path: Path) -> np.ndarray:
    with Image.open(path) as image:
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


def _is_16bit_png(path: Path) -> bool:
    # Pillow reads 16-bit RGB PNGs as 8-bit, so those go through libpng (torchvision) instead.
    if path.suffix.lower() != ".png":
        return False
    with open(path, "rb") as file:
        header = file.read(25)
    return len(header) == 25 and header[:8] == _PNG_SIGNATURE and header[24] == 16


def _read_png16(path: Path) -> np.ndarray:
    from torchvision.io import ImageReadMode, decode_png, read_file

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of torchcodec; libpng is what we need here.
        warnings.simplefilter("ignore", DeprecationWarning)
        image = decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    return image.permute(1, 2, 0).numpy()


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    array = tifffile.imread(path)
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
