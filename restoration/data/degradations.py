"""Batched, on-device synthesis of degraded images from clean ones.

Every operation takes a float batch ``N×3×H×W`` in ``[0, 1]`` on any device and a ``torch.Generator`` on that
device, draws its own parameters for each sample, and returns ``(degraded, type_ids)``. All randomness comes
from the generator, so a seed reproduces a batch bit for bit (splats are accumulated in fixed point for that
reason: CUDA's atomic float adds are unordered).

Nothing here waits for the device, except the libjpeg/nvjpeg codec of :class:`JPEG` (host work by nature).
Pixel-level randomness (noise fields, kernels, per-sample strengths used only in tensor math) is drawn on the
device. Choices that steer the host's control flow (which op or which samples, the order of a chain, a
severity level, a resize, a JPEG quality) are drawn on the host from a ``random.Random`` seeded by the
generator's state (:func:`_host_random`), never read back from the device: reading a device value
(``.tolist()``, ``nonzero``, boolean indexing) would stall a GPU until it has caught up. Sample subsets are
gathered with index tensors copied from the host (from pinned memory on CUDA, so the copy queues behind the
kernels instead of waiting for them).

What each operation implements, and where it comes from:

- :class:`BicubicDownsample` — MATLAB's ``imresize(img, 1/s, 'bicubic')`` (Keys, "Cubic convolution
  interpolation for digital image processing", IEEE TASSP 1981, a = -0.5), the degradation of the SR
  benchmarks since Timofte et al. (ACCV 2014) and of IPT (Chen et al., "Pre-Trained Image Processing
  Transformer", CVPR 2021). ``method="matlab"`` builds MATLAB's per-output-pixel weights (kernel widened by
  ``s`` for anti-aliasing, symmetric boundary, weights normalised per output pixel) as two dense matrices and
  applies them with matmuls: it equals MATLAB up to float32 rounding (MATLAB computes in double and, on uint8
  input, rounds; ``quantize=True`` does that rounding). ``method="torch"`` is ``F.interpolate(mode="bicubic",
  antialias=True)``, which follows PIL: same kernel and width, but near the borders it drops the taps that
  fall outside the image and renormalises the rest instead of mirroring the image. The two differ only within
  a few pixels of the border; experiments/bench/README.md gives the measured difference on a photo.
- :class:`GaussianNoise`, :class:`PoissonNoise`, :class:`PoissonGaussianNoise` — additive white Gaussian noise
  as in DnCNN (Zhang et al., TIP 2017), photon shot noise and the Poisson-Gaussian sensor model of Foi et al.
  ("Practical Poissonian-Gaussian noise modeling and fitting for single-image raw-data", TIP 2008).
- :class:`RainStreaks` — procedural additive streaks in the spirit of Rain100L/H (Yang et al., "Deep joint
  rain detection and removal from a single image", CVPR 2017): sparse seeds splatted along short lines, then
  blurred.
- :class:`MotionBlur` — random camera-shake trajectories after Boracchi and Foi ("Modeling the performance of
  image restoration from motion blur", TIP 2012); :class:`GaussianBlur` — isotropic and anisotropic Gaussian
  kernels as in Real-ESRGAN (Wang et al., ICCVW 2021); :class:`DefocusBlur` — an anti-aliased disk.
- :class:`JPEG` — real libjpeg through torchvision (nvjpeg on CUDA), or kornia's differentiable approximation
  (Reich et al., "Differentiable JPEG: The devil is in the details", WACV 2024).
- :class:`Haze` — the atmospheric scattering model of Koschmieder, as used to build RESIDE (Li et al., TIP
  2019).
- :class:`LowLight` — gamma darkening plus Poisson-Gaussian noise, a synthetic stand-in for LOL (Wei et al.,
  "Deep Retinex decomposition for low-light enhancement", BMVC 2018).
- :class:`RealESRGANBlur`, :class:`SincFilter`, :class:`RealESRGANNoise`, :class:`SecondOrder` — Real-ESRGAN's
  blur kernels (Gaussian, generalized Gaussian, plateau, 2-D sinc), noise and second-order pipeline (Wang et
  al., "Real-ESRGAN", ICCVW 2021), at scale 1 as ConStyle v2 pre-trains (Fan et al., arXiv 2406.18242);
  :class:`Quantize` — rounding to 8-bit levels.
- :class:`Contrast` and :class:`Snow` — ImageNet-C's contrast and snow (Hendrycks and Dietterich,
  "Benchmarking neural network robustness to common corruptions and perturbations", ICLR 2019), the snow
  with ConStyle v2's severity table and ImageMagick's motion blur rebuilt as per-sample kernels.
- :class:`RandomCompose` — a random chain of operations per sample (Real-ESRGAN-style mixtures);
  :class:`AllInOne` — one degradation type per sample with its type id, for all-in-one restoration (ConStyle
  v2, PromptIR).

Ranges are given as a fixed value or ``[lo, hi]`` and are drawn uniformly per sample. Noise levels are on the
0-255 scale as in the papers.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Callable, Hashable, Mapping, Sequence

import kornia
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.io
from torch import Tensor

from restoration.data.batch import Stream, stream_seed
from restoration.errors import ConfigError

__all__ = [
    "JPEG",
    "REAL_ESRGAN_KERNEL_TYPES",
    "SINC",
    "AllInOne",
    "BicubicDownsample",
    "Contrast",
    "DefocusBlur",
    "Degradation",
    "GaussianBlur",
    "GaussianNoise",
    "Haze",
    "Identity",
    "LowLight",
    "MotionBlur",
    "PoissonGaussianNoise",
    "PoissonNoise",
    "Quantize",
    "RainStreaks",
    "RandomCompose",
    "RealESRGANBlur",
    "RealESRGANNoise",
    "SecondOrder",
    "SincFilter",
    "Snow",
    "TaskPerStep",
]

# Kernels at least this wide are applied through the FFT: on the 2-core CPU the direct grouped convolution
# wins below it and loses above it for 16×3×256×256 batches (experiments/bench/README.md, direct vs FFT).
_FFT_MIN_KERNEL = 25
# Splats are summed as integers in units of 2**-24: integer sums do not depend on the order of CUDA's atomics.
_SPLAT_UNIT = 2.0**24


# argument parsing


def _as_range(
    value: float | Sequence[float],
    *,
    arg: str,
    low: float = -math.inf,
    high: float = math.inf,
    integer: bool = False,
) -> tuple[float, float]:
    """Parse a fixed value or a ``[lo, hi]`` pair into ``(lo, hi)``, checking ``low <= lo <= hi <= high``."""
    kind = "integer" if integer else "number"
    if isinstance(value, bool | str):
        raise ConfigError(f"{arg} must be a {kind} or a [lo, hi] pair, got {value!r}")
    if isinstance(value, Sequence):
        if len(value) != 2:
            raise ConfigError(
                f"{arg} must be a {kind} or a [lo, hi] pair, got {len(value)} values: {list(value)}"
            )
        lo, hi = value
    else:
        lo = hi = value
    for bound in (lo, hi):
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            raise ConfigError(f"{arg} must be a {kind} or a [lo, hi] pair, got {value!r}")
        if integer and float(bound) != int(bound):
            raise ConfigError(f"{arg} must hold integers, got {value!r}")
    if not lo <= hi:
        raise ConfigError(f"{arg} must be [lo, hi] with lo <= hi, got [{lo}, {hi}]")
    if lo < low or hi > high:
        raise ConfigError(f"{arg} must lie in [{low}, {high}], got [{lo}, {hi}]")
    return (int(lo), int(hi)) if integer else (float(lo), float(hi))


def _as_optional_range(
    value: float | Sequence[float] | None, *, arg: str, low: float = -math.inf, high: float = math.inf
) -> tuple[float, float] | None:
    return None if value is None else _as_range(value, arg=arg, low=low, high=high)


def _as_odd_range(value: int | Sequence[int], *, arg: str) -> tuple[int, int]:
    lo, hi = _as_range(value, arg=arg, low=1, integer=True)
    if lo % 2 == 0 or hi % 2 == 0:
        raise ConfigError(f"{arg} must be odd (the kernel needs a centre pixel), got [{lo}, {hi}]")
    return lo, hi


def _as_probability(value: float, *, arg: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{arg} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _as_name(name: str) -> tuple[str, ...]:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name must be a non-empty string, got {name!r}")
    return (name,)


# random draws and shared tensor helpers


def _host_random(generator: torch.Generator, tag: str) -> random.Random:
    """A host RNG for the choices that steer control flow, drawn from ``generator`` without reading a device.

    A generator's state is host memory on every device (a CPU generator's Mersenne Twister; a CUDA
    generator's seed and Philox offset, which advances as random kernels are queued), so it is read without
    waiting for anything, hashed with ``tag`` (which names the draw) into the seed of a ``random.Random``,
    and the generator is then advanced by one device draw. The choices are thus a pure function of the
    generator's state, as its device draws are: one seed reproduces both. And no two host draws start from
    one state, so an op called twice on one generator (a composition's op on two subsets, a chain that
    repeats an op) chooses afresh.
    """
    state = generator.get_state()  # a CPU uint8 tensor for every kind of generator
    # np.from_dlpack views the CPU tensor's bytes in place; the tag is a stable salt (not Python's hash())
    digest = hashlib.blake2b(tag.encode(), digest_size=8)
    digest.update(np.from_dlpack(state))
    torch.rand((), generator=generator, device=generator.device)
    return random.Random(int.from_bytes(digest.digest(), "little"))


def _to_device(values: Sequence | Tensor, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """Host numbers (or a CPU tensor) as a tensor on ``device``, without waiting for the device.

    ``torch.tensor(values, device="cuda")`` copies from pageable memory and synchronises the stream; a copy
    from pinned memory is queued behind the kernels like one of them.
    """
    tensor = torch.as_tensor(values, dtype=dtype)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _on_samples(images: Tensor, samples: Sequence[int], degrade: Callable[[Tensor], Tensor]) -> Tensor:
    """``images`` with ``degrade`` applied to the samples at host positions ``samples``, the others unchanged.

    When ``samples`` is the whole batch, ``degrade`` runs on it without indexing; a subset is gathered and
    scattered back by an index tensor copied from the host. Returns ``images`` itself when ``samples`` is
    empty.
    """
    if len(samples) == images.shape[0]:
        return degrade(images)
    if not samples:
        return images
    index = _to_device(samples, images.device, torch.int64)
    return images.index_copy(0, index, degrade(images.index_select(0, index)))


def _scaled_shape(images: Tensor, scale: int) -> tuple[int, int, int, int]:
    n, c, height, width = images.shape
    return n, c, height // scale, width // scale


def _by_group(
    images: Tensor,
    labels: Sequence[Hashable],
    degrade: Callable[[Tensor, Hashable], Tensor],
    *,
    scale: int = 1,
) -> Tensor:
    """``degrade(subset, label)`` on the samples of each label (host values, one per sample), in sample order.

    Groups run in the order of their first sample; a label shared by the whole batch runs on it without
    indexing. ``scale`` is the down-sampling factor of ``degrade``'s output.
    """
    groups: dict[Hashable, list[int]] = {}
    for sample, label in enumerate(labels):
        groups.setdefault(label, []).append(sample)
    if len(groups) == 1:
        (label,) = groups
        return degrade(images, label)
    degraded = images.new_empty(_scaled_shape(images, scale))
    for label, samples in groups.items():
        index = _to_device(samples, images.device, torch.int64)
        degraded.index_copy_(0, index, degrade(images.index_select(0, index), label))
    return degraded


def _uniform(bounds: tuple[float, float], n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def _randint(bounds: tuple[int, int], n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    lo, hi = bounds
    return torch.randint(lo, hi + 1, (n,), generator=generator, device=device)


def _odd_sizes(bounds: tuple[int, int], n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """Odd kernel sizes drawn uniformly from ``lo, lo + 2, ..., hi``."""
    lo, hi = bounds
    return lo + 2 * torch.randint(0, (hi - lo) // 2 + 1, (n,), generator=generator, device=device)


def _centred_grid(size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Pixel offsets ``(y, x)`` from the centre of a ``size×size`` kernel, each of shape ``1×size×size``."""
    axis = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2
    return axis.view(1, size, 1).expand(1, size, size), axis.view(1, 1, size).expand(1, size, size)


