"""Throughput of the batched degradation synthesis in restoration/data/degradations.py.

Run ``python -m experiments.bench.degradations`` (options: ``--help``). Prints Markdown tables:

1. pairs/s for a 16×3×256×256 batch through every config in conf/degradation (CPU, and CUDA when present);
2. a classic per-image CPU pipeline (Gaussian blur + Gaussian noise + JPEG, one image at a time with OpenCV,
   or PIL + scipy.ndimage when cv2 is missing) against the batched RandomCompose of the same three ops;
3. direct grouped convolution against FFT for per-sample kernels, the measurement behind ``_FFT_MIN_KERNEL``;
4. the largest difference between MATLAB-exact and ``F.interpolate`` bicubic down-sampling on a photo.

Each timing is the median of ``--repeats`` runs after ``--warmup`` runs, with PyTorch's default thread count.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import skimage.data
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from restoration.data import degradations as D

# the private helper is the code path the ops use; the benchmark times it with each method forced
from restoration.data.degradations import _filter_per_sample
from restoration.run import keep_freed_memory

__all__ = ["main"]

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "degradation"
# Real-ESRGAN's first-order ranges; the reference pipeline draws the same per image
BLUR_KERNEL, BLUR_SIGMA, NOISE_SIGMA, JPEG_QUALITY = 21, (0.2, 3.0), (1.0, 30.0), (30, 95)


def photo_batch(n: int, size: int) -> np.ndarray:
    """``n`` crops of ``size×size`` from photos that ship with scikit-image, uint8 N×H×W×3."""
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.rocket(), skimage.data.chelsea()]
    crops = []
    for i in range(n):
        image = photos[i % len(photos)]
        height, width = image.shape[:2]
        if height < size or width < size:
            image = np.pad(
                image, ((0, max(0, size - height)), (0, max(0, size - width)), (0, 0)), mode="reflect"
            )
            height, width = image.shape[:2]
        top = (37 * i) % (height - size + 1)
        left = (53 * i) % (width - size + 1)
        crops.append(image[top : top + size, left : left + size])
    return np.ascontiguousarray(np.stack(crops))


def to_tensor(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255).contiguous().to(device)


def median_seconds(run: Callable[[], object], *, warmup: int, repeats: int, device: torch.device) -> float:
    def timed() -> float:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        timed()
    return statistics.median(timed() for _ in range(repeats))


def per_config_table(
    batch: np.ndarray, devices: list[torch.device], warmup: int, repeats: int, names: list[str] | None
) -> str:
    n, size = batch.shape[0], batch.shape[1]
    header = "| degradation | " + " | ".join(f"{d.type} pairs/s" for d in devices) + " |"
    lines = [header, "|---" * (len(devices) + 1) + "|"]
    for path in sorted(CONF_DIR.glob("*.yaml")):
        if names and path.stem not in names:
            continue
        op = instantiate(OmegaConf.load(path))
        # a side that is not a multiple of the scale cannot be down-sampled exactly: crop it (255 for ×3)
        crop = size - size % op.scale
        cells = []
        for device in devices:
            images = to_tensor(batch[:, :crop, :crop], device)
            generator = torch.Generator(device=device).manual_seed(0)
            run = functools.partial(op, images, generator)
            seconds = median_seconds(run, warmup=warmup, repeats=repeats, device=device)
            cells.append(f"{n / seconds:,.0f}")
        name = path.stem if crop == size else f"{path.stem} ({crop}²)"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_pipeline() -> tuple[str, Callable[[np.ndarray, np.random.Generator], torch.Tensor]]:
    """The per-image CPU pipeline of a classic data loader: blur, noise and JPEG on one uint8 H×W×3 image."""
    try:
        import cv2
    except ImportError:
        cv2 = None

    def blur_and_noise(image: np.ndarray, rng: np.random.Generator, blur: Callable) -> np.ndarray:
        pixels = image.astype(np.float32) / 255
        pixels = blur(pixels, rng.uniform(*BLUR_SIGMA))
        sigma = rng.uniform(*NOISE_SIGMA) / 255
        pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(sigma)
        return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)

    if cv2 is not None:

        def degrade_cv2(image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
            def blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
                kernel = (BLUR_KERNEL, BLUR_KERNEL)
                return cv2.GaussianBlur(pixels, kernel, sigma, borderType=cv2.BORDER_REFLECT_101)

            noisy = blur_and_noise(image, rng, blur)
            quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
            _, encoded = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, quality])
            decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
            return torch.from_numpy(decoded.transpose(2, 0, 1).astype(np.float32) / 255)

        return f"OpenCV {cv2.__version__}", degrade_cv2

    import PIL
    import scipy
    import scipy.ndimage
    from PIL import Image

    def degrade_pil(image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        def blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
            radius = BLUR_KERNEL // 2
            return scipy.ndimage.gaussian_filter(
                pixels, sigma=(sigma, sigma, 0), mode="mirror", radius=radius
            )

        noisy = blur_and_noise(image, rng, blur)
        quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        return torch.from_numpy(decoded.transpose(2, 0, 1).astype(np.float32) / 255)

    return f"PIL {PIL.__version__} + scipy.ndimage {scipy.__version__} (cv2 not installed)", degrade_pil


def reference_table(batch: np.ndarray, warmup: int, repeats: int) -> str:
    n = batch.shape[0]
    backend, degrade_one = reference_pipeline()
    rng = np.random.default_rng(0)
    batched_op = D.RandomCompose(
        ops=[
            D.GaussianBlur(kernel_size=BLUR_KERNEL, sigma=BLUR_SIGMA),
            D.GaussianNoise(sigma=NOISE_SIGMA),
            D.JPEG(quality=JPEG_QUALITY),
        ],
        p=1.0,
    )
    images = to_tensor(batch, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    runs = {
        # the reference ends with the collate step of a data loader
        "reference": lambda: torch.stack([degrade_one(image, rng) for image in batch]),
        "batched": functools.partial(batched_op, images, generator),
    }
    # alternate the two so that both see the same background load on a shared machine
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(warmup + repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    reference, batched = (statistics.median(times[name][warmup:]) for name in runs)
    return "\n".join(
        [
            "| pipeline (blur + noise + JPEG, CPU) | images/s |",
            "|---|---|",
            f"| per-image reference ({backend}) | {n / reference:,.0f} |",
            f"| batched RandomCompose, batch {n} | {n / batched:,.0f} |",
            f"| ratio batched / reference | {reference / batched:.2f}× |",
        ]
    )


def crossover_table(batch: np.ndarray, warmup: int, repeats: int) -> str:
    images = to_tensor(batch, torch.device("cpu"))
    n = images.shape[0]
    lines = ["| kernel | direct ms | FFT ms | faster |", "|---|---|---|---|"]
    for size in (9, 15, 21, 25, 27, 31, 41):
        kernels = torch.rand(n, size, size, generator=torch.Generator().manual_seed(size))
        kernels /= kernels.sum(dim=(1, 2), keepdim=True)
        times = {
            method: median_seconds(
                functools.partial(_filter_per_sample, images, kernels, method=method),
                warmup=warmup,
                repeats=repeats,
                device=torch.device("cpu"),
            )
            for method in ("direct", "fft")
        }
        faster = min(times, key=times.get)
        lines.append(f"| {size}×{size} | {1e3 * times['direct']:.1f} | {1e3 * times['fft']:.1f} | {faster} |")
    return "\n".join(lines)


def bicubic_table() -> str:
    image = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float().div(255)[None]
    generator = torch.Generator().manual_seed(0)
    lines = [
        "| scale | max abs diff | max abs diff ≥ 3 px from the border | mean abs diff |",
        "|---|---|---|---|",
    ]
    for scale in (2, 3, 4):
        crop = 512 - 512 % scale
        images = image[..., :crop, :crop]
        matlab, _ = D.BicubicDownsample(scale=scale)(images, generator)
        pil_style, _ = D.BicubicDownsample(scale=scale, method="torch")(images, generator)
        difference = (matlab - pil_style).abs()
        lines.append(
            f"| ×{scale} ({crop}² → {crop // scale}²) | {difference.max():.4f} "
            f"| {difference[..., 3:-3, 3:-3].max():.1e} | {difference.mean():.1e} |"
        )
    return "\n".join(lines)


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--only",
        choices=["configs", "reference", "crossover", "bicubic"],
        nargs="+",
        help="run these parts only",
    )
    parser.add_argument("--configs", nargs="+", help="conf/degradation names to time (default: all)")
    parser.add_argument(
        "--malloc",
        choices=["keep", "default"],
        default="keep",
        help="keep freed memory in glibc (as a training process should) or use glibc's defaults",
    )
    args = parser.parse_args()
    malloc = "glibc defaults"
    if args.malloc == "keep":
        malloc = "glibc keeps freed memory (mallopt)" if keep_freed_memory() else "allocator defaults"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    parts = set(args.only or ["configs", "reference", "crossover", "bicubic"])

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    batch = photo_batch(args.batch, args.size)
    print(
        f"{date.today()} · {cpu_name()}, {os.cpu_count()} cores · torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads · batch {args.batch}×3×{args.size}×{args.size} · "
        f"median of {args.repeats} after {args.warmup} warm-up runs · {malloc}"
    )
    if torch.cuda.is_available():
        print(f"CUDA: {torch.cuda.get_device_name()}")
    if "configs" in parts:
        print("\n### Throughput per config\n")
        print(per_config_table(batch, devices, args.warmup, args.repeats, args.configs))
    if "reference" in parts:
        print("\n### Batched vs per-image reference\n")
        print(reference_table(batch, args.warmup, args.repeats))
    if "crossover" in parts:
        print("\n### Per-sample filtering: direct vs FFT (CPU)\n")
        print(crossover_table(batch, args.warmup, args.repeats))
    if "bicubic" in parts:
        print(
            "\n### Bicubic: MATLAB-exact vs F.interpolate(antialias=True) on skimage's astronaut (512×512)\n"
        )
        print(bicubic_table())


if __name__ == "__main__":
    main()
