"""Tiled inference: run a restoration network on overlapping tiles of an image and blend them back.

Whole-image validation of transformer restorers (SwinIR, Restormer, IPT) often does not fit in memory at
full resolution, so their test scripts cut the input into overlapping tiles (SwinIR's ``--tile`` and
``--tile_overlap`` average the overlaps). Here tiles start every ``tile - overlap`` pixels and the last tile
on each axis is shifted back to end exactly at the border, so nothing is padded. Overlaps are merged by a
weighted average: ``uniform`` averages the covering tiles equally; ``linear`` ramps each tile's weight up
from its edge over ``overlap`` pixels, which damps the seams that a network's zero padding leaves at tile
edges.
"""

import itertools
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

__all__ = ["tiled_forward"]


def _tile_origins(size: int, tile: int, stride: int) -> list[int]:
    """Start of every tile along an axis of ``size`` pixels; the last one ends exactly at the border.

    As SwinIR's ``h_idx_list``, the shifted last tile may sit a pixel or two after the previous one: it is
    still needed there so that every neighbour shares at least ``overlap`` pixels.
    """
    if size <= tile:
        return [0]
    return [*range(0, size - tile, stride), size - tile]


def _edge_ramp(length: int, overlap: int, *, blend: str) -> Tensor:
    """Weight along one axis of an output tile.

    ``linear``: ``(d + 1) / (overlap + 1)`` at ``d`` pixels from the nearer edge, capped at 1; positive
    everywhere, and the ramps of two tiles crossing over a regular overlap sum to one.
    """
    if blend == "uniform":
        return torch.ones(length)
    position = torch.arange(length)
    distance_to_edge = torch.minimum(position, length - 1 - position)
    return ((distance_to_edge + 1) / (overlap + 1)).clamp(max=1.0)


def _output_scale(restored: Tensor, *, tile_h: int, tile_w: int) -> int:
    """The integer upscaling factor of ``fn``, read off its output for a tile_h×tile_w tile."""
    if restored.ndim == 4:
        out_h, out_w = restored.shape[-2:]
        scale = out_h // tile_h
        if scale >= 1 and (out_h, out_w) == (scale * tile_h, scale * tile_w):
            return scale
    raise ValueError(
        "fn must return B×C×(s·h)×(s·w) for one positive integer scale s on both axes; "
        f"a {tile_h}×{tile_w} tile gave shape {tuple(restored.shape)}"
    )


def tiled_forward(
    fn: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    tile: int,
    overlap: int = 32,
    batch_size: int = 8,
    blend: Literal["linear", "uniform"] = "linear",
) -> Tensor:
    """Apply ``fn`` to an N×C×H×W batch tile by tile and return the blended N×C'×sH×sW result.

    ``fn`` may change the number of channels and upscale by an integer factor ``s`` (read off its first
    output). It runs on the input's device under the caller's grad mode, on ``batch_size`` tiles at a time
    taken from all images of the batch.

    Args:
        fn: the network, mapping a B×C×h×w batch of tiles to B×C'×sh×sw.
        images: N×C×H×W input batch.
        tile: tile side in input pixels; an axis shorter than ``tile`` is passed whole.
        overlap: pixels shared by neighbouring tiles, ``0 <= overlap < tile``.
        batch_size: tiles per call of ``fn``.
        blend: ``"linear"`` (weights ramp up from tile edges over the overlap) or ``"uniform"`` (plain mean).
    """
    if images.ndim != 4 or images.numel() == 0:
        raise ValueError(f"tiled_forward expects a non-empty N×C×H×W batch; got shape {tuple(images.shape)}")
    if tile <= 0:
        raise ValueError(f"tile must be a positive number of pixels; got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must satisfy 0 <= overlap < tile = {tile}; got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if blend not in ("linear", "uniform"):
        raise ValueError(f"blend must be 'linear' or 'uniform'; got {blend!r}")

    num_images, channels, height, width = images.shape
    tile_h, tile_w = min(tile, height), min(tile, width)
    tops = _tile_origins(height, tile_h, tile - overlap)
    lefts = _tile_origins(width, tile_w, tile - overlap)
    tiles = [(n, top, left) for n in range(num_images) for top in tops for left in lefts]
    chunks = [tiles[start : start + batch_size] for start in range(0, len(tiles), batch_size)]
    device = images.device
    channel_index = torch.arange(channels, device=device)[None, :, None, None]
    row_offset = torch.arange(tile_h, device=device)[None, None, :, None]
    col_offset = torch.arange(tile_w, device=device)[None, None, None, :]

    def run(chunk: list[tuple[int, int, int]]) -> Tensor:
        """Gather the chunk's tiles into one B×C×h×w batch with a single indexing op and apply ``fn``."""
        image_index, top_index, left_index = torch.tensor(chunk, device=device).view(-1, 3, 1, 1, 1).unbind(1)
        return fn(images[image_index, channel_index, top_index + row_offset, left_index + col_offset])

    first = run(chunks[0])
    scale = _output_scale(first, tile_h=tile_h, tile_w=tile_w)
    out_channels, out_h, out_w = first.shape[1], scale * tile_h, scale * tile_w
    weight = torch.outer(
        _edge_ramp(out_h, scale * overlap, blend=blend), _edge_ramp(out_w, scale * overlap, blend=blend)
    ).to(device=device, dtype=first.dtype)
    regions = {
        (top, left): (slice(scale * top, scale * top + out_h), slice(scale * left, scale * left + out_w))
        for top in tops
        for left in lefts
    }
    # Summed in the same tile order as the outputs below, so a constant output comes back exactly.
    weight_sum = first.new_zeros(scale * height, scale * width)
    for rows, cols in regions.values():
        weight_sum[rows, cols] += weight

    output = first.new_zeros(num_images, out_channels, scale * height, scale * width)
    for chunk, restored in zip(chunks, itertools.chain([first], map(run, chunks[1:])), strict=True):
        if restored.shape != (len(chunk), out_channels, out_h, out_w):
            raise ValueError(
                f"fn returned shape {tuple(restored.shape)} for a chunk of {len(chunk)} tiles; "
                f"expected {(len(chunk), out_channels, out_h, out_w)} like the first chunk"
            )
        # A loop over the chunk's tiles rather than index_put_(accumulate=True): on the CPU that scatter
        # adds in parallel with atomics, so overlaps would be summed in a different order on every run.
        for (image, top, left), weighted in zip(chunk, restored * weight, strict=True):
            rows, cols = regions[top, left]
            output[image, :, rows, cols] += weighted
    return output / weight_sum
