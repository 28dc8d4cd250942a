"""Every config group option composes; experiment files follow the conventions; derived values are right."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from lightning.pytorch import Trainer
from omegaconf import OmegaConf

from restoration.errors import ConfigError
from restoration.run import apply_smoke, build_backbone

from .conftest import CONF

GROUPS = (
    "backbone",
    "callbacks",
    "datamodule",
    "debug",
    "degradation",
    "guide",
    "hparams_search",
    "logger",
    "refiner",
    "stage",
    "trainer",
)


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "option"),
    [(group, option) for group in GROUPS for option in _options(group) if option != "base"],
)
def test_option_composes_and_resolves(group: str, option: str, make_config) -> None:
    overrides = [f"{group}={option}"]
    if option == "mixed_paired":  # one root per task
        tasks = OmegaConf.load(CONF / "datamodule" / "mixed_paired.yaml").tasks
        overrides += [f"datamodule.tasks.{task}.root=/data/{task}" for task in tasks]
    elif group == "datamodule" and option != "embedded":
        overrides.append("datamodule.root=/data")
    cfg = make_config(*overrides)
    node = cfg.get(group)  # debug options are global packages: no node of their own
    if OmegaConf.is_config(node):
        OmegaConf.to_container(node, resolve=True)  # every interpolation resolves
    assert cfg.hydra.runtime.choices[group] == option


@pytest.mark.parametrize("option", ["default", "cpu", "smoke", "ddp_cpu"])
def test_cpu_trainers_instantiate(option: str, make_config) -> None:
    cfg = make_config(f"trainer={option}")
    apply_smoke(cfg)  # what restoration.run does first: the smoke node is no Trainer argument
    trainer = instantiate(cfg.trainer)
    assert isinstance(trainer, Trainer)
    assert trainer.max_steps == (2 if option == "smoke" else 20000) == cfg.max_steps


@pytest.mark.parametrize("option", ["csv", "tensorboard", "wandb"])
def test_loggers_instantiate_offline(option: str, make_config) -> None:
    cfg = make_config(f"logger={option}")
    (logger,) = [instantiate(node) for node in cfg.logger.values()]
    assert (
        type(logger).__name__
        == {"csv": "CSVLogger", "tensorboard": "TensorBoardLogger", "wandb": "WandbLogger"}[option]
    )


def test_experiments_are_global_packages() -> None:
    for path in (CONF / "experiment").glob("*.yaml"):
        assert path.read_text().startswith("# @package _global_"), path.name


def test_smoke_trainer_shortens_any_experiment(make_config) -> None:
    cfg = make_config("experiment=ptgrm_lowlight", "trainer=smoke")
    apply_smoke(cfg)
    assert "smoke" not in cfg.trainer
    assert (
        cfg.trainer.max_steps == 2
        and cfg.stage.scheduler.total_steps == 2
        and cfg.trainer.val_check_interval == 1
    )
    assert cfg.datamodule.batch_size == 2 and cfg.datamodule.eval_crop == 48
    assert cfg.datamodule.crop_size == 256 and cfg.backbone._target_.endswith("SNRAware")  # the recipe stays
    # what the command line gives wins over the caps
    cfg = make_config(
        "experiment=ptgrm_lowlight", "trainer=smoke", "max_steps=7", "datamodule.eval_crop=null"
    )
    apply_smoke(cfg)
    assert (
        cfg.trainer.max_steps == 7
        and cfg.trainer.val_check_interval == 1
        and cfg.datamodule.eval_crop is None
    )
    cfg = make_config("experiment=restore_embedded_denoise")
    apply_smoke(cfg)
    assert cfg.trainer.max_steps == cfg.max_steps == 20000 and cfg.datamodule.eval_crop is None


@pytest.mark.parametrize(
    ("overrides", "scale"),
    [
        ((), 1),
        (("degradation=bicubic_x3",), 3),
        (("experiment=restore_embedded_sr_x2",), 2),
        (("degradation=lowlight",), 1),
        (("datamodule=div2k", "datamodule.root=/data"), 2),
        (("datamodule=div2k", "datamodule.root=/data", "datamodule.train.scale=4"), 4),
        (("datamodule=set5", "datamodule.root=/data", "datamodule.val.scale=3"), 3),
    ],
)
def test_backbone_upscale_follows_the_data(overrides: tuple[str, ...], scale: int, make_config) -> None:
    assert make_config(*overrides).backbone.upscale == scale


def test_div2k_val_scale_follows_train_scale(make_config) -> None:
    cfg = make_config("datamodule=div2k", "datamodule.root=/data", "datamodule.train.scale=3")
    assert cfg.datamodule.val.lq_dir == "/data/DIV2K_valid_LR_bicubic/X3"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ("backbone=nafnet_tiny", "+backbone.enc_blk_nums=[1,1]"),
            r"^backbone.enc_blk_nums: not an argument of restoration.archs.nafnet.NAFNet; expected one of "
            r"\['image_channels', 'width', 'encoder_blocks'",
        ),
        (("backbone=nafnet_tiny", "backbone.width=-3"), r"^backbone.width=-3: .*negative dimension -3"),
        (
            ("backbone=nafnet_tiny", "backbone.encoder_blocks=[1,1]"),
            r"^backbone.encoder_blocks=\[1, 1\], backbone.decoder_blocks=\[1, 1, 1\]: NAFNet needs as many",
        ),
    ],
)
def test_a_bad_network_argument_is_a_config_error_naming_its_key(overrides, message, make_config) -> None:
    cfg = make_config(*overrides)
    with pytest.raises(ConfigError, match=message):
        build_backbone(cfg)
