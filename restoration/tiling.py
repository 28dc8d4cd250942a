"""Tiled inference: run a restoration network on overlapping tiles of an image and blend them back.

Whole-image validation of transformer restorers (SwinIR, Restormer, IPT) often does not fit in memory at
full resolution, so their test scripts cut the input into overlapping tiles (SwinIR's ``--tile`` and
``--tile_overlap`` average the overlaps). Here tiles start every ``tile - overlap`` pixels and the last tile
on each axis is shifted back to end exactly at the border, so nothing is padded. Overlaps are merged by a
weighted average: ``uniform`` averages the covering tiles equally; ``linear`` ramps each tile's weight up
from its edge over ``overlap`` pixels, which damps the seams that a network's zero padding leaves at tile
edges.

:func:`ipt_tiled_forward` is the tiling of IPT (H. Chen et al., "Pre-Trained Image Processing Transformer",
CVPR 2021), whose body only takes 48×48 inputs. Its ``official`` protocol reproduces the official
``forward_chop`` (huawei-noah/Pretrained-IPT, ``model/__init__.py``): 48×48 tiles at stride 12, the central
24×24 of each averaged over the tiles covering it, plus 48-pixel strips along the four borders and a corner
tile for the rows and columns the stride-12 grid does not reach. Its ``fast`` protocol uses 48×48 tiles at a
configurable overlap (12 pixels, the MindSpore port's stride 36, by default) and about 8× fewer tiles.
"""

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

__all__ = ["ipt_tiled_forward", "self_ensemble_forward", "tiled_forward"]


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


@dataclass(frozen=True)
class _AxisTiles:
    """IPT tiles along one axis: their starts and the ``[start, stop)`` used of each, in input pixels."""

    origins: tuple[int, ...]
    kept: tuple[tuple[int, int], ...]


def _trimmed_centres(origins: tuple[int, ...], *, tile: int, trim: int) -> _AxisTiles:
    """Every tile drops ``trim`` pixels at its inner sides; the first and last keep their outer edge."""
    last = len(origins) - 1
    kept = tuple((0 if i == 0 else trim, tile if i == last else tile - trim) for i in range(len(origins)))
    return _AxisTiles(origins, kept)


