"""Shared fixtures: composing the real Hydra config in-process, running the CLI, writing test images."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

import restoration.run  # noqa: F401  (registers the run_stamp / data_scale resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))

# Keep subprocesses on the CPU, quiet and offline, like `make test` does.
CLI_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
CLI_ENV.pop("HYDRA_FULL_ERROR", None)


@pytest.fixture
def make_config(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose ``conf/config.yaml`` with overrides, as ``python -m restoration.run`` would.

    Runs write under ``tmp_path/logs/<task_name>/runs/<run_name>``, the layout of real runs.
    """
    counter = iter(range(1000))

    def _make(*overrides: str, run_name: str | None = None) -> DictConfig:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        output_dir = tmp_path / "logs" / cfg.task_name / "runs" / (run_name or f"run{next(counter)}")
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.job.name = "test"
            cfg.paths.log_dir = str(tmp_path / "logs")
        output_dir.mkdir(parents=True, exist_ok=True)
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _make
    HydraConfig.instance().cfg = None


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m restoration.run ARGS`` in ``cwd``; stdout and stderr captured together."""
    return subprocess.run(
        [sys.executable, "-m", "restoration.run", *args],
        cwd=cwd,
        env=CLI_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def write_image(
    path: Path, *, size: tuple[int, int] = (40, 48), mode: str = "RGB", seed: int = 0
) -> np.ndarray:
    """A random image of (height, width) ``size`` in ``mode`` at ``path``; returns its pixels."""
    rng = np.random.default_rng(seed)
    height, width = size
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        pixels = rng.integers(0, 65536, size=(height, width), dtype=np.uint16)
        Image.fromarray(pixels).save(path)
        return pixels
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode).save(path)
    return pixels


def fit_losses(
    net: torch.nn.Module, degraded: torch.Tensor, clean: torch.Tensor, *, steps: int, lr: float
) -> list[float]:
    """The L1 losses of ``steps`` Adam steps fitting ``net`` to map one fixed batch to its clean images."""
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.l1_loss(net(degraded), clean)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in ``tmp_path``, for code that writes under the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
