"""Tiled inference equals the plain forward where it can, damps seams where it cannot, covers every pixel."""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from restoration.tiling import tiled_forward


def _images(*shape: int, seed: int = 0) -> Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _recording(fn: Callable[[Tensor], Tensor], calls: list[tuple[int, ...]]) -> Callable[[Tensor], Tensor]:
    """Wrap ``fn`` so that the shape of every batch of tiles it receives is appended to ``calls``."""

    def wrapped(tiles: Tensor) -> Tensor:
        calls.append(tuple(tiles.shape))
        return fn(tiles)

    return wrapped


def _pointwise_upsampler() -> nn.Module:
    """Per-pixel 1×1 conv to 4·3 channels and PixelShuffle: ×2 upscaling with no spatial context."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 12, kernel_size=1), nn.PixelShuffle(2)).eval()


@pytest.mark.parametrize("blend", ["linear", "uniform"])
def test_pointwise_fn_equals_the_plain_forward(blend: str) -> None:
    torch.manual_seed(0)
    net = nn.Conv2d(3, 5, kernel_size=1)  # also changes the channel count
    images = _images(2, 3, 37, 53)  # neither side is a multiple of the stride 12
    calls: list[tuple[int, ...]] = []
    with torch.no_grad():
        tiled = tiled_forward(_recording(net, calls), images, tile=16, overlap=4, batch_size=5, blend=blend)
        plain = net(images)
    torch.testing.assert_close(tiled, plain, rtol=0, atol=1e-6)
    # Rows start at 0, 12, 21 and columns at 0, 12, 24, 36, 37 (the last tile still overlaps by >= 4):
    # full 16×16 tiles, no padding anywhere.
    assert sum(shape[0] for shape in calls) == 2 * 3 * 5
    assert {shape[1:] for shape in calls} == {(3, 16, 16)}
    assert max(shape[0] for shape in calls) == 5


@pytest.mark.parametrize(
    "upsample",
    [_pointwise_upsampler(), lambda tiles: F.interpolate(tiles, scale_factor=2, mode="nearest")],
    ids=["pixel_shuffle", "nearest"],
)
@pytest.mark.parametrize("blend", ["linear", "uniform"])
def test_upsampling_fn_gives_the_plain_forward_at_twice_the_size(
    upsample: Callable[[Tensor], Tensor], blend: str
) -> None:
    images = _images(2, 3, 37, 53, seed=1)
    with torch.no_grad():
        tiled = tiled_forward(upsample, images, tile=16, overlap=4, blend=blend)
        plain = upsample(images)
    assert tiled.shape == (2, 3, 74, 106)
    torch.testing.assert_close(tiled, plain, rtol=0, atol=1e-6)


def test_image_smaller_than_the_tile_is_one_forward() -> None:
    upsample = _pointwise_upsampler()
    images = _images(2, 3, 10, 12, seed=2)
    calls: list[tuple[int, ...]] = []
    with torch.no_grad():
        tiled = tiled_forward(_recording(upsample, calls), images, tile=16, overlap=4)
        plain = upsample(images)
    assert calls == [(2, 3, 10, 12)]
    torch.testing.assert_close(tiled, plain, rtol=0, atol=1e-6)


def test_axis_shorter_than_the_tile_is_passed_whole() -> None:
    images = _images(1, 3, 10, 53, seed=3)
    calls: list[tuple[int, ...]] = []
    tiled = tiled_forward(_recording(lambda tiles: tiles * 2 + 1, calls), images, tile=16, overlap=4)
    assert {shape[1:] for shape in calls} == {(3, 10, 16)}
    torch.testing.assert_close(tiled, images * 2 + 1, rtol=0, atol=1e-6)


def test_batch_size_does_not_change_the_result() -> None:
    images = _images(2, 3, 37, 53, seed=4)
    elementwise = lambda tiles: torch.sin(3 * tiles) * 2 + 1  # noqa: E731
    one = tiled_forward(elementwise, images, tile=16, overlap=6, batch_size=1)
    seven = tiled_forward(elementwise, images, tile=16, overlap=6, batch_size=7)
    assert torch.equal(one, seven)


def test_linear_blend_damps_the_seams_of_a_conv_net() -> None:
    # Two 3×3 convs: receptive radius 2, so zero padding makes tiles wrong within 2 pixels of inner edges.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()
    images = _images(2, 3, 45, 61, seed=5)
    with torch.no_grad():
        plain = net(images)
        seams = (tiled_forward(net, images, tile=24, overlap=0) - plain).abs()
        linear = (tiled_forward(net, images, tile=24, overlap=8, blend="linear") - plain).abs()
        uniform = (tiled_forward(net, images, tile=24, overlap=8, blend="uniform") - plain).abs()
    assert seams.max() > 0.1  # without overlap the seams are plainly visible
    assert linear.max() < 0.3 * seams.max()
    # The ramp gives the wrong pixels at a tile edge little weight; a plain mean gives them half.
    assert linear.mean() < 0.45 * uniform.mean()


@pytest.mark.parametrize("blend", ["linear", "uniform"])
@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"), [(37, 53, 16, 4), (40, 40, 16, 15), (9, 70, 8, 3)]
)
def test_every_output_pixel_is_covered(blend: str, height: int, width: int, tile: int, overlap: int) -> None:
    images = _images(2, 3, height, width, seed=6)
    ones = tiled_forward(torch.ones_like, images, tile=tile, overlap=overlap, blend=blend)
    assert torch.equal(ones, torch.ones_like(images))
    upscaled_ones = lambda tiles: tiles.new_ones(tiles.shape[0], 1, 3 * tiles.shape[2], 3 * tiles.shape[3])  # noqa: E731
    result = tiled_forward(upscaled_ones, images, tile=tile, overlap=overlap, blend=blend)
    assert torch.equal(result, torch.ones(2, 1, 3 * height, 3 * width))


def test_follows_the_callers_grad_mode() -> None:
    images = _images(1, 3, 30, 30, seed=7).requires_grad_()
    tiled_forward(lambda tiles: tiles * 2, images, tile=16, overlap=4).sum().backward()
    # The blend weights are normalised, so d(output)/d(input) is the 2 of the pointwise fn everywhere.
    torch.testing.assert_close(images.grad, torch.full_like(images, 2.0))
    with torch.no_grad():
        assert not tiled_forward(lambda tiles: tiles * 2, images, tile=16, overlap=4).requires_grad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": 0}, "tile must be a positive"),
        ({"tile": 16, "overlap": -1}, "overlap must satisfy"),
        ({"tile": 16, "overlap": 16}, "overlap must satisfy"),
        ({"tile": 16, "overlap": 4, "batch_size": 0}, "batch_size must be >= 1"),
        ({"tile": 16, "overlap": 4, "blend": "cosine"}, "blend must be"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiled_forward(torch.ones_like, _images(1, 3, 20, 20), **kwargs)


@pytest.mark.parametrize(
    "fn",
    [
        lambda tiles: F.interpolate(tiles, scale_factor=1.5),  # not an integer scale
        lambda tiles: tiles[..., :-1],  # different scale on the two axes
        lambda tiles: tiles.flatten(1),  # not an image
    ],
    ids=["fractional", "anisotropic", "flat"],
)
def test_fn_with_no_integer_scale_raises(fn: Callable[[Tensor], Tensor]) -> None:
    with pytest.raises(ValueError, match="positive integer scale"):
        tiled_forward(fn, _images(1, 3, 20, 20), tile=16, overlap=4)


def test_bad_images_raise() -> None:
    with pytest.raises(ValueError, match="N×C×H×W"):
        tiled_forward(torch.ones_like, torch.zeros(3, 20, 20), tile=16)
