"""Stage prompted_restore: the ConStyle prompter stays frozen, whole images are padded, per-type metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from restoration.archs.constyle import ConStyleEncoder
from restoration.errors import ConfigError
from restoration.guides.constyle import ConStylePrompter
from restoration.losses import L1Loss
from restoration.optim import WarmupCosineLR
from restoration.run import run
from restoration.stages.prompted_restore import PromptedRestoreStage

# Trainers built here write their grids under the working directory: keep them out of the checkout.
pytestmark = pytest.mark.usefixtures("in_tmp_dir")


# a tiny prompted network and tiny data keep a few training steps well under a second each
TINY = (
    "backbone=constyle_nafnet_tiny",
    "trainer=smoke",
    "max_steps=4",
    "val_every=2",
    "trainer.limit_val_batches=2",
    "datamodule.batch_size=2",
    "datamodule.crop_size=32",
)


@pytest.fixture(scope="module")
def prompter_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random prompter saved as a constyle_pretrain checkpoint, with BatchNorm statistics away from 0 / 1,
    so that eval mode (running statistics) and train mode (batch statistics) give different prompts."""
    torch.manual_seed(0)
    encoder = ConStyleEncoder(num_classes=None)
    for name, buffer in encoder.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(torch.randn_like(buffer) * 0.1)
        elif name.endswith("running_var"):
            buffer.copy_(torch.rand_like(buffer) + 0.5)
    path = tmp_path_factory.mktemp("prompter") / "prompter.ckpt"
    backbone = {"_target_": "restoration.archs.constyle.ConStyleEncoder", "num_classes": None}
    state = {f"net.{key}": value for key, value in encoder.state_dict().items()}
    torch.save({"state_dict": state, "config": {"backbone": backbone}}, path)
    return str(path)


class FrozenProbe(Callback):
    """Records, at every training batch, whether any module of the prompter was in train mode."""

    def __init__(self) -> None:
        self.train_mode_seen: list[bool] = []
        self.optimized: set[int] = set()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.optimized = {
            id(param)
            for optimizer in trainer.optimizers
            for group in optimizer.param_groups
            for param in group["params"]
        }

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.train_mode_seen.append(any(module.training for module in pl_module.guide.modules()))


def _fit(cfg, callback: Callback) -> PromptedRestoreStage:
    """Build the run of ``cfg`` as restoration.run does and train it for ``trainer.max_steps`` steps."""
    datamodule = instantiate(cfg.datamodule, degradation=instantiate(cfg.degradation))
    stage = instantiate(cfg.stage, net=instantiate(cfg.backbone), guide=instantiate(cfg.guide))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    before = {name: value.clone() for name, value in stage.guide.state_dict().items()}
    net_before = {name: value.clone() for name, value in stage.net.state_dict().items()}
    trainer.fit(stage, datamodule=datamodule)
    assert trainer.global_step == 3
    after = stage.guide.state_dict()
    assert before.keys() == after.keys() and any("running_mean" in name for name in before)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == list(before), "every parameter and buffer of the prompter is bit-identical"
    assert any(not torch.equal(value, stage.net.state_dict()[name]) for name, value in net_before.items())
    return stage


@pytest.mark.parametrize("mode", ["frozen", "official"])
def test_prompter_stays_frozen_during_training(mode: str, make_config, prompter_checkpoint: str) -> None:
    cfg = make_config(
        "experiment=constyle_allinone",
        *TINY,
        f"guide.checkpoint={prompter_checkpoint}",
        f"stage.prompter_mode={mode}",
    )
    probe = FrozenProbe()
    stage = _fit(cfg, probe)
    assert probe.train_mode_seen == [False, False, False]
    guide_parameters = {id(param) for param in stage.guide.parameters()}
    assert probe.optimized and not probe.optimized & guide_parameters
    assert probe.optimized == {id(param) for param in stage.net.parameters()}
    assert not any(param.requires_grad for param in stage.guide.parameters())
    # the EMA averages the restoration network alone, buffers included
    assert stage.ema is not None
    assert stage.ema.module.state_dict().keys() == stage.net.state_dict().keys()
    assert not any(name.startswith("guide.") for name in stage.ema.state_dict())


