"""PSNR/SSIM against hand-computed values, an independent SSIM and scikit-image (BasicSR conventions)."""

import math

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d
from skimage import data as skdata
from skimage.metrics import structural_similarity

from restoration.metrics import ImageQuality, psnr, rgb_to_y, ssim


def _levels(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random images already on 8-bit levels, so quantization leaves them unchanged."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=generator).double() / 255


def _photo_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A 96×128 crop of skimage's astronaut and a noisy copy, as 1×3×H×W in [0, 1]."""
    photo = skdata.astronaut()[96:192, 160:288].astype(np.float64) / 255
    noisy = photo + np.random.default_rng(0).normal(0.0, 0.05, photo.shape)
    as_batch = lambda image: torch.from_numpy(image).permute(2, 0, 1)[None]  # noqa: E731
    return as_batch(noisy), as_batch(photo)


def _reference_ssim(restored: np.ndarray, target: np.ndarray) -> float:
    """Straight transcription of ssim_index.m for one channel on the 0-255 scale: Gaussian window, 'valid'."""
    coords = np.arange(11) - 5
    profile = np.exp(-(coords**2) / (2 * 1.5**2))
    window = np.outer(profile, profile) / np.outer(profile, profile).sum()
    filt = lambda image: correlate2d(image, window, mode="valid")  # noqa: E731
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_r, mu_t = filt(restored), filt(target)
    var_r = filt(restored**2) - mu_r**2
    var_t = filt(target**2) - mu_t**2
    cov = filt(restored * target) - mu_r * mu_t
    ssim_map = ((2 * mu_r * mu_t + c1) * (2 * cov + c2)) / ((mu_r**2 + mu_t**2 + c1) * (var_r + var_t + c2))
    return float(ssim_map.mean())


def test_rgb_to_y_of_white_black_and_red() -> None:
    colours = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).view(3, 3, 1, 1)
    expected = torch.tensor([235.0, 16.0, 16.0 + 65.481]) / 255
    torch.testing.assert_close(rgb_to_y(colours).flatten(), expected)
    with pytest.raises(ValueError, match="N×3×H×W"):
        rgb_to_y(torch.zeros(1, 1, 4, 4))


def test_psnr_of_a_constant_offset() -> None:
    target = torch.full((2, 3, 16, 16), 100 / 255)
    restored = target + 10 / 255
    # mse = (10/255)^2 -> 20 log10(25.5), on RGB and on Y (the offset is the same on all channels)
    expected = 20 * math.log10(25.5)
    torch.testing.assert_close(psnr(restored, target), torch.full((2,), expected, dtype=torch.float64))
    y_offset = sum((65.481, 128.553, 24.966)) / 255 * 10 / 255
    expected_y = -20 * math.log10(y_offset)
    torch.testing.assert_close(psnr(restored, target, y_channel=True), torch.full((2,), expected_y).double())
    unquantized = psnr(target + 0.1, target, quantize=False)
    torch.testing.assert_close(unquantized, torch.full((2,), 20.0, dtype=torch.float64))


