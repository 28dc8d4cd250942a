"""Sources, datasets and the datamodule: layouts, determinism, sharding and every bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hydra.utils import instantiate
from PIL import Image

from restoration.data.datamodules import RestorationDataModule
from restoration.data.datasets import ShardSampler, StreamBatchSampler, TrainCrops, WholeImages
from restoration.data.degradations import GaussianNoise
from restoration.data.sources import EMBEDDED_SPLITS, EmbeddedPhotos, ImageFolder, PairedFolders, SIDDBlocks
from restoration.errors import ConfigError, DataError

from .conftest import write_image


def _pairs(root: Path, names: list[str], *, size: tuple[int, int] = (40, 48), scale: int = 1) -> None:
    for i, name in enumerate(names):
        write_image(root / "lq" / f"{name}.png", size=(size[0] // scale, size[1] // scale), seed=i)
        write_image(root / "gt" / f"{name}.png", size=size, seed=100 + i)


# ---- sources -----------------------------------------------------------------------------------


def test_embedded_split_is_fixed_and_disjoint() -> None:
    sources = {split: EmbeddedPhotos(split=split) for split in ("train", "val", "test")}
    names = {}
    for split, source in sources.items():
        source.scan(decode=split == "val")
        assert len(source) == len(EMBEDDED_SPLITS[split]) >= 4
        names[split] = {source.name(i) for i in range(len(source))}
    # no photo in two splits: the validation photos pick the checkpoint, the test photos are reported
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    assert not names["val"] & names["test"]
    assert {"motorcycle_left", "motorcycle_right"} <= names["train"]  # the stereo pair stays on one side
    val = sources["val"]
    gt, lq = val.read(0)
    assert lq is None and gt.shape[0] == 3 and gt.min() >= 0.0 and gt.max() <= 1.0


def test_folder_classes_from_subfolders(tmp_path: Path) -> None:
    for cls in ["n01", "n02"]:
        for i in range(3):
            write_image(tmp_path / cls / f"{i}.jpg", seed=i)
    source = ImageFolder(root=str(tmp_path))
    source.scan()
    assert source.classes == ("n01", "n02")
    assert [source.label(i) for i in range(len(source))] == [0, 0, 0, 1, 1, 1]


def test_folder_without_subfolders_has_no_labels(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "sub" / "b.png")
    source = ImageFolder(root=str(tmp_path))
    source.scan()
    assert source.classes == () and source.label(0) == -1
    with pytest.raises(DataError, match=r"a\.png is not inside a class sub-folder"):
        ImageFolder(root=str(tmp_path), class_folders=True).scan()


def test_folder_holdout_is_disjoint_complete_and_stable(tmp_path: Path) -> None:
    for i in range(60):
        write_image(tmp_path / f"{i:03d}.png", size=(8, 8), seed=i)
    train = ImageFolder(root=str(tmp_path), part="train", holdout=0.2)
    held = ImageFolder(root=str(tmp_path), part="holdout", holdout=0.2)
    train.scan()
    held.scan()
    train_names = {train.name(i) for i in range(len(train))}
    held_names = {held.name(i) for i in range(len(held))}
    assert not train_names & held_names and len(train_names | held_names) == 60
    assert 3 <= len(held_names) <= 25
    write_image(tmp_path / "new.png", size=(8, 8))  # adding a file does not move the others
    held_again = ImageFolder(root=str(tmp_path), part="holdout", holdout=0.2)
    held_again.scan()
    assert held_names <= {held_again.name(i) for i in range(len(held_again))}


def test_paired_matches_by_key_regex(tmp_path: Path) -> None:
    write_image(tmp_path / "Low" / "low00001.png")
    write_image(tmp_path / "Normal" / "normal00001.png", seed=3)
    source = PairedFolders(lq_dir=str(tmp_path / "Low"), gt_dir=str(tmp_path / "Normal"), key_regex=r"(\d+)$")
    source.scan()
    assert len(source) == 1 and source.name(0) == "00001"
    gt, lq = source.read(0)
    assert gt.shape == lq.shape == (3, 40, 48) and not torch.equal(gt, lq)


def test_paired_super_resolution_sizes(tmp_path: Path) -> None:
    _pairs(tmp_path, ["0001", "0002"], size=(48, 64), scale=2)
    source = PairedFolders(lq_dir=str(tmp_path / "lq"), gt_dir=str(tmp_path / "gt"), scale=2)
    source.scan()
    assert source.size(0) == (48, 64)


def test_sidd_blocks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, size=(2, 3, 16, 16, 3), dtype=np.uint8)
    clean = rng.integers(0, 256, size=(2, 3, 16, 16, 3), dtype=np.uint8)
    scipy.io.savemat(tmp_path / "noisy.mat", {"ValidationNoisyBlocksSrgb": noisy})
    scipy.io.savemat(tmp_path / "gt.mat", {"ValidationGtBlocksSrgb": clean})
    source = SIDDBlocks(noisy_mat=str(tmp_path / "noisy.mat"), gt_mat=str(tmp_path / "gt.mat"))
    source.scan()
    assert len(source) == 6
    gt, lq = source.read(4)
    assert torch.equal(gt, torch.from_numpy(clean[1, 1]).permute(2, 0, 1).float() / 255)
    assert torch.equal(lq, torch.from_numpy(noisy[1, 1]).permute(2, 0, 1).float() / 255)


# ---- bad input: one clear message naming the file ----------------------------------------------


def test_unmatched_pairs_are_listed(tmp_path: Path) -> None:
    _pairs(tmp_path, ["a", "b", "c"])
    (tmp_path / "gt" / "b.png").unlink()
    (tmp_path / "lq" / "c.png").unlink()
    with pytest.raises(DataError, match=r"1 LQ without GT \(b\); 1 GT without LQ \(c\)"):
        PairedFolders(lq_dir=str(tmp_path / "lq"), gt_dir=str(tmp_path / "gt")).scan()


def test_pair_size_mismatch_names_both_files(tmp_path: Path) -> None:
    write_image(tmp_path / "lq" / "x.png", size=(40, 48))
    write_image(tmp_path / "gt" / "x.png", size=(40, 50))
    with pytest.raises(DataError, match=r"lq/x\.png is 48×40 but .*gt/x\.png is 50×40"):
        PairedFolders(lq_dir=str(tmp_path / "lq"), gt_dir=str(tmp_path / "gt")).scan()


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope: folder not found; expected a folder of clean images"):
        ImageFolder(root=str(tmp_path / "nope")).scan()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"empty: no images match"):
        ImageFolder(root=str(tmp_path / "empty")).scan()


def test_corrupt_file_is_named_or_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
    (tmp_path / "1.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"1\.png: cannot read the image header.*skip_bad_files=true"):
        ImageFolder(root=str(tmp_path)).scan()
    source = ImageFolder(root=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        source.scan(skip_bad_files=True)
    assert len(source) == 2
    assert "skipped 1 of 3 unreadable files" in caplog.text and "1.png" in caplog.text


def test_truncated_validation_image_fails_at_setup(tmp_path: Path) -> None:
    write_image(tmp_path / "ok.jpg", size=(64, 64))
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "whole.jpg")
    whole = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    source = ImageFolder(root=str(tmp_path))
    source.scan()  # the header is intact: only a full decode finds the truncation
    with pytest.raises(DataError, match=r"cut\.jpg: cannot decode"):
        ImageFolder(root=str(tmp_path)).scan(decode=True)


def test_image_smaller_than_crop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_image(tmp_path / "big.png", size=(64, 64))
    write_image(tmp_path / "small.png", size=(20, 50))
    source = ImageFolder(root=str(tmp_path))
    source.scan()
    with pytest.raises(DataError, match=r"image 'small' is 50×20, smaller than the training crop 32×32"):
        TrainCrops(source, crop_size=32)
    with caplog.at_level(logging.WARNING):
        assert len(TrainCrops(source, crop_size=32, on_small="skip")) == 1
    resized = TrainCrops(source, crop_size=32, on_small="resize")
    assert all(resized[i]["gt"].shape == (3, 32, 32) for i in range(4))


def test_bad_regex_and_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key_regex"):
        PairedFolders(lq_dir=".", gt_dir=".", key_regex="(")
    with pytest.raises(ConfigError, match="part='val'"):
        ImageFolder(root=".", part="val")
    with pytest.raises(ConfigError, match="embedded split 'holdout'"):
        EmbeddedPhotos(split="holdout")


# ---- datasets and samplers ---------------------------------------------------------------------


def _embedded_crops(**kwargs: object) -> TrainCrops:
    source = EmbeddedPhotos(split="train")
    source.scan()
    return TrainCrops(source, crop_size=48, cache_images=True, **kwargs)


def test_train_stream_is_a_function_of_seed_and_position() -> None:
    crops, again, other = _embedded_crops(seed=3), _embedded_crops(seed=3), _embedded_crops(seed=4)
    for position in (0, 5, 17, 40):  # 17 and 40 lie in later epochs (15 images)
        assert torch.equal(crops[position]["gt"], again[position]["gt"])
    assert not torch.equal(crops[5]["gt"], other[5]["gt"])
    epoch0 = {crops._image_at(p) for p in range(len(crops))}
    assert epoch0 == set(range(len(crops)))  # each epoch visits every image once


def test_paired_crops_stay_aligned_with_scale(tmp_path: Path) -> None:
    gt = np.random.default_rng(0).integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    (tmp_path / "gt").mkdir()
    (tmp_path / "lq").mkdir()
    Image.fromarray(gt).save(tmp_path / "gt" / "x.png")
    Image.fromarray(gt[::2, ::2]).save(tmp_path / "lq" / "x.png")  # LQ pixel (i, j) = GT pixel (2i, 2j)
    source = PairedFolders(lq_dir=str(tmp_path / "lq"), gt_dir=str(tmp_path / "gt"), scale=2)
    source.scan()
    crops = TrainCrops(source, crop_size=32, scale=2, hflip=True, rotate=True)
    for position in range(8):
        sample = crops[position]
        assert sample["lq"].shape == (3, 16, 16) and sample["gt"].shape == (3, 32, 32)
        # A flip moves the sampled GT pixel of each 2×2 cell from offset 0 to offset 1 on that axis.
        offsets = [(row, col) for row in (0, 1) for col in (0, 1)]
        assert any(torch.equal(sample["gt"][:, row::2, col::2], sample["lq"]) for row, col in offsets)


def test_stream_batches_partition_positions_across_ranks() -> None:
    batches = [StreamBatchSampler(batch_size=3, rank=rank, world_size=2, start_step=5) for rank in range(2)]
    firsts = [next(iter(sampler)) for sampler in batches]
    assert firsts == [[30, 31, 32], [33, 34, 35]]
    resumed = iter(StreamBatchSampler(batch_size=3, start_step=2))
    continuous = iter(StreamBatchSampler(batch_size=3))
    for _ in range(2):
        next(continuous)
    assert next(resumed) == next(continuous)


def test_shards_cover_every_image_once() -> None:
    for length in (1, 4, 7):
        indices = [i for rank in range(3) for i in ShardSampler(length, rank=rank, world_size=3)]
        assert indices == list(range(length))


def test_validation_degradation_is_fixed_per_image() -> None:
    source = EmbeddedPhotos(split="val")
    source.scan()
    images = WholeImages(source, degradation=GaussianNoise(sigma=25), seed=1)
    first, again = images[1], WholeImages(source, degradation=GaussianNoise(sigma=25), seed=1)[1]
    assert torch.equal(first["lq"], again["lq"]) and first["name"] == "coffee"
    noise = (first["lq"] - first["gt"])[:, 50:-50, 50:-50]
    assert abs(noise.std().item() - 25 / 255) < 0.01


# ---- the datamodule ----------------------------------------------------------------------------


def test_datamodule_degrades_training_batches_on_the_device() -> None:
    module = RestorationDataModule(
        name="embedded",
        train=EmbeddedPhotos(split="train"),
        val=EmbeddedPhotos(split="val"),
        degradation=GaussianNoise(sigma=30),
        crop_size=32,
        batch_size=4,
        num_workers=0,
    )
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert set(batch) == {"gt", "index", "label"}
    batch = module.on_after_batch_transfer(module.on_before_batch_transfer(batch, 0), 0)
    assert batch["index"] == [0, 1, 2, 3]  # on the host
    assert batch["lq"].shape == batch["gt"].shape == (4, 3, 32, 32)
    assert batch["type"].tolist() == [0, 0, 0, 0]
    again = module.on_after_batch_transfer({key: value for key, value in batch.items() if key != "lq"}, 0)
    assert torch.equal(again["lq"], batch["lq"])  # reseeded from the batch's stream position
    val = next(iter(module.val_dataloader()))
    assert val["lq"].shape == val["gt"].shape and val["name"] == ["chelsea"]


def test_evaluation_only_dataset_refuses_to_train(tmp_path: Path) -> None:
    _pairs(tmp_path, ["a"])
    module = RestorationDataModule(
        name="set5", val=PairedFolders(lq_dir=str(tmp_path / "lq"), gt_dir=str(tmp_path / "gt"))
    )
    with pytest.raises(ConfigError, match="datamodule set5 has no train split; it is an evaluation-only"):
        module.setup("fit")
    module.setup("test")  # falls back to the val split
    assert len(module.datasets["test"]) == 1


# ---- every datamodule option composes against its documented layout ----------------------------

LAYOUTS: dict[str, list[tuple[str, str]]] = {
    "lol_v1": [("our485/low/1.png", "our485/high/1.png"), ("eval15/low/2.png", "eval15/high/2.png")],
    "lol_v2_real": [
        ("Real_captured/Train/Low/low00001.png", "Real_captured/Train/Normal/normal00001.png"),
        ("Real_captured/Test/Low/low00690.png", "Real_captured/Test/Normal/normal00690.png"),
    ],
    "rain100l": [
        ("train/Rain13K/input/1.jpg", "train/Rain13K/target/1.jpg"),
        ("test/Rain100L/input/1.png", "test/Rain100L/target/1.png"),
    ],
    "rain100h": [
        ("train/Rain13K/input/1.jpg", "train/Rain13K/target/1.jpg"),
        ("test/Rain100H/input/1.png", "test/Rain100H/target/1.png"),
    ],
    "gopro": [
        ("train/GOPR0372_07_00/blur/000047.png", "train/GOPR0372_07_00/sharp/000047.png"),
        ("test/GOPR0384_11_00/blur/000001.png", "test/GOPR0384_11_00/sharp/000001.png"),
    ],
    "sidd": [
        (
            "SIDD_Medium_Srgb/Data/0001_001_S6_00100_00060_3200_L/0001_NOISY_SRGB_010.PNG",
            "SIDD_Medium_Srgb/Data/0001_001_S6_00100_00060_3200_L/0001_GT_SRGB_010.PNG",
        )
    ],
    "div2k": [
        ("DIV2K_train_LR_bicubic/X2/0001x2.png", "DIV2K_train_HR/0001.png"),
        ("DIV2K_valid_LR_bicubic/X2/0801x2.png", "DIV2K_valid_HR/0801.png"),
    ],
    "set5": [("LR_bicubic/X2/babyx2.png", "HR/baby.png")],
    "set14": [("LR_bicubic/X2/barbarax2.png", "HR/barbara.png")],
    "b100": [("LR_bicubic/X2/3096x2.png", "HR/3096.png")],
    "urban100": [("LR_bicubic/X2/img_001x2.png", "HR/img_001.png")],
    "cbsd68": [("", "0001.png")],
}


@pytest.mark.parametrize("option", sorted(LAYOUTS))
def test_preset_finds_its_layout(option: str, tmp_path: Path, make_config) -> None:
    scale = 2 if option in ("div2k", "set5", "set14", "b100", "urban100") else 1
    for i, (lq, gt) in enumerate(LAYOUTS[option]):
        write_image(tmp_path / "data" / gt, size=(64, 64), seed=i)
        if lq:
            write_image(tmp_path / "data" / lq, size=(64 // scale, 64 // scale), seed=10 + i)
    if option == "sidd":
        blocks = np.zeros((1, 2, 16, 16, 3), dtype=np.uint8)
        scipy.io.savemat(
            tmp_path / "data" / "ValidationNoisyBlocksSrgb.mat", {"ValidationNoisyBlocksSrgb": blocks}
        )
        scipy.io.savemat(tmp_path / "data" / "ValidationGtBlocksSrgb.mat", {"ValidationGtBlocksSrgb": blocks})
    cfg = make_config(
        f"datamodule={option}", f"datamodule.root={tmp_path / 'data'}", "datamodule.crop_size=32"
    )
    module = instantiate(cfg.datamodule, degradation=instantiate(cfg.degradation))
    assert module.name == option
    evaluation_only = module.sources["train"] is None
    module.setup("test" if evaluation_only else "fit")
    if not evaluation_only:
        sample = module.datasets["train"][0]
        assert sample["gt"].shape == (3, 32, 32)
    split = "test" if evaluation_only else "val"
    item = module.datasets[split][0]
    assert item["gt"].shape[-1] == item["lq"].shape[-1] * scale


def test_preset_without_root_says_so(make_config) -> None:
    from restoration.run import run

    with pytest.raises(
        ConfigError, match=r"^missing config value datamodule.root: set it on the command line"
    ):
        run(make_config("datamodule=lol_v1"))


def test_every_type_evaluates_each_image_under_each_all_in_one_type() -> None:
    """``datamodule.eval_every_type``: image i under type t is item i·T + t, degraded by that type's op with
    the image's own seed; each type's score then covers every image."""
    from restoration.data.datasets import _generator
    from restoration.data.degradations import AllInOne, LowLight

    source = EmbeddedPhotos(split="test")
    source.scan()
    degradation = AllInOne(ops={"noise": GaussianNoise(sigma=25), "lowlight": LowLight()})
    dataset = WholeImages(source, degradation=degradation, seed=3, crop=32, every_type=True)
    assert len(dataset) == 2 * len(source)
    items = [dataset[i] for i in range(len(dataset))]
    assert [item["name"] for item in items[:4]] == [
        "astronaut_noise",
        "astronaut_lowlight",
        "rocket_noise",
        "rocket_lowlight",
    ]
    assert [item["type"] for item in items] == [0, 1] * len(source)
    assert torch.equal(items[0]["gt"], items[1]["gt"])
    expected = degradation.ops[1].apply(items[3]["gt"][None], _generator(3, 1))[0]
    assert torch.equal(items[3]["lq"], expected)
    with pytest.raises(DataError, match="every_type=true needs an all-in-one degradation"):
        WholeImages(source, degradation=GaussianNoise(sigma=25), every_type=True)
