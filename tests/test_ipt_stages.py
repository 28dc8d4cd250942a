"""IPT pre-training and fine-tuning: the contrastive loss, the per-step task draw (also across DDP ranks),
gradients of the drawn task only, the pre-train → fine-tune hand-off, tiled evaluation and the experiments."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from restoration.archs.ipt import IPT_TASKS, TASK_SCALES
from restoration.data.degradations import TaskPerStep
from restoration.errors import ConfigError
from restoration.losses import L1Loss, PatchContrastiveLoss
from restoration.run import build_stage, run
from restoration.stages.ipt_pretrain import IPTPretrainStage, IPTTiling
from restoration.tiling import ipt_tiled_forward

from .conftest import CLI_ENV, EXPERIMENTS, ROOT

# With trainer=smoke, these make every ipt_* experiment a CPU smoke run: the tiny six-task IPT, two images
# per batch (the contrastive loss needs two), one validation and one test image tiled with the fast protocol.
SMALL = ("backbone=ipt_tiny", "datamodule.batch_size=2", "stage.tiling.protocol=fast")
# 4 steps, validation every 2, on the centre 120² of the first photo: several 48² tiles, so the tiling runs
# (a whole photo under the 6 tasks took 50 s per validation)
SMOKE = ("trainer=smoke", *SMALL, "max_steps=4", "val_every=2", "datamodule.eval_crop=120")
FINETUNE_EXPERIMENTS = [name for name in EXPERIMENTS if name.startswith("ipt_finetune_")]
METRICS = ("psnr", "ssim", "psnr_y", "ssim_y")


def _results(output_dir: Path) -> dict[str, Any]:
    return json.loads((output_dir / "results.json").read_text())


def _stage(cfg) -> pl.LightningModule:
    """The configured stage, built as ``restoration.run`` builds it."""
    return build_stage(cfg)


class GradientProbe(Callback):
    """Records, per step, the drawn task and the heads/tails holding a gradient when the optimizer steps, and
    which tasks' heads and tails ended training bit-for-bit unchanged; writes ``<path>/rank<r>.json``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.steps: list[dict[str, Any]] = []
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = {name: value.clone() for name, value in pl_module.net.state_dict().items()}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        def with_gradient(modules: torch.nn.ModuleList) -> list[int]:
            return [i for i, part in enumerate(modules) if any(p.grad is not None for p in part.parameters())]

        net = pl_module.net
        self.steps.append(
            {"task": pl_module.last_task, "heads": with_gradient(net.head), "tails": with_gradient(net.tail)}
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = pl_module.net.state_dict()
        unchanged = [
            index
            for index in range(len(pl_module.net.tasks))
            if all(
                torch.equal(value, self.initial[name])
                for name, value in state.items()
                if name.startswith((f"head.{index}.", f"tail.{index}."))
            )
        ]
        self.path.mkdir(parents=True, exist_ok=True)
        record = {"steps": self.steps, "unchanged": unchanged}
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def _probe(path: Path) -> tuple[str, str]:
    return (f"+callbacks.probe._target_={__name__}.GradientProbe", f"+callbacks.probe.path={path}")


def _check_probe(record: dict[str, Any]) -> None:
    """Only the drawn task's head and tail get a gradient; the heads and tails never drawn do not move."""
    drawn = set()
    for step in record["steps"]:
        index = IPT_TASKS.index(step["task"])
        assert step["heads"] == step["tails"] == [index]
        drawn.add(index)
    assert record["unchanged"] == sorted(set(range(len(IPT_TASKS))) - drawn)
    assert record["unchanged"], "a test of the untouched heads needs a task that was not drawn"


# ---- the patch-contrastive loss ------------------------------------------------------------------


def test_patch_contrastive_loss_by_hand() -> None:
    # Two images of two tokens, parallel within an image and orthogonal between them: every anchor has one
    # positive (similarity 1) and two negatives (0): loss = -(1/t - log(e^(1/t) + 2)).
    tokens = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[0.0, 3.0], [0.0, 1.0]]])
    loss = PatchContrastiveLoss(temperature=1.0, base_temperature=1.0)(tokens)
    assert loss.item() == pytest.approx(math.log(math.e + 2) - 1)
    sharper = PatchContrastiveLoss(temperature=0.5, base_temperature=0.5)(tokens)
    assert sharper.item() == pytest.approx(math.log(math.exp(2) + 2) - 2)
    # temperature / base_temperature scales the loss (SupCon)
    scaled = PatchContrastiveLoss(temperature=1.0, base_temperature=2.0)(tokens)
    assert scaled.item() == pytest.approx(loss.item() / 2)
    with pytest.raises(ValueError, match="N >= 2 images"):
        PatchContrastiveLoss()(tokens[:1])


