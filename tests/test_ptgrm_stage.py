"""The PTG-RM stage: joint and frozen-target training, the frozen guide, the loss on both outputs, the
target's metrics beside the refined ones, checkpoints without the frozen towers, DDP. (The experiments'
smoke runs are in test_run.py.)"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from restoration.archs.ptgrm import PTGRM
from restoration.errors import ConfigError
from restoration.guides.base import Guide
from restoration.losses import CharbonnierLoss, VGGPerceptualLoss
from restoration.stages.ptgrm import PTGRMStage

from .test_losses_perceptual import save_random_vgg19

# Trainers built here write their grids under the working directory: keep them out of the checkout.
pytestmark = pytest.mark.usefixtures("in_tmp_dir")


TINY_GUIDE = {"_target_": "tests.test_ptgrm_stage.TinyGuide", "dim": 8}
# A few steps on small crops, one validation and test image.
SMOKE = (
    "trainer=smoke",
    "datamodule.batch_size=2",
    "datamodule.crop_size=64",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
)


class TinyGuide(Guide):
    """A random frozen guide: a strided conv and global pooling to ``dim`` L2-normalised features."""

    def __init__(self, *, dim: int = 8) -> None:
        super().__init__()
        self.dim = dim
        self.conv = nn.Conv2d(3, dim, 3, stride=2)
        self.register_buffer("scale", torch.ones(1))
        self.freeze()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.conv(images * self.scale).mean(dim=(2, 3)), dim=1)


def _config(make_config, *overrides: str):
    cfg = make_config(
        "stage=ptgrm",
        "backbone=snr_aware_tiny",
        "refiner=ptgrm_tiny",
        "degradation=lowlight",
        *SMOKE,
        *overrides,
    )
    with open_dict(cfg):
        cfg.guide = OmegaConf.create(TINY_GUIDE)
    return cfg


def _build(cfg) -> tuple[PTGRMStage, pl.LightningDataModule]:
    """The stage and datamodule of ``cfg``, built as ``restoration.run`` builds them."""
    stage = instantiate(
        cfg.stage,
        net=instantiate(cfg.backbone),
        guide=instantiate(cfg.guide),
        refiner=instantiate(cfg.refiner),
    )
    return stage, instantiate(cfg.datamodule, degradation=instantiate(cfg.degradation))


def _fit(stage: PTGRMStage, datamodule: pl.LightningDataModule, steps: int, validate: bool) -> pl.Trainer:
    """``steps`` training steps, then (``validate``) one validation image at the end."""
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, limit_val_batches=int(validate), val_check_interval=steps,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
    )  # fmt: skip
    trainer.fit(stage, datamodule=datamodule)
    return trainer


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _changed(module: nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, value in module.state_dict().items() if not torch.equal(value, before[name])]


def _optimized(trainer: pl.Trainer) -> set[int]:
    return {id(param) for group in trainer.optimizers[0].param_groups for param in group["params"]}


@pytest.mark.parametrize("train_target", ["joint", "frozen"])
def test_training_updates_what_it_should_and_never_the_guide(make_config, train_target: str) -> None:
    cfg = _config(make_config, f"stage.train_target={train_target}", "datamodule.crop_size=32")
    stage, datamodule = _build(cfg)
    target, refiner, guide = stage.net.target, stage.net.refiner, stage.guide
    before = {
        name: _snapshot(part) for name, part in (("target", target), ("refiner", refiner), ("guide", guide))
    }
    trainer = _fit(stage, datamodule, steps=2, validate=train_target == "joint")
    optimized = _optimized(trainer)
    assert _changed(guide, before["guide"]) == [] and not guide.training
    assert not any(param.requires_grad for param in guide.parameters())
    assert not optimized & {id(param) for param in guide.parameters()}
    assert {id(param) for param in refiner.parameters()} <= optimized
    assert len(_changed(refiner, before["refiner"])) > 0
    target_parameters = {id(param) for param in target.parameters()}
    if train_target == "joint":
        assert target_parameters <= optimized and len(_changed(target, before["target"])) > 0
        assert optimized == target_parameters | {id(param) for param in refiner.parameters()}
        # the gain of the module is visible: the target's scores beside the refined ones
        logged = set(trainer.callback_metrics)
        assert {"val/psnr", "val/ssim", "val/target/psnr", "val/target/ssim", "val/target/psnr_y"} <= logged
    else:
        assert not optimized & target_parameters and _changed(target, before["target"]) == []
        assert not target.training and stage.net.refiner.training  # Lightning's train() left it in eval


def test_loss_is_target_loss_plus_lambda_times_refined_loss() -> None:
    class Scale(nn.Module):
        def __init__(self, factor: float) -> None:
            super().__init__()
            self.factor = nn.Parameter(torch.tensor(factor))

    class Target(Scale):
        def forward(self, degraded: torch.Tensor) -> torch.Tensor:
            return degraded * self.factor

    class Refiner(Scale):
        osf_dim = 8

        def forward(
            self, target_out: torch.Tensor, degraded: torch.Tensor, osf: torch.Tensor
        ) -> torch.Tensor:
            return target_out + self.factor * osf.mean(dim=1).view(-1, 1, 1, 1)

    stage = PTGRMStage(
        net=Target(2.0), guide=TinyGuide(dim=8), refiner=Refiner(0.5), lambda_refined=0.7,
        loss=CharbonnierLoss(eps=1e-3, reduction="sum"), optimizer=torch.optim.Adam, ema_decay=None,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    degraded, clean = (
        torch.rand(2, 3, 8, 12, generator=generator),
        torch.rand(2, 3, 8, 12, generator=generator),
    )
    loss, loss_target, loss_refined = stage.losses(degraded, clean)
    target_out = 2.0 * degraded
    refined = target_out + 0.5 * stage.guide(degraded).mean(dim=1).view(-1, 1, 1, 1)
    expected_target = torch.sqrt((target_out - clean) ** 2 + 1e-6).sum()
    expected_refined = torch.sqrt((refined - clean) ** 2 + 1e-6).sum()
    torch.testing.assert_close(loss_target, expected_target)
    torch.testing.assert_close(loss_refined, expected_refined)
    torch.testing.assert_close(loss, expected_target + 0.7 * expected_refined)


def test_refiner_null_trains_the_target_alone_under_the_same_loss(make_config) -> None:
    """The control row of a refiner sweep: no module, the target's loss only, no target/ metrics, no guide."""
    cfg = _config(make_config, "datamodule.crop_size=32")
    with open_dict(cfg):
        cfg.refiner = None
    stage = instantiate(cfg.stage, net=instantiate(cfg.backbone), guide=instantiate(cfg.guide), refiner=None)
    target = stage.net.target
    degraded, clean = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    stage.guide.encode = None  # any use of the guide would fail
    loss, loss_target, loss_refined = stage.losses(degraded, clean)
    torch.testing.assert_close(loss, torch.sqrt((target(degraded) - clean) ** 2 + 1e-6).sum())
    assert loss_target is loss and float(loss_refined) == 0.0
    stage.eval()
    with torch.no_grad():
        restored, extras = stage.restore_for_evaluation(degraded[..., :30, :29])
    torch.testing.assert_close(
        restored, target(F.pad(degraded[..., :30, :29], (0, 3, 0, 2), "reflect"))[..., :30, :29]
    )
    assert extras == {} and stage.scored_outputs == ()
    with pytest.raises(ConfigError, match=r"refiner=none with stage.train_target=frozen leaves nothing"):
        PTGRMStage(net=nn.Identity(), guide=TinyGuide(), loss=nn.L1Loss(), optimizer=torch.optim.Adam,
                   train_target="frozen")  # fmt: skip


