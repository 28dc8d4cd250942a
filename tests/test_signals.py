"""SIGTERM and SIGUSR1: a run stops within seconds with last.ckpt, mid-training and mid-validation, and
``ckpt_path=last`` ends with the weights of an uninterrupted run; SLURM's requeue signal still requeues."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import nn

from restoration.archs.unet import UNet
from restoration.run import run

from .conftest import CLI_ENV, CONF, ROOT

log = logging.getLogger(__name__)

# A small U-Net (with dropout, so that a resumed run must also continue the random stream), 6 steps,
# validation at steps 2, 4 and 6 on one 96×96 crop in 16 tiles, two batches of 8 (trainer=smoke), and a
# data loader worker process (persistent, as they are whenever there are workers).
COMMON = (
    "experiment=restore_embedded_denoise",
    "trainer=smoke",
    "max_steps=6",
    "val_every=2",
    "trainer.limit_val_batches=1",
    "datamodule.eval_crop=96",
    "datamodule.num_workers=1",
    "test=false",
    "backbone._target_=tests.test_signals.PausingUNet",
    "backbone.width=8",
    "backbone.blocks=1",
    "datamodule.batch_size=2",
    "datamodule.crop_size=48",
    "stage.tile=32",
    "stage.tile_overlap=8",
)
# From the release of the paused step to the end of the process: the rest of that step, last.ckpt and the
# exit (about 2 s here). A bound for a stop that waits on something (a loader worker, a timeout), not a speed
# target: wide enough for a VM 3× slower than this one under the full suite's load.
STOP_SECONDS = 30
# The test network pauses in the forward pass named here ("train:3": the 3rd in training) until released.
PAUSE_AT, PAUSE_DIR = "RESTORATION_TEST_PAUSE_AT", "RESTORATION_TEST_PAUSE_DIR"


class PausingUNet(UNet):
    """The U-Net with dropout on its input in training; it can hold still in one forward pass.

    With the environment variables ``RESTORATION_TEST_PAUSE_AT=<train|eval>:<n>`` and
    ``RESTORATION_TEST_PAUSE_DIR=<folder>``, the ``n``-th forward pass in that mode logs ``paused``, writes
    ``<folder>/paused`` and waits until ``<folder>/release`` exists: a test then knows what the run is doing
    when it sends a signal.
    """

    def __init__(self, *, dropout: float = 0.1, **unet: int) -> None:
        super().__init__(**unet)
        self.dropout = nn.Dropout(dropout)
        self.calls = {"train": 0, "eval": 0}

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        mode = "train" if self.training else "eval"
        self.calls[mode] += 1
        if os.environ.get(PAUSE_AT) == f"{mode}:{self.calls[mode]}":
            folder = Path(os.environ[PAUSE_DIR])
            log.info("paused in %s forward pass %d", mode, self.calls[mode])
            (folder / "paused").touch()
            while not (folder / "release").exists():
                time.sleep(0.02)
        return super().forward(self.dropout(degraded))


def _compose(root: Path, *overrides: str, run_name: str) -> DictConfig:
    """The config of ``python -m restoration.run OVERRIDES`` run from ``root`` (as tests/conftest.py does)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    output_dir = root / "logs" / cfg.task_name / "runs" / run_name
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.name = "test"
        cfg.paths.log_dir = str(root / "logs")
    output_dir.mkdir(parents=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _run_in_process(root: Path, *overrides: str, run_name: str) -> Path:
    """Run in this process; return the run folder."""
    try:
        cfg = _compose(root, *overrides, run_name=run_name)
        output_dir = Path(cfg.paths.output_dir)
        run(cfg)
    finally:
        HydraConfig.instance().cfg = None
    return output_dir


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of the runs below trained to the end without a stop."""
    root = tmp_path_factory.mktemp("uninterrupted")
    return _run_in_process(root, *COMMON, "task_name=uninterrupted", run_name="uninterrupted")


@pytest.fixture
def pause_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "pause"
    folder.mkdir()
    yield folder
    (folder / "release").touch()  # never leave a paused process behind


def _start(
    cwd: Path, pause_dir: Path, pause_at: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``python -m restoration.run ARGS`` in ``cwd``, to pause at ``pause_at``; output in ``cwd/out.txt``."""
    pause = {PAUSE_AT: pause_at, PAUSE_DIR: str(pause_dir)}
    environment = {**CLI_ENV, "PYTHONPATH": str(ROOT), **pause, **(env or {})}
    with open(cwd / "out.txt", "w") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "restoration.run", *args],
            cwd=cwd,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, for _send(group=True)
        )