def test_patch_contrastive_loss_is_lower_for_matched_than_shuffled_tokens() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 1, 32, generator=generator)
    matched = centres + 0.3 * torch.randn(4, 16, 32, generator=generator)
    shuffled = matched.flatten(0, 1)[torch.randperm(64, generator=generator)].view(4, 16, 32)
    loss = PatchContrastiveLoss()
    assert loss(matched).item() < loss(shuffled).item() - 1.0
    # float32 under bf16 autocast too (logits scaled by 1/0.07 would lose the difference)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss(matched).dtype == torch.float32
        assert loss(matched).item() == pytest.approx(loss(matched.float()).item(), rel=1e-6)


# ---- the pre-training stage ----------------------------------------------------------------------


def test_task_draw_is_a_function_of_seed_and_step(make_config) -> None:
    tasks = instantiate(make_config("experiment=ipt_pretrain", *SMOKE).degradation)
    assert isinstance(tasks, TaskPerStep) and tasks.names == IPT_TASKS and tasks.crop_size == 192
    draws = [tasks.task_at(0, step) for step in range(600)]
    assert draws == [tasks.task_at(0, step) for step in range(600)]  # another process, a resumed run
    assert draws != [tasks.task_at(7, step) for step in range(600)]
    counts = [draws.count(task) for task in range(len(IPT_TASKS))]
    assert min(counts) > 70 and max(counts) < 130  # uniform: 100 each


def test_every_rank_and_micro_batch_of_a_step_reads_the_step_of_its_task(make_config) -> None:
    """The datamodule maps a batch's stream position to its optimizer step: 2 ranks × 2 micro-batches."""
    cfg = make_config("experiment=ipt_pretrain", *SMOKE)
    datamodule = instantiate(cfg.datamodule, degradation=instantiate(cfg.degradation))
    world_size, accumulate, batch = 2, 2, datamodule.batch_size
    datamodule.trainer = SimpleNamespace(world_size=world_size, accumulate_grad_batches=accumulate)
    for step in range(5):
        for micro in range(accumulate):
            for rank in range(world_size):
                position = ((step * accumulate + micro) * world_size + rank) * batch
                assert datamodule.optimizer_step_of(position) == step


