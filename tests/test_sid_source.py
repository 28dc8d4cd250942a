"""SID frames in SNR-Aware's release, PTG-RM's released data: layout, pairing, splits, resizing, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from restoration.data.sources import SIDNpyFrames
from restoration.errors import ConfigError, DataError

# SID scene ids: 0xxxx train, 1xxxx test, 2xxxx validation (which the official loader trains on).
SCENES = ("00001", "00002", "10003", "10016", "20005")
HEIGHT, WIDTH = 16, 24


def _frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


def _sid_tree(root: Path) -> dict[str, np.ndarray]:
    """Two low-light frames and two references per scene, in SNR-Aware's layout; every array by its name."""
    arrays = {}
    for number, scene in enumerate(SCENES):
        for kind, files in (("short_sid2", ("0.1s_00", "0.04s_01")), ("long_sid2", ("10s_00", "10s_01"))):
            (root / kind / scene).mkdir(parents=True, exist_ok=True)
            for index, name in enumerate(files):
                array = arrays[f"{kind}/{scene}/{name}"] = _frame(100 * number + 10 * len(kind) + index)
                np.save(root / kind / scene / f"{name}.npy", array)
    return arrays


def _halved(array: np.ndarray) -> torch.Tensor:
    """Bilinear halving as cv2.resize does it on uint8: 2×2 means rounded half up; B, G, R reversed."""
    means = array.reshape(HEIGHT // 2, 2, WIDTH // 2, 2, 3).astype(np.float64).mean(axis=(1, 3))
    return torch.from_numpy(np.floor(means + 0.5)[..., ::-1].copy()).permute(2, 0, 1).float() / 255


def test_sid_frames_are_paired_resized_and_split_as_the_official_loader(tmp_path: Path) -> None:
    arrays = _sid_tree(tmp_path)
    train = SIDNpyFrames(root=str(tmp_path), split="train", resize=[WIDTH // 2, HEIGHT // 2])
    test = SIDNpyFrames(root=str(tmp_path), split="test", resize=[WIDTH // 2, HEIGHT // 2])
    train.scan()
    test.scan(decode=True)
    assert train.paired and test.paired
    names = [train.name(i) for i in range(len(train))]
    assert names == [
        f"{scene}/{frame}" for scene in ("00001", "00002", "20005") for frame in ("0.04s_01", "0.1s_00")
    ]
    assert [test.name(i) for i in range(len(test))] == [
        f"{scene}/{frame}" for scene in ("10003", "10016") for frame in ("0.04s_01", "0.1s_00")
    ]
    for source in (train, test):
        for index in range(len(source)):
            scene, frame = source.name(index).split("/")
            gt, lq = source.read(index)
            # [width, height]: 24×16 frames become 12 wide and 8 high
            assert gt.shape == lq.shape == (3, HEIGHT // 2, WIDTH // 2) == (3, *source.size(index))
            assert gt.dtype == lq.dtype == torch.float32
            # every short frame with the scene's first reference
            torch.testing.assert_close(lq, _halved(arrays[f"short_sid2/{scene}/{frame}"]), rtol=0, atol=1e-6)
            torch.testing.assert_close(gt, _halved(arrays[f"long_sid2/{scene}/10s_00"]), rtol=0, atol=1e-6)


def test_sid_defaults_resize_to_960_by_512_and_keep_channels_when_asked(tmp_path: Path) -> None:
    arrays = _sid_tree(tmp_path)
    official = SIDNpyFrames(root=str(tmp_path), split="test")
    official.scan()
    assert official.resize == (960, 512) and official.size(0) == (512, 960)
    gt, lq = official.read(0)
    assert gt.shape == lq.shape == (3, 512, 960)
    assert lq.min() >= 0 and lq.max() <= 1
    native = SIDNpyFrames(root=str(tmp_path), split="test", resize=None, channel_order="rgb")
    native.scan()
    gt, lq = native.read(0)
    expected = torch.from_numpy(arrays["short_sid2/10003/0.04s_01"]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(lq, expected, rtol=0, atol=0)
    assert gt.shape == (3, HEIGHT, WIDTH)


def test_sid_preset_reads_the_train_and_test_scenes(tmp_path: Path, make_config) -> None:
    _sid_tree(tmp_path / "SID")
    cfg = make_config("datamodule=sid", f"datamodule.root={tmp_path / 'SID'}", "datamodule.crop_size=8")
    assert list(cfg.datamodule.train.resize) == [960, 512]
    cfg.datamodule.train.resize = [WIDTH, HEIGHT]
    module = instantiate(cfg.datamodule, degradation=None)
    module.setup("fit")
    assert len(module.datasets["train"]) == 6 and len(module.datasets["val"]) == 4
    assert module.datasets["train"][0]["lq"].shape == (3, 8, 8)
    assert module.datasets["val"][0]["name"] == "10003/0.04s_01"


def test_sid_bad_layout_names_the_path_and_the_expected_layout(tmp_path: Path) -> None:
    expected = r"short_sid2/<scene>/\*.npy and root/long_sid2/<scene>/\*.npy"
    with pytest.raises(
        DataError, match=rf"^{tmp_path}/long_sid2: folder not found; expected root/{expected}"
    ):
        (tmp_path / "short_sid2" / "10003").mkdir(parents=True)
        SIDNpyFrames(root=str(tmp_path), split="test").scan()
    (tmp_path / "long_sid2").mkdir()
    with pytest.raises(
        DataError, match=r"short_sid2: no scene folder of the train split \(names starting with 0 or 2"
    ):
        SIDNpyFrames(root=str(tmp_path), split="train").scan()
    np.save(tmp_path / "short_sid2" / "10003" / "a.npy", _frame(0))
    with pytest.raises(DataError, match=rf"{tmp_path}/long_sid2/10003: folder not found; every scene needs"):
        SIDNpyFrames(root=str(tmp_path), split="test").scan()
    (tmp_path / "long_sid2" / "10003").mkdir()
    np.save(tmp_path / "long_sid2" / "10003" / "b.npy", _frame(1)[..., 0])  # a 2-D array
    with pytest.raises(
        DataError, match=r"long_sid2/10003/b.npy: holds a uint8 array of shape \(16, 24\); expected an H×W×3"
    ):
        SIDNpyFrames(root=str(tmp_path), split="test").scan()
    (tmp_path / "long_sid2" / "10003" / "b.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=r"b.npy: cannot read the .npy file") as error:
        SIDNpyFrames(root=str(tmp_path), split="test").scan()
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"split='val'; expected one of \['train', 'test'\]"):
        SIDNpyFrames(root=str(tmp_path), split="val")
    with pytest.raises(ConfigError, match=r"resize=\[960\]; expected \[width, height\]"):
        SIDNpyFrames(root=str(tmp_path), resize=[960])
