"""Compare our networks with the official implementations: same weights, same input, outputs.

    python -m experiments.official NETWORK --root PATH_TO_OFFICIAL_CHECKOUT [--presets a b]

``NETWORK`` is a module of this package (``restormer``, ``nafnet``, ``constyle``, ...). Each module defines

- ``build(root, preset) -> (ours, official)``: both networks for a preset of ``conf/backbone``, ours
  loaded strictly from the official module's (random, seeded) state dict;
- ``PRESETS``: the presets it covers;
- optionally ``INPUT_SHAPE`` (default 1×3×64×64), ``run_ours(net, x)`` and ``run_official(net, x)``
  when a network takes more than one image in [0, 1].

Prints a Markdown table: parameters of both, and the largest absolute output difference in float32.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import torch


def _call(module, name: str, net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    runner = getattr(module, name, None)
    return runner(net, images) if runner is not None else net(images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("network", help="module of experiments/official, e.g. restormer")
    parser.add_argument("--root", type=Path, required=True, help="local checkout of the official repository")
    parser.add_argument("--presets", nargs="*", help="subset of the module's PRESETS")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    checks = importlib.import_module(f"experiments.official.{args.network}")
    print("| preset | params (ours) | params (official) | input | max abs diff |")
    print("|---|---|---|---|---|")
    for preset in args.presets or checks.PRESETS:
        torch.manual_seed(args.seed)
        ours, official = checks.build(args.root, preset)
        ours.eval(), official.eval()
        shape = getattr(checks, "INPUT_SHAPE", (1, 3, 64, 64))
        images = torch.rand(shape, generator=torch.Generator().manual_seed(args.seed))
        with torch.no_grad():
            expected = _call(checks, "run_official", official, images)
            actual = _call(checks, "run_ours", ours, images)
        count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
        diff = (actual - expected).abs().max().item()
        print(
            f"| {preset} | {count(ours):,} | {count(official):,} | {'×'.join(map(str, shape))} | {diff:.2e} |"
        )


if __name__ == "__main__":
    main()
