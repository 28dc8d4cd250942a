"""PTG-RM's guide features computed once (``guide.input=frame``, ``guide.cache``): the datamodule's ``osf`` is
the guide's feature of each whole degraded image, a cached training step never runs the guide, the disk cache
is reused and follows the guide's weights, and a wrong combination is one line. (The OSF cache itself is
tested in test_guides.py; the experiments' smoke runs in test_run.py.)"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from restoration.data.datamodules import MixedPairedDataModule, RestorationDataModule
from restoration.data.sources import PairedFolders
from restoration.errors import ConfigError
from restoration.guides.cache import precompute
from restoration.run import run, take_guide_options

from .conftest import write_image
from .test_ptgrm_stage import TinyGuide, _build, _config, _fit
from .test_run import _tiny_overrides

pytestmark = pytest.mark.usefixtures("in_tmp_dir")

SIZES = ((40, 48), (48, 40), (44, 52))  # (height, width) of the pairs: whole images differ in size


class ArmedGuide(TinyGuide):
    """A tiny guide that counts its calls and, once armed, refuses to run."""

    def __init__(self, *, dim: int = 8) -> None:
        super().__init__(dim=dim)
        self.calls = 0
        self.armed = False

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise AssertionError("the guide ran in a step that has its features")
        self.calls += 1
        return super().encode(images)


def write_pairs(root: Path, *, seed: int = 0, sizes: tuple[tuple[int, int], ...] = SIZES) -> Path:
    """``root/{train,val}/{lq,gt}/<i>.png``: random pairs (the layout of ``datamodule=paired``)."""
    for split_seed, split in enumerate(("train", "val")):
        for index, size in enumerate(sizes):
            for side in ("lq", "gt"):
                write_image(
                    root / split / side / f"{index}.png", size=size, seed=seed + 100 * split_seed + index
                )
    return root


def paired(root: Path, split: str) -> PairedFolders:
    return PairedFolders(lq_dir=str(root / split / "lq"), gt_dir=str(root / split / "gt"))


def datamodule(root: Path, guide: TinyGuide, folder: Path | None, **options) -> RestorationDataModule:
    options = {"crop_size": 16, "batch_size": 2, "num_workers": 0, "hflip": False, "seed": 3, **options}
    data = RestorationDataModule(
        name="pairs", train=paired(root, "train"), val=paired(root, "val"), **options
    )
    data.attach_features(functools.partial(precompute, guide, folder=folder))
    return data


def whole_image_features(guide: TinyGuide, source: PairedFolders) -> torch.Tensor:
    """The guide run, uncached, on every whole degraded image of ``source``."""
    return torch.cat([guide(source.read(index)[1].unsqueeze(0)) for index in range(len(source))])


def source_image_of(crop: torch.Tensor, source: PairedFolders) -> int:
    """The index of the one degraded image of ``source`` that ``crop`` was cut from."""
    found = []
    for index in range(len(source)):
        image = source.read(index)[1]
        windows = image.unfold(1, crop.shape[1], 1).unfold(2, crop.shape[2], 1)  # 3×h×w×ch×cw
        if (windows == crop[:, None, None]).flatten(3).all(dim=3).all(dim=0).any():
            found.append(index)
    assert len(found) == 1
    return found[0]


def test_every_sample_carries_the_guides_feature_of_its_whole_degraded_image(tmp_path: Path) -> None:
    root, guide = write_pairs(tmp_path / "data"), ArmedGuide()
    data = datamodule(root, guide, tmp_path / "osf", eval_crop=24)
    data.setup("fit")
    train, val = data.sources["train"], data.sources["val"]
    expected_train, expected_val = whole_image_features(guide, train), whole_image_features(guide, val)
    images = set()
    for position in range(8):
        sample = data.datasets["train"][position]
        image = source_image_of(sample["lq"], train)
        images.add(image)
        torch.testing.assert_close(sample["osf"], expected_train[image])
    assert images == {0, 1, 2}
    for index in range(len(val)):
        item = data.datasets["val"][index]
        assert item["lq"].shape[-2:] == (
            24,
            24,
        )  # the centre crop is scored, the feature is the whole image's
        torch.testing.assert_close(item["osf"], expected_val[index])


def test_mixed_tasks_look_their_features_up_in_their_own_task(tmp_path: Path) -> None:
    guide = ArmedGuide()
    roots = {task: write_pairs(tmp_path / task, seed=seed) for seed, task in ((0, "rain"), (7, "noise"))}
    tasks = {
        task: {"train": paired(root, "train"), "val": paired(root, "val")} for task, root in roots.items()
    }
    data = MixedPairedDataModule(tasks=tasks, crop_size=16, batch_size=2, num_workers=0, hflip=False)
    data.attach_features(functools.partial(precompute, guide, folder=None))
    data.setup("fit")
    names = list(tasks)
    for position in range(8):
        sample = data.datasets["train"][position]
        source = tasks[names[sample["type"]]]["train"]
        image = source_image_of(sample["lq"], source)
        torch.testing.assert_close(sample["osf"], whole_image_features(guide, source)[image])
    val = data.datasets["val"]
    for index in range(len(val)):
        item = val[index]
        task, local = val.order[index]
        expected = whole_image_features(guide, tasks[names[task]]["val"])[local]
        torch.testing.assert_close(item["osf"], expected)


def test_a_cached_training_step_and_validation_never_run_the_guide(make_config, tmp_path: Path) -> None:
    stage, _ = _build(_config(make_config, "datamodule.crop_size=32"))
    guide = ArmedGuide()
    guide.load_state_dict(stage.guide.state_dict())
    stage.guide = guide
    data = datamodule(write_pairs(tmp_path / "data"), guide, tmp_path / "osf", crop_size=32)
    data.setup("fit")
    assert guide.calls == 6  # three training and three validation images, once each
    guide.armed = True
    trainer = _fit(stage, data, steps=2, validate=True)
    assert trainer.global_step == 2 and "val/target/psnr" in trainer.callback_metrics
    assert guide.calls == 6


@pytest.mark.parametrize("tile", [None, 16])
def test_validation_with_the_batch_features_equals_running_the_guide_on_the_whole_image(
    make_config, tmp_path: Path, tile: int | None
) -> None:
    stage, _ = _build(_config(make_config))
    stage.tile, stage.tile_overlap = tile, 4
    data = datamodule(write_pairs(tmp_path / "data", sizes=((21, 27),)), stage.guide, None)
    data.setup("validate")
    item = data.datasets["val"][0]
    degraded, osf = item["lq"].unsqueeze(0), item["osf"].unsqueeze(0)
    stage.eval()
    with torch.no_grad():
        uncached = stage.restore_for_evaluation(degraded)  # the guide on the whole (unpadded) image
        stage._batch_osf = osf  # as validation_step leaves it for the evaluation of its batch
        cached = stage.restore_for_evaluation(degraded)
    torch.testing.assert_close(cached[0], uncached[0])
    torch.testing.assert_close(cached[1]["target"], uncached[1]["target"])


def test_the_disk_cache_is_reused_and_follows_the_guides_weights(tmp_path: Path) -> None:
    root, guide, folder = write_pairs(tmp_path / "data"), ArmedGuide(), tmp_path / "osf"
    datamodule(root, guide, folder).setup("fit")
    assert guide.calls == 6 and len(list(folder.rglob("*.pt"))) == 6
    guide.calls = 0
    again = datamodule(root, guide, folder)  # a second run
    again.setup("fit")
    assert guide.calls == 0
    with torch.no_grad():
        guide.conv.weight.add_(0.5)
    changed = datamodule(root, guide, folder)
    changed.setup("fit")
    assert guide.calls == 6 and len(list(folder.iterdir())) == 2  # one folder per guide
    torch.testing.assert_close(
        changed.datasets["val"][0]["osf"], whole_image_features(guide, changed.sources["val"])[0]
    )
    guide.calls = 0
    datamodule(root, guide, None).setup("fit")  # guide.cache=false: computed again, nothing written
    assert guide.calls == 6 and len(list(folder.rglob("*.pt"))) == 12


def test_grey_data_caches_the_features_of_the_grey_images(tmp_path: Path) -> None:
    root, guide, folder = write_pairs(tmp_path / "data"), ArmedGuide(), tmp_path / "osf"
    colour, grey = datamodule(root, guide, folder), datamodule(root, guide, folder, grey=True)
    colour.setup("validate")
    grey.setup("validate")
    item = grey.datasets["val"][0]
    torch.testing.assert_close(item["osf"], guide(item["lq"].unsqueeze(0))[0])
    assert not torch.allclose(item["osf"], colour.datasets["val"][0]["osf"])


def test_frame_features_of_synthesized_data_is_a_one_line_error(make_config, tmp_path: Path) -> None:
    tiny = _tiny_overrides("ptgrm_lowlight", tmp_path)
    cfg = make_config("experiment=ptgrm_lowlight", "trainer=smoke", *tiny, "guide.input=frame")
    with pytest.raises(ConfigError) as error:
        run(cfg)
    message = str(error.value)
    assert "\n" not in message and "guide.input=crop" in message and "synthesizes" in message
    with pytest.raises(ConfigError, match=r"guide.input=whole; expected one of \['frame', 'crop'\]"):
        take_guide_options(make_config("experiment=ptgrm_lowlight", "guide.input=whole"))


def test_a_guide_node_without_the_options_keeps_the_guide_in_the_step(make_config) -> None:
    cfg = _config(make_config)
    assert take_guide_options(cfg) == ("crop", False)
    baseline = make_config("experiment=ptgrm_lowlight_baseline")  # guide=none, and the experiment's input
    take_guide_options(baseline)
    assert not baseline.guide
    with open_dict(cfg):
        cfg.guide.cache = False
    assert take_guide_options(cfg) == ("frame", False) and "cache" not in cfg.guide


@pytest.mark.slow
def test_a_paired_run_computes_the_features_once_and_the_next_run_reads_them(
    make_config, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_pairs(tmp_path / "data", sizes=((64, 80), (72, 64)))
    overrides = (
        "experiment=ptgrm_lowlight", "trainer=smoke", *_tiny_overrides("ptgrm_lowlight", tmp_path),
        "backbone=snr_aware_tiny", "datamodule=paired", f"datamodule.root={root}", "guide.input=frame",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="restoration.guides.cache"):
        run(make_config(*overrides, run_name="first"))
        assert "2 of 2 features computed, 0 reused" in caplog.text
        caplog.clear()
        run(make_config(*overrides, run_name="second"))
    assert "0 of 2 features computed, 2 reused" in caplog.text
    assert len(list((tmp_path / ".cache" / "osf").rglob("*.pt"))) == 4
