"""``hparams_search=``: Optuna studies of ``-m`` jobs that maximise optimized_metric and survive failures."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from .conftest import CONF, run_as_typed_printing
from .test_run import SMALL, _sweep_jobs

TASK = "restore_embedded_denoise"


@pytest.mark.parametrize(
    ("search", "space"),
    [
        ("restore_optuna", {"stage.optimizer.lr", "datamodule.batch_size"}),
        ("ptgrm_optuna", {"stage.optimizer.lr", "stage.lambda_refined"}),
    ],
)
def test_searches_maximise_the_optimized_metric_over_their_space(search: str, space: set[str]) -> None:
    experiment = "ptgrm_lowlight" if search.startswith("ptgrm") else TASK
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(
            config_name="config",
            overrides=[f"hparams_search={search}", f"experiment={experiment}"],
            return_hydra_config=True,
        )
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/psnr" and sweeper.sampler.seed is not None
    assert set(sweeper.params) == space
    # every searched key is a number of the experiment's config (a typo would add a new key to each trial)
    assert all(isinstance(OmegaConf.select(cfg, key), int | float) for key in space)


def test_study_reports_a_failed_trial_to_optuna_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three trials, some with batch_size=-1 (a config error): those fail, the study ends with the best
    finished trial in optimization_results.yaml, and the command exits 1 as any sweep with a failed job."""
    told: list[optuna.trial.TrialState] = []
    tell = optuna.study.Study.tell

    def record(self, trial, values=None, state=None, **kwargs):
        told.append(state)
        return tell(self, trial, values=values, state=state, **kwargs)

    monkeypatch.setattr(optuna.study.Study, "tell", record)
    status, printed = run_as_typed_printing(
        "-m", "hparams_search=restore_optuna", f"experiment={TASK}", "trainer=smoke", *SMALL[:2],
        "logger=none", "hydra.sweeper.n_trials=3", "datamodule.batch_size=choice(-1,2)", cwd=tmp_path,
        capsys=capsys,
    )  # fmt: skip
    jobs = _sweep_jobs(tmp_path, TASK)
    results = [json.loads((job / "results.json").read_text()) for job in jobs]
    assert len(results) == 3
    invalid = ["datamodule.batch_size=-1" in job["overrides"] for job in results]
    assert any(invalid) and not all(invalid)  # the sampler's seed makes both kinds of trial
    for job, is_invalid in zip(results, invalid, strict=True):
        if is_invalid:
            assert job["status"].startswith("failed: datamodule embedded:")
        else:
            assert job["status"] == "finished"
    finished = optuna.trial.TrialState.COMPLETE
    assert told == [optuna.trial.TrialState.FAIL if bad else finished for bad in invalid]

    best = yaml.safe_load((jobs[0].parent / "optimization_results.yaml").read_text())
    finished_jobs = [job for job, bad in zip(results, invalid, strict=True) if not bad]
    best_job = max(finished_jobs, key=lambda job: job["best"]["value"])
    assert best["best_value"] == pytest.approx(best_job["best"]["value"])
    assert {f"{key}={value}" for key, value in best["best_params"].items()} <= set(best_job["overrides"])

    assert status == 1  # restoration.sweep.SweepSummary: a job failed
    assert f"{sum(invalid)} of 3 jobs failed" in printed
