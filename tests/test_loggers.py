"""W&B as its users expect, read back from what offline runs wrote: names, groups, the best score in the
summary, tables, results.json, the checkpoint artifact, resumed runs, padded image panels."""

from __future__ import annotations

import json
import logging
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import wandb
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from wandb.proto import wandb_internal_pb2 as pb

from restoration.aggregate import aggregate
from restoration.loggers import WANDB_ID_FILE, finish_loggers, sweep_label
from restoration.run import run
from restoration.visualize import log_images

# A small network and two training steps keep each run to a few seconds.
SMALL = (
    "experiment=restore_embedded_denoise",
    "trainer=smoke",
    "backbone.width=8",
    "backbone.blocks=1",
    "datamodule.crop_size=48",
)


pytestmark = pytest.mark.usefixtures("offline_wandb")


@dataclass
class OfflineRun:
    """What an offline W&B run wrote, read back from its folder and its ``run-<id>.wandb`` file."""

    folder: Path
    run: pb.RunRecord
    summary: dict[str, Any]
    artifacts: list[pb.ArtifactRecord]
    exit_code: int | None

    def table(self, key: str) -> list[dict[str, Any]]:
        """The rows of the table logged under ``key``, as dicts."""
        table = json.loads((self.folder / "files" / self.summary[key]["path"]).read_text())
        return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


def _records(path: Path) -> Iterator[pb.Record]:
    """The records of a ``.wandb`` file.

    After a 7-byte header (``:W&B``, magic, version) the file is a LevelDB log: 32 KiB blocks of chunks,
    each with a 7-byte header (CRC32, length, type: 1 full, 2 first, 3 middle, 4 last), whose payloads
    join into serialized ``Record`` protobufs. (wandb itself reads it in its Go core only.)
    """
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:  # zero padding at the end of a block
            position += left
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_offline_runs(run_dir: Path) -> list[OfflineRun]:
    """Every offline W&B run under ``<run dir>/wandb``, oldest first."""
    # A finished run's file may still be being written by W&B's service process; its teardown waits for it.
    wandb.teardown()
    runs = []
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        (path,) = folder.glob("run-*.wandb")
        run_record, summary, artifacts, exit_code = None, {}, [], None
        for record in _records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_record = record.run
            elif kind == "summary":
                for item in record.summary.update:
                    keys = list(item.nested_key) or [item.key]
                    node = summary
                    for key in keys[:-1]:
                        node = node.setdefault(key, {})
                    node[keys[-1]] = json.loads(item.value_json)
            elif kind == "artifact":
                artifacts.append(record.artifact)
            elif kind == "exit":
                exit_code = record.exit.exit_code
        assert run_record is not None, path
        runs.append(OfflineRun(folder, run_record, summary, artifacts, exit_code))
    return runs


def _results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def test_sweep_label_names_the_swept_values_with_short_keys() -> None:
    task = [
        "experiment=restore_embedded_denoise",
        "trainer=smoke",
        "backbone=nafnet_tiny",
        "stage.optimizer.lr=1e-3",
    ]
    assert sweep_label(task, {"backbone", "stage.optimizer.lr"}) == ["backbone=nafnet_tiny", "lr=1e-3"]
    # Keys whose last parts clash stay whole; an unknown sweep shows every override but the experiment.
    task = ["stage.optimizer.lr=1e-3", "guide.optimizer.lr=1e-4", "+tags=[a]"]
    assert sweep_label(task, set()) == ["stage.optimizer.lr=1e-3", "guide.optimizer.lr=1e-4", "tags=[a]"]