def test_perceptual_term_adds_the_weighted_official_vgg_loss(tmp_path: Path) -> None:
    save_random_vgg19(tmp_path / "vgg19.pth")
    stage = PTGRMStage(
        net=nn.Identity(), guide=TinyGuide(), refiner=PTGRM(osf_dim=8, width=8), loss=nn.L1Loss(),
        optimizer=torch.optim.Adam, perceptual_weight=0.1, vgg_weights=str(tmp_path / "vgg19.pth"),
    )  # fmt: skip
    restored, clean = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    # the official VGGLoss: unnormalised [0, 1] input, summed L1
    official = VGGPerceptualLoss(weights=str(tmp_path / "vgg19.pth"), normalize=False, reduction="sum")
    expected = F.l1_loss(restored, clean) + 0.1 * official(restored, clean)
    torch.testing.assert_close(stage.criterion(restored, clean), expected)
    assert "perceptual.slices.0.0.weight" not in stage.state_dict()


def test_osf_dim_mismatch_and_missing_parts_are_config_errors(make_config) -> None:
    configured = instantiate(_config(make_config, "refiner.osf_dim=16").refiner)
    with pytest.raises(
        ConfigError, match=r"refiner\.osf_dim=16 but the guide gives 8-d features; set refiner"
    ):
        PTGRMStage(net=nn.Identity(), guide=TinyGuide(), refiner=configured, loss=nn.L1Loss(),
                   optimizer=torch.optim.Adam)  # fmt: skip
    with pytest.raises(ConfigError, match=r"refiner\.osf_dim=32 but the guide gives 8-d"):
        PTGRMStage(net=nn.Identity(), guide=TinyGuide(), refiner=PTGRM(osf_dim=32, width=8), loss=nn.L1Loss(),
                   optimizer=torch.optim.Adam)  # fmt: skip
    with pytest.raises(ConfigError, match=r"needs a pre-trained guide"):
        PTGRMStage(net=nn.Identity(), refiner=PTGRM(osf_dim=8), loss=nn.L1Loss(), optimizer=torch.optim.Adam)


