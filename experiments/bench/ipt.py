"""Speed of IPT (restoration/archs/ipt.py) and of its tiled inference (restoration/tiling.py).

Run ``python -m experiments.bench.ipt [--official PATH_TO/Pretrained-IPT]`` (options: ``--help``). Prints
Markdown tables, on the CPU and on CUDA when present:

1. 48×48 tiles per second through the full-size single-task ×2 and ×1 models (batch 8, float32, under
   ``torch.inference_mode``); with ``--official``, the official model with the same random weights, timed
   alternately with ours in one process so that both see the same background load, and the largest
   difference of their outputs on the 0–255 scale;
2. one 481×321 image (Rain100L's size) through the ×1 model under each tiling protocol: the tiles, the
   seconds of the tiling itself (gathering and blending, with a free forward), and the seconds of the
   whole restoration: measured on CUDA, and on the CPU estimated from table 1's rate unless ``--cpu-images``
   (the official protocol then takes about 15 minutes on a 2-core CPU);
3. how far the fast protocols land from the official one on a 481×321 photo, with ``ipt_tiny`` and random
   weights: a stand-in for their PSNR cost, which only trained weights can tell.

Each timing is the median of ``--repeats`` runs after one warm-up run, with PyTorch's default thread count
and glibc told to keep freed memory (as in experiments/bench/degradations.py).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import skimage.data
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from experiments.bench.degradations import cpu_name
from restoration.archs.ipt import IPT
from restoration.run import keep_freed_memory
from restoration.tiling import ipt_tiled_forward

__all__ = ["main"]

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"
IMAGE_SIZE = (481, 321)  # Rain100L's test images
# name -> ipt_tiled_forward options
PROTOCOLS = {
    "official (stride 12, averaged centres)": {"protocol": "official"},
    "fast, MindSpore (overlap 12, seams)": {"protocol": "fast", "overlap": 12},
    "fast, paper's 10 px overlap (seams)": {"protocol": "fast", "overlap": 10},
    "fast, overlap 12, averaged": {"protocol": "fast", "overlap": 12, "blend": "average"},
}


def synchronized(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(run: Callable[[], object], device: torch.device) -> float:
    start = time.perf_counter()
    run()
    synchronized(device)
    return time.perf_counter() - start


def build_pair(
    preset: str, official_root: Path | None, device: torch.device
) -> tuple[IPT, torch.nn.Module | None]:
    """Ours from ``conf/backbone/<preset>.yaml`` and, with the checkout, the official model (same weights)."""
    torch.manual_seed(0)
    settings = OmegaConf.to_container(OmegaConf.load(CONF / f"{preset}.yaml"))
    settings.pop("_target_")
    ours = IPT(**settings)
    official = None
    if official_root is not None:
        from experiments.official.ipt import (
            official_ipt,
        )  # needs the checkout's imports, only with --official

        official = official_ipt(official_root, settings)
        ours.load_state_dict(official.state_dict(), strict=True)
        official.to(device).eval()
    return ours.to(device).eval(), official


def tiles_per_second_table(
    devices: list[torch.device], official_root: Path | None, batch: int, repeats: int
) -> tuple[str, dict[tuple[str, str], float]]:
    """Table 1, and our tiles/s per (device, preset) for table 2's estimates."""
    lines = ["| device | model | ours tiles/s | official tiles/s | ours / official | max abs diff (0–255) |"]
    lines.append("|---|---|---|---|---|---|")
    rates = {}
    for device in devices:
        for preset in ("ipt_sr_x2", "ipt_derain"):
            ours, official = build_pair(preset, official_root, device)
            tiles = torch.rand(batch, 3, 48, 48, generator=torch.Generator().manual_seed(0)).to(device)
            runs = {"ours": functools.partial(ours, tiles)}
            if official is not None:
                runs["official"] = functools.partial(official, tiles * 255)
            times: dict[str, list[float]] = {name: [] for name in runs}
            with torch.inference_mode():
                for run in runs.values():  # warm-up, then alternate
                    seconds(run, device)
                for _ in range(repeats):
                    for name, run in runs.items():
                        times[name].append(seconds(run, device))
                difference = "–"
                if official is not None:
                    difference = f"{(ours(tiles) * 255 - official(tiles * 255)).abs().max().item():.1e}"
            rate = {name: batch / statistics.median(values) for name, values in times.items()}
            rates[device.type, preset] = rate["ours"]
            official_rate = f"{rate['official']:.2f}" if "official" in rate else "–"
            ratio = f"{rate['ours'] / rate['official']:.2f}×" if "official" in rate else "–"
            ours_rate = f"{rate['ours']:.2f}"
            lines.append(
                f"| {device.type} | {preset} | {ours_rate} | {official_rate} | {ratio} | {difference} |"
            )
            del ours, official
    return "\n".join(lines), rates


