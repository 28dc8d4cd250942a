"""Setup time of a folder source over many small images: reading every header, against reading the index.

Run ``python -m experiments.bench.folder_index`` (``--help``). Writes ``--images`` tiny PNG files (8 to 16 px
a side; one file encoded per size, its bytes copied) into ``--classes`` class folders, ImageNet's layout
``root/<class>/<image>.png``, then times ``ImageFolder.scan()`` (what the datamodule's ``setup`` runs for the
training split) in a fresh source each time:

- without an index (``index_cache=null``): every header read, at every start and on every rank;
- the first run with an index: every header read, and the index written;
- later runs (restarts, the other ranks): the folder listed, the index read, no image opened;

and, for reference, the listing alone (``os.scandir`` and one ``stat`` per file, which every run does to
key the index). Prints a Markdown table; the later runs are the median of ``--repeats``. The files were
just written, so they are in the page cache for every row: on a cold network filesystem every row is slower,
the header reads most.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

from experiments.bench.degradations import cpu_name
from restoration.data.io import list_image_files
from restoration.data.sources import ImageFolder

__all__ = ["main", "spread_files", "write_folder"]

SIDES = ((8, 8), (8, 12), (12, 8), (16, 16))  # (height, width) of the generated images


def write_folder(root: Path, *, images: int, classes: int) -> None:
    """``images`` PNG files spread over ``classes`` folders ``root/n<class>/n<class>_<i>.png``."""
    encoded = []
    for index, (height, width) in enumerate(SIDES):
        pixels = np.random.default_rng(index).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    spread_files(root, encoded, images=images, classes=classes, suffix=".png")


def spread_files(root: Path, encoded: list[bytes], *, images: int, classes: int, suffix: str) -> None:
    """``images`` files over ``classes`` folders ``root/n<class>/n<class>_<i><suffix>`` (ImageNet's layout),
    file i holding ``encoded[i % len(encoded)]``."""
    folders = [root / f"n{label:08d}" for label in range(classes)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for image in range(images):
        folder = folders[image % classes]
        (folder / f"{folder.name}_{image // classes}{suffix}").write_bytes(encoded[image % len(encoded)])


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=1000, help="class folders (ImageNet: 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="cached scans timed (the median is shown)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write the files (default: a temp dir)"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="folder-index-", dir=args.dir))
    try:
        root, cache = work / "train", work / "cache"
        written = _seconds(lambda: write_folder(root, images=args.images, classes=args.classes))
        listing = _seconds(lambda: list_image_files(root))
        uncached = _seconds(lambda: ImageFolder(root=str(root)).scan())
        first = _seconds(lambda: ImageFolder(root=str(root), index_cache=str(cache)).scan())
        cached = statistics.median(
            _seconds(lambda: ImageFolder(root=str(root), index_cache=str(cache)).scan())
            for _ in range(args.repeats)
        )
        (index_file,) = cache.iterdir()
        print(
            f"{args.images:,} PNG files in {args.classes} class folders (written in {written:.0f} s), "
            f"{cpu_name()}, {date.today()}; index file {index_file.stat().st_size / 2**20:.2f} MiB\n"
        )
        print("| `ImageFolder.scan()` | s |\n|---|---|")
        print(f"| listing only (`os.scandir` + `stat`) | {listing:.2f} |")
        print(f"| no index (`index_cache=null`): every start, every rank | {uncached:.2f} |")
        print(f"| first run: headers read, index written | {first:.2f} |")
        print(f"| later runs, other ranks: index read (median of {args.repeats}) | {cached:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