def test_official_mode_prompts_with_batch_statistics(make_config, prompter_checkpoint: str) -> None:
    official = _stage(make_config(*_composed(prompter_checkpoint), "stage.prompter_mode=official"))
    frozen = _stage(make_config(*_composed(prompter_checkpoint)))
    degraded = torch.rand(4, 3, 32, 32)
    eval_q1 = frozen.prompts(degraded, training=True).q1
    batch_q1 = official.prompts(degraded, training=True).q1
    # the same weights; only the BatchNorm statistics differ (running ones away from 0 / 1 in the fixture)
    assert torch.equal(official.prompts(degraded).q1, eval_q1)
    assert not torch.allclose(batch_q1, eval_q1, atol=1e-3)
    # batch statistics: q1 after BatchNorm1d + GELU, recomputed by hand from the head's pre-activation
    encoder = official.guide.encoder
    pooled = encoder.pool(encoder.stage4(encoder.stage3(encoder.stage2(encoder.stage1(degraded))))).flatten(1)
    q0 = torch.nn.functional.gelu(_batch_normalised(encoder.mlp1, pooled))
    assert torch.allclose(batch_q1, torch.nn.functional.gelu(_batch_normalised(encoder.mlp2, q0)), atol=1e-5)
    assert not any(module.training for module in official.guide.modules())
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        official.prompts(degraded[:1], training=True)


def _batch_normalised(head: torch.nn.Sequential, features: torch.Tensor) -> torch.Tensor:
    linear, norm = head[0], head[1]
    hidden = linear(features)
    mean, variance = hidden.mean(0), hidden.var(0, unbiased=False)
    return (hidden - mean) / torch.sqrt(variance + norm.eps) * norm.weight + norm.bias


def _composed(checkpoint: str) -> tuple[str, ...]:
    return ("experiment=constyle_allinone", *TINY, f"guide.checkpoint={checkpoint}")


def _stage(cfg) -> PromptedRestoreStage:
    return instantiate(cfg.stage, net=instantiate(cfg.backbone), guide=instantiate(cfg.guide))


def test_whole_images_are_padded_and_prompted_as_padded(make_config, prompter_checkpoint: str) -> None:
    stage = _stage(make_config(*_composed(prompter_checkpoint), "backbone=constyle_cnn_tiny"))
    assert stage.pad_multiple == stage.net.size_multiple == 8
    degraded = torch.rand(1, 3, 37, 45)
    restored = stage.restore(degraded)
    assert restored.shape == degraded.shape
    padded = torch.nn.functional.pad(degraded, (0, 3, 0, 3), mode="reflect")
    prompts = stage.guide.prompt(padded)
    expected = stage.eval_net(padded, prompts.q1, prompts.prompts)[..., :37, :45]
    assert torch.equal(restored, expected)
    # tiles: the prompts of each tile, not of the whole image
    stage.tile, stage.tile_overlap = 24, 8
    assert stage.restore(degraded).shape == degraded.shape


def test_training_crops_must_fit_the_network(make_config, prompter_checkpoint: str) -> None:
    stage = _stage(make_config(*_composed(prompter_checkpoint)))
    batch = {"lq": torch.rand(2, 3, 36, 36), "gt": torch.rand(2, 3, 36, 36)}
    with pytest.raises(ConfigError, match="not a multiple of the network's size multiple 8"):
        stage.training_step(batch, 0)


def test_stage_needs_a_prompter_and_a_known_mode(prompter_checkpoint: str) -> None:
    net = torch.nn.Identity()
    options = {"net": net, "loss": L1Loss(), "optimizer": torch.optim.AdamW, "ema_decay": None}
    with pytest.raises(ConfigError, match="set guide=constyle guide"):
        PromptedRestoreStage(**options)
    with pytest.raises(ConfigError, match="prompter_mode='train'"):
        PromptedRestoreStage(
            guide=ConStylePrompter(checkpoint=prompter_checkpoint), prompter_mode="train", **options
        )