def count_tiles(options: dict) -> int:
    calls: list[int] = []

    def free_forward(tiles: torch.Tensor) -> torch.Tensor:
        calls.append(tiles.shape[0])
        return tiles

    ipt_tiled_forward(free_forward, torch.zeros(1, 3, *IMAGE_SIZE), scale=1, **options)
    return sum(calls)


def image_table(devices: list[torch.device], rates: dict, repeats: int, measure_cpu: bool) -> str:
    """Table 2: one 481×321 image through the ×1 model under each protocol."""
    lines = [
        "| device | protocol | tiles | tiling alone (s) | whole image, ×1 model (s) |",
        "|---|---|---|---|---|",
    ]
    for device in devices:
        image = torch.rand(1, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(0)).to(device)
        net = None
        if device.type == "cuda" or measure_cpu:
            net, _ = build_pair("ipt_derain", None, device)
        for name, options in PROTOCOLS.items():
            tiles = count_tiles(options)
            with torch.inference_mode():
                tiling = functools.partial(ipt_tiled_forward, torch.clone, image, scale=1, **options)
                seconds(tiling, device)
                overhead = statistics.median(seconds(tiling, device) for _ in range(repeats))
                if net is not None:
                    whole = functools.partial(ipt_tiled_forward, net, image, scale=1, **options)
                    seconds(whole, device)
                    total = f"{statistics.median(seconds(whole, device) for _ in range(repeats)):.1f}"
                else:
                    total = f"≈ {tiles / rates[device.type, 'ipt_derain'] + overhead:.0f} (estimated)"
            lines.append(f"| {device.type} | {name} | {tiles} | {overhead:.3f} | {total} |")
    return "\n".join(lines)


def protocol_difference_table() -> str:
    """Table 3: fast protocols against the official one, ipt_tiny with random weights, all six tasks."""
    torch.manual_seed(0)
    net = instantiate(OmegaConf.load(CONF / "ipt_tiny.yaml")).eval()
    photo = torch.from_numpy(skimage.data.astronaut()[: IMAGE_SIZE[0], : IMAGE_SIZE[1]].copy())
    image = photo.permute(2, 0, 1)[None].float() / 255
    lines = [
        "| task | protocol | max abs diff | mean abs diff | official output std |",
        "|---|---|---|---|---|",
    ]
    with torch.inference_mode():
        for task in ("sr_x2", "derain"):
            forward = functools.partial(net, task=task)
            scale = net.scale_of(task)
            degraded = F.interpolate(image, scale_factor=1 / scale, mode="bicubic") if scale > 1 else image
            reference = ipt_tiled_forward(forward, degraded, scale=scale)
            for name, options in list(PROTOCOLS.items())[1:]:
                difference = (ipt_tiled_forward(forward, degraded, scale=scale, **options) - reference).abs()
                lines.append(
                    f"| {task} | {name} | {difference.max().item():.2e} | {difference.mean().item():.2e} "
                    f"| {reference.std().item():.2e} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--official", type=Path, help="checkout of huawei-noah/Pretrained-IPT to time against"
    )
    parser.add_argument("--batch", type=int, default=8, help="tiles per forward in table 1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cpu-images", action="store_true", help="measure table 2 on the CPU too (slow)")
    parser.add_argument(
        "--only", choices=["tiles", "images", "protocols"], nargs="+", help="these tables only"
    )
    args = parser.parse_args()
    malloc = "glibc keeps freed memory (mallopt)" if keep_freed_memory() else "allocator defaults"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    parts = set(args.only or ["tiles", "images", "protocols"])
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(
        f"{date.today()} · {cpu_name()}, {os.cpu_count()} cores · torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads · median of {args.repeats} after a warm-up run · {malloc}"
    )
    if torch.cuda.is_available():
        print(f"CUDA: {torch.cuda.get_device_name()}")
    rates: dict = {}
    if "tiles" in parts or "images" in parts:
        print(f"\n### 48×48 tiles per second, batch {args.batch}, float32\n")
        table, rates = tiles_per_second_table(devices, args.official, args.batch, args.repeats)
        print(table)
    if "images" in parts:
        print(
            f"\n### One {IMAGE_SIZE[0]}×{IMAGE_SIZE[1]} image, ×1 model (ipt_derain), per tiling protocol\n"
        )
        print(image_table(devices, rates, args.repeats, args.cpu_images))
    if "protocols" in parts:
        size = f"{IMAGE_SIZE[0]}×{IMAGE_SIZE[1]}"
        print(f"\n### Fast protocols against the official one: ipt_tiny, random weights, a {size} photo\n")
        print(protocol_difference_table())


if __name__ == "__main__":
    main()
