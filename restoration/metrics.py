"""PSNR and SSIM as the image-restoration literature reports them.

The numbers follow ``calculate_psnr`` / ``calculate_ssim`` of BasicSR (XPixelGroup's toolbox, whose metrics
NAFNet and Restormer report), which reproduce the MATLAB scripts of the super-resolution benchmarks:

* ``quantize=True`` clamps to [0, 1] and rounds to 8-bit levels, ``(x * 255).round() / 255``, as BasicSR's
  ``tensor2img`` does before any metric, so a network is scored on the image it would save to disk.
* ``crop_border`` removes that many pixels on each side first (super-resolution convention: crop = scale).
* ``y_channel`` scores the luma of ITU-R BT.601 in studio range, as MATLAB ``rgb2ycbcr``:
  ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255``. Like BasicSR (and unlike MATLAB on ``uint8``) the Y
  values are not rounded again.
* PSNR uses a peak of 1 on the [0, 1] scale (255 on the 0-255 scale, the same number). The MSE is clamped at
  1e-10, so identical images score 100 dB instead of ``inf`` and averages stay finite.
* SSIM is Wang, Bovik, Sheikh and Simoncelli, "Image Quality Assessment: From Error Visibility to Structural
  Similarity", IEEE TIP 2004, as their MATLAB ``ssim_index``: an 11×11 Gaussian window with sigma 1.5,
  K1 = 0.01, K2 = 0.03, statistics only where the window lies inside the image ('valid'), mean over the map
  and then over the RGB channels.

Everything is computed in float64 (BasicSR computes Y in float32; that moves its numbers by about 2e-7 dB
and 1e-8 SSIM). SSIM is a grouped ``conv2d`` rather than torchmetrics'
``structural_similarity_index_measure``: torchmetrics (checked on 1.9) reflect-pads the images and averages
the map over the padded border too, which is not the 'valid' convention (0.6061 instead of 0.6043 on a noisy
128×128 photo crop). PSNR is written out too: torchmetrics' version has no cap for identical images and
scales by a float32 ``10 / ln 10``, which is about 2e-6 dB off at 40 dB.
"""

from collections.abc import Mapping

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["ImageQuality", "psnr", "rgb_to_y", "ssim"]

# ITU-R BT.601 studio-range luma on the 0-255 scale, the coefficients of MATLAB rgb2ycbcr.
_Y_WEIGHTS_RGB = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0
_MSE_FLOOR = 1e-10  # 10 * log10(1 / 1e-10) = 100 dB for identical images
# Wang et al. 2004, the values of their ssim_index.m.
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def rgb_to_y(images: Tensor) -> Tensor:
    """Return the BT.601 studio-range luma (N×1×H×W, in [16/255, 235/255]) of N×3×H×W RGB in [0, 1]."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"rgb_to_y expects an N×3×H×W RGB batch; got shape {tuple(images.shape)}")
    weights = images.new_tensor(_Y_WEIGHTS_RGB).view(1, 3, 1, 1)
    return ((images * weights).sum(dim=1, keepdim=True) + _Y_OFFSET) / 255.0


def _prepare(
    restored: Tensor, target: Tensor, *, crop_border: int, y_channel: bool, quantize: bool
) -> tuple[Tensor, Tensor]:
    """Check the pair and apply the shared conventions: float64, 8-bit levels, border crop, luma."""
    if restored.shape != target.shape:
        raise ValueError(
            "restored and target must have the same shape; "
            f"got restored {tuple(restored.shape)} and target {tuple(target.shape)}"
        )
    if restored.ndim != 4 or restored.shape[1] not in (1, 3):
        raise ValueError(
            f"expected N×3×H×W (RGB) or N×1×H×W (grayscale) images; got shape {tuple(restored.shape)}"
        )
    height, width = restored.shape[-2:]
    if crop_border < 0 or 2 * crop_border >= min(height, width):
        raise ValueError(
            f"crop_border must be >= 0 and leave pixels of a {height}×{width} image; got {crop_border}"
        )
    restored, target = restored.to(torch.float64), target.to(torch.float64)
    if quantize:
        restored = (restored.clamp(0.0, 1.0) * 255.0).round() / 255.0
        target = (target.clamp(0.0, 1.0) * 255.0).round() / 255.0
    if crop_border > 0:
        inner = (..., slice(crop_border, -crop_border), slice(crop_border, -crop_border))
        restored, target = restored[inner], target[inner]
    if y_channel and restored.shape[1] == 3:
        restored, target = rgb_to_y(restored), rgb_to_y(target)
    return restored, target


def psnr(
    restored: Tensor, target: Tensor, *, crop_border: int = 0, y_channel: bool = False, quantize: bool = True
) -> Tensor:
    """Peak signal-to-noise ratio in dB of each image, shape (N,); capped at 100 dB (see the module doc).

    Args:
        restored: N×3×H×W or N×1×H×W images in [0, 1].
        target: the reference images, same shape.
        crop_border: pixels removed on each side before scoring.
        y_channel: score the BT.601 luma of RGB images (grayscale images are scored as they are).
        quantize: clamp and round both images to 8-bit levels first, as BasicSR does.
    """
    restored, target = _prepare(
        restored, target, crop_border=crop_border, y_channel=y_channel, quantize=quantize
    )
    mse = (restored - target).pow(2).mean(dim=(1, 2, 3)).clamp_min(_MSE_FLOOR)
    return 10.0 * torch.log10(1.0 / mse)


def _gaussian_profile(*, size: int, sigma: float, like: Tensor) -> Tensor:
    """Normalised 1-D Gaussian; its outer product is MATLAB's ``fspecial('gaussian', size, sigma)``."""
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    profile = torch.exp(-(coords**2) / (2 * sigma**2))
    return profile / profile.sum()


