"""Training steps per second of each stage's paper-size experiment, the data's share of a step, host syncs.

Run ``python -m experiments.bench.gpu_step [--experiments ptgrm_lowlight ipt_pretrain ...] [--steps 5]
[--precision 32-true bf16-mixed] [--batch-size N]``. Each experiment trains through ``restoration.run.run`` as
the command does (its network, crop and recipe at paper size; random weights, CLIP ViT-B/32's image tower
with random weights as PTG-RM's guide, a random ConStyle v2 prompter for the prompted restorers), on the
embedded photos, without validation, checkpoints or loggers. A callback times every step after a warm-up:

- ``step/s``: training steps per second;
- ``data %``: the share of the step spent waiting for the loader and completing the batch on the device
  (crops, views, degradation, the task: the datamodule's ``on_after_batch_transfer``);
- ``syncs``: on CUDA, the steps are run under ``torch.cuda.set_sync_debug_mode("error")`` from the batch's
  arrival on the device to the end of the step, except at logging steps: ``ok`` when none raised (a device→
  host sync raises); on the CPU there is no device to wait for (tests/test_host_syncs.py counts the reads).

``--batch-size`` replaces the experiment's per-device batch (the paper's batches of 64 take minutes per step
on a CPU); the numbers in experiments/bench/README.md say which was used.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.bench.degradations import cpu_name
from restoration.run import CONFIG_DIR, run
from tests.guide_models import save_official_constyle_prompter

__all__ = ["StepTimer", "main"]

# one experiment per stage, at paper size
EXPERIMENTS = (
    "restore_embedded_restormer",  # restore
    "ptgrm_lowlight",  # ptgrm
    "ipt_pretrain",  # ipt_pretrain
    "ipt_finetune_sr_x2",  # ipt_finetune
    "constyle_pretrain",  # constyle_pretrain
    "constyle_allinone",  # prompted_restore
)
CLIP_TOWER = {"_target_": "experiments.bench.ptgrm.RandomClipImageTower"}
WARMUP = 2


class StepTimer(pl.Callback):
    """Times each training step and the data's share of it; on CUDA, forbids host syncs in the step."""

    records: ClassVar[list[dict[str, float]]] = []

    def __init__(self) -> None:
        self.step_started = 0.0
        self.data_seconds = 0.0
        self.sync_errors = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        original = datamodule.on_after_batch_transfer

        def timed(batch: Any, dataloader_idx: int) -> Any:
            started = time.perf_counter()
            if trainer.training and torch.cuda.is_available() and not self._logging_step(trainer):
                torch.cuda.set_sync_debug_mode("error")
            batch = original(batch, dataloader_idx)
            self.data_seconds += time.perf_counter() - started
            return batch

        datamodule.on_after_batch_transfer = timed

    @staticmethod
    def _logging_step(trainer: pl.Trainer) -> bool:
        return (trainer.global_step + 1) % trainer.log_every_n_steps == 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self.step_started:
            StepTimer.records.append({"seconds": now - self.step_started, "data": self.data_seconds})
        self.step_started = now
        self.data_seconds = 0.0


def _compose(folder: Path, experiment: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(
            config_name="config",
            overrides=[f"experiment={experiment}", *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(folder / experiment)
        cfg.hydra.job.name = "bench"
        cfg.paths.log_dir = str(folder / "logs")
        if experiment.startswith("ptgrm_"):
            cfg.guide = OmegaConf.create(CLIP_TOWER)
    (folder / experiment).mkdir(parents=True, exist_ok=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def measure(experiment: str, *, steps: int, precision: str, batch_size: int | None, folder: Path) -> dict:
    overrides = [
        f"trainer.max_steps={WARMUP + steps + 1}",
        "val_every=1000000",
        "+trainer.limit_val_batches=0",
        "++trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1000",
        f"trainer.precision={precision}",
        "~callbacks.model_checkpoint",
        "~callbacks.learning_rate_monitor",
        "logger=none",
        "test=false",
        "datamodule.num_workers=2",
        f"+callbacks.timer._target_={__name__}.StepTimer",
    ]
    if batch_size is not None:
        overrides.append(f"datamodule.batch_size={batch_size}")
    if experiment == "constyle_allinone":
        overrides.append(f"guide.checkpoint={save_official_constyle_prompter(folder / 'prompter.pth')}")
    StepTimer.records = []
    try:
        run(_compose(folder, experiment, overrides))
        syncs = "ok" if torch.cuda.is_available() else "n/a (CPU)"
    except RuntimeError as error:  # a host sync under set_sync_debug_mode("error")
        return {"experiment": experiment, "precision": precision, "error": str(error).splitlines()[0]}
    timed = StepTimer.records[WARMUP:]
    seconds = sum(record["seconds"] for record in timed) / len(timed)
    data = sum(record["data"] for record in timed) / sum(record["seconds"] for record in timed)
    return {
        "experiment": experiment,
        "precision": precision,
        "steps/s": 1.0 / seconds,
        "data %": 100.0 * data,
        "syncs": syncs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_name()
    print(f"{date.today()}, {device}, {torch.get_num_threads()} threads, batch {args.batch_size or 'paper'}")
    print("| experiment | precision | step/s | data % | syncs at non-logging steps |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for experiment in args.experiments:
            for precision in args.precision:
                row = measure(
                    experiment,
                    steps=args.steps,
                    precision=precision,
                    batch_size=args.batch_size,
                    folder=Path(folder),
                )
                if "error" in row:
                    print(f"| {experiment} | {precision} | failed: {row['error']} | | |")
                    continue
                cells = [experiment, precision, f"{row['steps/s']:.3f}", f"{row['data %']:.1f}", row["syncs"]]
                print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
