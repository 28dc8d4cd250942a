"""Losses, the LR schedule, the U-Net, EMA, frozen guides and the stage's divergence check."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from restoration.archs.unet import UNet
from restoration.errors import ConfigError
from restoration.guides.base import Guide
from restoration.losses import CharbonnierLoss, L1Loss, PSNRLoss
from restoration.optim import WarmupCosineLR
from restoration.stages.chassis import EMA
from restoration.stages.restore import RestoreStage
from restoration.visualize import comparison_grid


def test_losses_by_hand() -> None:
    restored = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([0.1, 0.3]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    assert L1Loss()(restored, target).item() == pytest.approx(0.2)
    eps = 1e-3
    expected = (math.sqrt(0.01 + eps**2) + math.sqrt(0.09 + eps**2)) / 2
    assert CharbonnierLoss(eps=eps)(restored, target).item() == pytest.approx(expected)
    assert CharbonnierLoss(eps=eps, reduction="sum")(restored, target).item() == pytest.approx(expected * 8)
    # PSNR loss = minus the mean per-image PSNR (MSEs 0.01 and 0.09: 20 dB and 10.46 dB)
    expected_psnr = (10 * math.log10(1 / (0.01 + 1e-8)) + 10 * math.log10(1 / (0.09 + 1e-8))) / 2
    assert PSNRLoss()(restored, target).item() == pytest.approx(-expected_psnr, rel=1e-5)
    with pytest.raises(ValueError, match="reduction='max'"):
        CharbonnierLoss(reduction="max")


def test_warmup_cosine_schedule() -> None:
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = WarmupCosineLR(optimizer, total_steps=100, warmup=0.1, min_lr=0.01)
    rates = []
    for _ in range(120):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert rates[55] == pytest.approx(0.01 + 0.99 * 0.5)  # half-way through the cosine
    assert rates[100] == pytest.approx(0.01) and rates[119] == pytest.approx(0.01)
    resumed = WarmupCosineLR(torch.optim.SGD([param], lr=1.0), total_steps=100, warmup=0.1, min_lr=0.01)
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.get_last_lr() == scheduler.get_last_lr()
    with pytest.raises(ConfigError, match="warm-up fraction"):
        WarmupCosineLR(optimizer, total_steps=10, warmup=1.0)


@pytest.mark.parametrize("upscale", [1, 2, 3])
def test_unet_any_size_and_scale(upscale: int) -> None:
    net = UNet(width=8, levels=3, blocks=1, upscale=upscale)
    degraded = torch.rand(2, 3, 37, 53)
    restored = net(degraded)
    assert restored.shape == (2, 3, 37 * upscale, 53 * upscale)


def test_unet_gradients_reach_every_parameter() -> None:
    net = UNet(width=8, levels=3, blocks=1)
    net(torch.rand(1, 3, 16, 16)).square().mean().backward()
    assert all(param.grad is not None and param.grad.abs().sum() > 0 for param in net.parameters())


def test_ema_follows_the_warmup_then_the_decay() -> None:
    net = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(net.weight)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)  # decay min(0.9, 1/10) = 0.1
    assert ema.module.weight.item() == pytest.approx(0.9)
    for _ in range(100):
        ema.update(net)
    assert ema.module.weight.item() == pytest.approx(1.0, abs=1e-4)
    assert not any(param.requires_grad for param in ema.module.parameters())
    constant = EMA(nn.Linear(1, 1, bias=False), decay=0.9, warmup=False)
    nn.init.zeros_(constant.module.weight)
    constant.update(net)  # BasicSR: 0.9 · 0 + 0.1 · 1 from the first step
    assert constant.module.weight.item() == pytest.approx(0.1)


def test_ema_averages_buffers_too() -> None:
    net = nn.BatchNorm1d(2)
    ema = EMA(net, decay=0.5)
    net.running_mean.fill_(2.0)
    net.num_batches_tracked.fill_(7)
    for _ in range(20):
        ema.update(net)
    assert torch.allclose(ema.module.running_mean, torch.full((2,), 2.0), atol=1e-4)
    assert int(ema.module.num_batches_tracked) == 7


class _TinyGuide(Guide):
    dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.norm = nn.BatchNorm1d(4)
        self.freeze()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(images.mean(dim=(2, 3))))


def test_guides_stay_frozen() -> None:
    guide = _TinyGuide()
    guide.train()
    assert not guide.training and not guide.norm.training
    assert not any(param.requires_grad for param in guide.parameters())
    running_mean = guide.norm.running_mean.clone()
    features = guide(torch.rand(3, 3, 8, 8))
    assert features.shape == (3, 4) and not features.requires_grad
    assert torch.equal(guide.norm.running_mean, running_mean)  # eval-mode BatchNorm: statistics untouched


def test_stage_optimises_only_the_network() -> None:
    stage = RestoreStage(
        net=UNet(width=8, levels=2, blocks=1), loss=L1Loss(), optimizer=torch.optim.AdamW, ema_decay=0.99
    )
    optimizer = stage.configure_optimizers()["optimizer"]
    optimised = {id(param) for group in optimizer.param_groups for param in group["params"]}
    assert optimised == {id(param) for param in stage.net.parameters()}
    assert not optimised & {id(param) for param in stage.ema.parameters()}


def test_divergence_is_noted_on_the_device_and_read_only_when_asked() -> None:
    stage = RestoreStage(net=UNet(width=8, levels=2, blocks=1), loss=L1Loss(), optimizer=torch.optim.AdamW)
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision)
    trainer = SimpleNamespace(strategy=strategy, should_stop=False, global_step=7)
    stage.__dict__["_trainer"] = trainer  # what Lightning attaches; enough for checked_loss
    loss = torch.tensor(0.5)
    assert stage.checked_loss(loss) is loss and not stage.detect_divergence() and not trainer.should_stop
    trainer.global_step = 8
    infinite = torch.tensor(float("inf"))
    assert stage.checked_loss(infinite) is infinite  # the step goes on: nothing was read
    trainer.global_step = 9
    stage.checked_loss(torch.tensor(float("nan")))  # a later bad step does not replace the first
    assert not trainer.should_stop and stage.diverged_at is None
    assert stage.detect_divergence()
    assert trainer.should_stop and stage.diverged_at == (8, float("inf"))


def test_checkpoint_ranking_survives_a_new_run_folder(tmp_path) -> None:
    from restoration.callbacks import Checkpoint

    earlier = Checkpoint(dirpath=str(tmp_path / "first"), monitor="val/psnr", mode="max")
    earlier.best_model_score = torch.tensor(31.5)
    earlier.best_model_path = str(tmp_path / "first" / "best.ckpt")
    earlier.best_k_models = {earlier.best_model_path: earlier.best_model_score}
    earlier.kth_best_model_path, earlier.kth_value = earlier.best_model_path, earlier.best_model_score
    resumed = Checkpoint(dirpath=str(tmp_path / "second"), monitor="val/psnr", mode="max")
    resumed.load_state_dict(earlier.state_dict())
    assert resumed.best_model_score == 31.5 and resumed.best_model_path == earlier.best_model_path
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    trainer = SimpleNamespace(strategy=strategy)
    assert not resumed.check_monitor_top_k(trainer, torch.tensor(30.0))  # a worse score is not a new best
    assert resumed.check_monitor_top_k(trainer, torch.tensor(32.0))


def test_comparison_grid_enlarges_small_inputs() -> None:
    small, large = torch.zeros(3, 8, 10), torch.ones(3, 16, 20)
    grid = comparison_grid([small, large, large], ["a", "b", "c"])
    assert grid.dtype.name == "uint8" and grid.shape[2] == 3
    assert grid.shape[1] == 3 * 20 + 2 * 4  # three 20-px panels and two gaps
