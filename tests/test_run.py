"""End to end: experiments, results.json, resume, divergence, checkpoints, loggers, the CLI, sweeps, DDP."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from torch import nn

from restoration.callbacks import AtomicCheckpointIO
from restoration.data.io import read_image
from restoration.errors import ConfigError, DataError, TrainingDiverged
from restoration.losses import L1Loss
from restoration.run import run

from .conftest import run_as_typed_printing, run_cli, write_image
from .guide_models import save_tiny_open_clip
from .test_experiments import PAPER_SIZE

# A small network keeps the tests that are not about an experiment's own settings fast.
SMALL = ("backbone.width=8", "backbone.blocks=1", "datamodule.batch_size=2", "datamodule.crop_size=48")


def _results(output_dir: Path) -> dict:
    return json.loads((output_dir / "results.json").read_text())


# PTG-RM's Restormer targets take minutes on a CPU even with trainer=smoke (tests/test_experiments.py runs
# them as typed in `make test-experiments`); here each runs its recipe at the tiny size, so `make test` still
# covers them end to end (tests/test_ipt_stages.py does the same for the IPT recipes).


def _tiny_overrides(experiment: str, folder: Path) -> tuple[str, ...]:
    """The overrides that make a PTG-RM ``experiment`` a quick CPU run (tiny target, tiny local CLIP)."""
    common = ("backbone=restormer_tiny", "datamodule.crop_size=64")
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


@pytest.mark.parametrize("experiment", sorted(name for name in PAPER_SIZE if not name.startswith("ipt_")))
def test_paper_size_experiment_runs_at_tiny_size(experiment: str, make_config, tmp_path: Path) -> None:
    cfg = make_config(f"experiment={experiment}", "trainer=smoke", *_tiny_overrides(experiment, tmp_path))
    value = run(cfg)
    output_dir = Path(cfg.paths.output_dir)
    results = _results(output_dir)
    assert results["experiment"] == experiment and results["status"] == "finished"
    assert results["global_step"] == 2
    metrics = {"psnr", "ssim", "psnr_y", "ssim_y"} | {f"degraded/{m}" for m in ("psnr", "ssim")}
    assert set(results["val"]) >= {f"val/{m}" for m in metrics}
    assert set(results["test"]) >= {f"test/{m}" for m in metrics}
    assert all(math.isfinite(number) for number in results["val"].values())
    guided = experiment.startswith("ptgrm_") and not experiment.endswith("_baseline")
    assert ("val/target/psnr" in results["val"]) == ("test/target/psnr" in results["test"]) == guided
    assert value == pytest.approx(results["best"]["value"])
    assert Path(results["best"]["checkpoint"]).is_file()
    grids = sorted(path.name for path in (output_dir / "images" / "val").glob("*.png"))
    assert grids == [f"chelsea_step{step:07d}.png" for step in (1, 2)]


def test_checkpoint_holds_config_ema_and_rng(make_config) -> None:
    cfg = make_config("experiment=restore_embedded_denoise", "trainer=smoke", *SMALL)
    run(cfg)
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2
    assert checkpoint["config"]["task_name"] == "restore_embedded_denoise"
    assert checkpoint["choices"]["experiment"] == "restore_embedded_denoise"
    assert checkpoint["choices"]["backbone"] == "unet"
    assert int(checkpoint["state_dict"]["ema.num_updates"]) == 2
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


def test_ckpt_path_last_takes_the_newest_checkpoint_of_this_network(make_config, caplog) -> None:
    """After a sweep over backbones in one task, each network resumes from its own last.ckpt."""
    caplog.set_level(logging.INFO)
    unet = make_config("experiment=restore_embedded_denoise", "trainer=smoke", *SMALL, run_name="unet")
    unet_ckpt = Path(unet.paths.output_dir) / "checkpoints" / "last.ckpt"
    run(unet)
    nafnet = make_config(
        "experiment=restore_embedded_denoise", "trainer=smoke", "backbone=nafnet_tiny", *SMALL[2:],
        run_name="nafnet",
    )  # fmt: skip
    run(nafnet)  # written last: the newest last.ckpt of the task
    resumed = make_config(
        "experiment=restore_embedded_denoise", "trainer=smoke", *SMALL, "ckpt_path=last", "max_steps=3"
    )
    run(resumed)
    results = _results(Path(resumed.paths.output_dir))
    assert results["resumed_from"] == str(unet_ckpt) and results["global_step"] == 3
    skipped = [record.getMessage() for record in caplog.records if "skipped" in record.getMessage()]
    assert len(skipped) == 1 and "nafnet" in skipped[0] and "backbone=nafnet_tiny" in skipped[0]


def test_wrong_checkpoints_are_refused_in_one_line(make_config, tmp_path: Path) -> None:
    trained = make_config("experiment=restore_embedded_denoise", "trainer=smoke", *SMALL, run_name="trained")
    run(trained)
    ckpt = Path(trained.paths.output_dir) / "checkpoints" / "last.ckpt"
    evaluate = ("experiment=restore_embedded_denoise", "trainer=smoke", "train=false")
    picture = tmp_path / "picture.png"
    write_image(picture)
    with pytest.raises(ConfigError, match=r"^ckpt_path=.*picture.png: not a checkpoint") as error:
        run(make_config(*evaluate, f"ckpt_path={picture}"))
    assert "\n" not in str(error.value)
    with pytest.raises(
        ConfigError, match=r"holds another network \(backbone=unet; backbone._target_: .*UNet vs"
    ):
        run(make_config(*evaluate, "backbone=nafnet_tiny", f"ckpt_path={ckpt}"))
    with pytest.raises(ConfigError, match=r"backbone.width: 8 vs 16.*the command line sets .*backbone.width"):
        run(make_config(*evaluate, *SMALL[1:], "backbone.width=16", f"ckpt_path={ckpt}"))
    checkpoint = torch.load(ckpt, weights_only=True)
    state = checkpoint["state_dict"]
    dropped = next(key for key in state if key.startswith("net."))
    del state[dropped]
    state["net.extra.weight"] = torch.zeros(1)
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    with pytest.raises(
        ConfigError, match=rf"weights do not fit this network \(1 missing: {dropped}; 1 unexpected"
    ):
        run(make_config(*evaluate, f"ckpt_path={edited}"))


def test_test_only_rebuilds_the_network_of_the_checkpoint(make_config) -> None:
    trained = make_config(
        "experiment=restore_embedded_denoise", "trainer=smoke", "backbone=nafnet_tiny", *SMALL[2:],
        run_name="trained",
    )  # fmt: skip
    trained_dir = Path(trained.paths.output_dir)
    run(trained)
    ckpt = _results(trained_dir)["best"]["checkpoint"]
    # the experiment's default backbone is the U-Net; the checkpoint says NAFNet, and that is what is tested
    evaluated = make_config(
        "experiment=restore_embedded_denoise", "trainer=smoke", "train=false", f"ckpt_path={ckpt}"
    )
    run(evaluated)
    results = _results(Path(evaluated.paths.output_dir))
    # the training run tested the same (best) checkpoint on the same test image
    assert results["test"]["test/psnr"] == pytest.approx(_results(trained_dir)["test"]["test/psnr"])


def test_a_run_that_fails_before_training_still_writes_results(make_config) -> None:
    cfg = make_config("experiment=restore_embedded_denoise", "trainer=smoke", "datamodule.batch_size=0")
    with pytest.raises(InstantiationException, match="batch_size=0"):
        run(cfg)
    results = _results(Path(cfg.paths.output_dir))
    assert results["status"].startswith("failed: datamodule embedded: crop_size=128, batch_size=0")
    assert results["overrides"] == sorted(
        ["experiment=restore_embedded_denoise", "trainer=smoke", "datamodule.batch_size=0"]
    )


def test_an_explicit_step_count_wins_over_smoke(make_config) -> None:
    cfg = make_config(
        "experiment=restore_embedded_denoise", "trainer=smoke", *SMALL, "max_steps=3", "val_every=3"
    )
    run(cfg)
    results = _results(Path(cfg.paths.output_dir))
    assert results["global_step"] == 3
    assert sorted(path.name for path in (Path(cfg.paths.output_dir) / "images" / "val").iterdir()) == [
        "chelsea_step0000003.png"
    ]


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


@pytest.mark.parametrize("log_every", [1, 10])
def test_nan_loss_stops_cleanly_and_keeps_last_good_checkpoint(log_every: int, make_config) -> None:
    """The loss is read only at logging steps and validations: a NaN at step 2 stops training there when every
    step logs, else at the validation after step 4, which saves nothing; either way the report names step 2
    and the last checkpoint is that of step 2."""
    cfg = make_config(
        "experiment=restore_embedded_denoise",
        "trainer=smoke",
        *SMALL,
        "trainer.max_steps=8",
        f"trainer.log_every_n_steps={log_every}",
        "val_every=2",
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


@pytest.mark.parametrize("mode", ["max", "min"])
def test_last_checkpoint_of_a_best_step_is_a_link_to_it(mode: str, make_config) -> None:
    """Monitoring the step: with mode=max every validation is a new best (last.ckpt is the best file's
    inode at every step, and the rotation of best files never touches it); with mode=min only the first."""
    cfg = make_config(
        "experiment=restore_embedded_denoise", "trainer=smoke", *SMALL, "logger=none", "test=false",
        "max_steps=3", "callbacks.model_checkpoint.monitor=step", f"callbacks.model_checkpoint.mode={mode}",
    )  # fmt: skip
    run(cfg)
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    best_step = 3 if mode == "max" else 1
    best, last = folder / f"best_step{best_step:07d}.ckpt", folder / "last.ckpt"
    assert sorted(path.name for path in folder.iterdir()) == sorted([best.name, last.name])
    assert last.samefile(best) == (mode == "max")
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 3
    (callback,) = [value for key, value in state["callbacks"].items() if key.startswith("Checkpoint")]
    assert callback["last_model_path"] == str(last) and callback["best_model_path"] == str(best)
    assert _results(Path(cfg.paths.output_dir))["last_checkpoint"] == str(last)


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
    ckpt = _results(trained_dir)["best"]["checkpoint"]
    evaluated = make_config(
        "experiment=restore_embedded_denoise", "trainer=smoke", *SMALL, "train=false", f"ckpt_path={ckpt}"
    )
    run(evaluated)
    results = _results(Path(evaluated.paths.output_dir))
    assert "val" not in results and results["tested_checkpoint"] == str(ckpt)
    # The training run tested its best checkpoint on the test split: the same image, the same numbers.
    assert results["test"]["test/psnr"] == pytest.approx(_results(trained_dir)["test"]["test/psnr"])


def test_predict_restores_a_folder_with_the_checkpoint(make_config, tmp_path: Path) -> None:
    trained = make_config("experiment=restore_embedded_denoise", "trainer=smoke", *SMALL, run_name="trained")
    run(trained)
    ckpt = Path(trained.paths.output_dir) / "checkpoints" / "last.ckpt"
    inputs = tmp_path / "degraded"
    write_image(inputs / "a.png", size=(37, 53))
    write_image(inputs / "sub" / "b.jpg", size=(20, 24), seed=1)
    (inputs / "broken.png").write_bytes(b"not an image")
    predict = (
        "experiment=restore_embedded_denoise",
        *SMALL,
        "train=false",
        "test=false",
        f"ckpt_path={ckpt}",
    )
    with pytest.raises(DataError, match=r"broken.png.*set datamodule.skip_bad_files=true"):
        run(make_config(*predict, f"predict={inputs}"))
    cfg = make_config(*predict, f"predict={inputs}", "datamodule.skip_bad_files=true")
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
    assert len(images) == 2  # 2 validations x 1 grid (trainer=smoke validates one image)


def test_tensorboard_logger_writes_events(make_config) -> None:
    cfg = make_config("experiment=restore_embedded_derain", "trainer=smoke", *SMALL, "logger=tensorboard")
    run(cfg)
    assert list((Path(cfg.paths.output_dir) / "tensorboard").glob("events.out.tfevents.*"))


# ---- the command line ----------------------------------------------------------------------------


def test_cli_data_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, printed = run_as_typed_printing(
        "datamodule=folder",
        f"datamodule.root={tmp_path / 'missing'}",
        "trainer=smoke",
        cwd=tmp_path,
        capsys=capsys,
    )
    assert status == 1
    assert "Traceback" not in printed
    errors = [line for line in printed.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and f"{tmp_path / 'missing'}: folder not found" in errors[0]


def test_cli_unknown_option_and_key_give_hydra_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, printed = run_as_typed_printing("datamodule=imagenet_typo", cwd=tmp_path, capsys=capsys)
    assert status == 1 and "Traceback" not in printed
    assert "Could not find 'datamodule/imagenet_typo'" in printed and "Available options" in printed
    status, printed = run_as_typed_printing("trainer.max_stepz=3", cwd=tmp_path, capsys=capsys)
    assert status == 1 and "Traceback" not in printed
    assert "Key 'max_stepz' is not in struct" in printed


def _sweep_jobs(cwd: Path, task: str) -> list[Path]:
    (sweep,) = (cwd / "logs" / task / "multiruns").iterdir()
    return sorted((path for path in sweep.iterdir() if path.name.isdigit()), key=lambda path: int(path.name))


def test_default_sweep_goes_on_after_a_failing_job_and_exits_non_zero(tmp_path: Path, capsys) -> None:
    """``-m`` as typed (no path override): the failing job 0 is recorded, job 1 runs, the exit says so."""
    status, printed = run_as_typed_printing(
        "-m", "experiment=restore_embedded_denoise", "trainer=smoke", *SMALL[:2], "logger=none",
        "datamodule.batch_size=-1,2", cwd=tmp_path, capsys=capsys,
    )  # fmt: skip
    assert status == 1
    failed, finished = (_results(job) for job in _sweep_jobs(tmp_path, "restore_embedded_denoise"))
    assert failed["status"].startswith("failed: datamodule embedded:") and "batch_size=-1" in failed["status"]
    assert "\n" not in failed["status"]
    assert finished["status"] == "finished" and finished["global_step"] == 2
    summary = [line for line in printed.splitlines() if "jobs failed" in line]
    assert len(summary) == 1 and "1 of 2 jobs failed: job 0 (datamodule.batch_size=-1)" in summary[0]
    (sweep,) = (tmp_path / "logs" / "restore_embedded_denoise" / "multiruns").iterdir()
    table = (sweep / "aggregate.md").read_text()
    assert (
        "| datamodule.batch_size=-1 | 0 | 1 |" in table
        and "- job 0 (datamodule.batch_size=-1, seed 42): failed:" in table
    )


def test_cli_multirun_two_jobs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, printed = run_as_typed_printing(
        "-m", "experiment=restore_embedded_denoise", "trainer=smoke", *SMALL, "logger=none", "seed=1,2",
        cwd=tmp_path, capsys=capsys,
    )  # fmt: skip
    assert status == 0, printed[-3000:]
    jobs = [_results(job) for job in _sweep_jobs(tmp_path, "restore_embedded_denoise")]
    assert [job["seed"] for job in jobs] == [1, 2]
    assert all(job["status"] == "finished" for job in jobs)
    assert jobs[0]["val"] != jobs[1]["val"]
    assert "2 of 2 jobs finished" in printed
    # the two seeds form one group: n = 2, the mean of their test PSNRs, their parameter count
    (sweep,) = (tmp_path / "logs" / "restore_embedded_denoise" / "multiruns").iterdir()
    (row,) = [
        line for line in (sweep / "aggregate.md").read_text().splitlines() if line.startswith("| all jobs")
    ]
    mean = (jobs[0]["test"]["test/psnr"] + jobs[1]["test"]["test/psnr"]) / 2
    parameters = jobs[0]["parameters"]["trainable"]
    assert row.startswith(f"| all jobs | 2 | 0 | {parameters:,} | {mean:.2f} ± ") and parameters > 0


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
        "datamodule.eval_crop=64",  # which images each rank scores matters here, not their size
        "test=false",
        "seed=1,2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["logs"]
    for job_dir in _sweep_jobs(tmp_path, "restore_embedded_denoise"):
        results = _results(job_dir)
        assert results["world_size"] == 2 and results["global_step"] == 4 and results["status"] == "finished"
        assert (job_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran in this job's folder
        # The ranks score disjoint halves of the 4 validation images; rank 0 gathered all four grids.
        grids = sorted(
            path.name.split("_step")[0] for path in (job_dir / "images" / "val").glob("*_step0000004.png")
        )
        assert grids == ["camera", "chelsea", "coffee", "gravel"]