def _normalise(kernels: Tensor) -> Tensor:
    return kernels / kernels.sum(dim=(-2, -1), keepdim=True)


def _border(images: Tensor, kernel_size: int) -> str:
    # reflect padding needs the pad to be shorter than the image side; tiny images fall back to replicate
    return "reflect" if kernel_size // 2 < min(images.shape[-2:]) else "replicate"


def _filter_per_sample(
    images: Tensor, kernels: Tensor, *, method: str = "auto", border: str | None = None
) -> Tensor:
    """Correlate each sample with its own ``k×k`` kernel (``N×k×k``), reflect padding, same output size.

    ``method`` is ``"direct"`` (grouped convolution), ``"fft"`` or ``"auto"`` (the faster one for the size);
    ``border`` overrides the padding (``"replicate"``, ...).
    """
    size = kernels.shape[-1]
    border = _border(images, size) if border is None else border
    if method == "direct" or (method == "auto" and size < _FFT_MIN_KERNEL):
        return kornia.filters.filter2d(images, kernels, border_type=border)
    # kornia.filters.fft_conv transforms the kernel once per channel; once per sample is enough
    pad = size // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode=border)
    # zero-padding to a 5-smooth length keeps the FFT fast (256 + 26 = 282 = 2·3·47 is three times slower)
    shape = (_fft_length(padded.shape[-2]), _fft_length(padded.shape[-1]))
    kernel_spectrum = torch.fft.rfft2(kernels.flip(-2, -1), s=shape)
    filtered = torch.fft.irfft2(torch.fft.rfft2(padded, s=shape) * kernel_spectrum[:, None], s=shape)
    # the circular wrap-around only reaches the first size - 1 rows and columns, which are cropped
    height, width = images.shape[-2:]
    return filtered[..., size - 1 : size - 1 + height, size - 1 : size - 1 + width].contiguous()


def _fft_length(length: int) -> int:
    """The smallest 2^a·3^b·5^c that is at least ``length``."""
    best = 2 ** math.ceil(math.log2(length))
    power_5 = 1
    while power_5 < best:
        power_35 = power_5
        while power_35 < best:
            candidate = power_35 * 2 ** max(0, math.ceil(math.log2(length / power_35)))
            best = min(best, candidate)
            power_35 *= 3
        power_5 *= 5
    return best


def _gaussian_kernels(sigma: Tensor, *, size: int, radius: Tensor | None = None) -> Tensor:
    """Normalised 1-D Gaussians ``N×size``, one per ``sigma`` (``N``), cut to ``|offset| <= radius``."""
    offsets = torch.arange(size, device=sigma.device, dtype=torch.float32) - (size - 1) / 2
    kernels = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)
    if radius is not None:
        kernels = kernels * (offsets.abs() <= radius[:, None])
    return kernels / kernels.sum(dim=1, keepdim=True)


def _filter_separable(images: Tensor, kernels: Tensor) -> Tensor:
    """Filter each sample (``N×C×H×W``) with the outer product of its own 1-D kernel (``N×k``) with itself."""
    n, c, h, w = images.shape
    size = kernels.shape[-1]
    pad = (size // 2, size // 2, 0, 0)
    border = _border(images, size)
    weight = kernels.repeat_interleave(c, dim=0)[:, None, None, :]
    # Both passes filter along rows: oneDNN's depthwise convolution is 2-3 times slower with a k×1 kernel than
    # with a 1×k one on a CPU. Padding the transposed rows writes the transpose for free.
    rows = F.conv2d(F.pad(images, pad, mode=border).view(1, n * c, h, -1), weight, groups=n * c)
    columns = F.conv2d(F.pad(rows.transpose(-2, -1), pad, mode=border), weight, groups=n * c)
    return columns.transpose(-2, -1).reshape(n, c, h, w)


def _splat_bilinear(y: Tensor, x: Tensor, weight: Tensor, *, height: int, width: int) -> Tensor:
    """Scatter-add weighted points ``(N, P)`` at sub-pixel positions into ``N×height×width`` canvases.

    Each point is shared among its four neighbouring pixels (bilinear splatting); points outside the canvas
    are dropped.
    """
    n, device = y.shape[0], y.device
    # a 2-pixel margin catches the neighbours of points just outside the canvas and is cropped away; points
    # further out are clamped into it first, so no per-corner bounds test is needed
    margin = 2
    padded_height, padded_width = height + 2 * margin, width + 2 * margin
    y = y.clamp(-margin, height + margin - 2)
    x = x.clamp(-margin, width + margin - 2)
    top, left = y.floor(), x.floor()
    below, right = y - top, x - left
    above, left_share = 1 - below, 1 - right
    shares = torch.stack([above * left_share, above * right, below * left_share, below * right])
    amounts = (shares * weight).mul_(_SPLAT_UNIT).round_().long()
    start = (top.long() + margin) * padded_width + (left.long() + margin)
    start += torch.arange(n, device=device).view(n, 1) * (padded_height * padded_width)
    corners = _to_device([0, 1, padded_width, padded_width + 1], device).view(4, 1, 1)
    canvas = torch.zeros(n * padded_height * padded_width, dtype=torch.int64, device=device)
    canvas.scatter_add_(0, (start + corners).flatten(), amounts.flatten())
    canvas = canvas.view(n, padded_height, padded_width)[:, margin : margin + height, margin : margin + width]
    return canvas.float().div_(_SPLAT_UNIT)


def _check_batch(images: Tensor, generator: torch.Generator) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"expected images of shape N×3×H×W, got {shape}")
    if not images.is_floating_point():
        raise ValueError(
            f"expected float images in [0, 1], got dtype {images.dtype}; convert with x.float() / 255"
        )
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"expected a torch.Generator, got {type(generator).__name__}")
    if torch.device(generator.device) != images.device:
        raise ValueError(
            f"generator is on {generator.device} but images are on {images.device}; "
            f"create it with torch.Generator(device=images.device)"
        )


# base class


