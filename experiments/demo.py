"""``make demo``: the PTG-RM main job, offline, on the embedded photos and the CPU, with its controls.

Two commands of the real entry point, then a table and a picture:

1. a prior: a ConStyle v2 prompter pre-trained briefly on the embedded training photos
   (``experiment=constyle_pretrain``, the all-in-one degradations as its pretext classes);
2. one ``-m`` sweep of ``experiment=ptgrm_lowlight guide=prior guide.checkpoint=<1>`` with a small SNR-aware
   target network over ``refiner=none,ptgrm,wide_plain`` and ``seed=1,2,3``: the target alone (the
   control), the target refined by PTG-RM under the frozen prior's features, and the same-size plain module
   of the paper's Table 3 (4× wide, no use of the features); same loss, data and steps, 9 jobs.

The sweep ends with its aggregated table (``restoration.aggregate``): per variant over the 3 seeds the
mean ± std and 95 % interval of the test PSNR/SSIM, and the paired difference to the target alone. The
validation photos pick each run's best checkpoint; the numbers are on the 4 test photos, which no run saw.
It also writes a side-by-side grid of seed 1 (degraded | target only | PTG-RM | wide plain | ground truth)
to ``logs/demo/<stamp>/comparison.png``. With internet or cached CLIP weights,
``python -m restoration.run experiment=ptgrm_lowlight`` is the CLIP version.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from experiments.launch import run_experiment, run_sweep
from restoration.data.io import read_image
from restoration.visualize import comparison_grid, save_png

CONF = Path(__file__).resolve().parents[1] / "conf"

PRIOR = [
    "experiment=constyle_pretrain",
    "degradation=allinone",  # eight restoration types as the pretext classes
    "backbone.num_classes=8",
    "trainer=cpu",
    "max_steps=150",
    "val_every=150",
    "datamodule.crop_size=64",
    "datamodule.batch_size=8",
    "stage.queue_size=512",
    "test=false",
]
# The target, data and recipe shared by the three variants: the tiny SNR-aware network on 48-px low-light
# crops, sized so that the 9 jobs and the prior stay under 10 minutes on a 2-core CPU (the longer version,
# 300 steps on 64-px crops, and denoising: experiments/ptgrm_embedded).
SHARED = [
    "experiment=ptgrm_lowlight",
    "backbone=snr_aware_tiny",
    "trainer=cpu",
    "max_steps=200",
    "val_every=100",
    "datamodule.crop_size=48",
    "datamodule.batch_size=4",
    "stage.optimizer.lr=5e-4",
    "stage.save_test_images=true",
]
VARIANTS = {"none": "target only", "ptgrm": "PTG-RM", "wide_plain": "wide plain"}
SEEDS = (1, 2, 3)


def _test_pairs(overrides: list[str]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The (name, degraded, ground truth) test images the runs were scored on (fixed validation seed)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=overrides)
    datamodule = instantiate(cfg.datamodule, degradation=instantiate(cfg.degradation))
    datamodule.setup("test")
    dataset = datamodule.datasets["test"]
    return [(item["name"], item["lq"], item["gt"]) for item in (dataset[i] for i in range(len(dataset)))]


def main() -> int:
    root = Path("logs") / "demo" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_experiment(PRIOR, root / "prior")
    prior = root / "prior" / "checkpoints" / "last.ckpt"
    jobs = run_sweep(
        [
            *SHARED,
            "guide=prior",
            f"guide.checkpoint={prior}",
            f"refiner={','.join(VARIANTS)}",
            f"seed={','.join(map(str, SEEDS))}",
            'aggregate.baseline="refiner=none"',
            "aggregate.metrics=[test/psnr,test/ssim,test/target/psnr]",
        ],
        root / "study",
    )
    degraded = jobs[0]["test"]["test/degraded/psnr"], jobs[0]["test"]["test/degraded/ssim"]
    print(f"\nLow-light enhancement, 4 embedded test photos, {jobs[0]['global_step']} steps per job")
    print(f"(the degraded input: {degraded[0]:.2f} dB, SSIM {degraded[1]:.4f}; test/target/psnr: the target")
    print("network's own output inside the refined model)\n")
    print((root / "study" / "aggregate.md").read_text())

    folders = {(_override(job, "refiner"), job["seed"]): Path(job["output_dir"]) for job in jobs}
    panels = []
    for name, degraded_image, target in _test_pairs([*SHARED, "guide=none", "refiner=none"]):
        restored = [
            read_image(folders[variant, SEEDS[0]] / "images" / "test" / "restored" / f"{name}.png")
            for variant in VARIANTS
        ]
        panels.append(
            comparison_grid(
                [degraded_image, *restored, target], ["degraded", *VARIANTS.values(), "ground truth"]
            )
        )
    grid = root / "comparison.png"
    save_png(_stack(panels), grid)
    print(f"grid:   {grid}  (seed {SEEDS[0]}: degraded | {' | '.join(VARIANTS.values())} | ground truth)")
    print(f"runs:   {root}/prior, {root}/study/<job> (results.json, checkpoints, csv metrics)")
    return 0


def _override(results: dict, key: str) -> str:
    """The value a job's command line gave ``key`` (``refiner=ptgrm`` -> ``ptgrm``)."""
    return next(item.split("=", 1)[1] for item in results["overrides"] if item.split("=", 1)[0] == key)


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of H×W×3 uint8 arrays, padded to one width, one under the other."""
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    return np.concatenate(padded, axis=0)


if __name__ == "__main__":
    sys.exit(main())
