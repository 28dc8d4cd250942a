"""Grey Gaussian denoising as in PTG-RM's table and Restormer's protocol: grey ground truth
(``datamodule.grey``), unclipped grey noise (``noise_gaussian_grey``, ``noise_gaussian_grey_25``), and what
the metrics then mean."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from restoration.data.datamodules import RestorationDataModule
from restoration.data.datasets import to_grey
from restoration.data.io import read_image
from restoration.data.sources import ImageFolder, PairedFolders
from restoration.metrics import psnr, ssim

from .conftest import write_image
from .test_degradations import generator, load, photo


def _equal_channels(images: torch.Tensor) -> bool:
    return torch.equal(images[..., :1, :, :].expand_as(images), images)


def test_to_grey_is_the_8_bit_luma_pil_gives(tmp_path: Path) -> None:
    pixels = write_image(tmp_path / "colour.png", size=(64, 80), seed=3)
    grey = to_grey(read_image(tmp_path / "colour.png"))
    assert _equal_channels(grey)
    expected = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float32) / 255
    difference = (grey[0] - torch.from_numpy(expected)).abs()
    # PIL rounds with 16-bit fixed-point weights: at most one level apart, on rare near-ties
    assert difference.max().item() <= 1 / 255 + 1e-6
    assert (difference > 1e-6).float().mean().item() < 0.01
    assert not _equal_channels(read_image(tmp_path / "colour.png"))
    # a grey image (a grey PNG read as three equal channels) stays as it is
    torch.testing.assert_close(to_grey(grey), grey, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["noise_gaussian_grey", "noise_gaussian_grey_25"])
def test_grey_noise_is_unclipped_and_the_same_on_every_channel(name: str) -> None:
    op = load(name)
    clean = torch.stack([to_grey(image) for image in photo(4, 64, 64)])
    # black and white corners: unclipped noise leaves [0, 1] on both sides
    clean[:, :, :16, :16], clean[:, :, -16:, -16:] = 0.0, 1.0
    noisy, _ = op(clean, generator(0))
    assert _equal_channels(noisy)
    assert noisy.min() < 0 and noisy.max() > 1
    sigmas = (noisy - clean)[:, 0].flatten(1).std(dim=1) * 255
    if name == "noise_gaussian_grey_25":
        assert sigmas.tolist() == pytest.approx([25.0] * 4, rel=0.05)
    else:  # blind: one sigma per image in [0, 50]
        assert sigmas.max() < 51 and sigmas.max() - sigmas.min() > 2


def test_grey_datamodule_makes_ground_truth_and_inputs_grey(tmp_path: Path) -> None:
    for index in range(2):
        write_image(tmp_path / "clean" / f"{index}.png", size=(48, 56), seed=index)
        write_image(tmp_path / "pairs" / "lq" / f"{index}.png", size=(48, 56), seed=10 + index)
        write_image(tmp_path / "pairs" / "gt" / f"{index}.png", size=(48, 56), seed=20 + index)
    module = RestorationDataModule(
        name="grey",
        train=ImageFolder(root=str(tmp_path / "clean")),
        val=ImageFolder(root=str(tmp_path / "clean")),
        degradation=load("noise_gaussian_grey_25"),
        crop_size=32,
        batch_size=2,
        num_workers=0,
        grey=True,
    )
    module.setup("fit")
    item = module.datasets["val"][0]
    name = item["name"]
    assert _equal_channels(item["gt"]) and _equal_channels(item["lq"])
    torch.testing.assert_close(item["gt"], to_grey(read_image(tmp_path / "clean" / f"{name}.png")))
    assert item["lq"].min() < 0 or item["lq"].max() > 1  # sigma 25, unclipped
    batch = next(iter(module.train_dataloader()))
    batch = module.on_after_batch_transfer(module.on_before_batch_transfer(batch, 0), 0)
    assert _equal_channels(batch["gt"]) and _equal_channels(batch["lq"])
    # paired data: both sides are made grey
    paired = PairedFolders(lq_dir=str(tmp_path / "pairs" / "lq"), gt_dir=str(tmp_path / "pairs" / "gt"))
    module = RestorationDataModule(
        name="pairs", train=paired, val=paired, crop_size=32, num_workers=0, grey=True
    )
    module.setup("fit")
    crop = module.datasets["train"][0]
    assert _equal_channels(crop["gt"]) and _equal_channels(crop["lq"])
    assert _equal_channels(module.datasets["val"][0]["lq"])
    colour = RestorationDataModule(name="pairs", train=paired, val=paired, crop_size=32, num_workers=0)
    colour.setup("fit")
    assert not _equal_channels(colour.datasets["val"][0]["gt"])


def test_on_grey_images_rgb_psnr_is_grey_psnr_and_y_psnr_is_1_32_db_higher() -> None:
    clean = torch.stack([to_grey(image) for image in photo(2, 64, 64)])
    noisy, _ = load("noise_gaussian_grey_25")(clean, generator(1))
    restored = (clean + 0.5 * (noisy - clean)).clamp(0, 1)  # a partly denoised, still grey output
    grey_psnr = psnr(restored[:, :1], clean[:, :1])
    torch.testing.assert_close(psnr(restored, clean), grey_psnr)
    torch.testing.assert_close(ssim(restored, clean), ssim(restored[:, :1], clean[:, :1]))
    # Y = (16 + 219·grey) / 255 shrinks every error by 219/255
    torch.testing.assert_close(
        psnr(restored, clean, y_channel=True) - grey_psnr,
        torch.full_like(grey_psnr, 20 * math.log10(255 / 219)),
    )


@pytest.mark.parametrize("experiment", ["ptgrm_denoise", "ptgrm_denoise_baseline"])
def test_denoise_experiments_train_and_test_grey_as_the_paper(experiment: str, make_config) -> None:
    cfg = make_config(f"experiment={experiment}")
    assert cfg.datamodule.grey is True and cfg.optimized_metric == "val/psnr"
    noise = instantiate(cfg.degradation)
    assert noise.sigma == (0.0, 50.0) and noise.gray_prob == 1.0 and noise.clip is False
    test = make_config(f"experiment={experiment}", "degradation=noise_gaussian_grey_25", "datamodule=cbsd68")
    noise = instantiate(test.degradation)
    assert noise.sigma == (25.0, 25.0) and noise.gray_prob == 1.0 and noise.clip is False
    assert test.datamodule.grey is True