def test_zero_prompts_feed_the_same_network_without_the_prompter(
    make_config, prompter_checkpoint: str
) -> None:
    """``stage.prompt_input=zeros``: the unprompted control with the same U-Net; the prompter never runs."""
    stage = _stage(make_config(*_composed(prompter_checkpoint), "stage.prompt_input=zeros"))
    with pytest.raises(ConfigError, match=r"stage\.prompt_input='none'; expected one of"):
        PromptedRestoreStage(net=stage.net, guide=stage.guide, loss=L1Loss(), optimizer=torch.optim.AdamW,
                             prompt_input="none")  # fmt: skip
    stage.guide.prompt = None  # any use of the prompter would fail
    degraded = torch.rand(2, 3, 32, 32)
    zeros = [
        torch.zeros(2, channels, 32 >> level, 32 >> level) for level, channels in ((1, 32), (2, 64), (3, 128))
    ]
    expected = stage.net(degraded, torch.zeros(2, 128), zeros)
    assert torch.equal(stage.run_network(stage.net, degraded), expected)
    stage.loss(stage.run_network(stage.net, degraded), degraded).backward()
    assert all(param.grad is not None for param in stage.net.parameters())


@pytest.mark.parametrize("backbone", ["constyle_cnn_tiny", "constyle_restormer_tiny", "constyle_maxim_tiny"])
def test_experiment_composes_with_every_prompted_backbone(
    backbone: str, make_config, prompter_checkpoint
) -> None:
    stage = _stage(make_config(*_composed(prompter_checkpoint), f"backbone={backbone}"))
    degraded = torch.rand(2, 3, stage.pad_multiple * 4, stage.pad_multiple * 4)
    loss = stage.loss(stage.run_network(stage.net, degraded), degraded)
    loss.backward()
    assert all(param.grad is not None for param in stage.net.parameters() if param.requires_grad)


@pytest.mark.slow
def test_allinone_run_logs_metrics_per_degradation_type(make_config, prompter_checkpoint: str) -> None:
    # whole embedded photos: the SSIMs of validation take most of the time
    cfg = make_config(*_composed(prompter_checkpoint), "test=false")
    run(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["status"] == "finished" and results["global_step"] == 4
    names = tuple(cfg.degradation.ops)
    # the types of the two validated images (degraded with the fixed val_seed)
    datamodule = instantiate(cfg.datamodule, degradation=instantiate(cfg.degradation))
    datamodule.setup("validate")
    types = {names[datamodule.datasets["val"][i]["type"]] for i in range(2)}
    grouped = {key.split("/")[1] for key in results["val"] if key.count("/") == 2}
    assert grouped == {"degraded", *types}
    for name in types:
        assert math.isfinite(results["val"][f"val/{name}/psnr"]) and math.isfinite(
            results["val"][f"val/{name}/ssim"]
        )


def test_schedule_holds_the_rate_then_anneals() -> None:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    # the official 243,312 + 460,320 steps, at 1/1000 scale
    schedule = WarmupCosineLR(optimizer, total_steps=704, hold=0.34579439252336447, min_lr=1e-6)
    assert schedule.cosine_start == 243
    rates = []
    for _ in range(704):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:244] == pytest.approx([3e-4] * 244, rel=1e-12) and rates[244] < rates[243]
    cosine = [
        1e-6 + (3e-4 - 1e-6) * 0.5 * (1 + math.cos(math.pi * (step - 243) / 461)) for step in range(243, 704)
    ]
    assert rates[243:] == pytest.approx(cosine, rel=1e-12)
    with pytest.raises(ConfigError, match="warmup \\+ hold < 1"):
        WarmupCosineLR(optimizer, total_steps=10, warmup=0.5, hold=0.5)