def test_sweep_job_run_is_named_grouped_and_keeps_the_best_score(
    make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job 0 of ``-m ... seed=3,4`` with ``logger=[csv,wandb]`` and the checkpoint logged as an artifact."""
    sweep_dir = tmp_path / "logs" / "restore_embedded_denoise" / "multiruns" / "2030-01-01_00-00-00"
    monkeypatch.setattr(sys, "argv", ["restoration/run.py", "-m", *SMALL, "seed=3,4", "logger=[csv,wandb]"])
    cfg = make_config(
        *SMALL,
        "seed=3",
        "logger=[csv,wandb]",
        "logger.wandb.offline=true",
        "logger.wandb.log_model=true",
        "hydra.mode=MULTIRUN",
        f"hydra.sweep.dir={sweep_dir}",
    )
    run_dir = Path(cfg.paths.output_dir)
    run(cfg)
    results = _results(run_dir)
    assert (run_dir / "csv" / "metrics.csv").is_file()  # both loggers of logger=[csv,wandb]
    (offline,) = read_offline_runs(run_dir)
    assert offline.run.display_name == "restore_embedded_denoise seed=3"
    assert offline.run.run_group == "restore_embedded_denoise/multiruns/2030-01-01_00-00-00"
    assert (run_dir / WANDB_ID_FILE).read_text().strip() == offline.run.run_id
    # The summary holds the best validation score, the one the best checkpoint was kept for.
    assert offline.summary["val/psnr"] == {"max": pytest.approx(results["best"]["value"])}
    assert json.loads((offline.folder / "files" / "results.json").read_text()) == results
    rows = {row["metric"]: row for row in offline.table("results")}
    assert rows["test/psnr"]["restored"] == pytest.approx(results["test"]["test/psnr"])
    assert rows["test/psnr"]["degraded"] == pytest.approx(results["test"]["test/degraded/psnr"])
    images = offline.table("test/images")  # one row per test image; test/* are their means
    assert images and all(isinstance(row["name"], str) for row in images)
    for column, metric in (("psnr", "test/psnr"), ("degraded_psnr", "test/degraded/psnr")):
        assert np.mean([row[column] for row in images]) == pytest.approx(results["test"][metric])
    best = [artifact for artifact in offline.artifacts if "best" in artifact.aliases]
    assert [artifact.type for artifact in best] == ["model"]
    assert json.loads(best[0].metadata)["original_filename"] == Path(results["best"]["checkpoint"]).name
    assert offline.exit_code == 0


def test_resumed_run_continues_the_wandb_run(make_config) -> None:
    common = (*SMALL, "logger=wandb", "task_name=resumable")
    first = make_config(*common, "max_steps=2", "test=false", run_name="first")
    first_dir = Path(first.paths.output_dir)
    run(first)
    second = make_config(*common, "max_steps=4", "ckpt_path=last", run_name="second")
    second_dir = Path(second.paths.output_dir)
    run(second)
    assert _results(second_dir)["resumed_from"] == str(first_dir / "checkpoints" / "last.ckpt")
    ((before,), (after,)) = read_offline_runs(first_dir), read_offline_runs(second_dir)
    assert after.run.run_id == before.run.run_id and after.run.resume
    assert (second_dir / WANDB_ID_FILE).read_text() == (first_dir / WANDB_ID_FILE).read_text()


def test_per_image_test_scores_become_a_table(tmp_path: Path) -> None:
    scores = [
        {"name": "chelsea", "type": None, "psnr": 27.5, "ssim": 0.81, "degraded_psnr": 20.1},
        {"name": "coffee", "type": "noise", "psnr": 25.25, "ssim": 0.78, "degraded_psnr": 19.9},
    ]
    stage = SimpleNamespace(image_scores={"val": [], "test": scores})
    wandb.init(project="restoration", dir=str(tmp_path), mode="offline")
    (tmp_path / "results.json").write_text('{"status": "failed: diverged"}\n')
    logger = WandbLogger(experiment=wandb.run)
    finish_loggers([logger], results={"status": "failed: diverged"}, output_dir=tmp_path, stage=stage)
    assert wandb.run is None  # finished, so a sweep's next job starts its own run
    (offline,) = read_offline_runs(tmp_path)
    assert offline.table("test/images") == scores
    assert "results" not in offline.summary  # no metrics: no results table
    assert offline.exit_code == 1  # a run that did not finish is marked failed


def test_grids_of_different_sizes_log_as_one_panel_without_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    grids = [np.zeros((30, 50, 3), np.uint8), np.zeros((40, 20, 3), np.uint8)]
    logger = WandbLogger(save_dir=str(tmp_path), project="restoration", mode="offline")
    with caplog.at_level(logging.WARNING):
        log_images([logger], key="val/images", images=grids, names=["a", "b"], captions=["a", "b"], step=2)
    wandb.finish()
    assert "sizes do not match" not in caplog.text
    (offline,) = read_offline_runs(tmp_path)
    files = sorted((offline.folder / "files" / "media" / "images" / "val").glob("*.png"))
    assert [Image.open(path).size for path in files] == [(50, 40), (50, 40)]
    assert offline.summary["val/images"]["captions"] == ["a", "b"]


def test_aggregate_of_a_sweep_that_logged_to_wandb_goes_to_wandb_as_a_table(tmp_path: Path) -> None:
    sweep = tmp_path / "logs" / "restore" / "multiruns" / "2030-01-01_00-00-00"
    for number, (seed, psnr) in enumerate([(1, 20.0), (2, 22.0)]):
        job = sweep / str(number)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text(
            "logger:\n  wandb:\n    project: studies\n    entity: null\n    offline: true\n"
        )
        results = {
            "status": "finished",
            "seed": seed,
            "overrides": [f"seed={seed}"],
            "test": {"test/psnr": psnr},
        }
        (job / "results.json").write_text(json.dumps(results))
    aggregate(sweep, metrics=["test/psnr"])
    (offline,) = read_offline_runs(sweep)
    assert offline.run.project == "studies" and offline.run.job_type == "aggregate"
    assert offline.run.run_group == "restore/multiruns/2030-01-01_00-00-00"
    (row,) = offline.table("aggregate")
    assert (row["group"], row["metric"], row["n"], row["mean"], row["std"]) == (
        "all jobs",
        "test/psnr",
        2,
        21.0,
        pytest.approx(2**0.5),
    )
