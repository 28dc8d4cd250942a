"""End to end: experiments, results.json, resume, divergence, checkpoints, loggers, the CLI, sweeps, DDP."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from restoration.callbacks import AtomicCheckpointIO
from restoration.data.io import read_image
from restoration.errors import ConfigError, TrainingDiverged
from restoration.losses import L1Loss
from restoration.run import run

from .conftest import EXPERIMENTS, run_cli, write_image
from .guide_models import save_tiny_open_clip, save_tiny_prior

# A small network keeps the tests that are not about an experiment's own settings fast.
SMALL = ("backbone.width=8", "backbone.blocks=1", "datamodule.batch_size=2", "datamodule.crop_size=48")


def _results(output_dir: Path) -> dict:
    return json.loads((output_dir / "results.json").read_text())


# IPT's official size (115M parameters) with the official tiling of whole validation images takes hours on
# a CPU; the smoke test runs each IPT recipe at the tiny size with the fast tiling and one image.
IPT_SMOKE = (
    "backbone=ipt_tiny",
    "datamodule.batch_size=2",  # the patch-contrastive loss needs two images
    "stage.tiling.protocol=fast",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
)
# The ConStyle and PTG-RM recipes at tiny sizes, with tiny random guides saved in the real formats.
CONSTYLE_PRETRAIN_SMOKE = ("datamodule.batch_size=4", "datamodule.crop_size=64", "stage.queue_size=64")
PTGRM_TARGETS = {"lowlight": "snr_aware_tiny"}
# What a prompter validates: its pretext and contrastive scores (no image metrics, no grids).
PROMPTER_SCORES = {"pretext_top1", "infonce_top1", "infonce", "cosine"}


def _smoke_overrides(experiment: str, folder: Path) -> tuple[str, ...]:
    """The overrides that make ``experiment`` a one-minute CPU run (tiny sizes, tiny local guides)."""
    if experiment.startswith("ipt_"):
        return IPT_SMOKE
    if experiment == "constyle_pretrain":
        return CONSTYLE_PRETRAIN_SMOKE
    if experiment == "constyle_allinone":
        prior = save_tiny_prior(folder / "prior")
        return (
            "backbone=constyle_nafnet_tiny",
            f"guide.checkpoint={prior}",
            "datamodule.crop_size=64",
            "datamodule.batch_size=2",
        )
    if experiment == "origin_allinone":
        return ("backbone=nafnet_tiny", "datamodule.crop_size=64", "datamodule.batch_size=2")
    if experiment.startswith("ptgrm_"):
        task = experiment.split("_")[1]
        target = PTGRM_TARGETS.get(task, "restormer_tiny")
        common = (f"backbone={target}", "datamodule.crop_size=64", "datamodule.batch_size=2")
        if experiment.endswith("_baseline"):
            return common
        clip = save_tiny_open_clip(folder / "clip")
        return (
            *common,
            f"guide.model={clip.model}",
            f"guide.model_config={clip.model_config}",
            f"guide.pretrained={clip.pretrained}",
            "refiner=ptgrm_tiny",
        )
    return ()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_with_smoke_trainer(experiment: str, make_config, tmp_path: Path) -> None:
    extra = _smoke_overrides(experiment, tmp_path / "models")
    cfg = make_config(f"experiment={experiment}", "trainer=smoke", *extra)
    value = run(cfg)
    output_dir = Path(cfg.paths.output_dir)
    results = _results(output_dir)
    assert results["experiment"] == experiment and results["status"] == "finished"
    assert results["global_step"] == 4
    metrics = {"psnr", "ssim", "psnr_y", "ssim_y"}
    if experiment == "constyle_pretrain":
        metrics, degraded = PROMPTER_SCORES, set()
    else:
        degraded = {f"degraded/{m}" for m in metrics}
    # multi-task stages and all-in-one data add per-task keys (val/<task>/psnr) to the shared set
    assert set(results["val"]) >= {f"val/{m}" for m in metrics | degraded}
    assert all(math.isfinite(number) for number in results["val"].values())
    assert set(results["test"]) >= {f"test/{m}" for m in metrics | degraded}
    # PTG-RM scores its target network's output beside the refined one, so the gain shows in every run
    guided = experiment.startswith("ptgrm_") and not experiment.endswith("_baseline")
    assert ("val/target/psnr" in results["val"]) == ("test/target/psnr" in results["test"]) == guided
    assert value == pytest.approx(results["best"]["value"])
    assert (output_dir / "checkpoints" / "last.ckpt").is_file()
    assert Path(results["best"]["checkpoint"]).is_file()
    grids = sorted(path.name for path in (output_dir / "images" / "val").glob("*.png"))
    if experiment == "ipt_pretrain":
        tasks = sorted(cfg.stage.degradations)
        assert grids == sorted(f"chelsea_{task}_step{step:07d}.png" for task in tasks for step in (2, 4))
    elif experiment == "constyle_pretrain":
        assert grids == []
    else:
        names = ("chelsea",) if experiment.startswith("ipt_") else ("chelsea", "coffee")
        assert grids == [f"{name}_step{step:07d}.png" for name in names for step in (2, 4)]
    with open(output_dir / "csv" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    monitored = cfg.optimized_metric
    assert [row["step"] for row in rows if row.get(monitored)] == ["1", "3"]  # Lightning logs step - 1


def test_checkpoint_holds_config_ema_and_rng(make_config) -> None:
    cfg = make_config("experiment=restore_embedded_denoise", "trainer=smoke", *SMALL)
    run(cfg)
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert checkpoint["config"]["task_name"] == "restore_embedded_denoise"
    assert int(checkpoint["state_dict"]["ema.num_updates"]) == 4
    assert "RNGState" in checkpoint["callbacks"]
    net = {key[4:]: value for key, value in checkpoint["state_dict"].items() if key.startswith("net.")}
    ema = {
        key[11:]: value for key, value in checkpoint["state_dict"].items() if key.startswith("ema.module.")
    }
    assert net.keys() == ema.keys()
    assert any(not torch.equal(net[key], ema[key]) for key in net)


def test_resume_continues_exactly_where_it_stopped(make_config) -> None:
    common = ("experiment=restore_embedded_denoise", "trainer=smoke", *SMALL, "stage.scheduler.total_steps=8")
    # (paths.output_dir resolves through the current HydraConfig, so read it before the next compose)
    straight = make_config(*common, "trainer.max_steps=8", run_name="straight")
    straight_dir = Path(straight.paths.output_dir)
    run(straight)
    first = make_config(*common, "trainer.max_steps=4", "task_name=resumable", run_name="first")
    first_dir = Path(first.paths.output_dir)
    run(first)
    second = make_config(
        *common, "trainer.max_steps=8", "task_name=resumable", "ckpt_path=last", run_name="second"
    )
    second_dir = Path(second.paths.output_dir)
    run(second)
    resumed = _results(second_dir)
    assert resumed["resumed_from"] == str(first_dir / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 8
    assert (first_dir / "checkpoints" / "last.ckpt").is_file()  # the earlier run's files stay
    straight_ckpt = torch.load(straight_dir / "checkpoints" / "last.ckpt")
    resumed_ckpt = torch.load(second_dir / "checkpoints" / "last.ckpt")
    # Same data stream, degradations, optimizer, schedule and EMA: the same weights, bit for bit.
    for key, value in straight_ckpt["state_dict"].items():
        assert torch.equal(value, resumed_ckpt["state_dict"][key]), key
    assert resumed["val"] == _results(straight_dir)["val"]


def test_ckpt_path_last_without_earlier_run(make_config) -> None:
    with pytest.raises(ConfigError, match=r"ckpt_path=last: no last.ckpt under .*task_name=fresh"):
        run(make_config("trainer=smoke", "task_name=fresh", "ckpt_path=last", *SMALL))


class LossTurningNaN(nn.Module):
    """L1, except that the third call returns NaN (a training blow-up at step index 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.l1 = L1Loss()

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = self.l1(restored, target)
        return loss * float("nan") if self.calls == 3 else loss


def test_nan_loss_stops_cleanly_and_keeps_last_good_checkpoint(make_config) -> None:
    cfg = make_config(
        "experiment=restore_embedded_denoise",
        "trainer=smoke",
        *SMALL,
        "trainer.max_steps=6",
        f"stage.loss._target_={__name__}.LossTurningNaN",
    )
    with pytest.raises(
        TrainingDiverged, match=r"training loss became nan at step 2; stopped, last good checkpoint"
    ):
        run(cfg)
    output_dir = Path(cfg.paths.output_dir)
    results = _results(output_dir)
    assert results["status"] == "diverged" and results["diverged_at_step"] == 2
    checkpoint = torch.load(output_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert all(
        torch.isfinite(value).all()
        for value in checkpoint["state_dict"].values()
        if value.is_floating_point()
    )
    assert sorted(path.name for path in (output_dir / "checkpoints").iterdir()) == [
        "best_step0000002.ckpt",
        "last.ckpt",
    ]


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)

    def crash(obj: object, file: object, *args: object, **kwargs: object) -> None:
        file.write(b"partial bytes")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target) == {"step": 1}
    assert [path.name for path in tmp_path.iterdir()] == ["last.ckpt"]


