"""The folder sources' header index: read once, reused by later scans, rebuilt when the folder changes."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from restoration.data import io
from restoration.data.io import list_image_files, list_images
from restoration.data.sources import ImageFolder, PairedFolders
from restoration.errors import DataError

from .conftest import write_image


def _imagenet(root: Path, classes: int = 3, per_class: int = 3) -> None:
    """``root/<class>/<image>.png`` of a few sizes, as ImageNet's train folder."""
    for label in range(classes):
        for image in range(per_class):
            size = (8 + 2 * image, 10 + label)
            write_image(root / f"n0{label}" / f"n0{label}_{image}.png", size=size, seed=10 * label + image)


def _contents(source: ImageFolder | PairedFolders) -> list[tuple[str, int, tuple[int, int], Path]]:
    return [
        (source.name(i), source.label(i), source.size(i), source.entries[i].gt) for i in range(len(source))
    ]


@pytest.fixture
def header_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files whose header is read from now on."""
    reads: list[Path] = []
    real = io.image_size

    def counted(path: Path) -> tuple[int, int]:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(io, "image_size", counted)
    return reads


@pytest.fixture
def no_file_opened(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to make any header read from then on fail."""

    def forbid() -> None:
        def fail(path: Path) -> tuple[int, int]:
            raise AssertionError(f"{path}: header read although the index holds it")

        monkeypatch.setattr(io, "image_size", fail)

    return forbid


def test_second_scan_reads_the_index_and_opens_no_file(
    tmp_path: Path, no_file_opened: Callable[[], None], caplog: pytest.LogCaptureFixture
) -> None:
    root, cache = tmp_path / "train", tmp_path / "cache"
    _imagenet(root)
    uncached = ImageFolder(root=str(root))
    uncached.scan()
    first = ImageFolder(root=str(root), index_cache=str(cache))
    with caplog.at_level(logging.INFO, logger="restoration.data.io"):
        first.scan()
    assert "read 9 image headers" in caplog.text and "index written to" in caplog.text
    (index_file,) = cache.iterdir()
    no_file_opened()
    caplog.clear()
    cached = ImageFolder(root=str(root), index_cache=str(cache))
    with caplog.at_level(logging.INFO, logger="restoration.data.io"):
        cached.scan()
    assert f"9 image headers read from the index {index_file}" in caplog.text
    # names, class labels, sizes and files as the scan without an index gives them
    assert cached.classes == first.classes == uncached.classes == ("n00", "n01", "n02")
    assert _contents(cached) == _contents(first) == _contents(uncached)
    sizes = {cached.name(i): cached.size(i) for i in range(len(cached))}
    assert sizes["n00/n00_0"] == (8, 10) and sizes["n02/n02_2"] == (12, 12)
    assert [cached.label(i) for i in range(len(cached))] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_parts_share_one_index_and_read_each_header_once(tmp_path: Path, header_reads: list[Path]) -> None:
    root, cache = tmp_path / "train", tmp_path / "cache"
    _imagenet(root, classes=4, per_class=5)
    train = ImageFolder(root=str(root), part="train", holdout=0.3, index_cache=str(cache))
    train.scan()
    assert len(header_reads) == len(train) < 20
    held_out = ImageFolder(root=str(root), part="holdout", holdout=0.3, index_cache=str(cache))
    held_out.scan()  # only the held-out headers are new
    assert len(header_reads) == 20 and len(list(cache.iterdir())) == 1
    every = ImageFolder(root=str(root), index_cache=str(cache))
    every.scan()
    assert len(header_reads) == 20 and len(every) == 20
    assert sorted(_contents(train) + _contents(held_out)) == _contents(every)


