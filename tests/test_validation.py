"""Validation and test scores: the degraded baseline scored once per image, one score per image shared by the
metrics, the captions and the per-image table, and metrics logged at the step of the checkpoints and grids."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from restoration.metrics import ImageQuality, psnr, ssim
from restoration.run import build_backbone, run
from restoration.stages import base

# A small network on the centre 64×64 pixels of two validation photos: each validation takes under a second.
SMALL = (
    "experiment=restore_embedded_denoise",
    "backbone.width=8",
    "backbone.blocks=1",
    "datamodule.crop_size=48",
    "datamodule.eval_crop=64",
)


def _build(cfg: DictConfig, **datamodule: Any) -> tuple[pl.LightningModule, pl.LightningDataModule]:
    """The stage and datamodule of ``cfg``, built as ``restoration.run`` builds them."""
    data = instantiate(cfg.datamodule, degradation=instantiate(cfg.degradation), **datamodule)
    return instantiate(cfg.stage, net=build_backbone(cfg)), data


def _trainer(folder: Path) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=2,
        limit_test_batches=2,
        default_root_dir=folder,
    )


def _images(datamodule: pl.LightningDataModule, split: str, count: int) -> list[dict[str, Any]]:
    return [datamodule.datasets[split][i] for i in range(count)]


def test_degraded_inputs_are_scored_once_per_image_and_stay_basicsr_exact(
    make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scored: list[torch.Tensor] = []
    per_image = ImageQuality.per_image

    def counted(self: ImageQuality, restored: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        scored.append(restored)
        return per_image(self, restored, target)

    monkeypatch.setattr(ImageQuality, "per_image", counted)
    stage, datamodule = _build(make_config(*SMALL))
    trainer = _trainer(tmp_path)
    trainer.validate(stage, datamodule=datamodule, verbose=False)
    first = {key: float(value) for key, value in trainer.callback_metrics.items()}
    assert len(scored) == 4  # the restored and the degraded version of both images
    trainer.validate(stage, datamodule=datamodule, verbose=False)
    assert len(scored) == 6  # the restored images only: the degraded ones are the same as before
    assert {key: float(value) for key, value in trainer.callback_metrics.items()} == first

    images = _images(datamodule, "val", 2)
    degraded = torch.stack([image["lq"] for image in images])
    target = torch.stack([image["gt"] for image in images])
    assert first["val/degraded/psnr"] == pytest.approx(float(psnr(degraded, target).mean()), rel=1e-12)
    assert first["val/degraded/ssim_y"] == pytest.approx(
        float(ssim(degraded, target, y_channel=True).mean()), rel=1e-12
    )
    with torch.no_grad():  # one image at a time, as validation restores them
        restored = torch.cat([stage.restore(image[None]) for image in degraded]).clamp(0, 1)
    assert first["val/psnr"] == pytest.approx(float(psnr(restored, target).mean()), rel=1e-12)
    assert [record["psnr"] for record in stage.image_scores["val"]] == pytest.approx(
        psnr(restored, target).tolist(), rel=1e-12
    )

    # other inputs under the same image indices (another val_seed) are scored anew
    _, reseeded = _build(make_config(*SMALL), val_seed=7)
    trainer.validate(stage, datamodule=reseeded, verbose=False)
    assert len(scored) == 10
    degraded = torch.stack([image["lq"] for image in _images(reseeded, "val", 2)])
    assert float(trainer.callback_metrics["val/degraded/psnr"]) == pytest.approx(
        float(psnr(degraded, target).mean()), rel=1e-12
    )
    assert float(trainer.callback_metrics["val/degraded/psnr"]) != first["val/degraded/psnr"]


def test_captions_show_the_scores_of_the_metrics(
    make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    captions: list[str] = []
    monkeypatch.setattr(base, "log_images", lambda loggers, **grids: captions.extend(grids["captions"]))
    stage, datamodule = _build(make_config(*SMALL))
    _trainer(tmp_path).validate(stage, datamodule=datamodule, verbose=False)
    expected = [
        f"{record['name']}: PSNR {record['degraded_psnr']:.2f} -> {record['psnr']:.2f} dB, "
        f"SSIM {record['degraded_ssim']:.4f} -> {record['ssim']:.4f}"
        for record in stage.image_scores["val"]
    ]
    assert captions == expected and [record["name"] for record in stage.image_scores["val"]] == [
        "chelsea",
        "coffee",
    ]


def test_test_records_the_scores_of_each_image_and_its_degradation_type(make_config, tmp_path: Path) -> None:
    stage, datamodule = _build(make_config(*SMALL, "degradation=allinone"))
    trainer = _trainer(tmp_path)
    trainer.test(stage, datamodule=datamodule, verbose=False)
    records = stage.image_scores["test"]
    assert [record["name"] for record in records] == ["astronaut", "rocket"]  # the test split
    keys = {"name", "type", "psnr", "ssim", "psnr_y", "ssim_y", "degraded_psnr", "degraded_ssim"}
    assert all(set(record) == keys for record in records)
    assert all(record["type"] in stage.type_names for record in records)
    metrics = trainer.callback_metrics
    for key in ("psnr", "ssim_y"):
        mean = sum(record[key] for record in records) / len(records)
        assert float(metrics[f"test/{key}"]) == pytest.approx(mean, rel=1e-12)
    degraded = sum(record["degraded_psnr"] for record in records) / len(records)
    assert float(metrics["test/degraded/psnr"]) == pytest.approx(degraded, rel=1e-12)
    for name in {record["type"] for record in records}:
        scores = [record["psnr"] for record in records if record["type"] == name]
        assert float(metrics[f"test/{name}/psnr"]) == pytest.approx(sum(scores) / len(scores), rel=1e-12)


def test_metrics_checkpoints_and_grids_share_the_step_number(make_config) -> None:
    cfg = make_config(*SMALL, "trainer=smoke", "max_steps=4", "val_every=2", "logger=[csv,tensorboard]")
    output_dir = Path(cfg.paths.output_dir)
    run(cfg)
    with open(output_dir / "csv" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    validated = [int(row["step"]) for row in rows if row.get("val/psnr")]
    assert validated == [2, 4]
    # a training loss is logged at the number of optimizer steps in the weights that computed it
    assert [int(row["step"]) for row in rows if row.get("train/loss")] == [0, 1, 2, 3]
    assert [int(row["step"]) for row in rows if row.get("test/psnr")] == [4]
    events = EventAccumulator(str(output_dir / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("val/psnr")] == validated
    scores = {int(row["step"]): float(row["val/psnr"]) for row in rows if row.get("val/psnr")}
    (best,) = (output_dir / "checkpoints").glob("best_step*.ckpt")
    assert int(re.fullmatch(r"best_step(\d+)\.ckpt", best.name)[1]) == max(scores, key=scores.get)
    grids = {int(path.stem.rsplit("_step", 1)[1]) for path in (output_dir / "images" / "val").glob("*.png")}
    assert sorted(grids) == validated
