"""Side-by-side comparison grids (degraded | restored | ground truth) and sending them to loggers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from PIL import Image, ImageDraw, ImageFont

__all__ = ["comparison_grid", "log_images", "pad_to_same_size", "save_png", "to_uint8"]

_CAPTION_HEIGHT = 22
_FONT_SIZE = 15
_GAP = 4


def comparison_grid(
    panels: Sequence[torch.Tensor], labels: Sequence[str], *, max_side: int = 512
) -> np.ndarray:
    """Panels (3×h×w in [0, 1], any sizes) side by side at the largest panel's size, each labelled.

    Smaller panels (a super-resolution input) are enlarged with nearest neighbours so pixels
    stay visible; the whole row is shrunk so its height is at most ``max_side``.
    Returns an H×W×3 uint8 array.
    """
    height = max(panel.shape[-2] for panel in panels)
    width = max(panel.shape[-1] for panel in panels)
    factor = min(1.0, max_side / height)
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    resized = []
    for panel in panels:
        panel = panel.detach().float().cpu().clamp(0, 1)[None]
        mode = "nearest" if panel.shape[-2] < height else "area"
        resized.append(F.interpolate(panel, size=size, mode=mode)[0])
    canvas = Image.new("RGB", (len(panels) * (size[1] + _GAP) - _GAP, size[0] + _CAPTION_HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=_FONT_SIZE)
    for i, (panel, label) in enumerate(zip(resized, labels, strict=True)):
        left = i * (size[1] + _GAP)
        canvas.paste(Image.fromarray(to_uint8(panel)), (left, _CAPTION_HEIGHT))
        draw.text((left + 2, 2), label, fill="black", font=font)
    return np.asarray(canvas)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """A 3×H×W tensor in [0, 1] as an H×W×3 uint8 array (rounded, as the metrics quantize)."""
    return (
        (image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    )


def save_png(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def log_images(
    loggers: Sequence[Logger],
    *,
    key: str,
    images: Sequence[np.ndarray],
    names: Sequence[str],
    captions: Sequence[str],
    step: int,
) -> None:
    """Send grids to the loggers that show images: W&B (one panel with captions) and TensorBoard."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            # A W&B panel shows its images at one size; grids of different sizes are padded rather than
            # stretched (W&B warns "Images sizes do not match" and distorts them otherwise).
            padded = pad_to_same_size(images)
            logger.log_image(key=key, images=padded, caption=list(captions), step=step)
        elif isinstance(logger, TensorBoardLogger):
            for image, name in zip(images, names, strict=True):
                logger.experiment.add_image(f"{key}/{name}", image, step, dataformats="HWC")


def pad_to_same_size(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """H×W×3 uint8 images padded with white at the bottom and right to the largest height and width."""
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    padded = []
    for image in images:
        canvas = np.full((height, width, image.shape[2]), 255, dtype=image.dtype)
        canvas[: image.shape[0], : image.shape[1]] = image
        padded.append(canvas)
    return padded