def _separable_valid_filter(images: Tensor, profile: Tensor) -> Tensor:
    """Correlate with ``outer(profile, profile)`` over the 'valid' region, as sums of shifted slices.

    The window is separable, so a column pass and a row pass cost 2·11 products per pixel; written
    as shifted slices this stays fast in float64, where CPU convolutions fall back to im2col.
    """
    size = profile.numel()
    height, width = images.shape[-2] - size + 1, images.shape[-1] - size + 1
    columns = sum(profile[i] * images[..., i : i + height, :] for i in range(size))
    return sum(profile[j] * columns[..., j : j + width] for j in range(size))


def ssim(
    restored: Tensor, target: Tensor, *, crop_border: int = 0, y_channel: bool = False, quantize: bool = True
) -> Tensor:
    """Structural similarity (Wang et al. 2004) of each image, shape (N,); mean over channels for RGB.

    Args:
        restored: N×3×H×W or N×1×H×W images in [0, 1], at least 11×11 after cropping.
        target: the reference images, same shape.
        crop_border: pixels removed on each side before scoring.
        y_channel: score the BT.601 luma of RGB images (grayscale images are scored as they are).
        quantize: clamp and round both images to 8-bit levels first, as BasicSR does.
    """
    restored, target = _prepare(
        restored, target, crop_border=crop_border, y_channel=y_channel, quantize=quantize
    )
    if min(restored.shape[-2:]) < _SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {_SSIM_WINDOW}×{_SSIM_WINDOW} after cropping; "
            f"got {tuple(restored.shape[-2:])}"
        )
    batch = restored.shape[0]
    profile = _gaussian_profile(size=_SSIM_WINDOW, sigma=_SSIM_SIGMA, like=restored)
    # No padding: only windows lying entirely inside the image count ('valid' in filter2/ssim_index.m).
    stacked = torch.cat([restored, target, restored * restored, target * target, restored * target])
    moments = _separable_valid_filter(stacked, profile)
    mu_r, mu_t, mean_rr, mean_tt, mean_rt = moments.split(batch)
    var_r, var_t, cov = mean_rr - mu_r**2, mean_tt - mu_t**2, mean_rt - mu_r * mu_t
    c1, c2 = _SSIM_K1**2, _SSIM_K2**2  # data range 1
    ssim_map = ((2 * mu_r * mu_t + c1) * (2 * cov + c2)) / ((mu_r**2 + mu_t**2 + c1) * (var_r + var_t + c2))
    # Every channel's map has the same size, so this is the mean of the per-channel means.
    return ssim_map.mean(dim=(1, 2, 3))


class ImageQuality(Metric):
    """Mean PSNR and SSIM on RGB and on the Y channel over all images seen, as restoration papers report.

    The states are sums and an image count reduced by ``sum``, so DDP ranks with different numbers of images
    still give the mean over images rather than a mean of rank means.

    Args:
        crop_border: pixels removed on each side before scoring (the scale factor for super-resolution).
        quantize: round both images to 8-bit levels first (see the module doc).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    KEYS = ("psnr", "ssim", "psnr_y", "ssim_y")
    """The four scores, in the order of every table."""

    def __init__(self, *, crop_border: int = 0, quantize: bool = True) -> None:
        super().__init__()
        if crop_border < 0:
            raise ValueError(f"crop_border must be >= 0; got {crop_border}")
        self.crop_border = crop_border
        self.quantize = quantize
        for key in self.KEYS:
            self.add_state(f"{key}_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def per_image(self, restored: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Return the four metrics of each image, shape (N,), leaving the accumulated state untouched."""
        restored, target = restored.detach(), target.detach()
        options = {"crop_border": self.crop_border, "quantize": self.quantize}
        return {
            "psnr": psnr(restored, target, **options),
            "ssim": ssim(restored, target, **options),
            "psnr_y": psnr(restored, target, y_channel=True, **options),
            "ssim_y": ssim(restored, target, y_channel=True, **options),
        }

    def update(
        self,
        restored: Tensor | None = None,
        target: Tensor | None = None,
        *,
        scores: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Add a batch to the running sums: N×3×H×W (or N×1×H×W) images in [0, 1], or their ``scores``.

        ``scores`` are the per-image values :meth:`per_image` returned (of this metric or one with the same
        settings), for a caller that needs them anyway (captions, per-image tables) and so scores once.
        """
        if scores is None:
            if restored is None or target is None:
                raise ValueError("ImageQuality.update takes restored and target images, or scores=")
            scores = self.per_image(restored, target)
        elif restored is not None or target is not None:
            raise ValueError("ImageQuality.update takes restored and target images or scores=, not both")
        for key in self.KEYS:
            state = getattr(self, f"{key}_sum")
            setattr(self, f"{key}_sum", state + scores[key].sum().to(state.device))
        self.count += scores["psnr"].numel()

    def compute(self) -> dict[str, Tensor]:
        """Return the mean of each metric over all images seen (across ranks once synced)."""
        return {key: getattr(self, f"{key}_sum") / self.count for key in self.KEYS}