def test_perceptual_term_without_local_vgg_weights_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    with pytest.raises(ConfigError, match=rf"weights file {expected} not found \(put torchvision's"):
        PTGRMStage(net=nn.Identity(), guide=TinyGuide(), refiner=PTGRM(osf_dim=8, width=8), loss=nn.L1Loss(),
                   optimizer=torch.optim.Adam, perceptual_weight=0.1)  # fmt: skip


def test_evaluation_scores_refined_and_target_outputs_at_any_size(make_config) -> None:
    stage, _ = _build(_config(make_config))
    stage.eval()
    degraded = torch.rand(2, 3, 21, 27)
    with torch.no_grad():
        refined, extras = stage.restore_for_evaluation(degraded)
        padded = F.pad(degraded, (0, 5, 0, 11), mode="reflect")  # to 32×32: the target's multiple 16
        expected_refined, expected_target = stage.net(padded, stage.guide(degraded))
    assert stage.pad_multiple == 16 and refined.shape == extras["target"].shape == degraded.shape
    torch.testing.assert_close(refined, expected_refined[..., :21, :27])
    torch.testing.assert_close(extras["target"], expected_target[..., :21, :27])
    stage.tile, stage.tile_overlap = 16, 4
    with torch.no_grad():
        tiled, tiled_extras = stage.restore_for_evaluation(degraded)
    assert tiled.shape == tiled_extras["target"].shape == degraded.shape


def test_checkpoints_leave_out_the_frozen_guide_and_load_back(make_config) -> None:
    stage, _ = _build(_config(make_config))
    state = stage.state_dict()
    assert not [name for name in state if name.startswith("guide.")]
    assert any(name.startswith("net.target.") for name in state) and any(
        name.startswith("net.refiner.") for name in state
    )
    fresh, _ = _build(_config(make_config))
    fresh.load_state_dict(state)  # strict: the guide is the one built from the config
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, state[name])


def test_ddp_reduces_and_broadcasts_only_the_trained_network(make_config, tmp_path: Path) -> None:
    stage, _ = _build(_config(make_config, "stage.train_target=frozen"))
    stage.setup("fit")  # as Lightning does before wrapping the module in DDP
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(stage)
        reduced = {id(param) for param in ddp._build_params_for_reducer()[0]}
        broadcast = {id(buffer) for buffer in ddp.modules_buffers}
    finally:
        dist.destroy_process_group()
    assert reduced == {id(param) for param in stage.net.refiner.parameters()}
    assert not broadcast & {id(buffer) for buffer in stage.guide.buffers()}