class Degradation:
    """Base class. ``images``: float32 ``N×3×H×W`` in ``[0, 1]`` on any device.

    Subclasses implement :meth:`apply`; calling the object checks the batch and adds the per-sample type ids.
    """

    names: tuple[str, ...] = ("none",)
    """Degradation type names; the position of a name is its type id."""
    scale: int = 1
    """Spatial down-sampling factor of the output (only super-resolution ops have one above 1)."""

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Degrade a float32 batch without checking it; compositions call this on subsets of their batch."""
        raise NotImplementedError

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Return ``(degraded N×3×H/s×W/s float32 in [0, 1], type_ids int64 N)`` on ``images.device``."""
        _check_batch(images, generator)
        if images.shape[0] == 0:
            empty = images.new_empty(_scaled_shape(images, self.scale), dtype=torch.float32)
            return empty, torch.zeros(0, dtype=torch.int64, device=images.device)
        degraded, type_ids = self._degrade(images.float(), generator)
        return degraded.contiguous(), type_ids

    def _degrade(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        type_ids = torch.zeros(images.shape[0], dtype=torch.int64, device=images.device)
        return self.apply(images, generator), type_ids

    def __repr__(self) -> str:
        return f"{type(self).__name__}(names={self.names}, scale={self.scale})"


class Identity(Degradation):
    """The clean image itself, as a type of its own in all-in-one mixtures."""

    def __init__(self, *, name: str = "none") -> None:
        """
        Args:
            name: the type name.
        """
        self.names = _as_name(name)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return images.clone()


# super-resolution


def _cubic(distance: Tensor) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5, as in MATLAB's imresize."""
    d = distance.abs()
    near = 1.5 * d**3 - 2.5 * d**2 + 1
    far = -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2
    return torch.where(d <= 1, near, torch.where(d <= 2, far, torch.zeros_like(d)))


@functools.lru_cache(maxsize=32)
def _matlab_resize_matrix(in_length: int, scale: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """MATLAB's ``imresize(x, 1/scale, 'bicubic')`` along one axis, as an ``(n/scale)×n`` matrix.

    Follows MATLAB's ``contributions``: output pixel ``i`` (1-based) maps to input coordinate
    ``u = i·s + (1 - s)/2``, the cubic kernel is stretched by ``s`` so that it low-passes, taps that fall
    outside the image are mirrored back in (``symmetric`` padding), and each row is normalised to sum to one.
    """
    out_length = in_length // scale
    centres = torch.arange(1, out_length + 1, dtype=torch.float64) * scale + 0.5 * (1 - scale)
    kernel_width = 4.0 * scale
    first = torch.floor(centres - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = first[:, None] + torch.arange(taps, dtype=torch.float64)
    weights = _cubic((centres[:, None] - indices) / scale) / scale
    weights = weights / weights.sum(dim=1, keepdim=True)
    mirror = torch.cat([torch.arange(in_length), torch.arange(in_length - 1, -1, -1)])
    columns = mirror[(indices.long() - 1) % (2 * in_length)]
    matrix = torch.zeros(out_length, in_length, dtype=torch.float64).scatter_add_(1, columns, weights)
    return _to_device(matrix.to(dtype), device)


class BicubicDownsample(Degradation):
    """Bicubic ×s down-sampling, the SR benchmark degradation (see the module docstring for MATLAB parity)."""

    def __init__(
        self, *, scale: int, method: str = "matlab", quantize: bool = False, name: str | None = None
    ) -> None:
        """
        Args:
            scale: down-sampling factor, 2, 3 or 4; H and W of the input must be multiples of it.
            method: ``"matlab"`` (MATLAB imresize, symmetric borders) or ``"torch"`` (F.interpolate with
                antialias, PIL-style borders).
            quantize: round the output to 8-bit levels, as MATLAB does for uint8 input and as the stored LR
                images of the SR benchmarks are.
            name: the type name, ``bicubic_x{scale}`` by default.
        """
        if scale not in (2, 3, 4):
            raise ConfigError(f"scale must be 2, 3 or 4, got {scale!r}")
        if method not in ("matlab", "torch"):
            raise ConfigError(f"method must be 'matlab' or 'torch', got {method!r}")
        self.scale = scale
        self.method = method
        self.quantize = bool(quantize)
        self.names = _as_name(f"bicubic_x{scale}" if name is None else name)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        height, width = images.shape[-2:]
        if height % self.scale or width % self.scale:
            raise ValueError(
                f"image size {height}×{width} is not a multiple of the scale {self.scale}; "
                f"crop it to {height - height % self.scale}×{width - width % self.scale} first"
            )
        if self.method == "matlab":
            rows = _matlab_resize_matrix(height, self.scale, images.device, images.dtype)
            columns = _matlab_resize_matrix(width, self.scale, images.device, images.dtype)
            low = rows @ images @ columns.T
        else:
            size = (height // self.scale, width // self.scale)
            low = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
        low = low.clamp(0, 1)
        return low.mul(255).round().div(255) if self.quantize else low


# noise


class GaussianNoise(Degradation):
    """Additive white Gaussian noise, colour or (with ``gray_prob``) the same on all channels."""

    def __init__(
        self,
        *,
        sigma: float | Sequence[float],
        gray_prob: float = 0.0,
        clip: bool = True,
        name: str = "gaussian_noise",
    ) -> None:
        """
        Args:
            sigma: noise standard deviation on the 0-255 scale, fixed or ``[lo, hi]`` drawn per sample.
            gray_prob: probability that a sample gets one noise field shared by its three channels.
            clip: clamp the result to [0, 1]. ``False`` keeps the unclipped noisy values of the classic AWGN
                benchmarks; it is the one way an op returns values outside [0, 1].
            name: the type name.
        """
        self.sigma = _as_range(sigma, arg="sigma", low=0)
        self.gray_prob = _as_probability(gray_prob, arg="gray_prob")
        self.clip = bool(clip)
        self.names = _as_name(name)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, device = images.shape[0], images.device
        sigma = _uniform(self.sigma, n, generator, device).div_(255).view(n, 1, 1, 1)
        gray = (torch.rand(n, generator=generator, device=device) < self.gray_prob).view(n, 1, 1, 1)
        noise = torch.randn(images.shape, generator=generator, device=device)
        # a select rather than indexing the grey samples, which would wait for the device to count them
        noise = torch.where(gray, noise[:, :1], noise)
        # in place on the fresh noise buffer: this op is memory-bound on a CPU
        noisy = noise.mul_(sigma).add_(images)
        return noisy.clamp_(0, 1) if self.clip else noisy


def _poisson_gaussian(
    images: Tensor,
    peak: tuple[float, float] | None,
    read_sigma: tuple[float, float] | None,
    generator: torch.Generator,
) -> Tensor:
    """Shot noise ``Poisson(x·peak)/peak`` followed by Gaussian read noise (sigma on the 0-255 scale)."""
    n, device = images.shape[0], images.device
    noisy = images
    if peak is not None:
        photons = _uniform(peak, n, generator, device).view(n, 1, 1, 1)
        noisy = torch.poisson(noisy.clamp(min=0) * photons, generator=generator) / photons
    if read_sigma is not None:
        sigma = _uniform(read_sigma, n, generator, device).div_(255).view(n, 1, 1, 1)
        noise = torch.randn(images.shape, generator=generator, device=device)
        noisy = noise.mul_(sigma).add_(noisy)
    return noisy.clamp(0, 1)


class PoissonNoise(Degradation):
    """Photon shot noise: ``Poisson(x·peak) / peak``, so the variance of a pixel is ``x / peak``."""

    def __init__(self, *, peak: float | Sequence[float], name: str = "poisson_noise") -> None:
        """
        Args:
            peak: expected photon count of a white pixel, fixed or ``[lo, hi]`` per sample (lower is noisier).
            name: the type name.
        """
        self.peak = _as_range(peak, arg="peak", low=1e-3)
        self.names = _as_name(name)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return _poisson_gaussian(images, self.peak, None, generator)


class PoissonGaussianNoise(Degradation):
    """Shot noise plus Gaussian read noise: pixel variance ``x / peak + (sigma/255)²`` (Foi et al., 2008)."""

    def __init__(
        self,
        *,
        peak: float | Sequence[float],
        sigma: float | Sequence[float],
        name: str = "poisson_gaussian_noise",
    ) -> None:
        """
        Args:
            peak: expected photon count of a white pixel, fixed or ``[lo, hi]`` per sample.
            sigma: read-noise standard deviation on the 0-255 scale, fixed or ``[lo, hi]`` per sample.
            name: the type name.
        """
        self.peak = _as_range(peak, arg="peak", low=1e-3)
        self.sigma = _as_range(sigma, arg="sigma", low=0)
        self.names = _as_name(name)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return _poisson_gaussian(images, self.peak, self.sigma, generator)


# rain

# Numbers picked by eye on 256×256 crops to resemble Rain100L (sparse, thin, faint, near-vertical) and
# Rain100H (dense, long, bright, slanted). Lengths and widths are in pixels; density is streaks per pixel;
# angles are in degrees from the vertical; width is the sigma of the Gaussian that thickens the streaks;
# brightness is the intensity an isolated streak adds at its core.
_RAIN_PRESETS: dict[str, dict[str, tuple[float, float]]] = {
    "light": {
        "density": (0.001, 0.003),
        "length": (8.0, 20.0),
        "angle": (-15.0, 15.0),
        "width": (0.4, 0.8),
        "brightness": (0.3, 0.6),
    },
    "heavy": {
        "density": (0.004, 0.008),
        "length": (20.0, 40.0),
        "angle": (-35.0, 35.0),
        "width": (0.6, 1.2),
        "brightness": (0.5, 0.9),
    },
}
# the largest deviation in degrees of a streak from its image's dominant angle
_RAIN_JITTER = {"light": 2.0, "heavy": 5.0}


class RainStreaks(Degradation):
    """Additive rain streaks: seeds splatted along short lines, thickened by a small Gaussian blur.

    Per image: a streak count ``density·H·W``, a dominant angle, a width and a brightness; per streak: a
    position, a length and the dominant angle plus a small jitter. Each streak is rasterised by bilinear
    splatting of points one pixel apart with a sine taper towards its ends (scatter-add, the same as blurring
    the seed along a line but without a dense convolution), so the layer costs O(number of streak pixels).
    """

    def __init__(
        self,
        *,
        preset: str = "light",
        density: float | Sequence[float] | None = None,
        length: float | Sequence[float] | None = None,
        angle: float | Sequence[float] | None = None,
        width: float | Sequence[float] | None = None,
        brightness: float | Sequence[float] | None = None,
        angle_jitter: float | None = None,
        name: str = "rain",
    ) -> None:
        """
        Args:
            preset: ``"light"`` (Rain100L-like) or ``"heavy"`` (Rain100H-like); other arguments override it.
            density: streaks per pixel, per image.
            length: streak length in pixels, per streak.
            angle: dominant angle in degrees from the vertical, per image.
            width: sigma in pixels of the Gaussian that thickens the streaks, per image.
            brightness: intensity an isolated streak adds at its core, per image.
            angle_jitter: maximum deviation in degrees of a streak from its image's dominant angle.
            name: the type name.
        """
        if preset not in _RAIN_PRESETS:
            raise ConfigError(f"preset must be one of {sorted(_RAIN_PRESETS)}, got {preset!r}")
        defaults = _RAIN_PRESETS[preset]
        self.preset = preset
        self.density = _as_range(
            defaults["density"] if density is None else density, arg="density", low=0, high=1
        )
        self.length = _as_range(defaults["length"] if length is None else length, arg="length", low=0)
        self.angle = _as_range(defaults["angle"] if angle is None else angle, arg="angle", low=-90, high=90)
        self.width = _as_range(defaults["width"] if width is None else width, arg="width", low=0.1, high=10)
        self.brightness = _as_range(
            defaults["brightness"] if brightness is None else brightness, arg="brightness", low=0, high=1
        )
        jitter = _RAIN_JITTER[preset] if angle_jitter is None else angle_jitter
        self.angle_jitter = _as_range(jitter, arg="angle_jitter", low=0, high=90)[0]
        self.names = _as_name(name)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, height, width = images.shape
        device = images.device
        max_streaks = max(1, math.ceil(self.density[1] * height * width))
        count = (_uniform(self.density, n, generator, device) * height * width).round()
        active = torch.arange(max_streaks, device=device) < count[:, None]
        dominant = torch.deg2rad(_uniform(self.angle, n, generator, device))
        jitter = math.radians(self.angle_jitter) * (
            2 * torch.rand(n, max_streaks, generator=generator, device=device) - 1
        )
        angle = dominant[:, None] + jitter
        length = _uniform(self.length, n * max_streaks, generator, device).view(n, max_streaks)
        centre_y = torch.rand(n, max_streaks, generator=generator, device=device) * height - 0.5
        centre_x = torch.rand(n, max_streaks, generator=generator, device=device) * width - 0.5
        # points at most a pixel apart; weighting each by the spacing gives every streak a unit line density
        steps = math.ceil(self.length[1]) + 2
        along = torch.linspace(-0.5, 0.5, steps, device=device)
        offset = length[..., None] * along
        taper = torch.sin(math.pi * (along + 0.5))
        weight = (length / (steps - 1) * active)[..., None] * taper
        streaks = _splat_bilinear(
            (centre_y[..., None] + offset * torch.cos(angle)[..., None]).flatten(1),
            (centre_x[..., None] + offset * torch.sin(angle)[..., None]).flatten(1),
            weight.flatten(1),
            height=height,
            width=width,
        )
        sigma = _uniform(self.width, n, generator, device)
        kernels = _gaussian_kernels(sigma, size=2 * math.ceil(3 * self.width[1]) + 1)
        layer = _filter_separable(streaks[:, None], kernels)
        # across a streak the splat is a unit-area triangle (variance 1/6); the blur lowers its peak to 1/core
        core = torch.sqrt(2 * math.pi * (sigma**2 + 1 / 6)).view(n, 1, 1, 1)
        brightness = _uniform(self.brightness, n, generator, device).view(n, 1, 1, 1)
        return (images + brightness * (layer * core).clamp(max=1)).clamp(0, 1)


# blur


class MotionBlur(Degradation):
    """Camera-shake blur along random trajectories (Boracchi and Foi, TIP 2012), one kernel per sample.

    A trajectory is a constant-speed random walk with inertia: its heading drifts by Gaussian turns and, with
    a small probability per step, jumps by about 180° (the "big shakes" of the paper). The walk is scaled to
    the drawn path length, shrunk if its extent exceeds the kernel, centred, rasterised into the kernel grid
    by bilinear splatting (scatter-add) and normalised to sum to one.
    """

    def __init__(
        self,
        *,
        kernel_size: int | Sequence[int],
        length: float | Sequence[float] = (0.5, 1.0),
        anxiety: float | Sequence[float] = (0.0, 0.5),
        name: str = "motion_blur",
    ) -> None:
        """
        Args:
            kernel_size: odd kernel side, fixed or ``[lo, hi]`` (odd sizes drawn per sample).
            length: path length of the trajectory as a fraction of ``kernel_size - 1``, per sample.
            anxiety: Boracchi and Foi's shake intensity in [0, 1], per sample: 0 is a straight line, 1 a
                wiggly path with frequent reversals.
            name: the type name.
        """
        self.kernel_size = _as_odd_range(kernel_size, arg="kernel_size")
        self.length = _as_range(length, arg="length", low=0, high=4)
        self.anxiety = _as_range(anxiety, arg="anxiety", low=0, high=1)
        self.names = _as_name(name)

    def kernels(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """Draw ``n`` trajectory kernels on a common ``k×k`` grid, ``k`` the largest kernel size."""
        grid = self.kernel_size[1]
        steps = 2 * grid + 1  # about two points per pixel of path
        size = _odd_sizes(self.kernel_size, n, generator, device).float()
        anxiety = _uniform(self.anxiety, n, generator, device)[:, None]
        path = _uniform(self.length, n, generator, device) * (size - 1)
        heading = 2 * math.pi * torch.rand(n, 1, generator=generator, device=device)
        turns = 0.5 * anxiety * torch.randn(n, steps - 1, generator=generator, device=device)
        shake_rate = 0.2 * anxiety * torch.rand(n, 1, generator=generator, device=device)
        shakes = torch.rand(n, steps - 1, generator=generator, device=device) < shake_rate
        reversal = math.pi + torch.rand(n, steps - 1, generator=generator, device=device) - 0.5
        heading = heading + torch.cumsum(turns + shakes * reversal, dim=1)
        step = (path / (steps - 1))[:, None]
        start = torch.zeros(n, 1, device=device)
        y = torch.cat([start, torch.cumsum(step * torch.sin(heading), dim=1)], dim=1)
        x = torch.cat([start, torch.cumsum(step * torch.cos(heading), dim=1)], dim=1)
        extent = torch.maximum(y.amax(1) - y.amin(1), x.amax(1) - x.amin(1))
        shrink = torch.clamp((size - 1) / extent.clamp(min=1e-6), max=1)[:, None]
        centre = (grid - 1) / 2
        y = (y - (y.amax(1, keepdim=True) + y.amin(1, keepdim=True)) / 2) * shrink + centre
        x = (x - (x.amax(1, keepdim=True) + x.amin(1, keepdim=True)) / 2) * shrink + centre
        weight = torch.full_like(y, 1 / steps)
        return _normalise(_splat_bilinear(y, x, weight, height=grid, width=grid))

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        kernels = self.kernels(images.shape[0], generator, images.device)
        return _filter_per_sample(images, kernels).clamp_(0, 1)


class GaussianBlur(Degradation):
    """Gaussian blur, isotropic or (with ``anisotropic_prob``) anisotropic with a random rotation.

    Kernels are truncated to each sample's odd size and normalised. Batches with only isotropic kernels take
    the separable path, which is several times faster on a CPU.
    """

    def __init__(
        self,
        *,
        kernel_size: int | Sequence[int],
        sigma: float | Sequence[float],
        anisotropic_prob: float = 0.0,
        name: str = "gaussian_blur",
    ) -> None:
        """
        Args:
            kernel_size: odd kernel side, fixed or ``[lo, hi]`` (odd sizes drawn per sample).
            sigma: standard deviation in pixels, fixed or ``[lo, hi]``; anisotropic kernels draw each axis's
                sigma from it.
            anisotropic_prob: probability that a sample's kernel is anisotropic with a uniform rotation.
            name: the type name.
        """
        self.kernel_size = _as_odd_range(kernel_size, arg="kernel_size")
        self.sigma = _as_range(sigma, arg="sigma", low=1e-3)
        self.anisotropic_prob = _as_probability(anisotropic_prob, arg="anisotropic_prob")
        self.names = _as_name(name)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, device = images.shape[0], images.device
        grid = self.kernel_size[1]
        radius = ((_odd_sizes(self.kernel_size, n, generator, device) - 1) / 2).view(n, 1, 1)
        sigma_x = _uniform(self.sigma, n, generator, device).view(n, 1, 1)
        sigma_y = _uniform(self.sigma, n, generator, device).view(n, 1, 1)
        rotation = math.pi * torch.rand(n, 1, 1, generator=generator, device=device)
        # drawn on the host: it picks the (much faster) separable path when no sample is anisotropic
        draws = _host_random(generator, "GaussianBlur.anisotropic")
        anisotropic = [draws.random() < self.anisotropic_prob for _ in range(n)]
        if not any(anisotropic):
            kernels = _gaussian_kernels(sigma_x.view(n), size=grid, radius=radius.view(n))
            return _filter_separable(images, kernels).clamp_(0, 1)
        anisotropic = _to_device(anisotropic, device).view(n, 1, 1)
        sigma_y = torch.where(anisotropic, sigma_y, sigma_x)
        rotation = torch.where(anisotropic, rotation, torch.zeros_like(rotation))
        y, x = _centred_grid(grid, device)
        along = torch.cos(rotation) * x + torch.sin(rotation) * y
        across = -torch.sin(rotation) * x + torch.cos(rotation) * y
        support = (y.abs() <= radius) & (x.abs() <= radius)
        kernels = torch.exp(-0.5 * ((along / sigma_x) ** 2 + (across / sigma_y) ** 2)) * support
        return _filter_per_sample(images, _normalise(kernels)).clamp(0, 1)


class DefocusBlur(Degradation):
    """Out-of-focus blur: an anti-aliased disk (edge pixels weighted by their approximate coverage)."""

    def __init__(self, *, radius: float | Sequence[float], name: str = "defocus_blur") -> None:
        """
        Args:
            radius: disk radius in pixels, fixed or ``[lo, hi]`` per sample; 0 leaves the image unchanged.
            name: the type name.
        """
        self.radius = _as_range(radius, arg="radius", low=0)
        self.names = _as_name(name)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, device = images.shape[0], images.device
        grid = 2 * math.ceil(self.radius[1]) + 1
        radius = _uniform(self.radius, n, generator, device).view(n, 1, 1)
        y, x = _centred_grid(grid, device)
        coverage = (radius + 0.5 - torch.sqrt(y**2 + x**2)).clamp(0, 1)
        return _filter_per_sample(images, _normalise(coverage)).clamp_(0, 1)


# compression


class JPEG(Degradation):
    """JPEG compression at a per-sample integer quality.

    ``backend="codec"`` is host work: libjpeg encodes and decodes on the CPU, and with CUDA tensors nvjpeg's
    encoded bytes are read back on the host to be decoded, so the call waits for the device to finish the
    batch. The samples that share a quality are encoded in one call. Use ``backend="kornia"`` to stay on the
    device. The qualities are drawn on the host either way.
    """

    def __init__(self, *, quality: int | Sequence[int], backend: str = "codec", name: str = "jpeg") -> None:
        """
        Args:
            quality: libjpeg quality in [1, 100], fixed or ``[lo, hi]`` (integers drawn per sample).
            backend: ``"codec"`` encodes and decodes with libjpeg through torchvision (nvjpeg for CUDA
                tensors), the real artefacts; ``"kornia"`` uses ``kornia.enhance.jpeg_codec_differentiable``,
                a differentiable approximation that runs as tensor ops. On CUDA, torchvision's nvjpeg encoder
                keeps full-resolution chroma (4:4:4) where libjpeg subsamples it (4:2:0), so GPU and CPU
                artefacts differ slightly.
            name: the type name.
        """
        self.quality = _as_range(quality, arg="quality", low=1, high=100, integer=True)
        if backend not in ("codec", "kornia"):
            raise ConfigError(f"backend must be 'codec' or 'kornia', got {backend!r}")
        self.backend = backend
        self.names = _as_name(name)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        draws = _host_random(generator, "JPEG.quality")
        qualities = [draws.randint(*self.quality) for _ in range(images.shape[0])]
        if self.backend == "kornia":
            # a CPU tensor: kornia checks its range on the host and copies it to the device without waiting
            quality = torch.tensor(qualities, dtype=torch.float32)
            return kornia.enhance.jpeg_codec_differentiable(images.clamp(0, 1), quality).clamp(0, 1)
        # libjpeg reads channels-last pixels: one H×W×3 copy of the batch saves encode_jpeg a copy per image
        # (nvjpeg on CUDA reads planar pixels and copies anyway)
        pixels = images.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
        decoded: list[Tensor | None] = [None] * len(qualities)
        # torchvision takes one quality per call: encode the samples that share a quality together
        for value in sorted(set(qualities)):
            index = [i for i, q in enumerate(qualities) if q == value]
            encoded = torchvision.io.encode_jpeg([pixels[i].permute(2, 0, 1) for i in index], quality=value)
            # decode_jpeg reads the bytes from host memory, also when it decodes on the GPU
            group = torchvision.io.decode_jpeg(
                [data.cpu() for data in encoded], mode=torchvision.io.ImageReadMode.RGB, device=images.device
            )
            for i, image in zip(index, group, strict=True):
                decoded[i] = image
        return torch.stack(decoded).float().div_(255)


# haze and low light

# The depth proxy: a 4×4 random field, bicubic-upsampled (smooth blobs of near and far), mixed with a vertical
# ramp (far at the top, as in most outdoor photos). The ramp dominates so that the sky side is the hazier one.
_HAZE_FIELD_SIZE = 4
_HAZE_RAMP_WEIGHT = 0.6


class Haze(Degradation):
    """Atmospheric scattering ``I = J·t + A·(1 - t)``, ``t = exp(-beta·d)``, with a random smooth depth ``d``.

    ``d`` lies in [0, 1] and is ``0.6·ramp + 0.4·field``, where ``ramp`` goes from 1 at the top row to 0 at
    the bottom and ``field`` is a bicubic-upsampled 4×4 uniform random field, drawn per sample.
    """

    def __init__(
        self, *, beta: float | Sequence[float], airlight: float | Sequence[float], name: str = "haze"
    ) -> None:
        """
        Args:
            beta: scattering coefficient per unit of depth, fixed or ``[lo, hi]`` per sample.
            airlight: global atmospheric light A (gray), fixed or ``[lo, hi]`` per sample.
            name: the type name.
        """
        self.beta = _as_range(beta, arg="beta", low=0)
        self.airlight = _as_range(airlight, arg="airlight", low=0, high=1)
        self.names = _as_name(name)

    def depth(
        self, n: int, height: int, width: int, generator: torch.Generator, device: torch.device
    ) -> Tensor:
        """Draw ``n`` smooth depth maps ``N×1×H×W`` in [0, 1], far (1) towards the top."""
        field = torch.rand(n, 1, _HAZE_FIELD_SIZE, _HAZE_FIELD_SIZE, generator=generator, device=device)
        field = F.interpolate(field, size=(height, width), mode="bicubic", align_corners=False)
        ramp = torch.linspace(1, 0, height, device=device).view(1, 1, height, 1)
        return (_HAZE_RAMP_WEIGHT * ramp + (1 - _HAZE_RAMP_WEIGHT) * field).clamp(0, 1)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, height, width = images.shape
        device = images.device
        depth = self.depth(n, height, width, generator, device)
        beta = _uniform(self.beta, n, generator, device).view(n, 1, 1, 1)
        airlight = _uniform(self.airlight, n, generator, device).view(n, 1, 1, 1)
        transmission = torch.exp(-beta * depth)
        return (images * transmission + airlight * (1 - transmission)).clamp(0, 1)


class LowLight(Degradation):
    """Under-exposure: ``brightness·x**gamma`` followed by signal-dependent Poisson-Gaussian sensor noise.

    The defaults map a typical well-exposed mean of 0.45 to about 0.014-0.15 (0.06 in the middle of the
    ranges), the range of LOL's low-light inputs (mean about 0.05) against its references (about 0.45); gamma
    > 1 darkens the shadows more than the highlights, as a shorter exposure followed by a camera tone curve
    does. With the darkened signal near 0.06, ``peak`` in [50, 500] gives shot noise of about 3-9 gray levels
    and the read noise adds 1-4, visible noise of the strength seen in LOL's dark images.
    """

    def __init__(
        self,
        *,
        gamma: float | Sequence[float] = (1.5, 2.5),
        brightness: float | Sequence[float] = (0.1, 0.5),
        peak: float | Sequence[float] | None = (50.0, 500.0),
        read_sigma: float | Sequence[float] | None = (1.0, 4.0),
        name: str = "low_light",
    ) -> None:
        """
        Args:
            gamma: exponent of the darkening curve, per sample.
            brightness: factor after the curve, per sample (not called ``scale``: that is the
                spatial factor of every degradation).
            peak: photon count of a white pixel for the shot noise, per sample; ``None`` for no shot noise.
            read_sigma: Gaussian read noise on the 0-255 scale, per sample; ``None`` for none.
            name: the type name.
        """
        self.gamma = _as_range(gamma, arg="gamma", low=0.1, high=10)
        self.brightness = _as_range(brightness, arg="brightness", low=0, high=1)
        self.peak = _as_optional_range(peak, arg="peak", low=1e-3)
        self.read_sigma = _as_optional_range(read_sigma, arg="read_sigma", low=0)
        self.names = _as_name(name)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, device = images.shape[0], images.device
        gamma = _uniform(self.gamma, n, generator, device).view(n, 1, 1, 1)
        brightness = _uniform(self.brightness, n, generator, device).view(n, 1, 1, 1)
        dark = brightness * images.clamp(0, 1) ** gamma
        return _poisson_gaussian(dark, self.peak, self.read_sigma, generator)


# compositions


class RandomCompose(Degradation):
    """A chain of degradations, each applied to a random subset of the batch.

    Each sample takes op ``i`` with probability ``p[i]``; the op runs once on the gathered subset and the
    result is scattered back. With ``shuffle`` the order of the ops is drawn anew for every batch. At most one
    op may down-sample (scale > 1); it must have ``p = 1`` so that the batch keeps one size, and it sets the
    output scale.
    """

    def __init__(
        self,
        *,
        ops: Sequence[Degradation],
        p: float | Sequence[float] = 1.0,
        shuffle: bool = False,
        name: str = "random_mix",
    ) -> None:
        """
        Args:
            ops: the degradations, in the order they are applied unless ``shuffle``.
            p: probability of each op per sample, one for all or one per op.
            shuffle: apply the ops in a random order (one order per batch).
            name: the type name.
        """
        ops = list(ops)
        if not ops or not all(isinstance(op, Degradation) for op in ops):
            raise ConfigError(f"ops must be a non-empty list of Degradation objects, got {ops!r}")
        probs = [p] * len(ops) if isinstance(p, int | float) and not isinstance(p, bool) else list(p)
        if len(probs) != len(ops):
            raise ConfigError(f"p must be one probability or one per op ({len(ops)}), got {len(probs)}")
        probs = [_as_probability(value, arg="p") for value in probs]
        scaling = [(op, prob) for op, prob in zip(ops, probs, strict=True) if op.scale != 1]
        if len(scaling) > 1:
            raise ConfigError(
                f"at most one op may change the scale, got {[op.names[0] for op, _ in scaling]}"
            )
        if scaling and scaling[0][1] != 1.0:
            raise ConfigError(
                f"the scale-changing op {scaling[0][0].names[0]} needs p = 1, got {scaling[0][1]}"
            )
        self.ops = ops
        self.p = probs
        self.shuffle = bool(shuffle)
        self.scale = scaling[0][0].scale if scaling else 1
        self.names = _as_name(name)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        draws = _host_random(generator, "RandomCompose")
        order = list(range(len(self.ops)))
        if self.shuffle:
            draws.shuffle(order)
        degraded = images
        for position in order:
            op, prob = self.ops[position], self.p[position]
            if op.scale != 1:
                degraded = op.apply(degraded, generator)
                continue
            chosen = [sample for sample in range(images.shape[0]) if draws.random() < prob]
            degraded = _on_samples(degraded, chosen, lambda subset, op=op: op.apply(subset, generator))
        return degraded if degraded is not images else images.clone()


class AllInOne(Degradation):
    """One degradation type per sample, drawn with ``weights``; ``names`` are the mapping's keys.

    Calling it returns each sample's type id (its position in ``names``), which all-in-one models use as a
    label or a prompt target.
    """

    def __init__(self, *, ops: Mapping[str, Degradation], weights: Sequence[float] | None = None) -> None:
        """
        Args:
            ops: type name → degradation, in type-id order.
            weights: relative frequency of each type (any non-negative numbers, not all zero); uniform if
                ``None``.
        """
        if not isinstance(ops, Mapping) or not ops:
            raise ConfigError(f"ops must be a non-empty mapping of name -> Degradation, got {ops!r}")
        for key, op in ops.items():
            if not isinstance(op, Degradation):
                raise ConfigError(f"ops[{key!r}] must be a Degradation, got {type(op).__name__}")
        weights = [1.0] * len(ops) if weights is None else list(weights)
        if len(weights) != len(ops):
            raise ConfigError(f"weights must have one entry per op ({len(ops)}), got {len(weights)}")
        if (
            any(isinstance(w, bool) or not isinstance(w, int | float) or w < 0 for w in weights)
            or sum(weights) <= 0
        ):
            raise ConfigError(f"weights must be non-negative numbers, not all zero, got {weights}")
        scales = {op.scale for op in ops.values()}
        if len(scales) != 1:
            raise ConfigError(f"all ops must share one scale, got {sorted(scales)}")
        self.ops = [ops[key] for key in ops]
        self.names = tuple(str(key) for key in ops)
        self.weights = [float(w) for w in weights]
        self.scale = scales.pop()

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return self._degrade(images, generator)[0]

    def _degrade(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        draws = _host_random(generator, "AllInOne")
        type_ids = draws.choices(range(len(self.ops)), weights=self.weights, k=images.shape[0])
        degraded = _by_group(
            images,
            type_ids,
            lambda subset, type_id: self.ops[type_id].apply(subset, generator),
            scale=self.scale,
        )
        return degraded, _to_device(type_ids, images.device, torch.int64)


class TaskPerStep:
    """IPT's pre-training inputs: one task for the whole batch per optimizer step, the same on every rank.

    H. Chen et al., "Pre-Trained Image Processing Transformer", CVPR 2021, trained as the MindSpore port
    does: each step draws one task uniformly (×2/×3/×4 bicubic, deraining, denoising σ 30/50), takes a
    ``patch_size · scale`` window of the batch's clean crops at one random offset and degrades it to the
    ``patch_size`` input of that task. The draws are pure functions of the run's seed: the task of
    optimizer step ``s`` of ``(seed, s)`` (so every DDP rank, every micro-batch of an accumulated step and a
    resumed run draw the same task), the window of the batch at stream position ``p`` of ``(seed, p)``;
    both are drawn on the host, so no device value is read.

    The datamodule calls :meth:`make` on each training batch; validation degrades every image with every
    task (``ops``, ``names``, as an all-in-one degradation's ``every_type``).

    Args:
        ops: task name → the degradation that makes its input from a clean window (its ``scale``: the
            task's), in task-id order.
        patch_size: the network's input side (IPT: 48).
    """

    scale = 1
    """Clean crops leave the loader whole; each step's window is ``patch_size`` times the task's scale."""

    def __init__(self, *, ops: Mapping[str, Degradation], patch_size: int = 48) -> None:
        if not isinstance(ops, Mapping) or not ops:
            raise ConfigError(f"ops must be a non-empty mapping of task name -> Degradation, got {ops!r}")
        for key, op in ops.items():
            if not isinstance(op, Degradation):
                raise ConfigError(f"ops[{key!r}] must be a Degradation, got {type(op).__name__}")
        if patch_size < 1:
            raise ConfigError(f"patch_size={patch_size}; expected a positive size")
        self.ops = [ops[key] for key in ops]
        self.names = tuple(str(key) for key in ops)
        self.patch_size = patch_size

    @property
    def crop_size(self) -> int:
        """The clean crop side the largest task needs."""
        return self.patch_size * max(op.scale for op in self.ops)

    def task_at(self, seed: int, step: int) -> int:
        """The task id of optimizer step ``step``: uniform over the tasks, a pure function of (seed, step)."""
        return random.Random(stream_seed(seed, step, Stream.TASK)).randrange(len(self.ops))

    def make(
        self, clean: Tensor, *, task: int, position: int, seed: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(degraded input, target window, type ids)`` of task ``task`` from N×3×H×W clean crops.

        ``position`` (the batch's first stream position) and ``seed`` place the window; ``generator`` (on the
        batch's device) drives the degradation.
        """
        size = self.patch_size * self.ops[task].scale
        height, width = clean.shape[-2:]
        if min(height, width) < size:
            raise ConfigError(
                f"task {self.names[task]} needs clean crops of {size}×{size} ({self.patch_size} × its scale) "
                f"but the datamodule gives {height}×{width}; set datamodule.crop_size={self.crop_size}"
            )
        draws = random.Random(stream_seed(seed, position, Stream.TASK_CROP))
        top, left = draws.randrange(height - size + 1), draws.randrange(width - size + 1)
        target = clean[..., top : top + size, left : left + size]
        degraded, _ = self.ops[task](target, generator)
        type_ids = torch.full((clean.shape[0],), task, dtype=torch.int64, device=clean.device)
        return degraded, target, type_ids

    def __repr__(self) -> str:
        return f"{type(self).__name__}(names={self.names}, patch_size={self.patch_size})"


# Real-ESRGAN kernels, noise and the second-order pipeline

# Real-ESRGAN's kernel families in the order of its kernel_list (the order of ``kernel_prob``); a sample's
# kernel type id is its position here, or SINC for a 2-D sinc kernel.
REAL_ESRGAN_KERNEL_TYPES = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)
SINC = len(REAL_ESRGAN_KERNEL_TYPES)
# Real-ESRGAN's cut-off rule for sinc blur kernels of 7-21 taps: below 13 taps [π/3, π], else [π/5, π]
_SINC_SMALL_KERNEL = 13
# cv2.getGaussianKernel(51, 0), the blur of Real-ESRGAN's USMSharp(radius=50): σ = 0.3·((51 - 1)/2 - 1) + 0.8
_USM_SIZE, _USM_SIGMA = 51, 8.0
_RESIZE_MODES = ("area", "bilinear", "bicubic")


def _as_probabilities(value: Sequence[float], *, arg: str, count: int) -> tuple[float, ...]:
    """Relative frequencies of ``count`` outcomes: non-negative numbers, not all zero."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != count:
        raise ConfigError(f"{arg} must be a list of {count} non-negative numbers, got {value!r}")
    if any(isinstance(p, bool) or not isinstance(p, int | float) or p < 0 for p in value) or sum(value) <= 0:
        raise ConfigError(f"{arg} must be non-negative numbers, not all zero, got {list(value)}")
    return tuple(float(p) for p in value)


def _as_range_around_one(value: Sequence[float], *, arg: str, low: float = 0.0) -> tuple[float, float]:
    """A ``[lo, hi]`` range with ``lo <= 1 <= hi``: Real-ESRGAN draws from [lo, 1] or from [1, hi]."""
    lo, hi = _as_range(value, arg=arg, low=low)
    if not lo <= 1 <= hi:
        raise ConfigError(f"{arg} must be [lo, hi] with lo <= 1 <= hi, got [{lo}, {hi}]")
    return lo, hi


def _sinc_kernels(cutoff: Tensor, size: Tensor, *, grid: int) -> Tensor:
    """Circular low-pass kernels ``ω·J1(ω·r) / (2π·r)``, ``N×grid×grid``, cut to each odd size, normalised.

    The ideal low-pass filter with a circular pass band of radius ``ω`` (``cutoff``, radians per pixel), as in
    Real-ESRGAN's ``circular_lowpass_kernel``; at ``r = 0`` it takes its limit ``ω²/(4π)``.
    """
    n = cutoff.shape[0]
    omega = cutoff.view(n, 1, 1)
    y, x = _centred_grid(grid, cutoff.device)
    radius = torch.sqrt(y**2 + x**2)
    bessel = omega * torch.special.bessel_j1(omega * radius) / (2 * math.pi * radius.clamp(min=1e-6))
    kernels = torch.where(radius > 0, bessel, omega**2 / (4 * math.pi))
    half = ((size - 1) / 2).view(n, 1, 1)
    return _normalise(kernels * ((y.abs() <= half) & (x.abs() <= half)))


def _luma(images: Tensor, weights: tuple[float, float, float]) -> Tensor:
    red, green, blue = weights
    return red * images[:, 0:1] + green * images[:, 1:2] + blue * images[:, 2:3]


class RealESRGANBlur(Degradation):
    """Real-ESRGAN's random blur kernels (Wang et al., "Real-ESRGAN", ICCVW 2021), one per sample.

    Each sample gets, with probability ``sinc_prob``, a 2-D sinc kernel (ringing and overshoot artefacts) with
    cut-off ``ω ~ U[π/3, π]`` for sizes below 13 and ``U[π/5, π]`` otherwise; else a kernel of one of the six
    families drawn with ``kernel_prob``. With ``q = (u/σx)² + (v/σy)²`` in coordinates ``(u, v)`` rotated by
    ``θ ~ U[-π, π]``: Gaussian ``exp(-q/2)``, generalized Gaussian ``exp(-q**β_g / 2)`` and plateau
    ``1 / (1 + q**β_p)``; the isotropic variants have ``σy = σx`` and no rotation. ``β`` is drawn from
    ``[lo, 1]`` or ``[1, hi]`` with probability 1/2 each, as Real-ESRGAN does. Kernels are cut to the drawn
    odd size, normalised to sum to one, and centred in a common grid of the largest size.
    """

    def __init__(
        self,
        *,
        kernel_size: int | Sequence[int] = (7, 21),
        sigma: float | Sequence[float] = (0.2, 3.0),
        kernel_prob: Sequence[float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        betag: Sequence[float] = (0.5, 4.0),
        betap: Sequence[float] = (1.0, 2.0),
        sinc_prob: float = 0.1,
        name: str = "real_esrgan_blur",
    ) -> None:
        """
        Args:
            kernel_size: odd kernel side, fixed or ``[lo, hi]`` (odd sizes drawn per sample).
            sigma: standard deviation in pixels of each axis, ``[lo, hi]`` per sample.
            kernel_prob: relative frequencies of iso, aniso, generalized_iso, generalized_aniso,
                plateau_iso and plateau_aniso kernels (``REAL_ESRGAN_KERNEL_TYPES``).
            betag: shape ``β_g`` of the generalized Gaussians, ``[lo, hi]`` with ``lo <= 1 <= hi``.
            betap: shape ``β_p`` of the plateau kernels, ``[lo, hi]`` with ``lo <= 1 <= hi``.
            sinc_prob: probability that a sample's kernel is a 2-D sinc instead.
            name: the type name.
        """
        self.kernel_size = _as_odd_range(kernel_size, arg="kernel_size")
        self.sigma = _as_range(sigma, arg="sigma", low=1e-3)
        self.kernel_prob = _as_probabilities(
            kernel_prob, arg="kernel_prob", count=len(REAL_ESRGAN_KERNEL_TYPES)
        )
        self.betag = _as_range_around_one(betag, arg="betag", low=1e-3)
        self.betap = _as_range_around_one(betap, arg="betap", low=1e-3)
        self.sinc_prob = _as_probability(sinc_prob, arg="sinc_prob")
        self.names = _as_name(name)

    def kernels(self, n: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
        """Draw ``n`` kernels ``N×k×k`` (``k`` the largest size) and their type ids (``SINC`` for a sinc)."""
        grid = self.kernel_size[1]
        size = _odd_sizes(self.kernel_size, n, generator, device)
        sinc = torch.rand(n, generator=generator, device=device) < self.sinc_prob
        small = size < _SINC_SMALL_KERNEL
        cutoff = torch.rand(n, generator=generator, device=device) * torch.where(
            small, 2 * math.pi / 3, 4 * math.pi / 5
        ) + torch.where(small, math.pi / 3, math.pi / 5)
        kind = torch.multinomial(
            _to_device(self.kernel_prob, device), n, replacement=True, generator=generator
        )
        sigma_x = _uniform(self.sigma, n, generator, device)
        sigma_y = _uniform(self.sigma, n, generator, device)
        rotation = _uniform((-math.pi, math.pi), n, generator, device)
        below_one = torch.rand(n, generator=generator, device=device) < 0.5
        unit = torch.rand(n, generator=generator, device=device)
        isotropic = kind % 2 == 0
        sigma_y = torch.where(isotropic, sigma_x, sigma_y).view(n, 1, 1)
        rotation = torch.where(isotropic, torch.zeros_like(rotation), rotation).view(n, 1, 1)
        family = (kind // 2).view(n, 1, 1)
        bounds = _to_device([self.betag, self.betap], device)[(kind // 2).clamp(min=1) - 1]
        beta = torch.where(
            below_one, bounds[:, 0] + unit * (1 - bounds[:, 0]), 1 + unit * (bounds[:, 1] - 1)
        ).view(n, 1, 1)
        y, x = _centred_grid(grid, device)
        along = torch.cos(rotation) * x + torch.sin(rotation) * y
        across = -torch.sin(rotation) * x + torch.cos(rotation) * y
        q = (along / sigma_x.view(n, 1, 1)) ** 2 + (across / sigma_y) ** 2
        shaped = q.pow(beta)
        values = torch.where(
            family == 0,
            torch.exp(-0.5 * q),
            torch.where(family == 1, torch.exp(-0.5 * shaped), 1 / (1 + shaped)),
        )
        half = ((size - 1) / 2).view(n, 1, 1)
        blur = _normalise(values * ((y.abs() <= half) & (x.abs() <= half)))
        kernels = torch.where(sinc.view(n, 1, 1), _sinc_kernels(cutoff, size, grid=grid), blur)
        return kernels, torch.where(sinc, SINC, kind)

    def filter(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Blur without clamping: sinc kernels overshoot, and Real-ESRGAN clamps only after the noise."""
        kernels, _ = self.kernels(images.shape[0], generator, images.device)
        return _filter_per_sample(images, kernels)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return self.filter(images, generator).clamp_(0, 1)


class SincFilter(Degradation):
    """Real-ESRGAN's final sinc filter: with probability ``prob`` a 2-D sinc kernel, else the identity.

    The kernel is the circular low-pass ``ω·J1(ω·r) / (2π·r)`` cut to an odd size drawn per sample and
    normalised (DC gain 1); it adds the ringing of over-sharpened, resized images.
    """

    def __init__(
        self,
        *,
        kernel_size: int | Sequence[int] = (7, 21),
        cutoff: float | Sequence[float] | None = None,
        prob: float = 0.8,
        name: str = "sinc",
    ) -> None:
        """
        Args:
            kernel_size: odd kernel side, fixed or ``[lo, hi]`` (odd sizes drawn per sample).
            cutoff: cut-off ``ω`` in radians per pixel, in (0, π], per sample; ``None`` for Real-ESRGAN's
                final-sinc range ``[π/3, π]``.
            prob: probability that a sample is filtered.
            name: the type name.
        """
        self.kernel_size = _as_odd_range(kernel_size, arg="kernel_size")
        bounds = (math.pi / 3, math.pi) if cutoff is None else cutoff
        self.cutoff = _as_range(bounds, arg="cutoff", low=1e-3, high=math.pi)
        self.prob = _as_probability(prob, arg="prob")
        self.names = _as_name(name)

    def kernels(self, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """Draw ``n`` kernels ``N×k×k`` (``k`` the largest size); unfiltered samples get a centred impulse."""
        grid = self.kernel_size[1]
        filtered = torch.rand(n, generator=generator, device=device) < self.prob
        size = _odd_sizes(self.kernel_size, n, generator, device)
        cutoff = _uniform(self.cutoff, n, generator, device)
        impulse = torch.zeros(grid, grid, device=device)
        impulse[grid // 2, grid // 2] = 1
        return torch.where(filtered.view(n, 1, 1), _sinc_kernels(cutoff, size, grid=grid), impulse)

    def filter(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Filter without clamping (the sinc overshoots; Real-ESRGAN clamps after the JPEG or at the end)."""
        return _filter_per_sample(images, self.kernels(images.shape[0], generator, images.device))

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return self.filter(images, generator).clamp_(0, 1)


def _shot_noise(planes: Tensor, generator: torch.Generator) -> Tensor:
    """Real-ESRGAN's Poisson noise of each sample of ``planes``: ``Poisson(x·v)/v - x`` on the 8-bit-rounded
    image, ``v`` the number of distinct 8-bit levels of the sample rounded up to a power of two."""
    n = planes.shape[0]
    levels = planes.mul(255).round_().clamp_(0, 255)
    present = torch.zeros(n, 256, dtype=torch.bool, device=planes.device)
    present.scatter_(1, levels.long().flatten(1), True)
    vals = torch.exp2(torch.ceil(torch.log2(present.sum(dim=1).float()))).view(n, 1, 1, 1)
    rounded = levels.div_(255)
    return torch.poisson(rounded * vals, generator=generator).div_(vals).sub_(rounded)


class RealESRGANNoise(Degradation):
    """Real-ESRGAN's noise: Gaussian (probability ``gaussian_prob``) or Poisson, colour or gray, clipped.

    The Gaussian branch is :class:`GaussianNoise`. The Poisson branch is Real-ESRGAN's, not the photon model
    of :class:`PoissonNoise`: ``scale·(Poisson(x̂·v)/v - x̂)`` is added to ``x``, where ``x̂`` is ``x`` rounded
    to 8 bits and ``v`` its number of distinct levels rounded up to a power of two; gray noise is computed on
    the luma ``0.2989 R + 0.587 G + 0.114 B`` (torchvision's ``rgb_to_grayscale``) and added to every channel.
    """

    def __init__(
        self,
        *,
        gaussian_prob: float = 0.5,
        sigma: float | Sequence[float] = (1.0, 30.0),
        poisson_scale: float | Sequence[float] = (0.05, 3.0),
        gray_prob: float = 0.4,
        name: str = "real_esrgan_noise",
    ) -> None:
        """
        Args:
            gaussian_prob: probability that a sample gets Gaussian rather than Poisson noise.
            sigma: Gaussian standard deviation on the 0-255 scale, per sample.
            poisson_scale: factor of the Poisson noise, per sample.
            gray_prob: probability that a sample's noise is the same on its three channels.
            name: the type name.
        """
        self.gaussian_prob = _as_probability(gaussian_prob, arg="gaussian_prob")
        self.gaussian = GaussianNoise(sigma=sigma, gray_prob=gray_prob)
        self.poisson_scale = _as_range(poisson_scale, arg="poisson_scale", low=0)
        self.gray_prob = self.gaussian.gray_prob
        self.names = _as_name(name)

    def _poisson(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, device = images.shape[0], images.device
        scale = _uniform(self.poisson_scale, n, generator, device).view(n, 1, 1, 1)
        gray = (torch.rand(n, generator=generator, device=device) < self.gray_prob).view(n, 1, 1, 1)
        # selects rather than indexing the grey samples: their luma fills all three planes (the same levels,
        # so the same v) and the noise of the first plane is kept
        planes = torch.where(gray, _luma(images, (0.2989, 0.587, 0.114)), images)
        noise = _shot_noise(planes, generator)
        noise = torch.where(gray, noise[:, :1], noise)
        return noise.mul_(scale).add_(images).clamp_(0, 1)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        draws = _host_random(generator, "RealESRGANNoise")
        gaussian = [draws.random() < self.gaussian_prob for _ in range(images.shape[0])]

        def noisy(subset: Tensor, is_gaussian: bool) -> Tensor:
            return self.gaussian.apply(subset, generator) if is_gaussian else self._poisson(subset, generator)

        return _by_group(images, gaussian, noisy)


def _usm_sharpen(images: Tensor, *, weight: float = 0.5, threshold: float = 10.0) -> Tensor:
    """Real-ESRGAN's ``USMSharp``: unsharp masking where the detail exceeds ``threshold`` gray levels, the
    mask softened by the same 51×51 Gaussian (σ = 8) that makes the blurred copy."""
    n = images.shape[0]
    kernels = _gaussian_kernels(torch.full((n,), _USM_SIGMA, device=images.device), size=_USM_SIZE)
    residual = images - _filter_separable(images, kernels)
    mask = _filter_separable((residual.abs() * 255 > threshold).float(), kernels)
    sharp = (images + weight * residual).clamp_(0, 1)
    return mask * sharp + (1 - mask) * images


def _resize(images: Tensor, *, size: tuple[int, int] | None = None, scale: float = 1.0, mode: str) -> Tensor:
    """``F.interpolate`` without anti-aliasing, as Real-ESRGAN resizes; a ``scale`` maps coordinates by it."""
    height, width = images.shape[-2:]
    if size is None:
        if int(height * scale) >= 1 and int(width * scale) >= 1:
            return F.interpolate(images, scale_factor=scale, mode=mode)
        size = (max(1, int(height * scale)), max(1, int(width * scale)))
    return F.interpolate(images, size=size, mode=mode)


class SecondOrder(Degradation):
    """Real-ESRGAN's second-order degradation (Wang et al., ICCVW 2021) at scale 1, as ConStyle v2 pre-trains.

    Per sample: USM sharpening (``sharpen``); stage 1: ``blur1``, a resize up/down/keep with
    ``resize_prob1`` over ``resize_range1`` in a random mode (area, bilinear, bicubic), ``noise1``, ``jpeg1``;
    stage 2: ``blur2`` with probability ``second_blur_prob``, a resize to ``s·(H, W)`` with ``resize_prob2``
    over ``resize_range2``, ``noise2``; then with probability 1/2 each either [resize back + ``final_sinc``]
    then ``jpeg2`` or ``jpeg2`` then [resize back + ``final_sinc``]. The output is rounded to 8-bit levels.

    Differences from the official code (ConStyle v2 ``models/constyle_v2_model.py``, BasicSR): the resize
    scales and modes, the Gaussian/Poisson choice, the second blur and the order of the last step are drawn
    per sample here and once per batch there (``resize_per_batch=True`` restores that for the resizes and
    the order); JPEG is real libjpeg at an integer quality instead of DiffJPEG at a float one; gray Gaussian
    noise is independent per sample (BasicSR reuses one field for the batch). Samples whose resized sizes
    differ are processed one group at a time.
    """

    def __init__(
        self,
        *,
        blur1: RealESRGANBlur | None = None,
        noise1: RealESRGANNoise | None = None,
        jpeg1: JPEG | None = None,
        blur2: RealESRGANBlur | None = None,
        noise2: RealESRGANNoise | None = None,
        jpeg2: JPEG | None = None,
        final_sinc: SincFilter | None = None,
        resize_prob1: Sequence[float] = (0.2, 0.7, 0.1),
        resize_range1: Sequence[float] = (0.15, 1.5),
        second_blur_prob: float = 0.8,
        resize_prob2: Sequence[float] = (0.3, 0.4, 0.3),
        resize_range2: Sequence[float] = (0.3, 1.2),
        sharpen: bool = True,
        resize_per_batch: bool = False,
        name: str = "second_order",
    ) -> None:
        """
        Args:
            blur1: the first-stage blur; ``None`` for Real-ESRGAN's (σ in [0.2, 3]).
            noise1: the first-stage noise; ``None`` for Real-ESRGAN's (σ 1-30, Poisson scale 0.05-3).
            jpeg1: the first-stage JPEG; ``None`` for quality 30-95.
            blur2: the second-stage blur; ``None`` for Real-ESRGAN's (σ in [0.2, 1.5]).
            noise2: the second-stage noise; ``None`` for Real-ESRGAN's (σ 1-25, Poisson scale 0.05-2.5).
            jpeg2: the second-stage JPEG; ``None`` for quality 30-95.
            final_sinc: the sinc filter after resizing back; ``None`` for Real-ESRGAN's (probability 0.8).
            resize_prob1: relative frequencies of up, down and keep in stage 1.
            resize_range1: ``[lo, hi]`` scale range of stage 1 (down from [lo, 1], up from [1, hi]).
            second_blur_prob: probability of ``blur2``.
            resize_prob2: relative frequencies of up, down and keep in stage 2.
            resize_range2: ``[lo, hi]`` scale range of stage 2, relative to the input size.
            sharpen: degrade a USM-sharpened copy of the input, as Real-ESRGAN and ConStyle v2 do.
            resize_per_batch: draw the resize scales and modes and the order of the last step once per batch,
                as BasicSR does (one group, faster), instead of per sample.
            name: the type name.
        """
        slots = {
            "blur1": (blur1, RealESRGANBlur, lambda: RealESRGANBlur()),
            "noise1": (noise1, RealESRGANNoise, lambda: RealESRGANNoise()),
            "jpeg1": (jpeg1, JPEG, lambda: JPEG(quality=(30, 95))),
            "blur2": (blur2, RealESRGANBlur, lambda: RealESRGANBlur(sigma=(0.2, 1.5))),
            "noise2": (
                noise2,
                RealESRGANNoise,
                lambda: RealESRGANNoise(sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5)),
            ),
            "jpeg2": (jpeg2, JPEG, lambda: JPEG(quality=(30, 95))),
            "final_sinc": (final_sinc, SincFilter, lambda: SincFilter()),
        }
        for key, (op, kind, default) in slots.items():
            if op is None:
                op = default()
            elif not isinstance(op, kind):
                raise ConfigError(f"{key} must be a {kind.__name__}, got {type(op).__name__}")
            setattr(self, key, op)
        self.resize_prob1 = _as_probabilities(resize_prob1, arg="resize_prob1", count=3)
        self.resize_range1 = _as_range_around_one(resize_range1, arg="resize_range1", low=1e-3)
        self.second_blur_prob = _as_probability(second_blur_prob, arg="second_blur_prob")
        self.resize_prob2 = _as_probabilities(resize_prob2, arg="resize_prob2", count=3)
        self.resize_range2 = _as_range_around_one(resize_range2, arg="resize_range2", low=1e-3)
        self.sharpen = bool(sharpen)
        self.resize_per_batch = bool(resize_per_batch)
        self.names = _as_name(name)

    @staticmethod
    def _scale(draws: random.Random, probs: tuple[float, ...], bounds: tuple[float, float]) -> float:
        direction = draws.choices(range(3), weights=probs)[0]
        if direction == 0:
            return draws.uniform(1.0, bounds[1])
        return draws.uniform(bounds[0], 1.0) if direction == 1 else 1.0

    def _resizes(self, draws: random.Random) -> tuple[float, float, str, str, str, bool]:
        """One sample's (or batch's) resize scales of both stages, modes of the three resizes, and whether the
        last JPEG comes after the final resize and sinc."""
        scale1 = self._scale(draws, self.resize_prob1, self.resize_range1)
        scale2 = self._scale(draws, self.resize_prob2, self.resize_range2)
        return scale1, scale2, *draws.choices(_RESIZE_MODES, k=3), draws.random() < 0.5

    def _stages(
        self,
        stage1: Tensor,
        resizes: tuple[float, float, str, str, str, bool],
        draws: random.Random,
        generator: torch.Generator,
    ) -> Tensor:
        """The rest of the pipeline after the first blur, for samples that share their resizes."""
        scale1, scale2, mode1, mode2, mode3, jpeg_last = resizes
        height, width = stage1.shape[-2:]
        out = _resize(stage1, scale=scale1, mode=mode1)
        out = self.jpeg1.apply(self.noise1.apply(out, generator), generator)
        blurred = [sample for sample in range(out.shape[0]) if draws.random() < self.second_blur_prob]
        out = _on_samples(out, blurred, lambda subset: self.blur2.filter(subset, generator))
        size = (max(1, int(height * scale2)), max(1, int(width * scale2)))
        out = self.noise2.apply(_resize(out, size=size, mode=mode2), generator)
        if not jpeg_last:
            out = self.jpeg2.apply(out, generator)
        out = self.final_sinc.filter(_resize(out, size=(height, width), mode=mode3), generator)
        return self.jpeg2.apply(out, generator) if jpeg_last else out

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n = images.shape[0]
        # the resizes set the sizes of the intermediate tensors: drawn on the host, and the samples that share
        # them are processed together
        draws = _host_random(generator, "SecondOrder")
        if self.resize_per_batch:
            resizes = [self._resizes(draws)] * n
        else:
            resizes = [self._resizes(draws) for _ in range(n)]
        source = _usm_sharpen(images) if self.sharpen else images
        stage1 = self.blur1.filter(source, generator)
        degraded = _by_group(
            stage1, resizes, lambda group, shared: self._stages(group, shared, draws, generator)
        )
        return degraded.mul_(255).round_().clamp_(0, 255).div_(255)


class Quantize(Degradation):
    """Quantization to 8-bit levels, as saving the image to an 8-bit file does."""

    def __init__(self, *, rounding: str = "round", name: str = "quantize") -> None:
        """
        Args:
            rounding: ``"round"`` to the nearest level, or ``"floor"`` as numpy's ``np.uint8(x)`` truncates
                (ConStyle v2's contrast + snow images are saved that way).
            name: the type name.
        """
        if rounding not in ("round", "floor"):
            raise ConfigError(f"rounding must be 'round' or 'floor', got {rounding!r}")
        self.rounding = rounding
        self.names = _as_name(name)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        levels = images.clamp(0, 1).mul(255)
        return (levels.round_() if self.rounding == "round" else levels.floor_()).div_(255)


# ImageNet-C contrast and snow

# ImageNet-C's contrast factors for severities 1-5 (Hendrycks and Dietterich, ICLR 2019)
_CONTRAST_FACTORS = (0.4, 0.3, 0.2, 0.1, 0.05)
# ConStyle v2's snow table (data/image_datasets.py, gen_degradations.py), severities 1-5: mean and std of the
# flake field, zoom, threshold below which it is zeroed, ImageMagick motion-blur radius and sigma, and the
# weight of the image in the whitening blend
_SNOW_SEVERITIES = (
    (0.1, 0.2, 1.0, 0.6, 8, 3, 0.8),
    (0.1, 0.2, 1.0, 0.5, 10, 4, 0.8),
    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
    (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6),
)
# the snow falls at an angle in [-135°, -45°] of ImageMagick's motion blur (downwards, ±45° from vertical)
_SNOW_ANGLE = (-135.0, -45.0)


class Contrast(Degradation):
    """ImageNet-C contrast (Hendrycks and Dietterich, ICLR 2019): ``(x - mean)·c + mean``, clipped.

    ``mean`` is each channel's spatial mean, ``c`` is 0.4, 0.3, 0.2, 0.1 or 0.05 for severities 1-5.
    """

    def __init__(self, *, severity: int | Sequence[int] = 1, name: str = "contrast") -> None:
        """
        Args:
            severity: ImageNet-C severity 1-5, fixed or ``[lo, hi]`` (integers drawn per sample).
            name: the type name.
        """
        self.severity = _as_range(severity, arg="severity", low=1, high=5, integer=True)
        self.names = _as_name(name)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, device = images.shape[0], images.device
        severity = _randint(self.severity, n, generator, device)
        factor = _to_device(_CONTRAST_FACTORS, device)[severity - 1].view(n, 1, 1, 1)
        means = images.mean(dim=(2, 3), keepdim=True)
        return ((images - means) * factor + means).clamp_(0, 1)


def _clipped_zoom(images: Tensor, zoom: float) -> Tensor:
    """ImageNet-C's ``clipped_zoom``: zoom the centre crop ``ceil(H/zoom)×ceil(W/zoom)`` by ``zoom`` as
    ``scipy.ndimage.zoom(order=1)`` does (linear, corners aligned, side ``round(side·zoom)``), cut to H×W."""
    height, width = images.shape[-2:]
    crop_height, crop_width = math.ceil(height / zoom), math.ceil(width / zoom)
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    crop = images[..., top : top + crop_height, left : left + crop_width]
    zoomed_size = (round(crop_height * zoom), round(crop_width * zoom))
    zoomed = F.interpolate(crop, size=zoomed_size, mode="bilinear", align_corners=True)
    top, left = (zoomed_size[0] - height) // 2, (zoomed_size[1] - width) // 2
    return zoomed[..., top : top + height, left : left + width]


def _streak_kernels(angle: Tensor, *, radius: float, sigma: float) -> Tensor:
    """ImageMagick's ``MotionBlurImage`` as correlation kernels ``N×k×k``, one per angle (degrees).

    ImageMagick averages ``2·ceil(radius) + 1`` pixels at integer offsets ``i·(cos a, sin a)`` (rounded),
    ``i = 0, 1, ...``, weighted by the half Gaussian ``exp(-i²/(2σ²))``: a one-sided streak.
    """
    n = angle.shape[0]
    taps = 2 * math.ceil(radius) + 1
    step = torch.arange(taps, device=angle.device, dtype=torch.float32)
    weight = torch.exp(-(step**2) / (2 * sigma**2))
    theta = torch.deg2rad(angle).view(n, 1)
    centre = taps - 1
    # ceil(v - 0.5) is ImageMagick's rounding of the offsets
    rows = torch.ceil(step * torch.sin(theta) - 0.5).long() + centre
    columns = torch.ceil(step * torch.cos(theta) - 0.5).long() + centre
    grid = torch.arange(2 * taps - 1, device=angle.device)
    row_hits = (rows[..., None] == grid).float()
    column_hits = (columns[..., None] == grid).float()
    return _normalise(torch.einsum("t,nty,ntx->nyx", weight, row_hits, column_hits))


class Snow(Degradation):
    """ImageNet-C snow (Hendrycks and Dietterich, ICLR 2019) with ConStyle v2's table of severities.

    A gray flake field ``N(mean, std)`` is zoomed, thresholded, motion-blurred along a random angle in
    [-135°, -45°] (ImageMagick's one-sided motion blur, here as a per-sample kernel with replicated
    borders) and quantized to 8 bits before and after the blur as the official PNG round trip does. The image
    is whitened, ``w·x + (1 - w)·max(x, 1.5·luma + 0.5)`` with the luma of OpenCV's ``RGB2GRAY``, and the
    layer is added twice, once rotated by 180°. The official code runs on whole ImageNet photos before the
    crop; here the flakes are drawn at the resolution of the batch.
    """

    def __init__(self, *, severity: int | Sequence[int] = 1, name: str = "snow") -> None:
        """
        Args:
            severity: severity 1-5, fixed or ``[lo, hi]`` (integers drawn per sample).
            name: the type name.
        """
        self.severity = _as_range(severity, arg="severity", low=1, high=5, integer=True)
        self.names = _as_name(name)

    def layer(
        self, n: int, height: int, width: int, severity: int, generator: torch.Generator, device: torch.device
    ) -> Tensor:
        """Draw ``n`` snow layers ``N×1×H×W`` of one severity, before the 180° copy is added."""
        mean, std, zoom, threshold, radius, sigma, _ = _SNOW_SEVERITIES[severity - 1]
        flakes = torch.randn(n, 1, height, width, generator=generator, device=device).mul_(std).add_(mean)
        if zoom != 1:
            flakes = _clipped_zoom(flakes, zoom)
        flakes = torch.where(flakes < threshold, 0.0, flakes).clamp_(0, 1).mul_(255).floor_().div_(255)
        angle = _uniform(_SNOW_ANGLE, n, generator, device)
        kernels = _streak_kernels(angle, radius=radius, sigma=sigma)
        streaks = _filter_per_sample(flakes, kernels, border="replicate")
        return streaks.mul_(255).round_().clamp_(0, 255).div_(255)

    def _snow(self, clean: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        n, _, height, width = clean.shape
        keep = _SNOW_SEVERITIES[severity - 1][6]
        layer = self.layer(n, height, width, severity, generator, clean.device)
        whitened = torch.maximum(clean, _luma(clean, (0.299, 0.587, 0.114)) * 1.5 + 0.5)
        return (keep * clean + (1 - keep) * whitened + layer + layer.flip(-2, -1)).clamp_(0, 1)

    def apply(self, images: Tensor, generator: torch.Generator) -> Tensor:
        # the severity sets the zoom and the streak kernel's size: drawn on the host, one group per level
        draws = _host_random(generator, "Snow.severity")
        severity = [draws.randint(*self.severity) for _ in range(images.shape[0])]
        return _by_group(images, severity, lambda clean, level: self._snow(clean, level, generator))
