"""Cost of the backbone presets of conf/backbone: parameters, MACs, forward+backward time, peak memory.

Run ``python -m experiments.bench.backbones`` (options: ``--help``). For each preset it prints one row:

- parameters, and forward multiply-accumulates per image counted by ``torch.utils.flop_counter``
  (FLOPs / 2) at the benchmark size;
- seconds per training iteration (forward + L1 loss + backward) at batch ``--batch`` × 3 × ``--size``²,
  the median of ``--repeats`` runs after ``--warmup`` runs, with PyTorch's default thread count;
- peak memory of that iteration: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the growth of
  the process's peak resident set over what it held before the first iteration.

With ``--official NETWORK=ROOT`` (``restormer``, ``nafnet``, ``maxim``, ``cnn_unet``, ``snr_aware``; see
``experiments/official``), the official implementation from the checkout at ROOT is timed too, with the
same weights, alternating with ours in one process so that both see the same machine load; the ratio
is official time / our time (above 1: ours is faster).

Each measurement runs in its own subprocess, so one preset's memory does not inflate the next one's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["main"]

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "backbone"
PRESETS = (
    "restormer",
    "nafnet_w32_sidd",
    "nafnet_w64_gopro",
    "nafnet_w64_sidd",
    "maxim_1s",
    "cnn_unet",
    "snr_aware",
)
# which module of experiments/official builds the official twin of a preset
OFFICIAL_MODULE = {
    "restormer": "restormer",
    "nafnet_w32_sidd": "nafnet",
    "nafnet_w64_gopro": "nafnet",
    "nafnet_w64_sidd": "nafnet",
    "maxim_1s": "maxim",
    "cnn_unet": "cnn_unet",
    "snr_aware": "snr_aware",
}


def build(preset: str) -> nn.Module:
    """Our network for ``conf/backbone/<preset>.yaml``."""
    import restoration.run  # noqa: F401  (registers the resolvers some backbone configs use)

    return instantiate(OmegaConf.load(CONF_DIR / f"{preset}.yaml"))


def _train_iteration(net: nn.Module, images: torch.Tensor, forward: Callable | None) -> None:
    net.zero_grad(set_to_none=True)
    restored = forward(net, images) if forward is not None else net(images)
    (restored - images).abs().mean().backward()


def _seconds(net: nn.Module, images: torch.Tensor, forward: Callable | None = None) -> float:
    if images.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    _train_iteration(net, images, forward)
    if images.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _worker(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    device = torch.device(args.device)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(
        device
    )
    # how each network is called: an official twin may take more than the image (see experiments/official)
    forwards: dict[str, Callable | None] = {"ours": None, "official": None}
    if args.impl == "ours":
        nets = {"ours": build(args.worker)}
    else:
        checks = importlib.import_module(f"experiments.official.{OFFICIAL_MODULE[args.worker]}")
        ours, official = checks.build(Path(args.root), args.worker)
        forwards = {
            "ours": getattr(checks, "run_ours", None),
            "official": getattr(checks, "run_official", None),
        }
        nets = {"official": official} if args.impl == "official" else {"ours": ours, "official": official}
    for net in nets.values():
        net.to(device).train()
    result: dict = {"params": sum(p.numel() for p in next(iter(nets.values())).parameters())}
    if args.impl == "ours":
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            nets["ours"](images[:1])
        result["gmacs"] = counter.get_total_flops() / 2 / 1e9
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _peak_rss_mb()
    times: dict[str, list[float]] = {name: [] for name in nets}
    for step in range(args.warmup + args.repeats):
        for name, net in nets.items():  # alternate, so both see the same load
            seconds = _seconds(net, images, forwards[name])
            if step >= args.warmup:
                times[name].append(seconds)
    result["seconds"] = {name: statistics.median(values) for name, values in times.items()}
    if len(nets) == 1:
        result["peak_mb"] = (
            torch.cuda.max_memory_allocated() / 2**20
            if device.type == "cuda"
            else _peak_rss_mb() - rss_before
        )
    return result


def _run_worker(args: argparse.Namespace, preset: str, impl: str, root: str | None = None) -> dict:
    command = [
        sys.executable, "-m", "experiments.bench.backbones", "--worker", preset, "--impl", impl,
        "--device", args.device, "--batch", str(args.batch), "--size", str(args.size),
        "--repeats", str(args.repeats), "--warmup", str(args.warmup),
    ]  # fmt: skip
    if root is not None:
        command += ["--root", root]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{preset} ({impl}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="*", default=list(PRESETS), help="conf/backbone presets")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--official", nargs="*", default=[], metavar="NETWORK=ROOT", help="time the official code too"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return
    roots = dict(item.split("=", 1) for item in args.official)
    print(
        f"{date.today()} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores · "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads) · device {args.device} · "
        f"batch {args.batch}×3×{args.size}² · median of {args.repeats} after {args.warmup} warm-up\n"
    )
    print(
        "| preset | params | GMACs / image | fwd+bwd s/iter | peak MB | official s/iter | official / ours |"
    )
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets:
        ours = _run_worker(args, preset, "ours")
        row = [
            preset,
            f"{ours['params']:,}",
            f"{ours['gmacs']:.2f}",
            f"{ours['seconds']['ours']:.3f}",
            f"{ours['peak_mb']:,.0f}",
        ]
        root = roots.get(OFFICIAL_MODULE[preset])
        if root is None:
            row += ["", ""]
        else:
            pair = _run_worker(args, preset, "pair", root)
            official, mine = pair["seconds"]["official"], pair["seconds"]["ours"]
            row += [f"{official:.3f} (ours {mine:.3f})", f"{official / mine:.2f}"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