def test_test_only_from_a_checkpoint(make_config) -> None:
    trained = make_config("experiment=restore_embedded_denoise", "trainer=smoke", *SMALL, run_name="trained")
    trained_dir = Path(trained.paths.output_dir)
    run(trained)
    ckpt = trained_dir / "checkpoints" / "last.ckpt"
    evaluated = make_config(
        "experiment=restore_embedded_denoise", "trainer=smoke", *SMALL, "train=false", f"ckpt_path={ckpt}"
    )
    run(evaluated)
    results = _results(Path(evaluated.paths.output_dir))
    assert "val" not in results and results["tested_checkpoint"] == str(ckpt)
    # The last checkpoint is the final step's, which the run validated: the same two images, same numbers.
    assert results["test"]["test/psnr"] == pytest.approx(_results(trained_dir)["val"]["val/psnr"])


def test_predict_restores_a_folder_with_the_checkpoint(make_config, tmp_path: Path) -> None:
    trained = make_config("experiment=restore_embedded_denoise", "trainer=smoke", *SMALL, run_name="trained")
    run(trained)
    ckpt = Path(trained.paths.output_dir) / "checkpoints" / "last.ckpt"
    inputs = tmp_path / "degraded"
    write_image(inputs / "a.png", size=(37, 53))
    write_image(inputs / "sub" / "b.jpg", size=(20, 24), seed=1)
    cfg = make_config(
        "experiment=restore_embedded_denoise", *SMALL, "train=false", "test=false",
        f"ckpt_path={ckpt}", f"predict={inputs}",
    )  # fmt: skip
    run(cfg)
    output = Path(cfg.paths.output_dir) / "images" / "predict"
    assert read_image(output / "a.png").shape == (3, 37, 53)
    assert read_image(output / "sub" / "b.png").shape == (3, 20, 24)
    assert _results(Path(cfg.paths.output_dir))["predict"]["images"] == 2
    with pytest.raises(ConfigError, match="nothing to do"):
        run(make_config("train=false", "test=false"))


