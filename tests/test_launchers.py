"""Sweeps through hydra-submitit-launcher: jobs in local processes, and the sbatch script of a SLURM sweep."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra.core.plugins import Plugins

from restoration.run import main

from .conftest import CONF, run_as_typed_printing
from .test_run import SMALL, _sweep_jobs

TASK = "restore_embedded_denoise"


@pytest.mark.slow
def test_local_launcher_runs_each_job_in_its_own_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two jobs through ``hydra/launcher=local`` as typed, in a fresh folder. The launching command runs in
    this process (as tests/test_run.py's sweeps do); submitit starts each job in a process of its own."""
    status, printed = run_as_typed_printing(
        "-m", "hydra/launcher=local", f"experiment={TASK}", "trainer=smoke", *SMALL, "seed=1,2",
        cwd=tmp_path, capsys=capsys,
    )  # fmt: skip
    assert status == 0, printed[-3000:]
    folders = _sweep_jobs(tmp_path, TASK)
    sweep = folders[0].parent
    jobs = [json.loads((job / "results.json").read_text()) for job in folders]
    assert [job["seed"] for job in jobs] == [1, 2]
    assert [job["status"] for job in jobs] == ["finished", "finished"]
    assert all(job["output_dir"] == str(folder) for job, folder in zip(jobs, folders, strict=True))
    # submitit ran them: one submission folder per job, each with the pickled result it sent back
    results = sorted((sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 2
    assert "2 of 2 jobs finished" in printed
    # then the aggregation, in the launching process: the two seeds are one group of n = 2
    table = (sweep / "aggregate.md").read_text()
    mean = sum(job["test"]["test/psnr"] for job in jobs) / 2
    assert f"| all jobs | 2 | 0 | {jobs[0]['parameters']['trainable']:,} | {mean:.2f} ± " in table


def _slurm_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> str:
    """The sbatch script hydra-submitit-launcher would submit for ``-m hydra/launcher=slurm OVERRIDES``.

    The config is composed with Hydra's compose API, and the launcher is built and run by the plugin as in a
    real sweep, up to the submission of the job array, which is where the executor's script is taken.
    """
    monkeypatch.chdir(tmp_path)
    # submitit's SLURM executor looks for srun on the PATH, as on a cluster's login node
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=slurm", f"experiment={TASK}", *overrides],
            return_hydra_config=True,
        )
    launcher = Plugins.instance().instantiate_launcher(hydra_context=None, task_function=main, config=cfg)
    submitted: list[submitit.AutoExecutor] = []

    def submit_nothing(executor: submitit.AutoExecutor, function, *arguments):
        submitted.append(executor)
        return []

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", submit_nothing)
    launcher.launch([["seed=1"], ["seed=2"]], initial_job_idx=0)
    (executor,) = submitted
    return executor._executor._make_submission_file_text("python -u -m submitit.core._submit folder", "uid")


def test_slurm_launcher_asks_for_one_task_and_gpu_per_device_and_requeues_on_sigusr1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _slurm_sbatch_script(
        tmp_path,
        monkeypatch,
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
    )
    lines = set(script.splitlines())
    assert {
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1440",
        "#SBATCH --cpus-per-task=8",
    } <= lines
    # SIGUSR1 for Lightning's requeue (conf/hydra/launcher/slurm.yaml), not submitit's SIGUSR2
    assert [line for line in lines if "--signal" in line] == ["#SBATCH --signal=USR1@120"]
    # srun starts the tasks, so that Lightning sees one SLURM task per device
    assert any(line.startswith("srun ") for line in lines)
    assert "--mem" not in script  # null: the partition's default


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (("trainer=ddp",), "trainer.devices=-1"),  # trainer=ddp's "all GPUs" is no task count
        (("trainer.devices=auto",), "trainer.devices=auto"),
        (("hydra.launcher.nodes=0",), "hydra.launcher.nodes=0"),
    ],
)
def test_slurm_sweep_with_no_task_count_stops_before_submitting(
    overrides: tuple[str, ...], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, printed = run_as_typed_printing(
        "-m", "hydra/launcher=slurm", f"experiment={TASK}", *overrides, "seed=1,2",
        cwd=tmp_path, capsys=capsys,
    )  # fmt: skip
    assert status == 1
    errors = [line for line in printed.splitlines() if "hydra/launcher=slurm" in line]
    assert len(errors) == 1 and f"{named} is not a number of" in errors[0]
    assert "Traceback" not in printed
    assert not (tmp_path / "logs").exists()  # nothing was submitted
