"""Image reading: every pixel format ends up as RGB float in [0, 1]; bad files name themselves."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from restoration.data.io import image_size, list_images, read_image
from restoration.errors import DataError

from .conftest import write_image


def _png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB)."""
    height, width, channels = pixels.shape
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_rgb_png_and_jpeg(tmp_path: Path) -> None:
    pixels = write_image(tmp_path / "a.png", size=(30, 20))
    image = read_image(tmp_path / "a.png")
    assert image.shape == (3, 30, 20) and image.dtype == torch.float32
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    jpeg = read_image(tmp_path / "a.jpg")
    assert jpeg.shape == (3, 30, 20) and jpeg.min() >= 0.0 and jpeg.max() <= 1.0


def test_grayscale_is_repeated_to_rgb(tmp_path: Path) -> None:
    pixels = write_image(tmp_path / "g.png", mode="L")
    image = read_image(tmp_path / "g.png")
    expected = torch.from_numpy(pixels[..., 0]).float() / 255
    assert all(torch.equal(image[c], expected) for c in range(3))


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    pixels = write_image(tmp_path / "a.png", mode="RGBA")
    assert torch.equal(
        read_image(tmp_path / "a.png"), torch.from_numpy(pixels[..., :3]).permute(2, 0, 1).float() / 255
    )


def test_palette_is_expanded(tmp_path: Path) -> None:
    rgb = write_image(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    expected = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    image = read_image(tmp_path / "p.png")
    assert image.shape[0] == 3
    assert torch.equal(image, torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_png_keeps_full_precision(tmp_path: Path, channels: int) -> None:
    pixels = np.random.default_rng(0).integers(0, 65536, size=(12, 9, channels), dtype=np.uint16)
    _png16(tmp_path / "deep.png", pixels)
    image = read_image(tmp_path / "deep.png").double()
    expected = torch.from_numpy(pixels.astype(np.float64) / 65535).permute(2, 0, 1).expand(3, -1, -1)
    assert torch.allclose(image, expected, atol=1e-7)


def test_16bit_grayscale_png_from_pillow(tmp_path: Path) -> None:
    pixels = write_image(tmp_path / "g16.png", mode="I;16")
    image = read_image(tmp_path / "g16.png").double()
    assert torch.allclose(image[1], torch.from_numpy(pixels.astype(np.float64) / 65535), atol=1e-7)


def test_16bit_rgb_tiff(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 65536, size=(10, 14, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", pixels)
    image = read_image(tmp_path / "deep.tif").double()
    assert torch.allclose(image, torch.from_numpy(pixels / 65535).permute(2, 0, 1), atol=1e-7)


def test_bmp_and_webp(tmp_path: Path) -> None:
    pixels = write_image(tmp_path / "a.bmp")
    assert torch.equal(
        read_image(tmp_path / "a.bmp"), torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    )
    Image.fromarray(pixels).save(tmp_path / "a.webp", lossless=True)
    assert torch.equal(
        read_image(tmp_path / "a.webp"), torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    )


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_is_named(tmp_path: Path, suffix: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    whole = tmp_path / f"whole{suffix}"
    Image.fromarray(pixels).save(whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.(png|jpg): cannot decode"):
        read_image(cut)


def test_not_an_image_is_named(tmp_path: Path) -> None:
    (tmp_path / "junk.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"junk\.png: cannot decode"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(DataError, match=r"junk\.png: cannot read the image header"):
        image_size(tmp_path / "junk.png")


def test_image_size_reads_the_header(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", size=(31, 17))
    assert image_size(tmp_path / "a.png") == (31, 17)


def test_list_images_filters_and_sorts(tmp_path: Path) -> None:
    for name in ["b/2.PNG", "a/1.jpg", "c.tiff", ".hidden/3.png", "notes.txt", "d/.x.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [path.relative_to(tmp_path).as_posix() for path in list_images(tmp_path)]
    assert found == ["a/1.jpg", "b/2.PNG", "c.tiff"]


def test_packed_bytes_decode_as_the_file(tmp_path: Path) -> None:
    """``read_image(path, data)``, what a packed image is read with, equals reading the file, every format."""
    write_image(tmp_path / "rgb.jpg", seed=1)
    write_image(tmp_path / "palette.png", mode="L", seed=2)
    write_image(tmp_path / "g16.png", mode="I;16")
    _png16(tmp_path / "rgb16.png", np.random.default_rng(3).integers(0, 65536, (6, 5, 3), dtype=np.uint16))
    tifffile.imwrite(tmp_path / "deep.tif", np.random.default_rng(4).integers(0, 65536, (5, 7, 3), np.uint16))
    for path in sorted(tmp_path.iterdir()):
        assert torch.equal(read_image(path, path.read_bytes()), read_image(path)), path.name
    with pytest.raises(DataError, match=r"^c1/x.png: cannot decode the image"):
        read_image(Path("c1/x.png"), b"\x89PNG\r\n\x1a\n broken")
