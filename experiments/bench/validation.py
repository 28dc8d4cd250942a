"""Time of one validation of ``restore_embedded_denoise``: 4 whole embedded photos, the paper-size U-Net.

Run ``python -m experiments.bench.validation`` (``--help``). Prints a Markdown table of the median seconds
of ``trainer.validate`` with the scoring as it is now (the degraded inputs scored once per run, each image
scored once for the metrics, the caption and the per-image table) and with the scoring before (the degraded
inputs scored at every validation, the images of each grid scored again for its caption): the same
network, data and process, the rows taking turns so that they share the background load. "First" is the
first validation of a fresh stage, which scores the degraded inputs. Each row is the median of
``--repeats`` validations after one warm-up validation.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Mapping
from datetime import date
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from experiments.bench.degradations import cpu_name
from restoration.run import build_backbone, keep_freed_memory
from restoration.stages.restore import RestoreStage

__all__ = ["RescoringStage", "main"]

CONF = Path(__file__).resolve().parents[2] / "conf"


class RescoringStage(RestoreStage):
    """The validation scoring before the degraded scores were kept: what each validation cost until then."""

    def _baseline_scores(
        self, degraded: torch.Tensor, baseline: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return self.metrics["val"].per_image(baseline, target)

    def _grid(
        self, panels: Mapping[str, tuple[torch.Tensor, Mapping[str, float]]], target: torch.Tensor
    ) -> tuple[np.ndarray, str]:
        rescored = {}
        for label, (image, _) in panels.items():
            scores = self.metrics["val"].per_image(image[None], target[None])
            rescored[label] = (image, {key: float(value) for key, value in scores.items()})
        return super()._grid(rescored, target)


def _config() -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=["experiment=restore_embedded_denoise"])
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="bench_validation_")
    return cfg


def _trainer(folder: str) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed validations per row (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    pl.seed_everything(0, verbose=False)
    cfg = _config()
    datamodule = instantiate(cfg.datamodule, degradation=instantiate(cfg.degradation))
    net = build_backbone(cfg)
    trainer = _trainer(cfg.paths.output_dir)
    before = instantiate(cfg.stage, _target_=f"{__name__}.RescoringStage", net=net)
    now = instantiate(cfg.stage, net=net)
    for stage in (before, now):  # warm-up; it also leaves the degraded scores in `now`
        trainer.validate(stage, datamodule=datamodule, verbose=False)
    times: dict[str, list[float]] = {"before": [], "first": [], "later": []}
    for _ in range(args.repeats):
        fresh = instantiate(cfg.stage, net=net)
        for name, stage in (("before", before), ("first", fresh), ("later", now)):
            start = time.perf_counter()
            trainer.validate(stage, datamodule=datamodule, verbose=False)
            times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    images = [datamodule.datasets["val"][i]["gt"] for i in range(len(datamodule.datasets["val"]))]
    sizes = ", ".join(f"{image.shape[-1]}×{image.shape[-2]}" for image in images)
    print(
        f"restore_embedded_denoise validation: {len(images)} images ({sizes}), U-Net with "
        f"{sum(param.numel() for param in net.parameters()):,} parameters, "
        f"{torch.get_num_threads()} threads, {cpu_name()}, {date.today()}, median of {args.repeats}\n"
    )
    print("| scoring | s per validation |\n|---|---|")
    print(f"| before: degraded inputs scored at each validation, grids again | {seconds['before']:.2f} |")
    print(f"| now, first validation of a run (scores the degraded inputs) | {seconds['first']:.2f} |")
    print(f"| now, every later validation | {seconds['later']:.2f} |")


if __name__ == "__main__":
    main()
