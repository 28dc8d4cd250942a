"""Tests of restoration.data.degradations: the batch contract, determinism, statistics and MATLAB parity."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from restoration.data import degradations as D

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "degradation"
# ipt_tasks composes other presets (Hydra defaults) into IPT's per-step tasks, a TaskPerStep rather than a
# Degradation: tests/test_ipt_stages.py tests it
CONFIGS = sorted(path.stem for path in CONF_DIR.glob("*.yaml") if path.stem != "ipt_tasks")


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
    "real_esrgan_blur": lambda: D.RealESRGANBlur(),
    "sinc_filter": lambda: D.SincFilter(),
    "real_esrgan_noise": lambda: D.RealESRGANNoise(),
    "second_order_per_batch": lambda: D.SecondOrder(resize_per_batch=True),
    "quantize_floor": lambda: D.Quantize(rounding="floor"),
}
SCALE_ONE = [name for name in OPS if not name.startswith("bicubic")]
# The grey AWGN benchmarks' noise is unclipped (GaussianNoise clip=false): the one exception to [0, 1].
UNCLIPPED = {"noise_gaussian_grey", "noise_gaussian_grey_25"}


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
    assert degraded.isfinite().all() if name in UNCLIPPED else degraded.min() >= 0 and degraded.max() <= 1
    assert type_ids.dtype == torch.int64 and type_ids.shape == (n,)
    assert ((type_ids >= 0) & (type_ids < len(op.names))).all()


@pytest.mark.parametrize("name", list(OPS))
def test_same_seed_same_output_other_seed_other_output(name: str) -> None:
    op = OPS[name]()
    images = photo(4)
    first, first_ids = op(images, generator(7))
    again, again_ids = op(images, generator(7))
    assert torch.equal(first, again) and torch.equal(first_ids, again_ids)
    # these draw nothing: one fixed function of the input
    fixed = ("none", "bicubic_x2", "bicubic_x3", "bicubic_x4", "bicubic_torch", "contrast", "quantize_floor")
    if name not in fixed:
        other, other_ids = op(images, generator(8))
        assert not torch.equal(first, other) or not torch.equal(first_ids, other_ids)


# operators that read a tensor's values on the host: on a GPU each waits for the device to catch up
_READS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
}


def _in_host_work() -> bool:
    """Whether the caller runs inside JPEG.apply, whose libjpeg/nvjpeg codec is documented host work."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is D.JPEG.apply.__code__:
            return True
        frame = frame.f_back
    return False


class _HostReads(TorchDispatchMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _READS and not _in_host_work():
            self.found.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list(OPS))
