"""``make demo``: the PTG-RM main job, offline, on the embedded photos and the CPU.

Three runs of the real entry point, then a table and a picture:

1. a prior: a ConStyle v2 prompter pre-trained briefly on the embedded photos
   (``experiment=constyle_pretrain``, the all-in-one degradations as its pretext classes);
2. ``experiment=ptgrm_lowlight guide=prior guide.checkpoint=<1>``: a small SNR-aware target network
   trained jointly with PTG-RM, which refines its output under the frozen prior's features;
3. ``experiment=ptgrm_lowlight_baseline``: the same target, data, loss and steps without the module.

It prints target-only vs refined PSNR/SSIM on the four validation photos and writes a side-by-side grid
(degraded | target only | PTG-RM | ground truth) to ``logs/demo/<stamp>/comparison.png``. With internet
or cached CLIP weights, ``python -m restoration.run experiment=ptgrm_lowlight`` is the CLIP version.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from experiments.launch import run_experiment
from restoration.data.io import read_image
from restoration.visualize import comparison_grid, save_png

CONF = Path(__file__).resolve().parents[1] / "conf"

PRIOR = [
    "experiment=constyle_pretrain",
    "degradation=allinone",  # eight restoration types as the pretext classes
    "backbone.num_classes=8",
    "trainer=cpu",
    "max_steps=300",
    "val_every=300",
    "datamodule.crop_size=64",
    "datamodule.batch_size=8",
    "stage.queue_size=512",
    "test=false",
]
# The target and the data shared by the PTG-RM run and its baseline: the tiny SNR-aware network on
# 96-px low-light crops, long enough for the two to separate.
SHARED = [
    "backbone=snr_aware_tiny",
    "trainer=cpu",
    "max_steps=600",
    "val_every=300",
    "datamodule.crop_size=96",
    "datamodule.batch_size=4",
    "stage.optimizer.lr=5e-4",
    "stage.save_test_images=true",
]


def _validation_pairs(overrides: list[str]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """The (name, degraded, ground truth) validation images the runs were scored on (fixed val seed)."""
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
    refined = run_experiment(
        ["experiment=ptgrm_lowlight", "guide=prior", f"guide.checkpoint={prior}", *SHARED], root / "ptgrm"
    )
    baseline = run_experiment(["experiment=ptgrm_lowlight_baseline", *SHARED], root / "baseline")

    keys = ("psnr", "ssim", "psnr_y", "ssim_y")
    rows = [
        ("degraded", baseline["test"], "test/degraded/"),
        ("target only", baseline["test"], "test/"),
        ("PTG-RM: target", refined["test"], "test/target/"),
        ("PTG-RM: refined", refined["test"], "test/"),
    ]
    print(f"\nLow-light enhancement, 4 embedded validation photos, {refined['global_step']} steps each:")
    print(f"{'':18}{'PSNR':>8}{'SSIM':>8}{'PSNR-Y':>8}{'SSIM-Y':>8}")
    for label, metrics, prefix in rows:
        values = [metrics[f"{prefix}{key}"] for key in keys]
        print(f"{label:18}{values[0]:8.2f}{values[1]:8.4f}{values[2]:8.2f}{values[3]:8.4f}")

    panels = []
    for name, degraded, target in _validation_pairs(["experiment=ptgrm_lowlight_baseline", *SHARED]):
        only = read_image(root / "baseline" / "images" / "test" / "restored" / f"{name}.png")
        ours = read_image(root / "ptgrm" / "images" / "test" / "restored" / f"{name}.png")
        panels.append(
            comparison_grid([degraded, only, ours, target], ["degraded", "target only", "PTG-RM", "GT"])
        )
    grid = root / "comparison.png"
    save_png(_stack(panels), grid)
    print(f"\ngrid:        {grid}  (degraded | target only | PTG-RM | ground truth)")
    print(f"runs:        {root}/{{prior,ptgrm,baseline}} (results.json, checkpoints, csv metrics)")
    return 0


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of H×W×3 uint8 arrays, padded to one width, one under the other."""
    width = max(row.shape[1] for row in rows)
    padded = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    return np.concatenate(padded, axis=0)


if __name__ == "__main__":
    sys.exit(main())