def _touch(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


CHANGES: dict[str, Callable[[Path], None]] = {
    "touched": lambda root: _touch(root / "n01" / "n01_0.png"),
    "added": lambda root: write_image(root / "n02" / "n02_9.png", size=(12, 14)),
    "removed": lambda root: (root / "n00" / "n00_1.png").unlink(),
    "rewritten": lambda root: write_image(root / "n00" / "n00_0.png", size=(20, 30), seed=5),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_folder_is_read_again(change: str, tmp_path: Path, header_reads: list[Path]) -> None:
    root, cache = tmp_path / "train", tmp_path / "cache"
    _imagenet(root)
    ImageFolder(root=str(root), index_cache=str(cache)).scan()
    CHANGES[change](root)
    header_reads.clear()
    changed = ImageFolder(root=str(root), index_cache=str(cache))
    changed.scan()
    assert len(header_reads) == len(changed) and len(list(cache.iterdir())) == 2
    uncached = ImageFolder(root=str(root))
    uncached.scan()
    assert _contents(changed) == _contents(uncached)


def test_corrupt_file_is_named_from_the_index_and_after_a_change(
    tmp_path: Path, no_file_opened: Callable[[], None]
) -> None:
    for i in range(3):
        write_image(tmp_path / "data" / f"{i}.png", seed=i)
    (tmp_path / "data" / "1.png").write_bytes(b"broken")
    message = r"data/1\.png: cannot read the image header.*skip_bad_files=true"
    source = ImageFolder(root=str(tmp_path / "data"), index_cache=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=message):
        source.scan()
    write_image(tmp_path / "data" / "3.png", seed=3)  # a changed folder is indexed again
    with pytest.raises(DataError, match=message):
        source.scan()
    no_file_opened()
    with pytest.raises(DataError, match=message):  # now from the index
        source.scan()


def test_skipped_files_are_remembered_by_the_index(
    tmp_path: Path, no_file_opened: Callable[[], None], caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(3):
        write_image(tmp_path / "data" / f"{i}.png", seed=i)
    (tmp_path / "data" / "1.png").write_bytes(b"broken")
    for attempt in ("build", "cached"):
        if attempt == "cached":
            no_file_opened()
        source = ImageFolder(root=str(tmp_path / "data"), index_cache=str(tmp_path / "cache"))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            source.scan(skip_bad_files=True)
        assert [source.name(i) for i in range(len(source))] == ["0", "2"]
        assert "skipped 1 of 3 unreadable files" in caplog.text and "1.png" in caplog.text


def test_validation_split_still_decodes_every_file(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "whole.jpg")
    whole = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    source = ImageFolder(root=str(tmp_path), index_cache=str(tmp_path / ".cache"))
    source.scan()  # the header is intact: the index holds its size
    with pytest.raises(DataError, match=r"cut\.jpg: cannot decode"):
        source.scan(decode=True)


def test_paired_folders_read_both_indexes(
    tmp_path: Path, no_file_opened: Callable[[], None], header_reads: list[Path]
) -> None:
    for i, name in enumerate(["a", "b"]):
        write_image(tmp_path / "lq" / f"{name}.png", size=(10, 12), seed=i)
        write_image(tmp_path / "gt" / f"{name}.png", size=(20, 24), seed=10 + i)
    folders = {"lq_dir": str(tmp_path / "lq"), "gt_dir": str(tmp_path / "gt"), "scale": 2}
    PairedFolders(**folders, index_cache=str(tmp_path / "cache")).prepare()
    assert len(header_reads) == 4 and len(list((tmp_path / "cache").iterdir())) == 2
    uncached = PairedFolders(**folders)
    uncached.scan()
    no_file_opened()
    cached = PairedFolders(**folders, index_cache=str(tmp_path / "cache"))
    cached.scan()
    assert _contents(cached) == _contents(uncached)
    assert [cached.size(i) for i in range(2)] == [(20, 24), (20, 24)]


def test_a_half_written_index_is_never_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One process stops in the middle of writing the index; another scans meanwhile, then the first ends."""
    root, cache = tmp_path / "train", tmp_path / "cache"
    _imagenet(root)
    real_save = np.savez_compressed
    paused, resume = threading.Event(), threading.Event()

    def slow_save(file, **arrays: np.ndarray) -> None:
        if threading.current_thread().name == "first":
            file.write(b"PK\x03\x04 half an index")
            paused.set()
            resume.wait(10)
            file.seek(0)
            file.truncate()
        real_save(file, **arrays)

    monkeypatch.setattr(np, "savez_compressed", slow_save)
    first = ImageFolder(root=str(root), index_cache=str(cache))
    writer = threading.Thread(target=first.scan, name="first")
    writer.start()
    assert paused.wait(10)
    second = ImageFolder(root=str(root), index_cache=str(cache))
    with caplog.at_level(logging.WARNING):
        second.scan()  # finds no index (the half-written one has another name), so builds and writes its own
    assert "unreadable image index" not in caplog.text
    resume.set()
    writer.join(10)
    (index_file,) = cache.iterdir()  # one index, no temporary file left
    assert not index_file.name.startswith(".")
    with np.load(index_file, allow_pickle=False) as stored:
        assert stored["heights"].tolist() == [second.size(i)[0] for i in range(len(second))]
    assert _contents(first) == _contents(second)


def test_an_unwritable_cache_leaves_the_scan_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_image(tmp_path / "data" / "a.png", size=(9, 11))

    def disk_full(file, **arrays: np.ndarray) -> None:
        file.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    source = ImageFolder(root=str(tmp_path / "data"), index_cache=str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING):
        source.scan()
    assert source.size(0) == (9, 11)
    assert "cannot write the image index (" in caplog.text and "No space left" in caplog.text
    assert list((tmp_path / "cache").iterdir()) == []


# GoPro's and SIDD's layouts, hidden files, files that are not images, and names that sort differently as
# strings and as paths ("b-c.png" < "b/c.jpg" as strings, after it as paths)
LAYOUT = [
    "a.png",
    "b-c.png",
    "b/c.jpg",
    "b/d/e.PNG",
    "s1/blur/1.png",
    "s1/blur_gamma/1.png",
    "s1/sharp/1.png",
    "s1/x_NOISY_1.PNG",
    "s1/x_GT_1.PNG",
    ".hidden/x.png",
    "s1/.x.png",
    "notes.txt",
    "s1/a/b/blur/2.tif",
]


@pytest.mark.parametrize("pattern", ["**/*", "*.png", "*/blur/*", "**/blur/*", "s1/**/*.png", "*/*_NOISY_*"])
def test_listing_selects_what_pathlib_glob_selects(pattern: str, tmp_path: Path) -> None:
    for name in LAYOUT:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    globbed = sorted(
        path
        for path in tmp_path.glob(pattern)
        if path.suffix.lower() in io.IMAGE_EXTENSIONS
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(tmp_path).parts)
    )
    assert list_images(tmp_path, pattern=pattern) == globbed
    files = list_image_files(tmp_path, pattern=pattern)
    assert files.sizes.tolist() == [0] * len(globbed) and len(files.mtimes) == len(globbed)
