"""Packed streaming data: pack -> stream equals the folder, gloo ranks share it, exact resume, bad files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from litdata import StreamingDataLoader

from restoration.data.pack import main as pack_main
from restoration.data.pack import pack
from restoration.data.sources import ImageFolder, _hash_fraction
from restoration.data.streaming import PackedImages, StreamingCrops
from restoration.errors import ConfigError, DataError
from restoration.run import run

from .conftest import run_cli, write_image

SIZE = 48  # every test image is SIZE×SIZE: a crop of SIZE is the whole image


def _tree(root: Path, count: int = 12, classes: int = 3) -> Path:
    """``count`` random images in ``classes`` class folders, png and jpg alike."""
    for index in range(count):
        suffix = "png" if index % 2 else "jpg"
        write_image(root / f"c{index % classes}" / f"img{index:02d}.{suffix}", size=(SIZE, SIZE), seed=index)
    return root


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source folder, its pack with no hold-out); a corrupt file in the folder is skipped."""
    folder = _tree(tmp_path_factory.mktemp("images") / "src")
    (folder / "c1" / "broken.png").write_bytes(b"not an image")
    output = folder.parent / "pack"
    counts = pack(folder, output, holdout=0.0, chunk_bytes="20KB", progress=False)
    assert counts == {"train": 12, "skipped": 1}
    return folder, output


def test_pack_then_stream_gives_the_folder_images_and_labels(packed: tuple[Path, Path]) -> None:
    folder, output = packed
    reference = ImageFolder(root=str(folder))
    reference.scan(skip_bad_files=True)
    expected = {reference.name(i): (reference.read(i)[0], reference.label(i)) for i in range(len(reference))}
    assert len(list(output.glob("train/chunk-*.bin"))) > 1  # several chunks: sharding has something to split

    by_index = PackedImages(root=str(output / "train"))
    by_index.scan(decode=True)
    assert by_index.classes == reference.classes == ("c0", "c1", "c2")
    assert by_index.label_range() == (0, 2)
    assert {by_index.name(i) for i in range(len(by_index))} == set(expected)
    for i in range(len(by_index)):
        image, label = expected[by_index.name(i)]
        assert torch.equal(by_index.read(i)[0], image) and by_index.label(i) == label

    # streamed through the training crops: a crop of the whole image and no flips give the image itself
    source = PackedImages(root=str(output / "train"))
    source.scan()
    stream = StreamingCrops(source, crop_size=SIZE, hflip=False, seed=3)
    seen = []
    for batch in StreamingDataLoader(stream, batch_size=4, num_workers=0):
        for image, label in zip(batch["gt"], batch["label"].tolist(), strict=True):
            match = [name for name, (pixels, _) in expected.items() if torch.equal(pixels, image)]
            assert len(match) == 1 and expected[match[0]][1] == label
            seen.append(match[0])
    assert sorted(seen) == sorted(expected)  # one epoch: every image once


def test_pack_names_each_skipped_file_and_never_overwrites(packed: tuple[Path, Path], capsys) -> None:
    folder, output = packed
    assert (output / "skipped.txt").read_text().splitlines() == [
        f"{folder / 'c1' / 'broken.png'}: cannot read the image header "
        f"(cannot identify image file '{folder / 'c1' / 'broken.png'}')"
    ]
    metadata = json.loads((output / "train" / "index.json").read_text())["restoration"]
    assert metadata["classes"] == ["c0", "c1", "c2"] and metadata["count"] == 12
    assert pack_main([str(folder), str(output)]) == 2
    assert capsys.readouterr().err == f"error: {output}: already exists; choose a new output folder " \
        "(a pack is never overwritten)\n"  # fmt: skip
    assert not output.with_name("pack.partial").exists()


def test_pack_holds_out_the_folder_sources_holdout(tmp_path: Path) -> None:
    folder = _tree(tmp_path / "src", count=40)
    assert pack_main([str(folder), str(tmp_path / "pack"), "--holdout", "0.2", "--chunk-bytes", "1MB"]) == 0
    for split, part in (("train", "train"), ("val", "holdout")):
        reference = ImageFolder(root=str(folder), part=part, holdout=0.2)
        reference.scan()
        packed_split = PackedImages(root=str(tmp_path / "pack" / split))
        packed_split.scan()
        names = {packed_split.name(i) for i in range(len(packed_split))}
        assert names == {reference.name(i) for i in range(len(reference))}


