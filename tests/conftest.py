"""Shared fixtures: composing the real Hydra config in-process, running the CLI, writing test images."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
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

# The library caches of downloaded weights point into one empty folder per test session, before any library
# reads them: no test sees (or fills) the user's own caches, and HF_HUB_OFFLINE keeps every test offline.
# Tests that need "downloaded" weights put tiny or random real-format files there (see
# tests/guide_models.py) so that commands run as users type them.
SESSION_CACHE = Path(tempfile.mkdtemp(prefix="restoration-tests-"))
atexit.register(shutil.rmtree, SESSION_CACHE, ignore_errors=True)
os.environ["HF_HOME"] = str(SESSION_CACHE / "huggingface")
os.environ["HF_HUB_OFFLINE"] = "1"

import restoration.run  # noqa: E402  (registers the run_stamp / data_scale resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))

# `make test` runs the suite in one pytest-xdist worker per core: each worker (and what it starts) gets its
# share of the cores, because OpenMP pools of several processes on the same cores wait on each other.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, len(os.sched_getaffinity(0)) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)

# Keep subprocesses on the CPU, quiet and offline, like `make test` does.
CLI_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
CLI_ENV.pop("HYDRA_FULL_ERROR", None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked slow first (in their order): the workers then end together, not on one long test."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def make_config(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose ``conf/config.yaml`` (or ``config_name``) as ``python -m restoration.run`` would.

    Runs write under ``tmp_path/logs/<task_name>/runs/<run_name>``, the layout of real runs.
    """
    counter = iter(range(1000))

    def _make(*overrides: str, run_name: str | None = None, config_name: str = "config") -> DictConfig:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
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


def run_cli(
    *args: str, cwd: Path, timeout: float = 600, module: str = "restoration.run"
) -> subprocess.CompletedProcess[str]:
    """``python -m restoration.run ARGS`` (or ``module``) in ``cwd``; stdout and stderr captured together."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=CLI_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def run_as_typed(*args: str, cwd: Path) -> int:
    """``python -m restoration.run ARGS`` as typed, in ``cwd``, in this process; the exit status.

    Hydra composes the config, creates the run folder under ``cwd/logs`` and calls ``main`` exactly as
    on the command line; only the interpreter start-up is saved.
    """
    saved_argv, saved_cwd = sys.argv, Path.cwd()
    sys.argv = ["restoration.run", *args]
    # a new process claims a new timestamped run folder, even within the same second: so does this call
    restoration.run._CLAIMED_FOLDERS.clear()
    os.chdir(cwd)
    try:
        restoration.run.main()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        HydraConfig.instance().cfg = None
    return 0


def run_as_typed_printing(*args: str, cwd: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """:func:`run_as_typed`, with everything the command printed (standard output, then standard error)."""
    status = run_as_typed(*args, cwd=cwd)
    printed = capsys.readouterr()
    return status, printed.out + printed.err


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


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """W&B offline, quiet, with its staging and cache folders in ``tmp_path``; no run left open."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    yield
    import wandb

    wandb.finish()
