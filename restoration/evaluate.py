"""Benchmark entry point: one checkpoint × a suite of test sets with a paper's protocol → a table.

    python -m restoration.evaluate benchmark=ipt_sr_x2 ckpt_path=/weights/IPT_sr2.pt
    python -m restoration.evaluate benchmark=ptgrm_lowlight ckpt_path=<run>/checkpoints/best.ckpt
    python -m restoration.evaluate benchmark=allinone_5task ckpt_path=<c> 'benchmark.sets=[Rain100L,LOL-v1]'

A benchmark preset (``conf/benchmark/<name>.yaml``) lists its sets (``benchmark.datasets``: the source and
folder layout of each under ``paths.data_dir``, the degradation synthesized where a set has no degraded
images, its seed) and the protocol: the channel the table reports (``rgb`` or ``y``), the border crop, the
size multiple the images are cropped to, the tiling (whole images, overlapping tiles, or IPT's official
``forward_chop``) and the ×8 self-ensemble.

The checkpoint is either one of ours (``.ckpt``: the stage is rebuilt from the config saved in it, with its
guide, prompter and refiner, and takes the EMA weights where it has them) or released weights
(``.pth``/``.pt``/``.safetensors``/``.bin``) loaded into the configured backbone through ``backbone_weights``,
the loader of :mod:`restoration.archs.pretrained`. No Lightning Trainer runs: the stage's evaluation part
(:meth:`~restoration.stages.base.RestorationStage.restore_for_evaluation`) restores each image.

Output, in the run folder (``logs/evaluate_<benchmark>/runs/<stamp>/``): ``results.json`` (per set and per
image), ``results.md`` (the table, also printed) and ``results.csv`` (per image, every metric); with
``logger=wandb`` also W&B tables. ``save_images=true`` writes the restored images.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, open_dict
from tqdm.auto import tqdm

from restoration.aggregate import write_csv, write_text
from restoration.checkpoints import (
    check_frozen_towers,
    check_state_dict,
    frozen_tower_identity,
    load_checkpoint_header,
)
from restoration.data.datasets import WholeImages
from restoration.errors import ConfigError, DataError, RestorationError
from restoration.loggers import build_loggers
from restoration.metrics import ImageQuality
from restoration.run import CONFIG_DIR, build_stage, command_line_keys, parameter_counts, user_error_message
from restoration.stages.ipt_pretrain import IPTTiling
from restoration.tiling import self_ensemble_forward
from restoration.visualize import save_png, to_uint8

__all__ = ["Protocol", "evaluate", "load_stage", "main"]

log = logging.getLogger(__name__)

RELEASED_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")
# The config nodes a .ckpt brings back: the network and everything the stage runs at test time.
STAGE_KEYS = ("backbone", "refiner", "guide", "stage")
TILINGS = ("whole", "tiles", "ipt_official", "ipt_fast")


@dataclass(frozen=True)
class Protocol:
    """How a benchmark restores and scores its images.

    Args:
        channel: ``"y"`` (PSNR/SSIM on the BT.601 luma, the SR and deraining convention) or ``"rgb"``.
        crop_border: pixels removed on each side before scoring (the scale for super-resolution).
        size_multiple: crop each degraded image (top left) to a multiple of this before restoring, the
            ground truth with it (ConStyle v2: 32); 1 keeps whole images.
        tiling: ``"whole"`` (the whole image, padded to the network's size multiple), ``"tiles"``
            (overlapping ``tile``-pixel tiles), ``"ipt_official"`` (IPT's official ``forward_chop``) or
            ``"ipt_fast"`` (IPT's 48-pixel tiles with 12 pixels of overlap).
        tile: the tile size of ``"tiles"``.
        tile_overlap: the overlap of ``"tiles"``.
        self_ensemble: average over the 8 flips and transposes (EDSR's ``forward_x8``).
        task: the task of a multi-task network (IPT pre-training: ``sr_x2``, ``denoise_30``...); ``None``: its
            only or first one.
    """

    channel: str = "rgb"
    crop_border: int = 0
    size_multiple: int = 1
    tiling: str = "whole"
    tile: int | None = None
    tile_overlap: int = 32
    self_ensemble: bool = False
    task: str | None = None

    def __post_init__(self) -> None:
        if self.channel not in ("rgb", "y"):
            raise ConfigError(f"benchmark.channel={self.channel!r}; expected rgb or y")
        if self.tiling not in TILINGS:
            raise ConfigError(f"benchmark.tiling={self.tiling!r}; expected one of {list(TILINGS)}")
        if self.tiling == "tiles" and (self.tile is None or self.tile < 1):
            raise ConfigError(
                f"benchmark.tiling=tiles needs a tile size: set benchmark.tile=256 (got {self.tile})"
            )
        if self.crop_border < 0 or self.size_multiple < 1:
            raise ConfigError(
                f"benchmark.crop_border={self.crop_border}, benchmark.size_multiple={self.size_multiple}; "
                "expected a border >= 0 and a multiple >= 1"
            )

    @classmethod
    def from_config(cls, node: DictConfig) -> Protocol:
        return cls(**{name: node.get(name, default) for name, default in asdict(cls()).items()})


# ---- the checkpoint ---------------------------------------------------------------------------


def load_stage(cfg: DictConfig) -> pl.LightningModule:
    """The stage to evaluate with the weights of ``cfg.ckpt_path`` (see the module docstring)."""
    path = Path(str(cfg.ckpt_path))
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: file not found")
    if path.suffix == ".ckpt":
        checkpoint = load_checkpoint_header(path)
        _take_stage_config(cfg, path, checkpoint.get("config") or {})
        stage = build_stage(cfg)
        check_state_dict(path, checkpoint["state_dict"], stage.state_dict())
        # a guide or prompter with other weights than at training gives other numbers: refused unless accepted
        towers = frozen_tower_identity(stage, cfg)
        check_frozen_towers(path, checkpoint, towers, accept=bool(cfg.get("accept_tower_change")))
        stage.load_state_dict(checkpoint["state_dict"])
    elif path.suffix in RELEASED_SUFFIXES:
        with open_dict(cfg):
            if cfg.backbone_weights.path is None:
                cfg.backbone_weights.path = str(path)
        stage = build_stage(cfg)
    else:
        raise ConfigError(
            f"ckpt_path={path}: expected a checkpoint of this framework (.ckpt) or released weights "
            f"({', '.join(RELEASED_SUFFIXES)})"
        )
    return stage


def _take_stage_config(cfg: DictConfig, path: Path, saved: Mapping[str, Any]) -> None:
    """Rebuild the checkpoint's stage: its saved backbone, refiner, guide and stage nodes replace the composed
    ones, except a node the command line sets (which then has to fit the weights)."""
    given = {key.split(".", 1)[0] for key in command_line_keys()}
    taken = []
    with open_dict(cfg):
        for key in STAGE_KEYS:
            if key in saved and key not in given:
                cfg[key] = saved[key]
                taken.append(key)
        # the weights are the checkpoint's: files the training run started from are not needed again
        cfg.backbone_weights.path = None
    log.info("%s: the %s are rebuilt from the checkpoint's config", path, ", ".join(taken) or "nothing")


def restorer(
    stage: pl.LightningModule, protocol: Protocol
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """A function from a degraded batch to ``{"restored": ..., <intermediate output>: ...}``."""
    ipt_tiling = getattr(stage, "tiling", None)
    if protocol.tiling.startswith("ipt_"):
        if not isinstance(ipt_tiling, IPTTiling):
            raise ConfigError(
                f"benchmark.tiling={protocol.tiling} is IPT's tiling but the stage is "
                f"{type(stage).__name__}; set benchmark.tiling=whole or tiles"
            )
        stage.tiling = IPTTiling(
            protocol=protocol.tiling.removeprefix("ipt_"),
            self_ensemble=protocol.self_ensemble,
            batch_size=ipt_tiling.batch_size,
        )
        if protocol.task is not None:
            if not hasattr(stage, "predict_task"):
                raise ConfigError(
                    f"benchmark.task={protocol.task}: {type(stage).__name__} restores a single task; set "
                    "benchmark.task=null"
                )
            stage.predict_task = protocol.task
        return lambda degraded: {"restored": stage.restore(degraded)}
    if isinstance(ipt_tiling, IPTTiling):
        raise ConfigError(
            f"benchmark.tiling={protocol.tiling}: IPT's body only takes 48×48 inputs; set "
            "benchmark.tiling=ipt_official (the official protocol) or ipt_fast"
        )
    stage.tile = protocol.tile if protocol.tiling == "tiles" else None
    stage.tile_overlap = protocol.tile_overlap
    if protocol.self_ensemble:
        return lambda degraded: {
            "restored": self_ensemble_forward(
                lambda images: stage.restore_for_evaluation(images)[0], degraded
            )
        }

    def restore(degraded: torch.Tensor) -> dict[str, torch.Tensor]:
        restored, extras = stage.restore_for_evaluation(degraded)
        return {"restored": restored, **extras}

    return restore


# ---- the sets -----------------------------------------------------------------------------------


def selected_sets(benchmark: DictConfig) -> list[str]:
    """The names of ``benchmark.sets``, each checked against ``benchmark.datasets``."""
    available = list(benchmark.get("datasets") or {})
    names = list(benchmark.get("sets") or [])
    if not names:
        raise ConfigError(f"benchmark.sets is empty; choose from {available}")
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ConfigError(
            f"benchmark.sets: no set {unknown[0]!r} in benchmark {benchmark.name}; "
            f"expected some of {available}"
        )
    return names


def benchmark_images(name: str, node: DictConfig) -> WholeImages:
    """The (degraded, ground truth) pairs of set ``name``; a missing folder or wrong layout is one line."""
    try:
        source = instantiate(node.source)
        source.scan()
        degradation = instantiate(node.degradation) if node.get("degradation") else None
        grey = bool(node.get("grey", False))
        return WholeImages(source, degradation=degradation, seed=int(node.get("seed", 1)), grey=grey)
    except RestorationError as error:
        layout = f"; expected layout: {node.layout}" if node.get("layout") else ""
        raise DataError(
            f"benchmark set {name} (root {node.get('root')}): {error}{layout}; set "
            f"benchmark.datasets.{name}.root=<folder> or paths.data_dir=<folder>"
        ) from error


def _aligned(lq: torch.Tensor, gt: torch.Tensor, multiple: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop the degraded image to a multiple of ``multiple`` (top left) and the ground truth to match it."""
    scale = max(1, round(gt.shape[-1] / lq.shape[-1]))
    height, width = (side - side % multiple for side in lq.shape[-2:])
    if height == 0 or width == 0:
        raise DataError(
            f"an image of {lq.shape[-1]}×{lq.shape[-2]} is smaller than benchmark.size_multiple={multiple}"
        )
    return lq[..., :height, :width], gt[..., : height * scale, : width * scale]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_set(
    name: str,
    images: WholeImages,
    restore: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    *,
    protocol: Protocol,
    device: torch.device,
    image_dir: Path | None,
) -> list[dict[str, Any]]:
    """Restore and score every image of a set; one row per image (PSNR/SSIM on RGB and Y, seconds)."""
    metric = ImageQuality(crop_border=protocol.crop_border)
    rows = []
    for index in tqdm(range(len(images)), desc=name, unit="image", leave=False, file=sys.stdout):
        item = images[index]
        lq, gt = _aligned(item["lq"][None].to(device), item["gt"][None].to(device), protocol.size_multiple)
        _synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            outputs = restore(lq)
        _synchronize(device)
        seconds = time.perf_counter() - start
        row: dict[str, Any] = {"set": name, "image": item["name"]}
        for output, restored in outputs.items():
            restored = restored.float().clamp(0, 1)
            if restored.shape != gt.shape:
                raise ConfigError(
                    f"benchmark set {name}: the network maps {tuple(lq.shape[1:])} to "
                    f"{tuple(restored.shape[1:])} but the ground truth is {tuple(gt.shape[1:])}: does the "
                    "backbone's scale match the set's?"
                )
            prefix = "" if output == "restored" else f"{output}/"
            row |= {f"{prefix}{key}": float(value) for key, value in metric.per_image(restored, gt).items()}
            if output == "restored" and image_dir is not None:
                save_png(to_uint8(restored[0]), image_dir / name / f"{item['name']}.png")
        row["seconds"] = seconds
        rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]], protocol: Protocol) -> dict[str, Any]:
    """A set's means: PSNR/SSIM on the protocol's channel, both channels, intermediate outputs, seconds."""
    suffix = "_y" if protocol.channel == "y" else ""
    keys = [key for key in rows[0] if key not in ("set", "image")]
    means = {key: sum(row[key] for row in rows) / len(rows) for key in keys}
    return {
        "images": len(rows),
        "psnr": means[f"psnr{suffix}"],
        "ssim": means[f"ssim{suffix}"],
        "seconds_per_image": means.pop("seconds"),
        "metrics": means,
    }


def markdown(results: Mapping[str, Any]) -> str:
    """The table of ``results.json``: a row per set, PSNR/SSIM on the protocol's channel, seconds/image."""
    protocol = results["protocol"]
    channel = "Y" if protocol["channel"] == "y" else "RGB"
    sets = results["sets"]
    extras = sorted({key.split("/")[0] for row in sets.values() for key in row["metrics"] if "/" in key})
    suffix = "_y" if protocol["channel"] == "y" else ""
    header = [
        "set",
        "images",
        f"PSNR ({channel})",
        f"SSIM ({channel})",
        *[f"{name} PSNR" for name in extras],
        "s / image",
    ]
    lines = [
        f"# {results['benchmark']}: {results['checkpoint']}",
        "",
        f"Protocol: {channel}, border {protocol['crop_border']}, size multiple {protocol['size_multiple']}, "
        f"tiling {protocol['tiling']}, self-ensemble {'on' if protocol['self_ensemble'] else 'off'}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, row in sets.items():
        cells = [name, str(row["images"]), f"{row['psnr']:.2f}", f"{row['ssim']:.4f}"]
        cells += [f"{row['metrics'][f'{extra}/psnr{suffix}']:.2f}" for extra in extras]
        cells.append(f"{row['seconds_per_image']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"device={name!r}: {error}; expected auto, cpu or cuda[:N]") from None


def _log_tables(cfg: DictConfig, results: Mapping[str, Any], rows: list[dict[str, Any]]) -> None:
    """The means to every configured logger, and the per-set and per-image tables to W&B."""
    loggers = build_loggers(cfg, ckpt_path=None)
    means = {f"{name}/{key}": row[key] for name, row in results["sets"].items() for key in ("psnr", "ssim")}
    for logger in loggers:
        logger.log_metrics(means, step=0)
        if isinstance(logger, WandbLogger):
            columns = ["set", "images", "psnr", "ssim", "seconds_per_image"]
            table = [[name, *(row[key] for key in columns[1:])] for name, row in results["sets"].items()]
            logger.log_table("benchmark", columns=columns, data=table)
            image_columns = list(rows[0])
            logger.log_table(
                "images", columns=image_columns, data=[[row.get(c) for c in image_columns] for row in rows]
            )
        logger.save()
        logger.finalize("success")
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb

        if wandb.run is not None:
            wandb.run.finish()


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.benchmark``; write and return ``results.json``'s content."""
    output_dir = Path(cfg.paths.output_dir)
    protocol = Protocol.from_config(cfg.benchmark)
    names = selected_sets(cfg.benchmark)
    device = _device(str(cfg.get("device", "auto")))
    # every set is found and its layout checked before the network is built: a missing folder fails fast
    sets = {name: benchmark_images(name, cfg.benchmark.datasets[name]) for name in names}
    if (
        cfg.get("seed") is not None
    ):  # anything built at random (a guide without weights) is the same every time
        pl.seed_everything(cfg.seed, verbose=False)
    stage = load_stage(cfg)
    counts = parameter_counts(stage)  # before load_stage's freezing: the network's and the frozen towers'
    stage = stage.eval().requires_grad_(False).to(device)
    restore = restorer(stage, protocol)
    image_dir = output_dir / "images" if cfg.get("save_images") else None
    results: dict[str, Any] = {
        "benchmark": cfg.benchmark.name,
        "checkpoint": str(cfg.ckpt_path),
        "stage": type(stage).__name__,
        "network": cfg.backbone.get("_target_"),
        "parameters": counts,
        "device": str(device),
        "protocol": asdict(protocol),
        "sets": {},
    }
    rows: list[dict[str, Any]] = []
    for name, images in sets.items():
        set_rows = evaluate_set(name, images, restore, protocol=protocol, device=device, image_dir=image_dir)
        results["sets"][name] = summary(set_rows, protocol)
        rows += set_rows
        log.info(
            "%s: %d images, PSNR %.2f dB, SSIM %.4f",
            name,
            len(set_rows),
            results["sets"][name]["psnr"],
            results["sets"][name]["ssim"],
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(results)
    write_text(output_dir / "results.json", json.dumps(results, indent=2) + "\n")
    write_text(output_dir / "results.md", text)
    write_csv(
        output_dir / "results.csv", rows, columns=list(dict.fromkeys(key for row in rows for key in row))
    )
    _log_tables(cfg, results, rows)
    print(text)
    log.info("results: %s", output_dir / "results.md")
    return results


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """One evaluation; an expected mistake (missing set, bad checkpoint or protocol): one line, exit 1."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    try:
        evaluate(cfg)
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        log.error("%s", message)
        sys.exit(1)


if __name__ == "__main__":
    main()