def test_a_missing_pack_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"pack/train: no index.json; expected a split packed by `python -m"):
        PackedImages(root=str(tmp_path / "pack" / "train")).scan()


def test_streamed_training_refuses_on_small_skip(packed: tuple[Path, Path]) -> None:
    source = PackedImages(root=str(packed[1] / "train"))
    source.scan()
    with pytest.raises(ConfigError, match=r"on_small=skip: .* is streamed"):
        StreamingCrops(source, crop_size=32, on_small="skip")
    stream = StreamingCrops(source, crop_size=64)  # larger than the images
    with pytest.raises(DataError, match=r"packed image '.*' is 48×48, smaller than the training crop 64×64"):
        next(iter(StreamingDataLoader(stream, batch_size=2, num_workers=0)))


def _fingerprint(image: torch.Tensor) -> int:
    """An exact number for an 8-bit image (the sum of its levels, weighted by position)."""
    levels = np.rint(image.numpy() * 255).astype(np.int64).ravel()
    return int((levels * np.arange(1, len(levels) + 1)).sum())


def _read_shard(rank: int, world_size: int, root: str, port: int, result: str) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    source = PackedImages(root=root)
    source.scan()
    stream = StreamingCrops(source, crop_size=SIZE, hflip=False, seed=1)
    numbers = []
    for batch in StreamingDataLoader(stream, batch_size=2, num_workers=1):
        numbers += [_fingerprint(image) for image in batch["gt"]]
    Path(f"{result}.{rank}").write_text(json.dumps(numbers))
    dist.destroy_process_group()


def test_two_gloo_ranks_read_disjoint_shards_that_cover_the_set(packed: tuple[Path, Path], tmp_path) -> None:
    source = PackedImages(root=str(packed[1] / "train"))
    source.scan()
    everything = sorted(_fingerprint(source.read(i)[0]) for i in range(len(source)))
    result = str(tmp_path / "shard")
    port = 29500 + os.getpid() % 1000
    mp.start_processes(_read_shard, args=(2, source.root, port, result), nprocs=2, start_method="fork")
    shards = [json.loads(Path(f"{result}.{rank}").read_text()) for rank in range(2)]
    assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == everything


def test_streamed_run_resumed_mid_epoch_equals_the_uninterrupted_run(packed, make_config) -> None:
    # 12 images in batches of 2: 6 steps an epoch; stopping at step 4 leaves the first epoch half read
    common = (
        "datamodule=streaming",
        f"datamodule.root={packed[1]}",
        "datamodule.val.root=${datamodule.root}/train",
        "datamodule.batch_size=2",
        "datamodule.crop_size=32",
        "trainer=smoke",
        "backbone.width=8",
        "backbone.blocks=1",
        "stage.scheduler.total_steps=9",
    )
    # (paths.output_dir resolves through the current HydraConfig, so read it before the next compose)
    straight = make_config(*common, "trainer.max_steps=9", run_name="straight")
    straight_dir = Path(straight.paths.output_dir)
    run(straight)
    run(make_config(*common, "trainer.max_steps=4", "task_name=resumable", run_name="first"))
    second = make_config(*common, "trainer.max_steps=9", "task_name=resumable", "ckpt_path=last")
    second_dir = Path(second.paths.output_dir)
    run(second)
    straight_ckpt = torch.load(straight_dir / "checkpoints" / "last.ckpt")
    resumed_ckpt = torch.load(second_dir / "checkpoints" / "last.ckpt")
    assert resumed_ckpt["global_step"] == 9
    for key, value in straight_ckpt["state_dict"].items():
        assert torch.equal(value, resumed_ckpt["state_dict"][key]), key


def test_readme_pack_command_as_typed(tmp_path: Path) -> None:
    folder = _tree(tmp_path / "data" / "imagenet" / "train", count=24)
    # one more image whose path falls in the default 1 % hold-out, so the pack has a validation split
    held = next(f"c0/held{k}.png" for k in range(10_000) if _hash_fraction(f"c0/held{k}.png") < 0.01)
    write_image(folder / held, size=(SIZE, SIZE))
    packed = run_cli(
        "data/imagenet/train", "data/imagenet-packed", cwd=tmp_path, module="restoration.data.pack"
    )
    assert packed.returncode == 0, packed.stdout
    assert packed.stdout.splitlines()[-1] == (
        "packed data/imagenet/train into data/imagenet-packed: train 24, val 1 images; skipped 0 unreadable "
        "files (listed in data/imagenet-packed/skipped.txt)"
    )