def test_psnr_of_white_against_black() -> None:
    white, black = torch.ones(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    assert psnr(white, black).item() == pytest.approx(0.0, abs=1e-12)
    # Y spans 16..235, so the peak error is 219 of 255.
    assert psnr(white, black, y_channel=True).item() == pytest.approx(20 * math.log10(255 / 219))


def test_identical_images_score_100_db_and_ssim_one() -> None:
    images = _levels(2, 3, 24, 24)
    torch.testing.assert_close(psnr(images, images), torch.full((2,), 100.0, dtype=torch.float64))
    torch.testing.assert_close(ssim(images, images), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(ssim(images, images, y_channel=True), torch.ones(2, dtype=torch.float64))


def test_crop_border_excludes_the_border() -> None:
    target = _levels(1, 3, 32, 32)
    restored = target.clone()
    restored[..., :4, :] = 1 - restored[..., :4, :]
    restored[..., :, -4:] = 1 - restored[..., :, -4:]
    assert psnr(restored, target, crop_border=4).item() == 100.0
    assert ssim(restored, target, crop_border=4).item() == pytest.approx(1.0)
    assert psnr(restored, target, crop_border=3).item() < 30.0
    assert ssim(restored, target, crop_border=3).item() < 1 - 1e-4  # the ring sits at the window's tail
    assert ssim(restored, target).item() < 0.99
    with pytest.raises(ValueError, match="crop_border"):
        psnr(restored, target, crop_border=16)


def test_quantize_rounds_and_clamps_to_8_bit_levels() -> None:
    target = _levels(1, 3, 16, 16)
    restored = target + 0.4 / 255  # rounds back onto the target's levels
    assert psnr(restored, target).item() == 100.0
    assert psnr(restored, target, quantize=False).item() == pytest.approx(20 * math.log10(255 / 0.4))
    overshoot = torch.ones(1, 3, 16, 16)
    assert psnr(overshoot + 0.2, overshoot).item() == 100.0
    assert psnr(overshoot + 0.2, overshoot, quantize=False).item() == pytest.approx(20 * math.log10(5))


def test_ssim_matches_an_independent_valid_window_implementation() -> None:
    target = _levels(2, 3, 30, 41, seed=1)
    noise = 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(2))
    restored = ((target + noise).clamp(0, 1) * 255).round() / 255
    expected_rgb = [
        np.mean([_reference_ssim(255 * r[c].numpy(), 255 * t[c].numpy()) for c in range(3)])
        for r, t in zip(restored, target, strict=True)
    ]
    y_weights = np.array([65.481, 128.553, 24.966]).reshape(3, 1, 1)
    to_y = lambda rgb: (rgb.numpy() * y_weights).sum(0) + 16  # noqa: E731
    expected_y = [_reference_ssim(to_y(r), to_y(t)) for r, t in zip(restored, target, strict=True)]
    np.testing.assert_allclose(ssim(restored, target).numpy(), expected_rgb, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ssim(restored, target, y_channel=True).numpy(), expected_y, rtol=0, atol=1e-12)


def test_ssim_matches_scikit_image_on_a_noisy_photo() -> None:
    restored, target = _photo_pair()
    on_levels = lambda image: (image[0].clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()  # noqa: E731
    options = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 255}
    expected_rgb = structural_similarity(on_levels(restored), on_levels(target), channel_axis=2, **options)
    quantized = [(image.clamp(0, 1) * 255).round() / 255 for image in (restored, target)]
    luma = [255 * rgb_to_y(image)[0].permute(1, 2, 0).numpy() for image in quantized]
    expected_y = structural_similarity(*luma, channel_axis=2, **options)
    assert 0.3 < expected_rgb < 0.9  # the noise makes this a real test, not SSIM = 1
    assert ssim(restored, target).item() == pytest.approx(expected_rgb, abs=1e-10)
    assert ssim(restored, target, y_channel=True).item() == pytest.approx(expected_y, abs=1e-10)


def test_grayscale_y_channel_is_the_image_itself() -> None:
    target = _levels(2, 1, 20, 20, seed=3)
    restored = _levels(2, 1, 20, 20, seed=4)
    torch.testing.assert_close(psnr(restored, target, y_channel=True), psnr(restored, target))
    torch.testing.assert_close(ssim(restored, target, y_channel=True), ssim(restored, target))


def test_image_quality_averages_over_images_of_all_batches() -> None:
    first = (_levels(3, 3, 24, 24, seed=5), _levels(3, 3, 24, 24, seed=6))
    second = (_levels(1, 3, 24, 24, seed=7), _levels(1, 3, 24, 24, seed=8))
    metric = ImageQuality(crop_border=2)
    per_image = [metric.per_image(*batch) for batch in (first, second)]
    assert metric.count.item() == 0  # per_image leaves the state alone
    metric.update(*first)
    metric.update(*second)
    result = metric.compute()
    assert set(result) == {"psnr", "ssim", "psnr_y", "ssim_y"}
    for key, value in result.items():
        expected = torch.cat([values[key] for values in per_image]).mean()
        torch.testing.assert_close(value, expected)
    torch.testing.assert_close(per_image[0]["psnr"], psnr(*first, crop_border=2))
    torch.testing.assert_close(per_image[0]["ssim_y"], ssim(*first, crop_border=2, y_channel=True))


def test_image_quality_merges_uneven_shards_as_a_mean_over_images() -> None:
    # Two "ranks" with 3 and 1 images: the result must weight images, not ranks (DDP with sum reduction).
    big_shard = (_levels(3, 3, 16, 16, seed=9), _levels(3, 3, 16, 16, seed=10))
    small_shard = (_levels(1, 3, 16, 16, seed=11), _levels(1, 3, 16, 16, seed=11))
    rank0, rank1 = ImageQuality(), ImageQuality()
    rank0.update(*big_shard)
    rank1.update(*small_shard)
    rank0.merge_state(rank1)
    expected = torch.cat([psnr(*big_shard), psnr(*small_shard)]).mean()
    torch.testing.assert_close(rank0.compute()["psnr"], expected)


def test_mismatched_shapes_and_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\).*\(2, 3, 16, 15\)"):
        psnr(torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 15))
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\).*\(1, 3, 8, 9\)"):
        ImageQuality().update(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="N×1×H×W"):
        ssim(torch.zeros(1, 2, 16, 16), torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="at least 11×11"):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), crop_border=3)
