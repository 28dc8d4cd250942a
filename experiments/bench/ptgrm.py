"""Cost of PTG-RM (Xu et al., CVPR 2024) in training: what the module and its guide add to a target's step.

Run ``python -m experiments.bench.ptgrm [--official PATH_TO/pretrain_model_boost_restoration]`` (``--help``).
Prints Markdown tables:

1. one training step (forward, loss, backward, Adam step) at batch 2 × 3 × 128² of the target network alone
   (the ``ptgrm_*_baseline`` stage: Charbonnier on its output) and of the target + PTG-RM under the guide
   (:meth:`PTGRMStage.losses`, the ``ptgrm`` stage's own code: Charbonnier on both outputs), and the guide's
   forward alone with its share of the guided step. The guide is CLIP ViT-B/32's image tower with random
   weights (open_clip, no download), preprocessed as :class:`~restoration.guides.clip.ClipGuide` does
   (resize to 224², CLIP mean/std): the cost of the released setting without its weights;
2. PTG-RM's forward + backward at batch 2 × 3 × 256² (D = 512, width 16: ``conf/refiner/ptgrm.yaml``); with
   ``--official``, the official ``refinement2`` with the same weights, timed alternately with ours in one
   process so that both see the same background load.

Each timing is the median of ``--repeats`` runs after one warm-up run, the runs of a row taking turns,
float32, with glibc told to keep freed memory (as experiments/bench/degradations.py).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from experiments.bench.degradations import cpu_name
from restoration.guides.base import Guide
from restoration.losses import CharbonnierLoss
from restoration.run import keep_freed_memory
from restoration.stages.ptgrm import PTGRMStage

__all__ = ["RandomClipImageTower", "main", "start_bench", "step_bench_parser"]

CONF = Path(__file__).resolve().parents[2] / "conf"


class RandomClipImageTower(Guide):
    """CLIP ViT-B/32's image tower with random weights, preprocessed and normalised as ClipGuide does."""

    def __init__(self) -> None:
        import open_clip

        super().__init__()
        self.visual = open_clip.create_model("ViT-B-32", pretrained=None).visual
        self.register_buffer("mean", torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1))
        self.dim = self.visual.output_dim
        self.freeze()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        images = F.interpolate(images.clamp(0, 1), size=(224, 224), mode="bicubic", antialias=True)
        return (images.clamp(0, 1) - self.mean) / self.std

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(images).float(), dim=-1)


def _interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run after a warm-up; the runs take turns, so they share the background load."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _config(group: str, name: str) -> OmegaConf:
    return OmegaConf.load(CONF / group / f"{name}.yaml")


def _backbone(name: str) -> torch.nn.Module:
    config = _config("backbone", name)
    if "defaults" in config:  # a *_tiny preset on top of the full one
        base = _config("backbone", config.defaults[0])
        config = OmegaConf.merge(base, {key: value for key, value in config.items() if key != "defaults"})
    return instantiate(config)


def _adam_step(
    parameters: list[torch.nn.Parameter], loss_fn: Callable[[], torch.Tensor]
) -> Callable[[], None]:
    optimizer = torch.optim.Adam(parameters, lr=1e-4, betas=(0.9, 0.99))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()

    return step


def step_table(targets: list[str], guide: Guide, *, size: int, repeats: int) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    degraded = torch.rand(2, 3, size, size, generator=generator)
    clean = torch.rand(2, 3, size, size, generator=generator)
    loss = CharbonnierLoss(eps=1e-3, reduction="sum")
    refiner = instantiate(_config("refiner", "ptgrm"))
    rows = [
        f"| target (batch 2 × {size}²) | target alone s/step | + PTG-RM + guide s/step | added | "
        "guide forward s | guide share of the guided step |",
        "|---|---|---|---|---|---|",
    ]
    for name in targets:
        target = _backbone(name)
        stage = PTGRMStage(
            net=_backbone(name), guide=guide, refiner=refiner, loss=loss, optimizer=None, ema_decay=None
        )
        seconds = _interleaved_medians(
            {
                "alone": _adam_step(list(target.parameters()), lambda net=target: loss(net(degraded), clean)),
                "guided": _adam_step(
                    list(stage.trainable_parameters()), lambda stage=stage: stage.losses(degraded, clean)[0]
                ),
                "guide": lambda: guide(degraded),
            },
            repeats,
        )
        rows.append(
            f"| {name} ({sum(p.numel() for p in target.parameters()) / 1e6:.2f}M) | {seconds['alone']:.3f} | "
            f"{seconds['guided']:.3f} | {seconds['guided'] / seconds['alone'] - 1:+.0%} | "
            f"{seconds['guide']:.3f} | {seconds['guide'] / seconds['guided']:.0%} |"
        )
    return rows


def module_table(official_root: str | None, *, size: int, repeats: int) -> list[str]:
    generator = torch.Generator().manual_seed(0)
    target_out = torch.rand(2, 3, size, size, generator=generator) * 1.4 - 0.2
    degraded = torch.rand(2, 3, size, size, generator=generator) * 0.2
    osf = F.normalize(torch.randn(2, 512, generator=generator), dim=1)
    if official_root is None:
        ours, official = instantiate(_config("refiner", "ptgrm"))(osf_dim=512), None
    else:
        from experiments.official.ptgrm import build

        ours, official = build(official_root, "ptgrm")

    def forward_backward(run: Callable[[], torch.Tensor]) -> Callable[[], None]:
        return lambda: run().square().mean().backward()

    # alternated with the official module, so that both see the same background load
    runs = {"ours (restoration.archs.ptgrm.PTGRM)": forward_backward(lambda: ours(target_out, degraded, osf))}
    if official is not None:
        runs["official refinement2"] = forward_backward(lambda: official([osf], target_out, degraded))
    seconds = _interleaved_medians(runs, repeats)
    rows = [f"| PTG-RM forward + backward, batch 2 × 3 × {size}² | s |", "|---|---|"]
    rows += [f"| {name} | {value:.3f} |" for name, value in seconds.items()]
    return rows


def step_bench_parser(description: str, *, targets: list[str]) -> argparse.ArgumentParser:
    """The options of the PTG-RM step benches: ``--targets``, ``--repeats``, ``--threads``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", nargs="+", default=targets)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    return parser


def start_bench(args: argparse.Namespace) -> None:
    """Keep freed memory, set the threads and the seed, print the date, CPU, torch and threads."""
    keep_freed_memory()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{date.today()}, {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")


def main() -> None:
    parser = step_bench_parser(__doc__, targets=["snr_aware_tiny", "restormer_tiny", "snr_aware"])
    parser.add_argument("--size", type=int, default=128, help="training crop side of table 1")
    parser.add_argument("--module-size", type=int, default=256, help="image side of table 2")
    parser.add_argument(
        "--official", default=None, help="checkout of xiaogang00/pretrain_model_boost_restoration"
    )
    args = parser.parse_args()
    start_bench(args)
    print("\n".join(step_table(args.targets, RandomClipImageTower(), size=args.size, repeats=args.repeats)))
    print()
    print("\n".join(module_table(args.official, size=args.module_size, repeats=args.repeats)))


if __name__ == "__main__":
    main()