def _meeting_at_seams(size: int, *, tile: int, overlap: int) -> _AxisTiles:
    """Tiles every ``tile - overlap`` pixels (the last one ending at the border), each keeping the pixels up
    to the middle of its overlaps with its neighbours: every pixel comes from exactly one tile."""
    origins = tuple(_tile_origins(size, tile, tile - overlap))
    seams = [(start + tile + next_start) // 2 for start, next_start in itertools.pairwise(origins)]
    bounds = [0, *seams, size]
    return _AxisTiles(
        origins,
        tuple(
            (lo - start, hi - start) for start, lo, hi in zip(origins, bounds[:-1], bounds[1:], strict=True)
        ),
    )


def _whole_tiles(size: int, *, tile: int, overlap: int) -> _AxisTiles:
    """Tiles every ``tile - overlap`` pixels (the last one ending at the border), each kept whole."""
    origins = tuple(_tile_origins(size, tile, tile - overlap))
    return _AxisTiles(origins, ((0, tile),) * len(origins))


@dataclass(frozen=True)
class _Region:
    """A grid of IPT tiles, every row origin with every column origin, averaged into one canvas that spans
    input rows ``rows.origins[0]`` to ``rows.origins[-1] + tile`` (likewise columns)."""

    rows: _AxisTiles
    cols: _AxisTiles


def _coverage(axis: _AxisTiles, *, tile: int, scale: int, device: torch.device) -> Tensor:
    """How many tiles keep each output pixel of a region's canvas along ``axis``."""
    count = torch.zeros(scale * (axis.origins[-1] + tile - axis.origins[0]), device=device)
    for origin, (start, stop) in zip(axis.origins, axis.kept, strict=True):
        offset = origin - axis.origins[0]
        count[scale * (offset + start) : scale * (offset + stop)] += 1
    return count


def _blend_regions(
    forward: Callable[[Tensor], Tensor],
    images: Tensor,
    regions: list[_Region],
    *,
    scale: int,
    tile: int,
    batch_size: int,
) -> list[Tensor]:
    """Run ``forward`` on the tiles of all ``regions`` together, ``batch_size`` at a time, and return each
    region's canvas: the kept part of every tile output, averaged where several tiles keep a pixel."""
    num_images = images.shape[0]
    device = images.device
    pixel = torch.arange(tile, device=device)
    gathered = []
    # per tile, in the order of `gathered`: region, image, canvas rows and columns, kept rows and columns
    placements: list[tuple[int, int, slice, slice, slice, slice]] = []
    for index, region in enumerate(regions):
        # Bottom-right tiles first: the order in which F.fold, and so forward_chop, adds up overlapping
        # tiles, which makes the official protocol's averages equal to the last bit.
        row_tiles = list(zip(region.rows.origins, region.rows.kept, strict=True))[::-1]
        col_tiles = list(zip(region.cols.origins, region.cols.kept, strict=True))[::-1]
        rows = torch.tensor([top for top, _ in row_tiles], device=device)[:, None] + pixel
        cols = torch.tensor([left for left, _ in col_tiles], device=device)[:, None] + pixel
        gathered.append(rearrange(images[:, :, rows][..., cols], "n c i y j x -> (n i j) c y x"))
        for image in range(num_images):
            for top, (row_start, row_stop) in row_tiles:
                for left, (col_start, col_stop) in col_tiles:
                    canvas_top, canvas_left = top - region.rows.origins[0], left - region.cols.origins[0]
                    placements.append(
                        (
                            index,
                            image,
                            slice(scale * (canvas_top + row_start), scale * (canvas_top + row_stop)),
                            slice(scale * (canvas_left + col_start), scale * (canvas_left + col_stop)),
                            slice(scale * row_start, scale * row_stop),
                            slice(scale * col_start, scale * col_stop),
                        )
                    )
    tiles = torch.cat(gathered)
    canvases: list[Tensor] = []
    for start in range(0, len(tiles), batch_size):
        restored = forward(tiles[start : start + batch_size])
        expected = (min(batch_size, len(tiles) - start), scale * tile, scale * tile)
        if restored.ndim != 4 or (restored.shape[0], *restored.shape[2:]) != expected:
            raise ValueError(
                f"forward returned shape {tuple(restored.shape)} for {expected[0]} tiles of {tile}×{tile}; "
                f"expected B×C×{scale * tile}×{scale * tile} (scale={scale})"
            )
        if not canvases:
            # float32 sums at least, so that half-precision tiles are averaged without extra rounding
            dtype = torch.promote_types(restored.dtype, torch.float32)
            canvases = [
                restored.new_zeros(
                    num_images,
                    restored.shape[1],
                    scale * (region.rows.origins[-1] + tile - region.rows.origins[0]),
                    scale * (region.cols.origins[-1] + tile - region.cols.origins[0]),
                    dtype=dtype,
                )
                for region in regions
            ]
        for (index, image, rows, cols, kept_rows, kept_cols), output in zip(
            placements[start : start + batch_size], restored, strict=True
        ):
            canvases[index][image, :, rows, cols] += output[:, kept_rows, kept_cols]
    return [
        (
            canvas
            / torch.outer(
                _coverage(region.rows, tile=tile, scale=scale, device=device),
                _coverage(region.cols, tile=tile, scale=scale, device=device),
            )
        ).to(restored.dtype)
        for canvas, region in zip(canvases, regions, strict=True)
    ]


def _official_protocol(
    forward: Callable[[Tensor], Tensor], images: Tensor, *, scale: int, tile: int, batch_size: int
) -> Tensor:
    """The official ``forward_chop``: see :func:`ipt_tiled_forward`."""
    height, width = images.shape[-2:]
    # forward_chop's shave is tile/2; the stride and the trim at each tile side are both shave/2
    stride = trim = tile // 4
    grid_rows = _trimmed_centres(tuple(range(0, height - tile + 1, stride)), tile=tile, trim=trim)
    grid_cols = _trimmed_centres(tuple(range(0, width - tile + 1, stride)), tile=tile, trim=trim)
    top_row, bottom_row = _AxisTiles((0,), ((0, tile),)), _AxisTiles((height - tile,), ((0, tile),))
    left_col, right_col = _AxisTiles((0,), ((0, tile),)), _AxisTiles((width - tile,), ((0, tile),))
    grid, top, bottom, left, right, corner = _blend_regions(
        forward,
        images,
        [
            _Region(grid_rows, grid_cols),
            _Region(top_row, grid_cols),
            _Region(bottom_row, grid_cols),
            _Region(grid_rows, left_col),
            _Region(grid_rows, right_col),
            _Region(bottom_row, right_col),
        ],
        scale=scale,
        tile=tile,
        batch_size=batch_size,
    )
    # In output pixels: the stride-12 grid reaches grid_height rows; the bottom strip replaces everything
    # from split_row down, so that the grid's last rows, which no trimmed centre covers, are never used.
    grid_height, grid_width = grid.shape[-2:]
    split_row = grid_height - scale * (tile - (height - tile) % stride) // 2
    split_col = grid_width - scale * (tile - (width - tile) % stride) // 2
    strip_row, strip_col = scale * (height - tile), scale * (width - tile)
    border, side = scale * trim, scale * tile
    restored = grid.new_empty(*grid.shape[:2], scale * height, scale * width)
    # pasted in forward_chop's order, each over the previous: the left strip wins the top-left corner
    restored[..., :side, :grid_width] = top
    restored[..., :grid_height, :side] = left
    restored[..., border : grid_height - border, border : grid_width - border] = grid[
        ..., border:-border, border:-border
    ]
    restored[..., split_row:, :grid_width] = bottom[..., split_row - strip_row :, :]
    restored[..., :split_row, split_col:] = right[..., :split_row, split_col - strip_col :]
    restored[..., split_row:, split_col:] = corner[..., split_row - strip_row :, split_col - strip_col :]
    return restored


def _dihedral(images: Tensor, index: int) -> Tensor:
    """Transform ``index`` of the official ``forward_x8``: bit 0 flips left-right, bit 1 up-down, bit 2
    transposes, applied in that order."""
    if index & 1:
        images = images.flip(-1)
    if index & 2:
        images = images.flip(-2)
    return images.transpose(-2, -1) if index & 4 else images


def _undo_dihedral(images: Tensor, index: int) -> Tensor:
    """The inverse of :func:`_dihedral`: the same steps in the reverse order."""
    if index & 4:
        images = images.transpose(-2, -1)
    if index & 2:
        images = images.flip(-2)
    return images.flip(-1) if index & 1 else images


def ipt_tiled_forward(
    forward: Callable[[Tensor], Tensor],
    degraded: Tensor,
    *,
    scale: int,
    protocol: Literal["official", "fast"] = "official",
    tile: int = 48,
    overlap: int | None = None,
    blend: Literal["seam", "average"] | None = None,
    batch_size: int = 64,
    self_ensemble: bool = False,
) -> Tensor:
    """Restore an N×C×H×W batch of any size (H, W >= ``tile``) with IPT, tile by tile.

    All tiles of all images are gathered on the input's device and run ``batch_size`` at a time; ``forward``
    runs under the caller's grad mode (wrap the call in ``torch.inference_mode()`` for evaluation).

    Protocols:

    - ``"official"``: the official ``forward_chop``. Tiles at stride ``tile/4`` (12) cover the top-left
      (H − h_cut)×(W − w_cut) part, h_cut = (H − tile) mod 12 and likewise w_cut; each keeps its central
      ``tile/2``·scale pixels, averaged over the tiles that cover them. Strips of ``tile`` rows (columns)
      along the four borders, tiled the same way along their length but kept whole across it, and one
      bottom-right tile fill the image border; the bottom ``(tile + h_cut)/2``·scale rows and the right
      ``(tile + w_cut)/2``·scale columns come from the bottom and right strips and the corner tile.
      A 481×321 image takes 972 tiles. With a forward that does not depend on the batch, the result
      equals ``forward_chop``'s to the last bit (tiles are summed in ``F.fold``'s order).
    - ``"fast"``: tiles every ``tile - overlap`` pixels, the last one on each axis shifted back to end at
      the border. ``blend="seam"`` keeps from each tile the pixels up to the middle of its overlaps, so no
      pixel is averaged: with ``overlap=12`` that is the MindSpore port's stride 36 and central 36×36
      (126 tiles for 481×321); ``overlap=10`` is the paper's "10 pixels overlap". ``blend="average"`` keeps
      whole tiles and averages them over their overlaps.

    Args:
        forward: the network for one task, mapping a B×C×tile×tile batch to B×C'×(tile·scale)².
        degraded: N×C×H×W input batch.
        scale: the task's upscaling factor.
        protocol: ``"official"`` or ``"fast"``.
        tile: tile side in input pixels, the size the network takes (48 for IPT).
        overlap: pixels shared by neighbouring tiles in the fast protocol (default 12,
            ``0 <= overlap < tile``); the official protocol fixes it at ``3/4·tile``.
        blend: ``"seam"`` (default) or ``"average"``, fast protocol only.
        batch_size: tiles per call of ``forward`` (the official ``--crop_batch_size``, 64).
        self_ensemble: average over the 8 flips and transposes of the input, each tiled separately and
            transformed back (the official ``forward_x8`` around ``forward_chop``); 8× the cost.

    Returns:
        The N×C'×(H·scale)×(W·scale) restored batch.
    """
    if degraded.ndim != 4 or degraded.shape[-2] < tile or degraded.shape[-1] < tile:
        raise ValueError(
            f"ipt_tiled_forward expects an N×C×H×W batch with H, W >= tile = {tile}; "
            f"got {tuple(degraded.shape)}"
        )
    if scale < 1:
        raise ValueError(f"scale must be a positive integer; got {scale}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if protocol == "official":
        if overlap is not None or blend is not None:
            raise ValueError(
                "protocol='official' fixes the overlap (3/4 of the tile) and the averaging; got "
                f"overlap={overlap}, blend={blend!r}: use protocol='fast' to choose them"
            )
        if tile % 4:
            raise ValueError(f"protocol='official' needs a tile divisible by 4 (stride tile/4); got {tile}")
    elif protocol == "fast":
        overlap = 12 if overlap is None else overlap
        blend = "seam" if blend is None else blend
        if not 0 <= overlap < tile:
            raise ValueError(f"overlap must satisfy 0 <= overlap < tile = {tile}; got {overlap}")
        if blend not in ("seam", "average"):
            raise ValueError(f"blend must be 'seam' or 'average'; got {blend!r}")
    else:
        raise ValueError(f"protocol must be 'official' or 'fast'; got {protocol!r}")

    def restore(images: Tensor) -> Tensor:
        if protocol == "official":
            return _official_protocol(forward, images, scale=scale, tile=tile, batch_size=batch_size)
        axis = _meeting_at_seams if blend == "seam" else _whole_tiles
        region = _Region(
            axis(images.shape[-2], tile=tile, overlap=overlap),
            axis(images.shape[-1], tile=tile, overlap=overlap),
        )
        (restored,) = _blend_regions(forward, images, [region], scale=scale, tile=tile, batch_size=batch_size)
        return restored

    return self_ensemble_forward(restore, degraded) if self_ensemble else restore(degraded)


def self_ensemble_forward(forward: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    """The ×8 self-ensemble (EDSR, the official IPT ``forward_x8``): the mean of ``forward`` over the 8 flips
    and transposes of ``images``, each mapped back; 8× the cost of one pass."""
    return torch.stack([_undo_dihedral(forward(_dihedral(images, index)), index) for index in range(8)]).mean(
        0
    )