def test_the_data_makes_the_task_input_and_target_of_each_step(make_config) -> None:
    cfg = make_config("experiment=ipt_pretrain", *SMOKE)
    datamodule = instantiate(cfg.datamodule, degradation=instantiate(cfg.degradation))
    clean = torch.rand(2, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    for step in range(8):
        batch = {"gt": clean, "index": [step * 2, step * 2 + 1], "label": torch.full((2,), -1)}
        batch = datamodule.on_after_batch_transfer(batch, 0)
        scale = TASK_SCALES[batch["task"]]
        assert batch["task"] == IPT_TASKS[datamodule.degradation.task_at(cfg.seed, step)]
        assert batch["lq"].shape == (2, 3, 48, 48) and batch["gt"].shape == (2, 3, 48 * scale, 48 * scale)
        assert batch["type"].tolist() == [IPT_TASKS.index(batch["task"])] * 2


def test_pretrain_config_errors(make_config) -> None:
    cfg = make_config("experiment=ipt_pretrain", *SMOKE)
    tasks = instantiate(cfg.degradation)
    stage = _stage(cfg)
    ops = dict(zip(tasks.names, tasks.ops, strict=True))
    without_rain = TaskPerStep(ops={task: op for task, op in ops.items() if task != "derain"})
    with pytest.raises(ConfigError, match=r"degradation.ops has the tasks .* but the IPT backbone has"):
        stage.check_tasks(without_rain)
    with pytest.raises(ConfigError, match=r"sr_x2 down-samples by 3 but task sr_x2 upscales by 2"):
        stage.check_tasks(TaskPerStep(ops={**ops, "sr_x2": ops["sr_x3"]}))
    with pytest.raises(ConfigError, match=r"set degradation=ipt_tasks"):
        stage.check_tasks(ops["sr_x2"])
    with pytest.raises(ConfigError, match="protocol='exact'"):
        IPTTiling(protocol="exact")
    with pytest.raises(ConfigError, match="set protocol=fast"):
        IPTTiling(overlap=10)


@pytest.mark.parametrize("pixel_scale", [None, 1])
def test_pretrain_loss_is_pixel_scale_times_l1_plus_a_tenth_of_the_contrastive_term(
    pixel_scale: int | None, make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default is MindSpore's balance: L1 on the 0-255 scale (255 × L1 on [0, 1]) + 0.1 × contrastive."""
    overrides = () if pixel_scale is None else (f"stage.pixel_scale={pixel_scale}",)
    cfg = make_config("experiment=ipt_pretrain", *SMOKE, *overrides)
    stage = _stage(cfg)
    expected_scale = 255 if pixel_scale is None else pixel_scale
    assert cfg.stage.pixel_scale == stage.pixel_scale == expected_scale
    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(stage, "log", lambda name, value, **_: logged.__setitem__(name, value))
    monkeypatch.setattr(stage, "log_dict", lambda values, **_: logged.update(values))
    monkeypatch.setattr(stage, "checked_loss", lambda loss: loss)
    clean = torch.rand(2, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    batch = {"gt": clean, "index": [0, 1], "label": torch.full((2,), -1)}
    batch = instantiate(cfg.datamodule, degradation=instantiate(cfg.degradation)).on_after_batch_transfer(
        batch, 0
    )
    with torch.no_grad():
        loss = stage.training_step(batch, 0)
        # the parts, computed here from the same batch and network
        target = batch["gt"]
        restored, tokens = stage.net(batch["lq"], batch["task"], return_tokens=True)
        l1 = (restored - target).abs().mean()
        contrastive = PatchContrastiveLoss(temperature=0.07, base_temperature=0.07)(tokens)
    assert loss.item() == pytest.approx(expected_scale * l1.item() + 0.1 * contrastive.item(), rel=1e-5)
    assert logged["train/pixel"].item() == pytest.approx(expected_scale * l1.item(), rel=1e-5)
    assert logged["train/contrastive"].item() == pytest.approx(contrastive.item(), rel=1e-5)
    with pytest.raises(ConfigError, match=r"stage.pixel_scale=0"):
        IPTPretrainStage(
            net=stage.net,
            loss=L1Loss(),
            contrastive=None,
            optimizer=torch.optim.Adam,
            pixel_scale=0,
        )


def test_pretrain_with_small_crops_says_which_crop_size(make_config) -> None:
    cfg = make_config("experiment=ipt_pretrain", *SMOKE, "datamodule.crop_size=40")
    with pytest.raises(ConfigError, match=r"crop_size=40 but the tasks .* set datamodule.crop_size=192"):
        run(cfg)


class _PlainDDP(DistributedDataParallel):
    """Stands for a model wrapped by Lightning's plain ``ddp`` strategy (no process group needed)."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.find_unused_parameters = False


def test_pretrain_stops_plain_ddp_with_the_strategy_to_use(make_config) -> None:
    stage = _stage(make_config("experiment=ipt_pretrain", *SMOKE))
    stage.trainer = SimpleNamespace(strategy=SimpleNamespace(model=_PlainDDP()))
    with pytest.raises(ConfigError, match=r"trainer\.strategy=ddp_find_unused_parameters_true"):
        stage.on_fit_start()


@pytest.mark.slow
def test_pretrain_runs_then_finetunes_from_its_checkpoint(make_config, tmp_path: Path) -> None:
    """The smoke pre-training: results, gradients of the drawn task only, and the hand-off to fine-tuning."""
    cfg = make_config("experiment=ipt_pretrain", *SMOKE, *_probe(tmp_path / "probe"))
    output_dir = Path(cfg.paths.output_dir)
    value = run(cfg)
    results = _results(output_dir)
    assert results["status"] == "finished" and results["global_step"] == 4
    assert value == pytest.approx(results["best"]["value"])
    per_task = {f"val/{task}/{kind}{m}" for task in IPT_TASKS for kind in ("", "degraded/") for m in METRICS}
    means = {f"val/{kind}{m}" for kind in ("", "degraded/") for m in METRICS}
    assert set(results["val"]) == per_task | means
    assert all(math.isfinite(number) for number in results["val"].values())
    # one image, the same for every task: the overall metric is the mean over the tasks
    for metric in METRICS:
        mean = sum(results["val"][f"val/{task}/{metric}"] for task in IPT_TASKS) / len(IPT_TASKS)
        assert results["val"][f"val/{metric}"] == pytest.approx(mean)
    assert set(results["test"]) >= {f"test/{task}/psnr_y" for task in IPT_TASKS}
    grids = sorted(path.name for path in (output_dir / "images" / "val").glob("*_step0000004.png"))
    assert grids == sorted(f"chelsea_{task}_step0000004.png" for task in IPT_TASKS)
    _check_probe(json.loads((tmp_path / "probe" / "rank0.json").read_text()))

    # fine-tuning keeps the chosen task's head, tail and task-embedding row bit for bit
    checkpoint = output_dir / "checkpoints" / "last.ckpt"
    pretrained = {
        name.removeprefix("net."): value
        for name, value in torch.load(checkpoint, weights_only=True)["state_dict"].items()
        if name.startswith("net.")
    }
    for index, task in enumerate(IPT_TASKS):
        stage = _stage(
            make_config(f"experiment=ipt_finetune_{task}", *SMOKE, f"backbone_weights.path={checkpoint}")
        )
        _assert_task_taken_over(stage.net.state_dict(), pretrained, index)


def _assert_task_taken_over(
    single: dict[str, torch.Tensor], pretrained: dict[str, torch.Tensor], index: int
) -> None:
    """``single`` holds exactly task ``index``'s head, tail and task-embedding row and the shared body."""
    for name, value in single.items():
        source = name.replace(".0.", f".{index}.", 1) if name.startswith(("head.", "tail.")) else name
        expected = pretrained[source]
        if name == "body.query_embed.weight":
            expected = expected[index : index + 1]
        assert torch.equal(value, expected), name
    assert not any(name.startswith(("head.1.", "tail.1.")) for name in single)


def test_finetune_from_an_official_state_dict(make_config, tmp_path: Path) -> None:
    # the official releases are bare state dicts saved with torch.save: IPT_pretrain.pt with six tasks...
    official = tmp_path / "IPT_pretrain.pt"
    cfg = make_config("experiment=ipt_finetune_derain", *SMOKE, f"backbone_weights.path={official}")
    net = instantiate(cfg.backbone)
    torch.save(net.state_dict(), official)
    stage = _stage(cfg)
    assert stage.net.tasks == ("derain",)
    _assert_task_taken_over(stage.net.state_dict(), net.state_dict(), IPT_TASKS.index("derain"))
    # ...and the fine-tuned single-task models, loaded into the matching single-task backbone
    released = tmp_path / "IPT_x2.pt"
    single = ("experiment=ipt_finetune_sr_x2", *SMOKE, f"backbone_weights.path={released}")
    cfg = make_config(*single, "backbone.tasks=[sr_x2]")
    net = instantiate(cfg.backbone)
    torch.save(net.state_dict(), released)
    _assert_task_taken_over(_stage(cfg).net.state_dict(), net.state_dict(), 0)
    with pytest.raises(ConfigError, match=r"with the wrong shape: body.query_embed.weight \(1, 36864\)"):
        _stage(make_config(*single))  # single-task weights, six-task backbone


def test_finetune_prefers_the_ema_weights_of_our_checkpoints(make_config, tmp_path: Path) -> None:
    checkpoint = tmp_path / "pretrain.ckpt"
    cfg = make_config("experiment=ipt_finetune_sr_x4", *SMOKE, f"backbone_weights.path={checkpoint}")
    trained, averaged = instantiate(cfg.backbone), instantiate(cfg.backbone)
    state = {f"net.{k}": v for k, v in trained.state_dict().items()}
    state |= {f"ema.module.{k}": v for k, v in averaged.state_dict().items()}
    torch.save({"state_dict": state | {"ema.num_updates": torch.tensor(3)}, "global_step": 3}, checkpoint)
    stage = _stage(cfg)
    _assert_task_taken_over(stage.net.state_dict(), averaged.state_dict(), IPT_TASKS.index("sr_x4"))


def test_finetune_without_weights_warns_once(make_config, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        stage = _stage(make_config("experiment=ipt_finetune_denoise_50", *SMOKE))
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no backbone_weights.path" in warnings[0].getMessage()
    assert stage.net.tasks == ("denoise_50",) and stage.metrics["val"].crop_border == 0


def test_finetune_restores_whole_images_through_the_tiling(make_config) -> None:
    stage = _stage(make_config("experiment=ipt_finetune_sr_x2", *SMOKE, "stage.tiling.protocol=official"))
    assert stage.metrics["val"].crop_border == 2  # the official protocol's SR border
    net = stage.eval_net.eval()
    with torch.inference_mode():
        degraded = torch.rand(1, 3, 61, 75)
        restored = stage.restore(degraded)
        assert restored.shape == (1, 3, 122, 150)
        assert torch.equal(restored, ipt_tiled_forward(net, degraded, scale=2, protocol="official"))
        assert stage.restore(torch.rand(2, 3, 30, 52)).shape == (2, 3, 60, 104)  # padded up to 48


@pytest.mark.parametrize("experiment", FINETUNE_EXPERIMENTS)
def test_finetune_experiment_runs_with_smoke_overrides(experiment: str, make_config) -> None:
    cfg = make_config(f"experiment={experiment}", *SMOKE)
    output_dir = Path(cfg.paths.output_dir)
    value = run(cfg)
    results = _results(output_dir)
    assert results["experiment"] == experiment and results["status"] == "finished"
    assert results["global_step"] == 4 and value == pytest.approx(results["best"]["value"])
    expected = {f"val/{m}" for m in METRICS} | {f"val/degraded/{m}" for m in METRICS}
    assert set(results["val"]) == expected
    assert all(math.isfinite(number) for number in results["val"].values())
    # validation restored a 120² crop of the photo through the tiling (the body takes 48×48 only)
    grid = output_dir / "images" / "val" / "chelsea_step0000004.png"
    assert grid.is_file()


def test_finetune_with_the_wrong_crop_size_says_which_one(make_config) -> None:
    cfg = make_config("experiment=ipt_finetune_sr_x2", *SMOKE, "datamodule.crop_size=64")
    with pytest.raises(ConfigError, match=r"set datamodule.crop_size=96"):
        run(cfg)


# ---- DDP -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_ranks_draw_the_same_task_every_step(tmp_path: Path) -> None:
    """Two gloo processes: the same task per step on both ranks, only its head and tail get gradients."""
    probe = tmp_path / "probe"
    command = [
        sys.executable, "-m", "restoration.run", "experiment=ipt_pretrain", *SMALL,
        "trainer=ddp_cpu", "trainer.strategy=ddp_find_unused_parameters_true", "trainer.max_steps=4",
        "trainer.val_check_interval=2", "+trainer.limit_val_batches=1", "datamodule.eval_crop=96",
        "test=false", "logger=none",
        *_probe(probe),
        f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    # the ranks import this file's GradientProbe
    paths = [str(ROOT), CLI_ENV.get("PYTHONPATH", "")]
    environment = {**CLI_ENV, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}
    result = subprocess.run(
        command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert _results(tmp_path / "run")["world_size"] == 2
    ranks = [json.loads((probe / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1]
    _check_probe(ranks[0])
    assert len({step["task"] for step in ranks[0]["steps"]}) > 1
