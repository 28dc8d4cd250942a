"""Training pairs per second: packed streaming data (``datamodule=streaming``) against the folder path.

Run ``python -m experiments.bench.streaming`` (``--help``). Writes ``--images`` JPEG files of ImageNet's
typical size (375×500 and 500×375, quality 90; a few encoded images whose bytes are copied) into
``--classes`` class folders, packs them with ``restoration.data.pack`` (timed), then reads training batches of
both datamodules composed from the real config as a user's command composes them
(``datamodule=folder datamodule.root=...`` and ``datamodule=streaming datamodule.root=...``, the same
``--degradation``, crop, batch size and ``--workers`` loader workers): each batch is decoded and cropped by
the loader workers, then degraded by the datamodule's ``on_after_batch_transfer`` in the main process, as in
training on the CPU. Prints a Markdown table: the seconds to the first batch (workers starting, the folder's
header index, LitData's chunk index) and the pairs per second over the next ``--batches`` batches, per
path, alternated over ``--repeats`` rounds (medians). The files were just written, so they are in the page
cache for both paths.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict
from PIL import Image

from experiments.bench.degradations import cpu_name
from experiments.bench.folder_index import spread_files
from restoration.data.pack import pack

__all__ = ["main", "measure", "write_jpeg_folder"]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
SIDES = ((375, 500), (500, 375))  # (height, width): ImageNet's most common sizes
VARIANTS = 8  # distinct encoded images


def write_jpeg_folder(root: Path, *, images: int, classes: int) -> None:
    """``images`` JPEG files over ``classes`` folders ``root/n<class>/n<class>_<i>.JPEG`` (smooth content)."""
    encoded = []
    for index in range(VARIANTS):
        height, width = SIDES[index % len(SIDES)]
        coarse = np.random.default_rng(index).integers(0, 256, size=(height // 25, width // 25, 3))
        image = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    spread_files(root, encoded, images=images, classes=classes, suffix=".JPEG")


def _datamodule(work: Path, overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(work / "run")
        cfg.hydra.job.name = "bench"
        cfg.paths.cache_dir = str(work / "cache")
    HydraConfig.instance().set_config(cfg)
    datamodule = instantiate(cfg.datamodule, degradation=instantiate(cfg.degradation))
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def measure(work: Path, overrides: list[str], *, batches: int) -> tuple[float, float, int]:
    """(seconds to the first batch, pairs per second over the next ``batches``, batch size)."""
    start = time.perf_counter()
    datamodule = _datamodule(work, overrides)
    loader = datamodule.train_dataloader()
    iterator = iter(loader)
    first_at = None
    pairs = 0
    for step in range(batches + 1):
        batch = datamodule.on_after_batch_transfer(datamodule.on_before_batch_transfer(next(iterator), 0), 0)
        assert batch["lq"].shape[0] == batch["gt"].shape[0]
        if step == 0:
            first_at = time.perf_counter()
        else:
            pairs += batch["gt"].shape[0]
    seconds = time.perf_counter() - first_at
    del iterator, loader  # ends the workers
    return first_at - start, pairs / seconds, datamodule.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="loader workers (datamodule.num_workers)")
    parser.add_argument("--batches", type=int, default=150, help="batches timed after the first")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, alternating the two paths")
    parser.add_argument("--degradation", default="noise_gaussian", help="a conf/degradation option")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the files (default: temp)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the main process degrades; the loader workers take the other cores
    work = Path(tempfile.mkdtemp(prefix="streaming-bench-", dir=args.dir))
    try:
        root, packed = work / "train", work / "packed"
        write_jpeg_folder(root, images=args.images, classes=args.classes)
        started = time.perf_counter()
        pack(root, packed, holdout=0.01, progress=False)
        pack_seconds = time.perf_counter() - started
        common = [
            f"degradation={args.degradation}",
            f"datamodule.num_workers={args.workers}",
            "datamodule.val.max_images=2",
        ]
        paths = {
            "folder (`datamodule=folder`)": ["datamodule=folder", f"datamodule.root={root}", *common],
            "streaming (`datamodule=streaming`)": [
                "datamodule=streaming",
                f"datamodule.root={packed}",
                *common,
            ],
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
        batch_size = 0
        for _ in range(args.repeats):
            for name, overrides in paths.items():
                first, rate, batch_size = measure(work, overrides, batches=args.batches)
                results[name].append((first, rate))
        size = sum(path.stat().st_size for path in root.rglob("*.JPEG"))
        print(
            f"{args.images:,} JPEG files ({size / 2**20:.0f} MiB, {args.classes} classes), packed in "
            f"{pack_seconds:.1f} s; degradation={args.degradation}, batch {batch_size}, crop 128, "
            f"{args.workers} workers; {cpu_name()}, {date.today()}; medians of {args.repeats} rounds\n"
        )
        print("| path | s to the first batch | pairs/s |\n|---|---|---|")
        for name, rows in results.items():
            first = statistics.median(row[0] for row in rows)
            rate = statistics.median(row[1] for row in rows)
            print(f"| {name} | {first:.2f} | {rate:.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
