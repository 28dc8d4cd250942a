"""Tests of restoration.data.degradations: the batch contract, determinism, statistics and MATLAB parity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from restoration.data import degradations as D

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "degradation"
CONFIGS = sorted(path.stem for path in CONF_DIR.glob("*.yaml"))


def photo(n: int = 2, height: int = 48, width: int = 48) -> torch.Tensor:
    """``n`` different crops of skimage's astronaut photo (shipped with scikit-image), float32 in [0, 1]."""
    image = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 255
    tops = [(37 * i) % (512 - height) for i in range(n)]
    lefts = [(150 + 23 * i) % (512 - width) for i in range(n)]
    crops = [image[:, top : top + height, left : left + width] for top, left in zip(tops, lefts, strict=True)]
    return torch.stack(crops).contiguous()


def generator(seed: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def load(name: str) -> D.Degradation:
    return instantiate(OmegaConf.load(CONF_DIR / f"{name}.yaml"))


# Every operation, with the extra paths the configs do not reach (FFT-sized kernels, the separable Gaussian,
# the kornia JPEG, the torch bicubic).
OPS = {
    **{name: (lambda name=name: load(name)) for name in CONFIGS},
    "motion_fft": lambda: D.MotionBlur(kernel_size=[27, 41]),
    "gaussian_separable": lambda: D.GaussianBlur(kernel_size=[3, 11], sigma=[0.5, 2.0]),
    "gaussian_gray_noise": lambda: D.GaussianNoise(sigma=[5, 30], gray_prob=0.5),
    "jpeg_kornia": lambda: D.JPEG(quality=[10, 50], backend="kornia"),
    "bicubic_torch": lambda: D.BicubicDownsample(scale=2, method="torch"),
}
SCALE_ONE = [name for name in OPS if not name.startswith("bicubic")]


# ------------------------------------------------------------------------------------------------------------
# the batch contract


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (3, 3, 36, 48)])
def test_shape_dtype_range_and_type_ids(name: str, shape: tuple[int, ...]) -> None:
    op = OPS[name]()
    n, _, height, width = shape
    if op.scale != 1:
        height, width = height - height % op.scale, width - width % op.scale
    images = photo(n, height, width)
    degraded, type_ids = op(images, generator())
    assert degraded.shape == (n, 3, height // op.scale, width // op.scale)
    assert degraded.dtype == torch.float32
    assert degraded.min() >= 0 and degraded.max() <= 1
    assert type_ids.dtype == torch.int64 and type_ids.shape == (n,)
    assert ((type_ids >= 0) & (type_ids < len(op.names))).all()


@pytest.mark.parametrize("name", list(OPS))
def test_same_seed_same_output_other_seed_other_output(name: str) -> None:
    op = OPS[name]()
    images = photo(4)
    first, first_ids = op(images, generator(7))
    again, again_ids = op(images, generator(7))
    assert torch.equal(first, again) and torch.equal(first_ids, again_ids)
    if name not in ("none", "bicubic_x2", "bicubic_x3", "bicubic_x4", "bicubic_torch"):
        other, other_ids = op(images, generator(8))
        assert not torch.equal(first, other) or not torch.equal(first_ids, other_ids)


def test_input_is_not_modified() -> None:
    images = photo(4)
    copy = images.clone()
    load("random_mix")(images, generator())
    load("allinone")(images, generator())
    assert torch.equal(images, copy)


def test_generator_on_another_device_is_rejected() -> None:
    images = torch.empty(2, 3, 8, 8, device="meta")
    with pytest.raises(ValueError, match="generator is on cpu but images are on meta"):
        D.GaussianNoise(sigma=10)(images, generator())


@pytest.mark.parametrize(
    ("images", "gen", "match"),
    [
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), generator(), "float images"),
        (torch.zeros(2, 1, 8, 8), generator(), r"N×3×H×W"),
        (torch.zeros(3, 8, 8), generator(), r"N×3×H×W"),
        (torch.zeros(2, 3, 8, 8), 0, "torch.Generator"),
    ],
)
def test_bad_batches_are_rejected(images: torch.Tensor, gen: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        D.GaussianNoise(sigma=10)(images, gen)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: D.GaussianNoise(sigma=[50, 10]), "sigma must be"),
        (lambda: D.GaussianNoise(sigma=[1, 2, 3]), "sigma must be"),
        (lambda: D.GaussianNoise(sigma=-1), "sigma must lie in"),
        (lambda: D.GaussianNoise(sigma=10, gray_prob=1.5), "gray_prob"),
        (lambda: D.PoissonNoise(peak=0), "peak"),
        (lambda: D.MotionBlur(kernel_size=4), "kernel_size must be odd"),
        (lambda: D.GaussianBlur(kernel_size=[7, 22], sigma=1), "kernel_size must be odd"),
        (lambda: D.GaussianBlur(kernel_size=7, sigma="wide"), "sigma must be"),
        (lambda: D.DefocusBlur(radius=[-1, 3]), "radius"),
        (lambda: D.JPEG(quality=[0, 101]), "quality"),
        (lambda: D.JPEG(quality=[10.5, 20]), "quality must hold integers"),
        (lambda: D.JPEG(quality=50, backend="pil"), "backend"),
        (lambda: D.BicubicDownsample(scale=5), "scale must be 2, 3 or 4"),
        (lambda: D.BicubicDownsample(scale=2, method="pil"), "method"),
        (lambda: D.RainStreaks(preset="medium"), "preset"),
        (lambda: D.Haze(beta=1, airlight=[0.5, 1.5]), "airlight"),
        (lambda: D.LowLight(brightness=2), "brightness"),
        (lambda: D.Identity(name=""), "name"),
        (lambda: D.RandomCompose(ops=[]), "ops"),
        (lambda: D.RandomCompose(ops=[D.Identity()], p=[0.5, 0.5]), "one per op"),
        (lambda: D.AllInOne(ops={"a": D.Identity()}, weights=[-1]), "weights"),
        (lambda: D.AllInOne(ops={"a": D.Identity(), "b": "noise"}), r"ops\['b'\]"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_empty_batch() -> None:
    degraded, type_ids = load("allinone")(torch.zeros(0, 3, 16, 16), generator())
    assert degraded.shape == (0, 3, 16, 16) and type_ids.shape == (0,)


# ------------------------------------------------------------------------------------------------------------
# per-sample parameters


@pytest.mark.parametrize(
    "make",
    [
        lambda: D.GaussianNoise(sigma=[5, 50]),
        lambda: D.PoissonNoise(peak=[5, 200]),
        lambda: D.PoissonGaussianNoise(peak=[5, 200], sigma=[1, 20]),
        lambda: D.RainStreaks(preset="light"),
        lambda: D.MotionBlur(kernel_size=[5, 21]),
        lambda: D.GaussianBlur(kernel_size=[3, 15], sigma=[0.3, 3.0], anisotropic_prob=0.5),
        lambda: D.DefocusBlur(radius=[0.5, 5]),
        lambda: D.JPEG(quality=[5, 95]),
        lambda: D.Haze(beta=[0.2, 2.0], airlight=[0.6, 1.0]),
        lambda: D.LowLight(),
    ],
)
def test_each_sample_draws_its_own_parameters(make) -> None:
    op = make()
    images = photo(1, 64, 64).expand(6, -1, -1, -1)
    degraded = op.apply(images, generator(3))
    strength = (degraded - images).pow(2).mean(dim=(1, 2, 3))
    # with one shared parameter the six strengths would agree to within sampling noise (about 1%)
    assert (strength.max() - strength.min()) / strength.max() > 0.1


# ------------------------------------------------------------------------------------------------------------
# noise statistics


def test_gaussian_noise_std_matches_sigma() -> None:
    gray = torch.full((4, 3, 128, 128), 0.5)
    degraded, _ = D.GaussianNoise(sigma=25)(gray, generator())
    assert (degraded - gray).std().item() == pytest.approx(25 / 255, rel=0.02)
    assert (degraded - gray).mean().abs() < 1e-3


def test_gray_noise_is_shared_by_the_channels() -> None:
    gray = torch.full((2, 3, 32, 32), 0.5)
    colour, _ = D.GaussianNoise(sigma=20, gray_prob=0.0)(gray, generator())
    mono, _ = D.GaussianNoise(sigma=20, gray_prob=1.0)(gray, generator())
    assert torch.equal(mono[:, 0], mono[:, 1]) and torch.equal(mono[:, 0], mono[:, 2])
    assert not torch.equal(colour[:, 0], colour[:, 1])


def test_unclipped_gaussian_noise_leaves_the_range() -> None:
    black = torch.zeros(1, 3, 32, 32)
    clipped, _ = D.GaussianNoise(sigma=30)(black, generator())
    unclipped, _ = D.GaussianNoise(sigma=30, clip=False)(black, generator())
    assert clipped.min() == 0 and unclipped.min() < 0


def test_poisson_variance_is_mean_over_peak() -> None:
    level, peak = 0.3, 50.0
    images = torch.full((4, 3, 128, 128), level)
    degraded, _ = D.PoissonNoise(peak=peak)(images, generator())
    assert degraded.mean().item() == pytest.approx(level, rel=0.01)
    assert degraded.var().item() == pytest.approx(level / peak, rel=0.05)
    # Poisson counts are integers: the values sit on the 1/peak grid
    assert torch.allclose(degraded * peak, (degraded * peak).round(), atol=1e-4)


def test_poisson_gaussian_variance_adds_read_noise() -> None:
    level, peak, sigma = 0.5, 100.0, 10.0
    images = torch.full((4, 3, 128, 128), level)
    degraded, _ = D.PoissonGaussianNoise(peak=peak, sigma=sigma)(images, generator())
    assert degraded.var().item() == pytest.approx(level / peak + (sigma / 255) ** 2, rel=0.05)


# ------------------------------------------------------------------------------------------------------------
# blur


BLURS = {
    "gaussian_separable": lambda: D.GaussianBlur(kernel_size=[3, 21], sigma=[0.3, 3.0]),
    "gaussian_anisotropic": lambda: D.GaussianBlur(
        kernel_size=[3, 21], sigma=[0.3, 3.0], anisotropic_prob=1.0
    ),
    "motion_direct": lambda: D.MotionBlur(kernel_size=[5, 21]),
    "motion_fft": lambda: D.MotionBlur(kernel_size=[27, 41], anxiety=1.0),
    "defocus": lambda: D.DefocusBlur(radius=[0.5, 16]),
}


@pytest.mark.parametrize("name", list(BLURS))
def test_blur_keeps_a_constant_image_constant(name: str) -> None:
    constant = torch.full((4, 3, 37, 53), 0.37)
    degraded, _ = BLURS[name]()(constant, generator())
    assert torch.allclose(degraded, constant, atol=1e-5)


@pytest.mark.parametrize("name", list(BLURS))
def test_blur_preserves_the_mean_and_smooths(name: str) -> None:
    noise = torch.rand(4, 3, 64, 64, generator=generator(1))
    degraded, _ = BLURS[name]()(noise, generator())
    # reflect padding keeps the total intensity up to border effects; blur lowers the variance of white noise
    assert torch.allclose(degraded.mean(dim=(1, 2, 3)), noise.mean(dim=(1, 2, 3)), atol=0.02)
    assert (degraded.var(dim=(1, 2, 3)) < 0.9 * noise.var(dim=(1, 2, 3))).all()


@pytest.mark.parametrize("kernel_size", [15, 31])
def test_motion_kernels_sum_to_one_and_an_impulse_reproduces_them(kernel_size: int) -> None:
    op = D.MotionBlur(kernel_size=kernel_size, anxiety=[0.0, 1.0])
    kernels = op.kernels(4, generator(5), torch.device("cpu"))
    assert kernels.shape == (4, kernel_size, kernel_size)
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(4), atol=1e-6)
    assert (kernels >= 0).all() and ((kernels > 0).sum(dim=(1, 2)) > kernel_size // 2).all()
    # apply() draws the same kernels first; correlating with an impulse gives the kernel flipped, on both the
    # direct (15) and the FFT (31) path
    impulse = torch.zeros(4, 3, 65, 65)
    impulse[..., 32, 32] = 1
    response = op.apply(impulse, generator(5))
    half = kernel_size // 2
    window = response[:, 0, 32 - half : 32 + half + 1, 32 - half : 32 + half + 1]
    assert torch.allclose(window, kernels.flip(-2, -1), atol=1e-5)


def test_defocus_kernel_is_a_disk_of_the_drawn_radius() -> None:
    impulse = torch.zeros(1, 3, 41, 41)
    impulse[..., 20, 20] = 1
    response = D.DefocusBlur(radius=6.0).apply(impulse, generator())[0, 0]
    y, x = torch.meshgrid(torch.arange(41) - 20.0, torch.arange(41) - 20.0, indexing="ij")
    distance = torch.sqrt(y**2 + x**2)
    assert (response[distance <= 5.4] > 0).all() and (response[distance >= 6.6] == 0).all()
    inside = response[distance <= 5.4]
    assert torch.allclose(inside, inside.max().expand_as(inside))
    assert response.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_isotropic_and_anisotropic_gaussians_agree_for_equal_sigmas() -> None:
    images = photo(2, 40, 40)
    separable = D.GaussianBlur(kernel_size=9, sigma=1.5).apply(images, generator())
    full_2d = D.GaussianBlur(kernel_size=9, sigma=1.5, anisotropic_prob=1.0).apply(images, generator())
    assert torch.allclose(separable, full_2d, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# JPEG, haze, low light, rain


def test_jpeg_quality_orders_the_error() -> None:
    images = photo(2, 64, 64)
    mild, _ = D.JPEG(quality=95)(images, generator())
    strong, _ = D.JPEG(quality=10)(images, generator())
    mild_error, strong_error = (mild - images).pow(2).mean(), (strong - images).pow(2).mean()
    assert -10 * math.log10(mild_error) > 35
    assert strong_error > 5 * mild_error
    assert torch.equal(mild, (mild * 255).round() / 255)  # decoded 8-bit pixels


def test_kornia_jpeg_orders_the_error_too() -> None:
    images = photo(2, 64, 64)
    mild, _ = D.JPEG(quality=95, backend="kornia")(images, generator())
    strong, _ = D.JPEG(quality=10, backend="kornia")(images, generator())
    assert (strong - images).pow(2).mean() > 5 * (mild - images).pow(2).mean()


def test_haze_moves_pixels_towards_the_airlight_most_at_the_top() -> None:
    images = photo(4, 64, 64)
    hazy, _ = D.Haze(beta=1.5, airlight=1.0)(images, generator())
    assert (hazy >= images - 1e-6).all()
    assert ((1 - hazy).abs() <= (1 - images).abs() + 1e-6).all()
    change = (hazy - images) / (1 - images).clamp(min=1e-3)
    assert change[..., :8, :].mean() > change[..., -8:, :].mean()


def test_low_light_darkens_and_adds_noise() -> None:
    images = photo(4, 64, 64)
    dark, _ = D.LowLight()(images, generator())
    assert dark.mean() < 0.4 * images.mean()
    clean_dark, _ = D.LowLight(gamma=2.0, brightness=0.3, peak=None, read_sigma=None)(images, generator())
    assert torch.allclose(clean_dark, 0.3 * images**2)


def test_rain_adds_bright_streaks_heavy_more_than_light() -> None:
    black = torch.zeros(4, 3, 96, 96)
    light, _ = D.RainStreaks(preset="light")(black, generator())
    heavy, _ = D.RainStreaks(preset="heavy")(black, generator())
    assert torch.equal(light[:, 0], light[:, 1])  # streaks are achromatic
    assert 0 < light.mean() < heavy.mean()
    assert (heavy[:, 0] > 0.05).float().mean() < 0.5  # streaks, not a veil
    assert heavy.max() <= 0.9 + 1e-6  # the heavy preset's brightest streak core


def test_rain_streaks_follow_the_angle() -> None:
    black = torch.zeros(2, 3, 96, 96)
    vertical, _ = D.RainStreaks(angle=0.0, angle_jitter=0.0, length=30, density=0.002)(black, generator())
    horizontal, _ = D.RainStreaks(angle=90.0, angle_jitter=0.0, length=30, density=0.002)(black, generator())

    def vertical_energy(image: torch.Tensor) -> float:
        # a vertical streak changes little along the rows and a lot across the columns
        along = (image[..., 1:, :] - image[..., :-1, :]).abs().sum()
        across = (image[..., :, 1:] - image[..., :, :-1]).abs().sum()
        return (across / along).item()

    assert vertical_energy(vertical) > 2 and vertical_energy(horizontal) < 0.5


# ------------------------------------------------------------------------------------------------------------
# MATLAB bicubic


def matlab_imresize_reference(image: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(image, 1/scale, 'bicubic')`` on an H×W array, one output pixel at a time.

    Written from MATLAB's ``contributions``: output pixel ``x`` (1-based) reads input coordinate
    ``u = x/r + 0.5·(1 - 1/r)`` with ``r = 1/scale``; the cubic (a = -0.5) is stretched to width ``4/r`` for
    anti-aliasing, taps run from ``floor(u - width/2)`` over ``ceil(width) + 2`` pixels, the weights are
    normalised to sum to one, and indices outside ``1..n`` are mirrored symmetrically (0 -> 1, n+1 -> n).
    """
    ratio = 1 / scale

    def cubic(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return 1.5 * x**3 - 2.5 * x**2 + 1
        if x <= 2:
            return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
        return 0.0

    def mirror(index: int, length: int) -> int:
        while not 1 <= index <= length:
            index = 1 - index if index < 1 else 2 * length + 1 - index
        return index

    def contributions(x: int, length: int) -> list[tuple[int, float]]:
        u = x / ratio + 0.5 * (1 - 1 / ratio)
        width = 4 / ratio
        left = math.floor(u - width / 2)
        taps = [left + p for p in range(math.ceil(width) + 2)]
        weights = [ratio * cubic(ratio * (u - j)) for j in taps]
        total = sum(weights)
        return [(mirror(j, length), w / total) for j, w in zip(taps, weights, strict=True)]

    height, width = image.shape
    out = np.zeros((height // scale, width // scale))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = sum(
                wi * wj * image[row - 1, col - 1]
                for row, wi in contributions(i + 1, height)
                for col, wj in contributions(j + 1, width)
            )
    return out


@pytest.mark.parametrize(("scale", "height", "width"), [(2, 10, 14), (3, 12, 9), (4, 12, 16)])
def test_matlab_bicubic_matches_the_per_pixel_reference(scale: int, height: int, width: int) -> None:
    images = torch.rand(1, 3, height, width, generator=generator(scale)) * 0.5 + 0.25
    degraded, _ = D.BicubicDownsample(scale=scale)(images, generator())
    expected = np.stack([matlab_imresize_reference(channel.double().numpy(), scale) for channel in images[0]])
    # mid-range inputs keep the overshoot inside [0, 1], so the clamp does not hide a difference
    assert np.abs(expected).max() < 1
    np.testing.assert_allclose(degraded[0].numpy(), expected, atol=2e-6)


@pytest.mark.parametrize("method", ["matlab", "torch"])
def test_bicubic_keeps_a_constant_image_constant(method: str) -> None:
    constant = torch.full((2, 3, 24, 36), 0.6)
    for scale in (2, 3, 4):
        degraded, _ = D.BicubicDownsample(scale=scale, method=method)(constant, generator())
        assert torch.allclose(degraded, torch.full_like(degraded, 0.6), atol=1e-6)


def test_bicubic_torch_differs_from_matlab_only_near_the_border() -> None:
    images = photo(2, 96, 96)
    matlab, _ = D.BicubicDownsample(scale=4)(images, generator())
    torch_mode, _ = D.BicubicDownsample(scale=4, method="torch")(images, generator())
    difference = (matlab - torch_mode).abs()
    assert difference[..., 2:-2, 2:-2].max() < 1e-5
    assert difference.max() > 1e-3


def test_bicubic_quantize_rounds_to_8_bit_and_rejects_other_sizes() -> None:
    images = photo(1, 48, 48)
    degraded, _ = D.BicubicDownsample(scale=3, quantize=True)(images, generator())
    assert torch.equal(degraded, (degraded * 255).round() / 255)
    with pytest.raises(ValueError, match="not a multiple of the scale 4"):
        D.BicubicDownsample(scale=4)(photo(1, 50, 48), generator())


# ------------------------------------------------------------------------------------------------------------
# compositions


def darken() -> D.LowLight:
    """A deterministic op: exactly x / 2."""
    return D.LowLight(gamma=1.0, brightness=0.5, peak=None, read_sigma=None)


def test_random_compose_with_p0_is_identity_and_with_p1_applies_everything() -> None:
    images = photo(4)
    untouched, _ = D.RandomCompose(ops=[darken(), darken()], p=0.0)(images, generator())
    assert torch.equal(untouched, images) and untouched is not images
    both, _ = D.RandomCompose(ops=[darken(), darken()], p=1.0, shuffle=True)(images, generator())
    assert torch.equal(both, images * 0.25)


def test_random_compose_applies_each_op_to_a_per_sample_subset() -> None:
    images = photo(1).expand(64, -1, -1, -1).contiguous()
    degraded, _ = D.RandomCompose(ops=[darken(), darken()], p=[0.5, 0.5])(images, generator())
    factor = degraded.sum(dim=(1, 2, 3)) / images.sum(dim=(1, 2, 3))
    counts = {f: int(torch.isclose(factor, torch.tensor(f)).sum()) for f in (1.0, 0.5, 0.25)}
    assert sum(counts.values()) == 64 and all(count > 5 for count in counts.values())


def test_random_compose_scale_comes_from_its_downsampler() -> None:
    op = D.RandomCompose(ops=[darken(), D.BicubicDownsample(scale=2)], p=[0.5, 1.0])
    degraded, _ = op(photo(3), generator())
    assert op.scale == 2 and degraded.shape == (3, 3, 24, 24)
    with pytest.raises(ValueError, match="needs p = 1"):
        D.RandomCompose(ops=[D.BicubicDownsample(scale=2)], p=0.5)
    with pytest.raises(ValueError, match="at most one op may change the scale"):
        D.RandomCompose(ops=[D.BicubicDownsample(scale=2), D.BicubicDownsample(scale=2)])


def test_all_in_one_degrades_each_sample_with_its_own_type() -> None:
    op = D.AllInOne(
        ops={
            "clean": D.Identity(),
            "dark": darken(),
            "haze": D.Haze(beta=1.0, airlight=1.0),
            "noise": D.GaussianNoise(sigma=30, clip=False),
        }
    )
    assert op.names == ("clean", "dark", "haze", "noise")
    images = photo(1).expand(32, -1, -1, -1).contiguous()
    degraded, type_ids = op(images, generator())
    assert set(type_ids.tolist()) == {0, 1, 2, 3}
    for sample, type_id in enumerate(type_ids.tolist()):
        clean, out = images[sample], degraded[sample]
        if type_id == 0:
            assert torch.equal(out, clean)
        elif type_id == 1:
            assert torch.equal(out, clean * 0.5)
        elif type_id == 2:
            assert (out >= clean - 1e-6).all() and out.mean() > clean.mean() + 0.05
        else:
            assert (out - clean).std().item() == pytest.approx(30 / 255, rel=0.1)


def test_all_in_one_weights_and_scales() -> None:
    op = D.AllInOne(ops={"a": D.Identity(), "b": darken(), "c": D.Identity()}, weights=[0, 1, 0])
    _, type_ids = op(photo(8), generator())
    assert (type_ids == 1).all()
    with pytest.raises(ValueError, match="share one scale"):
        D.AllInOne(ops={"sr": D.BicubicDownsample(scale=2), "clean": D.Identity()})
    sr = D.AllInOne(
        ops={"x2": D.BicubicDownsample(scale=2), "x2_torch": D.BicubicDownsample(scale=2, method="torch")}
    )
    degraded, _ = sr(photo(4), generator())
    assert sr.scale == 2 and degraded.shape == (4, 3, 24, 24)


# ------------------------------------------------------------------------------------------------------------
# configs and devices


def test_every_preset_has_a_config() -> None:
    assert set(CONFIGS) == {
        "none",
        "bicubic_x2",
        "bicubic_x3",
        "bicubic_x4",
        "noise_gaussian",
        "noise_gaussian_30",
        "noise_gaussian_50",
        "noise_poisson",
        "noise_poisson_gaussian",
        "rain_light",
        "rain_heavy",
        "blur_motion",
        "blur_gaussian",
        "blur_defocus",
        "jpeg",
        "haze",
        "lowlight",
        "random_mix",
        "allinone",
    }


@pytest.mark.parametrize("name", CONFIGS)
def test_config_instantiates_and_runs(name: str) -> None:
    op = load(name)
    assert isinstance(op, D.Degradation)
    degraded, type_ids = op(photo(2), generator())
    assert degraded.shape == (2, 3, 48 // op.scale, 48 // op.scale)
    assert type_ids.max() < len(op.names)


def test_validation_sized_single_images_work() -> None:
    image = photo(1, 321, 481)  # a whole BSD68 photo, as validation degrades it
    for name in ("allinone", "random_mix", "blur_motion", "rain_heavy"):
        degraded, _ = load(name)(image, generator())
        assert degraded.shape == image.shape
    degraded, _ = load("bicubic_x3")(image[..., :480], generator())
    assert degraded.shape == (1, 3, 107, 160)


def test_all_in_one_config_names_its_seven_types() -> None:
    op = load("allinone")
    assert op.names == ("noise", "jpeg", "motion_blur", "defocus_blur", "haze", "lowlight", "rain")
    _, type_ids = op(photo(64, 16, 16), generator())
    assert set(type_ids.tolist()) == set(range(7))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(OPS))
def test_ops_run_on_cuda(name: str) -> None:
    op = OPS[name]()
    images = photo(4).cuda()
    degraded, type_ids = op(images, generator(0, "cuda"))
    again, _ = op(images, generator(0, "cuda"))
    assert degraded.is_cuda and type_ids.is_cuda
    assert degraded.min() >= 0 and degraded.max() <= 1
    assert torch.equal(degraded, again)
    with pytest.raises(ValueError, match="generator is on cpu"):
        op(images, generator())
