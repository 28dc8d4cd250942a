"""Datamodule mixed_paired: one paired dataset per task, sampled uniformly by task, validated per task."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from restoration.data.datamodules import MixedPairedDataModule
from restoration.data.sources import EmbeddedPhotos, PairedFolders
from restoration.errors import ConfigError
from restoration.run import run

from .conftest import write_image


def _pairs(folder: Path, count: int, *, seed: int, size: tuple[int, int] = (40, 48)) -> None:
    for i in range(count):
        write_image(folder / "lq" / f"{i:03d}.png", size=size, seed=seed + 2 * i)
        write_image(folder / "gt" / f"{i:03d}.png", size=size, seed=seed + 2 * i + 1)


def _task(root: Path, *, train: int, val: int, seed: int) -> dict[str, PairedFolders]:
    _pairs(root / "train", train, seed=seed)
    _pairs(root / "val", val, seed=seed + 1000)
    return {
        split: PairedFolders(lq_dir=str(root / split / "lq"), gt_dir=str(root / split / "gt"))
        for split in ("train", "val")
    }


@pytest.fixture
def two_tasks(tmp_path: Path) -> dict[str, dict[str, PairedFolders]]:
    # very different sizes: sampling by image would pick the second task 7 times in 8
    return {
        "deblur": _task(tmp_path / "deblur", train=1, val=2, seed=0),
        "derain": _task(tmp_path / "derain", train=7, val=1, seed=100),
    }


def test_training_draws_tasks_uniformly_and_tags_them(two_tasks) -> None:
    datamodule = MixedPairedDataModule(tasks=two_tasks, crop_size=32, batch_size=4, num_workers=0, seed=3)
    assert datamodule.degradation_names == ("deblur", "derain")
    datamodule.setup("fit")
    crops = datamodule.datasets["train"]
    draws = 4000
    counts = Counter(crops.task_at(position) for position in range(draws))
    # binomial(4000, 1/2): standard deviation 32
    assert abs(counts[0] - draws / 2) < 150 and counts[0] + counts[1] == draws
    gt_of = {
        task: [sources["train"].read(i)[0] for i in range(len(sources["train"]))]
        for task, sources in two_tasks.items()
    }
    for position in range(40):
        sample = crops[position]
        task = ("deblur", "derain")[sample["type"]]
        assert sample["type"] == crops.task_at(position)
        assert sample["lq"].shape == sample["gt"].shape == (3, 32, 32)
        # the crop comes from an image of its own task
        assert any(_contains(image, sample["gt"]) for image in gt_of[task])
        assert torch.equal(crops[position]["gt"], sample["gt"])  # a pure function of the position
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["type"].tolist() == [crops.task_at(position) for position in range(4)]


def _contains(image: torch.Tensor, crop: torch.Tensor) -> bool:
    """Whether ``crop`` is a window of ``image`` up to the 8 flips and transposes of training."""
    variants = [crop, crop.flip(-1), crop.flip(-2), crop.flip(-1).flip(-2)]
    variants += [variant.transpose(-1, -2) for variant in variants]
    side = crop.shape[-1]
    for variant in variants:
        for top in range(image.shape[1] - side + 1):
            for left in range(image.shape[2] - side + 1):
                if torch.equal(image[:, top : top + side, left : left + side], variant):
                    return True
    return False


def test_validation_is_the_union_of_the_tasks_interleaved(two_tasks) -> None:
    datamodule = MixedPairedDataModule(tasks=two_tasks, num_workers=0)
    datamodule.setup("validate")
    images = datamodule.datasets["val"]
    samples = [images[i] for i in range(len(images))]
    assert [(s["type"], s["name"], s["index"]) for s in samples] == [
        (0, "deblur_000", 0),
        (1, "derain_000", 1),
        (0, "deblur_001", 2),
    ]
    gt, lq = two_tasks["deblur"]["val"].read(1)
    assert torch.equal(samples[2]["lq"], lq) and torch.equal(samples[2]["gt"], gt)


def test_bad_task_configurations_fail_clearly(two_tasks) -> None:
    with pytest.raises(ConfigError, match="tasks is empty"):
        MixedPairedDataModule(tasks={})
    with pytest.raises(ConfigError, match=r"tasks\.deblur has no train source"):
        MixedPairedDataModule(tasks={"deblur": {"val": two_tasks["deblur"]["val"]}})
    with pytest.raises(ConfigError, match=r"tasks\.clean\.train is EmbeddedPhotos; expected a paired source"):
        MixedPairedDataModule(tasks={"clean": {"train": EmbeddedPhotos()}})
    with pytest.raises(ConfigError, match=r"tasks.deblur has unknown key\(s\) \['vali'\]"):
        MixedPairedDataModule(tasks={"deblur": {**two_tasks["deblur"], "vali": None}})
    with pytest.raises(ConfigError, match="set the train sources per task"):
        MixedPairedDataModule(tasks=two_tasks, train=two_tasks["deblur"]["train"])
    no_val = {task: {"train": sources["train"]} for task, sources in two_tasks.items()}
    with pytest.raises(ConfigError, match="no task has a val split"):
        MixedPairedDataModule(tasks=no_val).setup("validate")


def _lol_and_rain(root: Path) -> tuple[str, ...]:
    """Tiny LOL v1 and Rain13K/Rain100H folders in their download layouts; the overrides selecting them."""
    for folder, count in (("our485", 3), ("eval15", 1)):
        for i in range(count):
            write_image(root / "LOL" / folder / "low" / f"{i}.png", size=(48, 48), seed=i)
            write_image(root / "LOL" / folder / "high" / f"{i}.png", size=(48, 48), seed=50 + i)
    for folder, count in (("train/Rain13K", 2), ("test/Rain100H", 1)):
        for i in range(count):
            write_image(root / "Rain" / folder / "input" / f"{i}.png", size=(40, 56), seed=100 + i)
            write_image(root / "Rain" / folder / "target" / f"{i}.png", size=(40, 56), seed=150 + i)
    return (
        "datamodule=mixed_paired",
        f"datamodule.tasks.lowlight.root={root / 'LOL'}",
        f"datamodule.tasks.rain.root={root / 'Rain'}",
        *(f"~datamodule.tasks.{task}" for task in ("motion_blur", "haze", "snow", "noise")),
    )


def test_config_selects_tasks_by_root(tmp_path: Path, make_config) -> None:
    cfg = make_config(*_lol_and_rain(tmp_path), "datamodule.crop_size=32")
    datamodule = instantiate(cfg.datamodule, degradation=None)
    assert datamodule.degradation_names == ("lowlight", "rain")
    datamodule.setup("fit")
    assert [len(task) for task in datamodule.datasets["train"].tasks] == [3, 2]
    assert len(datamodule.datasets["val"]) == 2


def test_origin_allinone_on_real_pairs_logs_each_task(tmp_path: Path, make_config) -> None:
    cfg = make_config(
        "experiment=origin_allinone",
        "backbone=nafnet_tiny",
        "trainer=smoke",
        "max_steps=4",
        "val_every=2",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "datamodule.batch_size=2",
        "datamodule.crop_size=32",
        *_lol_and_rain(tmp_path / "data"),
    )
    run(cfg)
    results = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert results["status"] == "finished" and results["global_step"] == 4
    for split in ("val", "test"):
        for task in ("lowlight", "rain"):
            for metric in ("psnr", "ssim"):
                assert math.isfinite(results[split][f"{split}/{task}/{metric}"])
    grids = sorted(path.name for path in (Path(cfg.paths.output_dir) / "images" / "val").glob("*.png"))
    assert grids == [f"{name}_step{step:07d}.png" for name in ("lowlight_0", "rain_0") for step in (2, 4)]
