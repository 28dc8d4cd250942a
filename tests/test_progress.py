"""Numbers where users look: progress, validation and test lines in the terminal and run.log, the step bar."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from restoration.progress import ProgressLog, metrics_table
from restoration.run import run

from .conftest import run_as_typed_printing

SMALL = (
    "experiment=restore_embedded_denoise",
    "trainer=smoke",
    "backbone.width=8",
    "backbone.blocks=1",
    "datamodule.crop_size=48",
    "logger=none",
    "max_steps=4",
    "val_every=2",
)
TRAINING_LINE = re.compile(r"step (\d+)/4  loss [-\d.e]+  lr [-\d.e]+  [\d.]+ it/s  ETA \d+:\d\d:\d\d$")
VALIDATION_LINE = re.compile(
    r"step (\d+)/4  val/psnr ([\d.]+) \(degraded ([\d.]+)\)  val/ssim ([\d.]+) \(degraded ([\d.]+)\)"
    r"  best val/psnr ([\d.]+)  elapsed \d+:\d\d:\d\d$"
)


def _messages(text: str) -> list[str]:
    """The messages of Hydra's log lines (``[time][logger][LEVEL] - message``) of ``restoration.progress``."""
    return [
        line.split(" - ", 1)[1] for line in text.splitlines() if "[restoration.progress][INFO] - " in line
    ]


def test_a_batch_job_log_shows_progress_scores_and_the_test_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No terminal (a SLURM log): every line goes to standard output and to run.log."""
    status, output = run_as_typed_printing(*SMALL, "trainer.log_every_n_steps=2", cwd=tmp_path, capsys=capsys)
    assert status == 0, output[-3000:]
    (run_log,) = tmp_path.glob("logs/restore_embedded_denoise/runs/*/run.log")
    results = json.loads((run_log.parent / "results.json").read_text())
    printed = _messages(output)
    assert printed == _messages(run_log.read_text())
    assert "Epoch" not in output  # no progress bar without a terminal

    training = [match for line in printed if (match := TRAINING_LINE.match(line))]
    assert [int(match[1]) for match in training] == [2, 4]  # every log_every_n_steps steps
    validation = [match for line in printed if (match := VALIDATION_LINE.match(line))]
    assert [int(match[1]) for match in validation] == [2, 4]
    val = results["val"]
    assert validation[-1].groups()[1:] == (
        f"{val['val/psnr']:.2f}",
        f"{val['val/degraded/psnr']:.2f}",
        f"{val['val/ssim']:.4f}",
        f"{val['val/degraded/ssim']:.4f}",
        f"{results['best']['value']:.2f}",
    )
    test = results["test"]
    table = printed[printed.index("metric       restored  degraded") :]
    assert table[1].split() == ["test/psnr", f"{test['test/psnr']:.2f}", f"{test['test/degraded/psnr']:.2f}"]
    assert [row.split()[0] for row in table[1:]] == ["test/psnr", "test/ssim", "test/psnr_y", "test/ssim_y"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_counts_steps_on_a_terminal(make_config, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    run(make_config(*SMALL, "test=false"))
    shown = terminal.getvalue()
    assert "step 4/4 |" in shown and "Epoch" not in shown


def test_metrics_table_puts_the_degraded_baseline_beside_each_score() -> None:
    metrics = {
        "test/ssim": torch.tensor(0.81234),
        "test/psnr": 27.5,
        "test/degraded/psnr": 20.125,
        "test/degraded/ssim": 0.5,
        "test/target/psnr": 26.0,
        "val/psnr": 1.0,
    }
    assert metrics_table(metrics, "test") == [
        "metric            restored  degraded",
        "test/psnr            27.50     20.12",
        "test/ssim           0.8123    0.5000",
        "test/target/psnr     26.00         -",
    ]
    assert metrics_table({"val/psnr": 1.0}, "test") == []


def test_validation_line_keeps_the_best_score_also_from_a_resumed_checkpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    checkpoint = ModelCheckpoint(monitor="val/psnr_y", mode="max")
    metrics = {"val/psnr": 21.0, "val/ssim": 0.6, "val/psnr_y": 22.0, "val/degraded/psnr_y": 19.0}
    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        global_step=6,
        max_steps=8,
        checkpoint_callback=checkpoint,
        callback_metrics={key: torch.tensor(value) for key, value in metrics.items()},
    )
    progress = ProgressLog(monitor="val/psnr_y", mode="max")
    with caplog.at_level(logging.INFO, logger="restoration.progress"):
        progress.on_validation_end(trainer, None)
        checkpoint.best_model_score = torch.tensor(23.5)  # resumed: an earlier validation was better
        trainer.global_step, trainer.callback_metrics["val/psnr_y"] = 8, torch.tensor(22.5)
        progress.on_validation_end(trainer, None)
    first, second = (record.getMessage() for record in caplog.records)
    # the monitored score (here the Y channel's) joins PSNR and SSIM, with its baseline
    shown = "val/psnr 21.00  val/ssim 0.6000  val/psnr_y {} (degraded 19.00)  best val/psnr_y {}  elapsed "
    assert first.startswith("step 6/8  " + shown.format("22.00", "22.00"))
    assert second.startswith("step 8/8  " + shown.format("22.50", "23.50"))
