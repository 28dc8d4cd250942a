"""The entry point's helpers: run folders under cluster launchers, error messages, tiled validation."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.errors import InstantiationException

import restoration.run as entry
from restoration.errors import DataError


def test_run_stamp_claims_a_fresh_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID"):
        monkeypatch.delenv(name, raising=False)
    frozen = datetime(2026, 11, 23, 14, 0, 5)
    monkeypatch.setattr(entry, "datetime", SimpleNamespace(now=lambda: frozen))
    monkeypatch.setattr(entry, "_CLAIMED_FOLDERS", {})
    assert entry._run_stamp(str(tmp_path)) == "2026-11-23_14-00-05"
    assert entry._run_stamp(str(tmp_path)) == "2026-11-23_14-00-05"  # stable within a process
    monkeypatch.setattr(entry, "_CLAIMED_FOLDERS", {})  # two more processes, the same second
    (tmp_path / "2026-11-23_14-00-05-1").mkdir()
    assert entry._run_stamp(str(tmp_path)) == "2026-11-23_14-00-05-2"
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "2026-11-23_14-00-05",
        "2026-11-23_14-00-05-1",
        "2026-11-23_14-00-05-2",
    ]


def test_run_stamp_is_shared_by_the_ranks_of_a_cluster_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert entry._run_stamp("/unused") == "slurm-4242_3.0"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert entry._run_stamp("/unused") == "torchrun-abc"


def test_rank_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    assert entry._rank_suffix() == ""
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert entry._rank_suffix() == "_rank3"


def test_user_error_messages() -> None:
    worker = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "restoration.errors.DataError: /data/a.png: cannot decode the image (broken)"
    )
    assert entry.user_error_message(worker) == "/data/a.png: cannot decode the image (broken)"
    try:
        raise InstantiationException(
            "Error in call to target 'x.Y':\nTypeError('bad keyword')\nfull_key: stage"
        )
    except InstantiationException as error:
        wrapped = error
    wrapped.__cause__ = TypeError("bad keyword")
    assert (
        entry.user_error_message(wrapped)
        == "Error in call to target 'x.Y': TypeError('bad keyword') full_key: stage"
    )
    assert entry.user_error_message(ZeroDivisionError("a bug")) is None  # bugs keep their traceback


def test_tiled_validation_matches_whole_images(make_config) -> None:
    small = (
        "trainer=smoke",
        "backbone.width=8",
        "backbone.blocks=1",
        "datamodule.batch_size=2",
        "datamodule.eval_crop=null",  # whole photos, larger than the tiles
        "test=false",
    )
    whole = make_config("experiment=restore_embedded_denoise", *small, run_name="whole")
    whole_dir = Path(whole.paths.output_dir)
    entry.run(whole)
    tiled = make_config(
        "experiment=restore_embedded_denoise", *small, "stage.tile=128", "stage.tile_overlap=32"
    )
    tiled_dir = Path(tiled.paths.output_dir)
    entry.run(tiled)
    whole_psnr = json.loads((whole_dir / "results.json").read_text())["val"]["val/psnr"]
    tiled_psnr = json.loads((tiled_dir / "results.json").read_text())["val"]["val/psnr"]
    # Same weights (same seed and data); the tiles' blended seams cost at most a few hundredths of a dB.
    assert tiled_psnr == pytest.approx(whole_psnr, abs=0.05)
    assert tiled_psnr != whole_psnr
