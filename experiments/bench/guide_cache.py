"""PTG-RM's training step with cached guide features (``guide.input=frame``) against the guide in the step.

Run ``python -m experiments.bench.guide_cache`` (``--help``). For each target network, one training step
(forward, Charbonnier on both outputs, backward, Adam step) through :meth:`PTGRMStage.losses`, the stage's own
loss code, at ``ptgrm_lowlight``'s batch and crop (2 × 3 × 256², official SID.yml batch 2, GT_size 256):

- **guide in the step** (``guide.input=crop``, today's default on synthesized data): the guide encodes the
  crops, then target and PTG-RM run;
- **cached** (``guide.input=frame`` on paired data): the batch's ``osf`` rows are looked up in a precomputed
  N×D table (what the datamodule's samples carry) and the guide does not run; its calls are counted to prove
  it.

The guide is CLIP ViT-B/32's image tower with random weights (open_clip, no download, preprocessed as
``ClipGuide``: :class:`experiments.bench.ptgrm.RandomClipImageTower`). Prints a Markdown table: ms/step of
both, the guide's calls and share of the cached step (0 by construction: it does not run), and the share of
the cached step that the feature lookup takes. Each timing is the median of ``--repeats`` runs after a
warm-up, the two steps taking turns (experiments/bench/ptgrm.py's protocol).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from experiments.bench.ptgrm import (
    RandomClipImageTower,
    _adam_step,
    _backbone,
    _config,
    _interleaved_medians,
    start_bench,
    step_bench_parser,
)
from restoration.losses import CharbonnierLoss
from restoration.stages.ptgrm import PTGRMStage

__all__ = ["main", "step_rows"]

IMAGES = 1000  # rows of the feature table (a training set's images)


class CountedGuide(RandomClipImageTower):
    """The random CLIP tower, counting its forward passes."""

    calls = 0

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        CountedGuide.calls += 1
        return super().encode(images)


def step_rows(targets: list[str], guide: CountedGuide, *, batch: int, size: int, repeats: int) -> list[str]:
    rows = [
        f"| target, batch {batch} × 3 × {size}² | guide in the step ms/step | cached ms/step | speed-up | "
        "guide calls in cached steps | guide share of the cached step | feature lookup share |",
        "|---|---|---|---|---|---|---|",
    ]
    return rows + [_row(name, guide, batch=batch, size=size, repeats=repeats) for name in targets]


def _row(name: str, guide: CountedGuide, *, batch: int, size: int, repeats: int) -> str:
    generator = torch.Generator().manual_seed(0)
    degraded = torch.rand(batch, 3, size, size, generator=generator)
    clean = torch.rand(batch, 3, size, size, generator=generator)
    table = F.normalize(torch.randn(IMAGES, guide.dim, generator=generator), dim=1)
    stage = PTGRMStage(
        net=_backbone(name),
        guide=guide,
        refiner=instantiate(_config("refiner", "ptgrm")),
        loss=CharbonnierLoss(eps=1e-3, reduction="sum"),
        optimizer=None,
        ema_decay=None,
    )
    parameters = list(stage.trainable_parameters())
    lookups: list[float] = []
    calls = {"cached": 0}

    def cached_loss() -> torch.Tensor:
        start = time.perf_counter()
        osf = table[
            torch.randint(IMAGES, (batch,), generator=generator)
        ]  # the samples' rows, as batches carry
        lookups.append(time.perf_counter() - start)
        before = CountedGuide.calls
        loss = stage.losses(degraded, clean, osf)[0]
        calls["cached"] += CountedGuide.calls - before
        return loss

    seconds = _interleaved_medians(
        {
            "in_step": _adam_step(parameters, lambda: stage.losses(degraded, clean)[0]),
            "cached": _adam_step(parameters, cached_loss),
        },
        repeats,
    )
    share = "0%" if calls["cached"] == 0 else "ran"
    return (
        f"| {name} ({sum(p.numel() for p in stage.net.target.parameters()) / 1e6:.2f}M) | "
        f"{seconds['in_step'] * 1e3:.0f} | {seconds['cached'] * 1e3:.0f} | "
        f"{seconds['in_step'] / seconds['cached']:.2f}× | {calls['cached']} | {share} | "
        f"{statistics.median(lookups) / seconds['cached']:.3%} |"
    )


def main() -> None:
    parser = step_bench_parser(__doc__, targets=["snr_aware_tiny", "restormer_tiny"])
    parser.add_argument("--batch", type=int, default=2, help="ptgrm_lowlight: 2")
    parser.add_argument("--size", type=int, default=256, help="training crop side (ptgrm_lowlight: 256)")
    args = parser.parse_args()
    start_bench(args)
    rows = step_rows(args.targets, CountedGuide(), batch=args.batch, size=args.size, repeats=args.repeats)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