def _wait_for(path: Path, process: subprocess.Popen, text: str = "", timeout: float = 120) -> None:
    """Wait until the file ``path`` exists (and holds ``text``) while ``process`` runs."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        if process.poll() is not None:
            raise AssertionError(f"the run ended ({process.returncode}) before {path.name} held {text!r}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not hold {text!r} within {timeout} s")
        time.sleep(0.05)


def _send(process: subprocess.Popen, signum: signal.Signals, cwd: Path, *, group: bool = False) -> None:
    """Send ``signum`` to the paused run (``group``: to its data loader workers too, as ``timeout`` and
    SLURM do) and wait until its handler has logged it."""
    if group:
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    (run_dir,) = (cwd / "logs").glob("*/runs/*")
    _wait_for(run_dir / "run.log", process, f"{signum.name} received")


def _interrupt(
    cwd: Path, pause_dir: Path, pause_at: str, *args: str, group: bool = False
) -> tuple[int, float, Path]:
    """Start a run, send SIGTERM while it is paused at ``pause_at``, let it go on; return its exit status,
    the seconds from the release to its end, and its run folder."""
    process = _start(cwd, pause_dir, pause_at, *args)
    _wait_for(pause_dir / "paused", process)
    _send(process, signal.SIGTERM, cwd, group=group)
    released = time.monotonic()
    (pause_dir / "release").touch()
    returncode = process.wait(timeout=120)
    (run_dir,) = (cwd / "logs").glob("*/runs/*")
    return returncode, time.monotonic() - released, run_dir


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _validated_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "csv" / "metrics.csv") as file:
        return [int(row["step"]) for row in csv.DictReader(file) if row.get("val/psnr")]


def _assert_same_weights(run_dir: Path, reference_dir: Path) -> None:
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    reference = torch.load(reference_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == reference["global_step"] == 6
    for key, value in reference["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key


@pytest.mark.slow
def test_sigterm_in_training_saves_last_and_resume_ends_like_an_uninterrupted_run(
    tmp_path: Path, pause_dir: Path, uninterrupted: Path
) -> None:
    # step 3's forward pass: no validation follows step 3, so the run stops at the end of that step; the
    # signal goes to the data loader worker too, as `timeout` sends it
    returncode, seconds, run_dir = _interrupt(
        tmp_path, pause_dir, "train:3", *COMMON, "task_name=stopped", group=True
    )
    assert returncode == 128 + signal.SIGTERM
    assert seconds < STOP_SECONDS
    results = _results(run_dir)
    assert results["status"] == "interrupted (SIGTERM) at step 3; resume with ckpt_path=last"
    assert results["last_checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert "SIGTERM received" in (run_dir / "run.log").read_text()
    assert _validated_steps(run_dir) == [2]

    resumed_dir = _run_in_process(
        tmp_path, *COMMON, "task_name=stopped", "ckpt_path=last", run_name="resumed"
    )
    assert _results(resumed_dir)["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert _validated_steps(resumed_dir) == [4, 6]
    _assert_same_weights(resumed_dir, uninterrupted)
    assert _results(resumed_dir)["val"] == _results(uninterrupted)["val"]


@pytest.mark.slow
def test_sigterm_in_validation_stops_between_tiles_and_resume_repeats_that_validation(
    tmp_path: Path, pause_dir: Path, uninterrupted: Path
) -> None:
    # validation at step 2 runs evaluation passes 1 and 2 (two batches of tiles); the 3rd is step 4's first
    returncode, seconds, run_dir = _interrupt(tmp_path, pause_dir, "eval:3", *COMMON, "task_name=stopped")
    assert returncode == 128 + signal.SIGTERM
    assert seconds < STOP_SECONDS
    results = _results(run_dir)
    assert results["status"] == "interrupted (SIGTERM) at step 4; resume with ckpt_path=last"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    # stopped before the second batch of tiles: step 4 has no scores and no grid
    assert _validated_steps(run_dir) == [2]
    assert sorted(path.name for path in (run_dir / "images" / "val").iterdir()) == ["chelsea_step0000002.png"]

    resumed_dir = _run_in_process(
        tmp_path, *COMMON, "task_name=stopped", "ckpt_path=last", run_name="resumed"
    )
    assert _validated_steps(resumed_dir) == [4, 6]
    assert (resumed_dir / "images" / "val" / "chelsea_step0000004.png").is_file()
    _assert_same_weights(resumed_dir, uninterrupted)
    assert _results(resumed_dir)["val"] == _results(uninterrupted)["val"]
    best, reference_best = _results(resumed_dir)["best"], _results(uninterrupted)["best"]
    assert best["value"] == reference_best["value"]
    assert Path(best["checkpoint"]).name == Path(reference_best["checkpoint"]).name


@pytest.mark.slow
def test_sigusr1_under_slurm_still_requeues_and_sigterm_then_stops(tmp_path: Path, pause_dir: Path) -> None:
    # a fake scontrol that records how it was called, where SLURM's would be
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol_args"}\n')
    scontrol.chmod(0o755)
    slurm = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "train",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }
    process = _start(tmp_path, pause_dir, "train:3", *COMMON, env=slurm)
    _wait_for(pause_dir / "paused", process)
    process.send_signal(signal.SIGUSR1)
    _wait_for(tmp_path / "scontrol_args", process)
    _send(process, signal.SIGTERM, tmp_path)
    (pause_dir / "release").touch()
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    assert (tmp_path / "scontrol_args").read_text().split() == ["requeue", "4242"]
    (run_dir,) = (tmp_path / "logs").glob("*/runs/*")
    assert [path.name for path in run_dir.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_1.ckpt"]
    assert _results(run_dir)["status"] == "interrupted (SIGTERM) at step 3; resume with ckpt_path=last"