def test_ops_never_read_device_values_on_the_host(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Choices that steer control flow are drawn on the host: no op reads a tensor back (.item(), .tolist(),
    nonzero, boolean masks), except inside the JPEG codec."""
    op = OPS[name]()
    found: list[str] = []
    for method in ("tolist", "numpy"):
        original = getattr(torch.Tensor, method)

        def reading(tensor: torch.Tensor, *args, _original=original, _method=method, **kwargs):
            if not _in_host_work():
                found.append(f"Tensor.{_method}")
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, reading)
    height = 48 - 48 % op.scale
    with _HostReads(found):
        op(photo(4, height, height), generator(1))
    assert found == []


def test_an_op_called_twice_on_one_generator_chooses_afresh() -> None:
    """Host choices follow the generator's state, and drawing them advances it: a composition's op that runs
    twice in one batch does not repeat its choices, while a fresh generator with the same seed does."""
    op = D.RandomCompose(ops=[darken()], p=0.5)
    images = photo(1).expand(32, -1, -1, -1).contiguous()
    shared = generator(4)
    first, second = op.apply(images, shared), op.apply(images, shared)
    assert not torch.equal(first, second)
    assert torch.equal(op.apply(images, generator(4)), first)


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
        (lambda: D.RealESRGANBlur(kernel_prob=[1, 0, 0]), "kernel_prob must be a list of 6"),
        (lambda: D.RealESRGANBlur(betag=[2, 4]), "lo <= 1 <= hi"),
        (lambda: D.RealESRGANBlur(kernel_size=[6, 20]), "kernel_size must be odd"),
        (lambda: D.SincFilter(cutoff=4.0), "cutoff must lie in"),
        (lambda: D.RealESRGANNoise(gaussian_prob=2), "gaussian_prob"),
        (
            lambda: D.SecondOrder(blur1=D.GaussianBlur(kernel_size=7, sigma=1)),
            "blur1 must be a RealESRGANBlur",
        ),
        (lambda: D.SecondOrder(resize_prob1=[0.5, 0.5]), "resize_prob1 must be a list of 3"),
        (lambda: D.SecondOrder(resize_range2=[1.1, 1.5]), "resize_range2"),
        (lambda: D.Contrast(severity=6), "severity must lie in"),
        (lambda: D.Snow(severity=[0, 2]), "severity must lie in"),
        (lambda: D.Quantize(rounding="ceil"), "rounding"),
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
        lambda: D.RealESRGANBlur(),
        lambda: D.SincFilter(prob=1.0, cutoff=[0.3, 3.0]),
        lambda: D.RealESRGANNoise(),
        lambda: D.SecondOrder(),
        lambda: D.Contrast(severity=[1, 5]),
        lambda: D.Snow(severity=[1, 5]),
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


def test_random_compose_shuffle_draws_both_orders_equally_often() -> None:
    # the two orders differ: halving 0.9 and then flooring to 8-bit levels gives 114/255, the other 114.5/255
    halve, floor = darken(), D.Quantize(rounding="floor")
    op = D.RandomCompose(ops=[halve, floor], shuffle=True)
    images = torch.full((1, 3, 4, 4), 0.9)
    halved_first = floor.apply(halve.apply(images, generator()), generator())
    floored_first = halve.apply(floor.apply(images, generator()), generator())
    outcomes = [op(images, generator(seed))[0] for seed in range(400)]
    assert all(torch.equal(out, halved_first) or torch.equal(out, floored_first) for out in outcomes)
    count = sum(torch.equal(out, halved_first) for out in outcomes)
    assert abs(count - 200) < 40  # 4 standard deviations


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
    skewed = D.AllInOne(ops={"a": D.Identity(), "b": darken()}, weights=[1, 3])
    _, type_ids = skewed(torch.zeros(2000, 3, 2, 2), generator())
    assert abs((type_ids == 1).float().mean().item() - 0.75) < 0.04  # about 4 standard deviations
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
        "noise_gaussian_grey",
        "noise_gaussian_grey_25",
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
        "second_order",
        "contrast",
        "snow",
        "constyle_v2",
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


def test_all_in_one_config_names_its_eight_types() -> None:
    op = load("allinone")
    assert op.names == ("noise", "jpeg", "motion_blur", "defocus_blur", "haze", "lowlight", "rain", "snow")
    _, type_ids = op(photo(64, 16, 16), generator())
    assert set(type_ids.tolist()) == set(range(8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(OPS))
def test_ops_run_on_cuda(name: str) -> None:
    op = OPS[name]()
    images = photo(4).cuda()
    degraded, type_ids = op(images, generator(0, "cuda"))
    again, _ = op(images, generator(0, "cuda"))
    assert degraded.is_cuda and type_ids.is_cuda
    assert degraded.isfinite().all() if name in UNCLIPPED else degraded.min() >= 0 and degraded.max() <= 1
    assert torch.equal(degraded, again)
    with pytest.raises(ValueError, match="generator is on cpu"):
        op(images, generator())


# ------------------------------------------------------------------------------------------------------------
# Real-ESRGAN kernels, noise and second-order pipeline; ImageNet-C contrast and snow; ConStyle v2


def one_type(kind: str, **kwargs) -> D.RealESRGANBlur:
    """A RealESRGANBlur that draws only ``kind`` kernels (no sinc)."""
    probs = [float(name == kind) for name in D.REAL_ESRGAN_KERNEL_TYPES]
    return D.RealESRGANBlur(kernel_prob=probs, sinc_prob=0.0, **kwargs)


def test_real_esrgan_kernels_sum_to_one_and_follow_the_type_probabilities() -> None:
    op = D.RealESRGANBlur()
    kernels, kinds = op.kernels(4000, generator(1), torch.device("cpu"))
    assert kernels.shape == (4000, 21, 21)
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(4000), atol=1e-5)
    # every kernel is point-symmetric, so correlation and convolution agree
    assert torch.allclose(kernels, kernels.flip(-2, -1), atol=1e-6)
    frequency = torch.bincount(kinds, minlength=7).float() / 4000
    expected = torch.tensor([0.9 * p for p in (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)] + [0.1])
    assert torch.allclose(frequency, expected, atol=0.025)
    # the drawn sizes are odd in 7..21: the support of a sinc kernel (no underflow) is a centred odd square
    support = (kernels[kinds == D.SINC] != 0).sum(dim=1).amax(dim=1)
    assert set(support.tolist()) <= set(range(7, 22, 2)) and len(set(support.tolist())) == 8


@pytest.mark.parametrize("isotropy", ["iso", "aniso"])
def test_generalized_gaussian_with_beta_one_is_the_gaussian(isotropy: str) -> None:
    gaussian, _ = one_type(isotropy).kernels(16, generator(2), torch.device("cpu"))
    generalized, _ = one_type(f"generalized_{isotropy}", betag=[1.0, 1.0]).kernels(
        16, generator(2), torch.device("cpu")
    )
    assert torch.allclose(gaussian, generalized, atol=1e-7)


def test_isotropic_kernels_have_the_real_esrgan_shapes() -> None:
    # σ = 2 and 21 taps fixed: the profile K(r)/K(0) reveals each family's formula and its β
    radius2 = D._centred_grid(21, torch.device("cpu"))
    q = (radius2[0] ** 2 + radius2[1] ** 2)[0] / 4
    # away from q = 1, where log q = 0, and where the kernels are well above float32 rounding
    ring = (q > 0.2) & (q < 2.5) & ((q - 1).abs() > 0.1)
    gaussian, _ = one_type("iso", sigma=2.0, kernel_size=21).kernels(4, generator(), torch.device("cpu"))
    expected = torch.exp(-0.5 * q)
    assert torch.allclose(gaussian, (expected / expected.sum()).expand(4, -1, -1), atol=1e-7)
    generalized, _ = one_type("generalized_iso", sigma=2.0, kernel_size=21).kernels(
        64, generator(), torch.device("cpu")
    )
    plateau, _ = one_type("plateau_iso", sigma=2.0, kernel_size=21).kernels(
        64, generator(), torch.device("cpu")
    )
    centre = (slice(None), 10, 10)
    # generalized: K/K0 = exp(-q**β / 2); plateau: K/K0 = 1 / (1 + q**β)
    beta_g = torch.log(-2 * torch.log(generalized / generalized[centre][:, None, None])) / torch.log(q)
    beta_p = torch.log(plateau[centre][:, None, None] / plateau - 1) / torch.log(q)
    for beta, (low, high) in ((beta_g[:, ring], (0.5, 4.0)), (beta_p[:, ring], (1.0, 2.0))):
        per_kernel = beta.median(dim=1).values
        assert torch.allclose(beta, per_kernel[:, None], rtol=1e-2)  # one β per kernel
        assert per_kernel.min() >= low - 1e-3 and per_kernel.max() <= high + 1e-3
        assert (per_kernel < 0.999).any() or low == 1.0
        assert (per_kernel > 1.001).any()


def test_anisotropic_kernels_are_rotated_and_elongated() -> None:
    kernels, _ = one_type("aniso", kernel_size=21, sigma=[0.5, 3.0]).kernels(
        32, generator(), torch.device("cpu")
    )
    y, x = (axis[0] for axis in D._centred_grid(21, torch.device("cpu")))
    # second moments: an isotropic kernel has equal eigenvalues, these mostly do not
    covariance = torch.stack(
        [(kernels * y * y).sum((1, 2)), (kernels * y * x).sum((1, 2)), (kernels * x * x).sum((1, 2))], dim=1
    )
    trace, det = (
        covariance[:, 0] + covariance[:, 2],
        covariance[:, 0] * covariance[:, 2] - covariance[:, 1] ** 2,
    )
    spread = torch.sqrt((trace**2 / 4 - det).clamp(min=0)) / (trace / 2)
    assert (spread > 0.2).float().mean() > 0.5
    assert (covariance[:, 1].abs() > 0.1).any()  # rotated off the axes


def reference_sinc(cutoff: float, size: int) -> np.ndarray:
    """Real-ESRGAN's circular_lowpass_kernel, written from its formula with scipy's Bessel function."""
    import scipy.special

    axis = np.arange(size) - (size - 1) / 2
    radius = np.hypot(*np.meshgrid(axis, axis, indexing="ij"))
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = cutoff * scipy.special.j1(cutoff * radius) / (2 * np.pi * radius)
    kernel[size // 2, size // 2] = cutoff**2 / (4 * np.pi)
    return kernel / kernel.sum()


def test_sinc_kernels_match_the_formula_and_are_low_passes_with_unit_dc_gain() -> None:
    kernels = D.SincFilter(kernel_size=13, cutoff=1.2, prob=1.0).kernels(2, generator(), torch.device("cpu"))
    np.testing.assert_allclose(kernels[0].numpy(), reference_sinc(1.2, 13), atol=1e-6)
    op = D.SincFilter(kernel_size=[7, 21], cutoff=[math.pi / 3, math.pi / 2], prob=1.0)
    kernels = op.kernels(64, generator(3), torch.device("cpu"))
    spectrum = torch.fft.fft2(kernels, s=(64, 64)).abs()
    assert torch.allclose(spectrum[:, 0, 0], torch.ones(64), atol=1e-5)  # DC gain 1
    assert (spectrum[:, 32, 32] < 0.2).all()  # the Nyquist checkerboard is stopped
    images = photo(4)
    flat = torch.full_like(images, 0.4)
    assert torch.allclose(op.apply(flat, generator()), flat, atol=1e-5)
    # without the filter (prob 0) the impulse kernel passes the batch through
    assert torch.equal(D.SincFilter(prob=0.0).apply(images, generator()), images)


def test_blur_stage_sinc_cutoff_follows_the_kernel_size() -> None:
    kernels, kinds = D.RealESRGANBlur(sinc_prob=1.0).kernels(256, generator(4), torch.device("cpu"))
    assert (kinds == D.SINC).all()
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(256), atol=1e-5)
    size = (kernels[:, 10] != 0).sum(dim=1)
    # the DC-normalised response at frequency π/4 along x is ~1 when ω > π/4; [π/5, π] reaches below it
    phase = torch.cos(torch.arange(21) - 10.0) * 0 + torch.cos(math.pi / 4 * (torch.arange(21) - 10.0))
    response = (kernels * phase).sum(dim=(1, 2))
    assert response[size < 13].min() > 0.5 and response[size >= 13].min() < 0.5


def test_real_esrgan_poisson_noise_scales_with_the_number_of_levels() -> None:
    # every 8-bit level present: v = 256, so the noise variance at x is x/256 (times scale²)
    ramp = torch.arange(256.0).div(255).repeat(4, 3, 256, 1)
    noisy = D.RealESRGANNoise(gaussian_prob=0.0, poisson_scale=1.0, gray_prob=0.0).apply(ramp, generator())
    middle = (ramp > 0.2) & (ramp < 0.8)  # away from the clipping at 0 and 1
    variance = ((noisy - ramp)[middle] ** 2).mean() / ramp[middle].mean()
    assert variance.item() == pytest.approx(1 / 256, rel=0.05)
    gray = D.RealESRGANNoise(gaussian_prob=0.0, poisson_scale=2.0, gray_prob=1.0).apply(
        ramp * 0.8, generator()
    )
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    gaussian = D.RealESRGANNoise(gaussian_prob=1.0, sigma=20.0).apply(
        torch.full((2, 3, 64, 64), 0.5), generator()
    )
    assert (gaussian - 0.5).std().item() == pytest.approx(20 / 255, rel=0.05)


def test_usm_sharpening_overshoots_edges_and_keeps_flat_regions() -> None:
    step = torch.full((1, 3, 64, 64), 0.3)
    step[..., 32:, :] = 0.7
    sharpened = D._usm_sharpen(step)
    assert sharpened[..., 30, 0].max() < 0.3 - 0.01 and sharpened[..., 33, 0].min() > 0.7 + 0.01
    assert torch.allclose(sharpened[..., :2, :], step[..., :2, :], atol=2e-3)


def test_second_order_rounds_to_8_bit_and_degrades() -> None:
    images = photo(6, 64, 64)
    for op in (D.SecondOrder(), D.SecondOrder(resize_per_batch=True, sharpen=False)):
        degraded, _ = op(images, generator(5))
        assert torch.equal(degraded, (degraded * 255).round() / 255)
        assert ((degraded - images).pow(2).mean(dim=(1, 2, 3)) > 1e-4).all()


def test_second_order_config_spells_out_the_defaults() -> None:
    def settings(op: object) -> dict:
        return {
            key: settings(value) if isinstance(value, D.Degradation) else value
            for key, value in vars(op).items()
        }

    assert settings(load("second_order")) == settings(D.SecondOrder())


def test_contrast_scales_the_deviation_from_each_channel_mean() -> None:
    images = photo(3) * 0.5 + 0.25  # no clipping
    low, _ = D.Contrast(severity=1)(images, generator())
    means = images.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(low, (images - means) * 0.4 + means, atol=1e-6)
    lower, _ = D.Contrast(severity=5)(images, generator())
    assert torch.allclose(lower.std(dim=(2, 3)), images.std(dim=(2, 3)) * 0.05, atol=1e-6)


def test_streak_kernel_is_imagemagick_one_sided_motion_blur() -> None:
    kernels = D._streak_kernels(torch.tensor([-90.0, 0.0]), radius=8, sigma=3)
    assert kernels.shape == (2, 33, 33)
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(2))
    weights = torch.exp(-(torch.arange(17.0) ** 2) / 18)
    # -90°: taps straight up from the centre (row 16 - i); 0°: straight right (column 16 + i)
    assert torch.allclose(kernels[0, :17, 16].flip(0), weights / weights.sum())
    assert torch.allclose(kernels[1, 16, 16:], weights / weights.sum())
    assert kernels[0].count_nonzero() == 17 and kernels[1].count_nonzero() == 17


def test_clipped_zoom_matches_scipy() -> None:
    import scipy.ndimage

    field = torch.randn(1, 1, 37, 50, generator=generator())
    for zoom in (1.75, 2.25, 1.25):
        array = field[0, 0].double().numpy()
        h, w = array.shape
        ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
        top, left = (h - ch) // 2, (w - cw) // 2
        zoomed = scipy.ndimage.zoom(array[top : top + ch, left : left + cw], zoom, order=1)
        top, left = (zoomed.shape[0] - h) // 2, (zoomed.shape[1] - w) // 2
        expected = zoomed[top : top + h, left : left + w]
        np.testing.assert_allclose(D._clipped_zoom(field, zoom)[0, 0].numpy(), expected, atol=1e-5)


def test_snow_whitens_and_adds_falling_flakes() -> None:
    images = photo(8, 64, 64)
    for severity in range(1, 6):
        snowy, _ = D.Snow(severity=severity)(images, generator())
        assert (snowy >= images - 1e-6).all()  # snow only brightens
    black = torch.zeros(8, 3, 64, 64)
    light = D.Snow(severity=1).layer(8, 64, 64, 1, generator(), torch.device("cpu"))
    heavy = D.Snow(severity=5).layer(8, 64, 64, 5, generator(), torch.device("cpu"))
    assert 0 < light.mean() < heavy.mean()
    assert torch.equal(light, (light * 255).round() / 255)
    # streaks fall within 45° of the vertical: the layer varies more across the columns than along them
    along = (heavy[..., 1:, :] - heavy[..., :-1, :]).abs().mean()
    across = (heavy[..., :, 1:] - heavy[..., :, :-1]).abs().mean()
    assert across > along
    snowy, _ = D.Snow(severity=1)(black, generator())
    assert torch.equal(snowy[:, 0], snowy[:, 1])  # gray flakes on a gray (here black, whitened) image
    assert snowy.mean() >= 0.2 * 0.5  # (1 - 0.8)·max(0, 1.5·0 + 0.5) before the flakes


def test_constyle_v2_takes_the_snow_branch_40_percent_of_the_time() -> None:
    config = OmegaConf.load(CONF_DIR / "constyle_v2.yaml")
    config.ops.second_order.resize_per_batch = True  # one resize group: fast enough for 200 samples
    op = instantiate(config)
    assert op.names == ("contrast_snow", "second_order")
    images = photo(200, 16, 16)
    degraded, type_ids = op(images, generator(11))
    assert abs((type_ids == 0).float().mean().item() - 0.4) < 0.08
    snow_branch = type_ids == 0
    assert torch.equal(degraded, (degraded * 255).round() / 255)
    assert (degraded[snow_branch] >= images[snow_branch] * 0.4 - 1 / 255).all()
    # contrast + snow whitens: its samples are brighter on average than the clean ones, unlike the others
    brightening = (degraded - images).mean(dim=(1, 2, 3))
    assert brightening[snow_branch].min() > 0.05 and brightening[~snow_branch].abs().mean() < 0.05