def test_wandb_offline_writes_image_files(make_config) -> None:
    cfg = make_config(
        "experiment=restore_embedded_denoise",
        "trainer=smoke",
        *SMALL,
        "logger=wandb",
        "logger.wandb.offline=true",
    )
    run(cfg)
    images = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*/files/media/images/val/*.png"))
    assert len(images) == 4  # 2 validations x 2 grids


def test_tensorboard_logger_writes_events(make_config) -> None:
    cfg = make_config("experiment=restore_embedded_derain", "trainer=smoke", *SMALL, "logger=tensorboard")
    run(cfg)
    assert list((Path(cfg.paths.output_dir) / "tensorboard").glob("events.out.tfevents.*"))


# ---- the command line ----------------------------------------------------------------------------


def test_cli_data_error_is_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "datamodule=folder", f"datamodule.root={tmp_path / 'missing'}", "trainer=smoke", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout
    errors = [line for line in result.stdout.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and f"{tmp_path / 'missing'}: folder not found" in errors[0]


def test_cli_unknown_option_and_key_give_hydra_errors(tmp_path: Path) -> None:
    result = run_cli("datamodule=imagenet_typo", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stdout
    assert (
        "Could not find 'datamodule/imagenet_typo'" in result.stdout and "Available options" in result.stdout
    )
    result = run_cli("trainer.max_stepz=3", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stdout
    assert "Key 'max_stepz' is not in struct" in result.stdout


def test_cli_multirun_two_jobs(tmp_path: Path) -> None:
    result = run_cli(
        "-m",
        "experiment=restore_embedded_denoise",
        "trainer=smoke",
        *SMALL,
        "logger=none",
        "seed=1,2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    jobs = [_results(tmp_path / "sweep" / str(job)) for job in (0, 1)]
    assert [job["seed"] for job in jobs] == [1, 2]
    assert all(job["status"] == "finished" for job in jobs)
    assert jobs[0]["val"] != jobs[1]["val"]


@pytest.mark.slow
def test_cli_sweep_of_ddp_runs_on_two_cpu_processes(tmp_path: Path) -> None:
    """Two jobs of a sweep, each a 2-process DDP run: one output folder per job, shared by its ranks."""
    result = run_cli(
        "-m",
        "experiment=restore_embedded_denoise",
        "trainer=ddp_cpu",
        *SMALL,
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "test=false",
        "seed=1,2",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sweep"]
    for job in ("0", "1"):
        job_dir = tmp_path / "sweep" / job
        results = _results(job_dir)
        assert results["world_size"] == 2 and results["global_step"] == 4 and results["status"] == "finished"
        assert (job_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran in this job's folder
        # The ranks score disjoint halves of the 4 validation images; rank 0 gathered all four grids.
        grids = sorted(
            path.name.split("_step")[0] for path in (job_dir / "images" / "val").glob("*_step0000004.png")
        )
        assert grids == ["camera", "chelsea", "coffee", "gravel"]
