"""Pack a folder of images into LitData chunks: ``python -m restoration.data.pack SRC OUT``.

The files' bytes are stored as they are (no re-encoding), with the relative path, the class label (first-level
sub-folders, as :class:`~restoration.data.sources.ImageFolder` gives them: ImageNet's train layout
``SRC/<class>/<image>``) and the image size read from the header. ``--holdout F`` (default 0.01) sets aside
the files the folder source's hold-out puts aside (the same hash of the relative path), so that the packed
validation split holds the images a folder run validates on::

    OUT/train/   index.json + chunk-*.bin   (streamed: datamodule=streaming datamodule.root=OUT)
    OUT/val/     index.json + chunk-*.bin   (read by index; absent with --holdout 0)
    OUT/skipped.txt                         one line per file whose header could not be read

Each split's ``index.json`` also carries ``restoration``: the class names, the label range and the source.
Files whose header cannot be read are skipped, counted and named in ``skipped.txt``. The pack is written
to ``OUT.partial`` and renamed to ``OUT`` when complete, so a stopped pack never looks finished; an existing
``OUT`` is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from restoration.data.io import IMAGE_EXTENSIONS, index_images, list_image_files
from restoration.data.sources import ImageFolder
from restoration.errors import DataError, RestorationError

__all__ = ["METADATA_KEY", "main", "pack"]

log = logging.getLogger(__name__)

# the key of our metadata in each split's LitData index.json
METADATA_KEY = "restoration"
_READ_AHEAD = 64  # files read by the thread pool ahead of the writer


def pack(
    source: str | Path,
    output: str | Path,
    *,
    holdout: float = 0.01,
    chunk_bytes: str | int = "64MB",
    threads: int = 8,
    progress: bool = True,
) -> dict[str, int]:
    """Pack the images under ``source`` into ``output`` (see the module docstring); the count per split
    and of skipped files."""
    from litdata.streaming.writer import BinaryWriter
    from tqdm import tqdm

    source, output = Path(source), Path(output)
    if output.exists():
        raise DataError(f"{output}: already exists; choose a new output folder (a pack is never overwritten)")
    if not 0.0 <= holdout < 1.0:
        raise DataError(f"--holdout {holdout}; expected a fraction in [0, 1)")
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # what a stopped pack left
    index_dir = partial / ".index"
    if not source.is_dir():
        raise DataError(f"{source}: folder not found; expected a folder of images, optionally SRC/<class>/")
    files = list_image_files(source)
    if not files.names:
        raise DataError(f"{source}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
    index = index_images(files, cache_dir=index_dir)
    skipped = [header for position in range(len(files)) if isinstance(header := index.header(position), str)]
    parts = {"train": "all"} if holdout == 0 else {"train": "train", "val": "holdout"}
    counts: dict[str, int] = {}
    for split, part in parts.items():
        folder = ImageFolder(root=str(source), part=part, holdout=holdout, index_cache=str(index_dir))
        try:
            folder.scan(skip_bad_files=True)
        except DataError as error:
            raise DataError(f"{error} (--holdout {holdout} of {len(files)} files)") from None
        paths = [entry.gt for entry in folder.entries]
        assert all(isinstance(path, Path) for path in paths)
        writer = BinaryWriter(str(partial / split), chunk_bytes=chunk_bytes)
        bar = tqdm(total=len(paths), desc=f"pack {split}", unit="img", disable=not progress)
        with ThreadPoolExecutor(threads) as pool:
            for position, data in enumerate(_read_ahead(pool, paths)):
                entry = folder.entries[position]
                height, width = entry.size
                writer.add_item(
                    position,
                    {
                        "image": data,
                        "name": paths[position].relative_to(source).as_posix(),
                        "label": entry.label,
                        "height": height,
                        "width": width,
                    },
                )
                bar.update()
        bar.close()
        writer.done()
        writer.merge()
        _add_metadata(
            partial / split / "index.json",
            {
                "source": str(source),
                "part": part,
                "holdout": holdout,
                "count": len(paths),
                "classes": list(folder.classes),
                "labels": list(folder.label_range()),
            },
        )
        counts[split] = len(paths)
    shutil.rmtree(index_dir)
    (partial / "skipped.txt").write_text("".join(f"{line}\n" for line in skipped))
    os.replace(partial, output)
    counts["skipped"] = len(skipped)
    return counts


def _read_ahead(pool: ThreadPoolExecutor, paths: list[Path]) -> Iterator[bytes]:
    """The bytes of ``paths`` in order, read by ``pool`` at most ``_READ_AHEAD`` files ahead."""
    pending = [pool.submit(path.read_bytes) for path in paths[:_READ_AHEAD]]
    for position in range(len(paths)):
        data = pending[position].result()
        pending[position] = None  # type: ignore[call-overload]
        if position + _READ_AHEAD < len(paths):
            pending.append(pool.submit(paths[position + _READ_AHEAD].read_bytes))
        yield data


def _add_metadata(path: Path, metadata: dict[str, object]) -> None:
    index = json.loads(path.read_text())
    index[METADATA_KEY] = metadata
    path.write_text(json.dumps(index))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m restoration.data.pack",
        description="Pack a folder of images (or ImageNet's train layout SRC/<class>/<image>) into LitData "
        "chunks of the files' own bytes, for datamodule=streaming datamodule.root=OUT.",
    )
    parser.add_argument("source", help="folder of images (recursive); first-level sub-folders are classes")
    parser.add_argument("output", help="new folder for the pack (OUT/train, OUT/val, OUT/skipped.txt)")
    parser.add_argument(
        "--holdout",
        type=float,
        default=0.01,
        help="fraction held out into OUT/val, chosen as datamodule=folder does (default 0.01; 0: none)",
    )
    parser.add_argument("--chunk-bytes", default="64MB", help="size of a chunk (default 64MB)")
    parser.add_argument("--threads", type=int, default=8, help="file-reading threads (default 8)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        counts = pack(
            args.source, args.output, holdout=args.holdout, chunk_bytes=args.chunk_bytes, threads=args.threads
        )
    except RestorationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{split} {count}" for split, count in counts.items() if split != "skipped")
    print(
        f"packed {args.source} into {args.output}: {splits} images; skipped {counts['skipped']} unreadable "
        f"files (listed in {Path(args.output) / 'skipped.txt'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
