"""Seconds per image of each benchmark preset of ``python -m restoration.evaluate``, at paper size.

Run ``python -m experiments.bench.evaluate [--presets ipt_sr_x2 sidd ...] [--side 240]``. For each preset it
evaluates the preset's own network at paper size with random weights (saved in the container its method
releases, or as our checkpoint for the guided stages, with CLIP ViT-B/32's image tower as the guide) on the
first set of the preset, made of one synthetic image of ``--side`` pixels in the set's exact layout
(tests/test_evaluate.py's builder and checkpoint writer), through ``restoration.evaluate.evaluate`` as the
command runs it. It prints a Markdown table of the seconds per image that ``results.json`` reports (the
restoration alone: reading, degrading and scoring are not in it), with the network and its parameter counts.
The all-in-one protocols are timed with ConStyle v2's prompted NAFNet under its prompter.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import date
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.bench.degradations import cpu_name
from restoration.evaluate import evaluate
from restoration.run import CONFIG_DIR, build_stage, keep_freed_memory
from tests.guide_models import save_official_constyle_prompter
from tests.test_evaluate import build_fake_set, save_our_checkpoint

__all__ = ["main"]

PRESETS = (
    "ipt_sr_x2",
    "ipt_sr_x3",
    "ipt_sr_x4",
    "ipt_denoise_30",
    "ipt_denoise_50",
    "ipt_derain",
    "ptgrm_lowlight",
    "ptgrm_derain",
    "ptgrm_deblur",
    "ptgrm_denoise",
    "sidd",
    "constyle_allinone",
    "allinone_3task",
    "allinone_5task",
)
CLIP_TOWER = {"_target_": "experiments.bench.ptgrm.RandomClipImageTower"}
# the network the all-in-one protocols are timed with: ConStyle v2's prompted NAFNet under its prompter
ALLINONE = ("backbone=constyle_nafnet", "guide=constyle", "stage=prompted_restore")


def _compose(folder: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="evaluate", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(folder / "run")
        cfg.hydra.job.name = "bench"
        cfg.paths.data_dir = str(folder / "data")
    HydraConfig.instance().set_config(cfg)
    return cfg


def _checkpoint(preset: str, folder: Path, cfg: DictConfig) -> tuple[Path, list[str]]:
    """Random paper-size weights in the preset's container and the overrides that evaluate needs with them."""
    if preset.startswith(("ptgrm_", "constyle_", "allinone_")):
        overrides = list(ALLINONE) if not preset.startswith("ptgrm_") else []
        if overrides:
            overrides.append(f"guide.checkpoint={save_official_constyle_prompter(folder / 'prompter.pth')}")
        cfg = _compose(folder, f"benchmark={preset}", "ckpt_path=/none", *overrides)
        if preset.startswith("ptgrm_"):
            with open_dict(cfg):
                cfg.guide = OmegaConf.create(CLIP_TOWER)
        path = save_our_checkpoint(folder / "best.ckpt", cfg)
        return path, overrides
    stage = build_stage(cfg)
    path = folder / "weights.pth"
    state = stage.net.state_dict()
    torch.save(state if preset.startswith("ipt_") else {"params": state}, path)  # IPT: bare; BasicSR: params
    return path, []


def _keep_one_image(source: DictConfig) -> None:
    """One image per set is enough for a time per image (IPT's official tiling takes minutes on a CPU)."""
    folders = [source.get(key) for key in ("lq_dir", "gt_dir", "root")]
    if source._target_.endswith(("PairedFolders", "ImageFolder")):
        for folder in filter(None, folders):
            for path in sorted(Path(folder).glob("*.png"))[1:]:
                path.unlink()


def bench(preset: str, side: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        cfg = _compose(folder, f"benchmark={preset}", "ckpt_path=/none")
        first = cfg.benchmark.sets[0]
        node = cfg.benchmark.datasets[first]
        build_fake_set(node, side)
        _keep_one_image(node.source)
        path, overrides = _checkpoint(preset, folder, cfg)
        cfg = _compose(
            folder, f"benchmark={preset}", f"ckpt_path={path}", f"benchmark.sets=[{first}]", *overrides
        )
        results = evaluate(cfg)
        return {
            "preset": preset,
            "set": first,
            "network": str(results["network"]).rsplit(".", 1)[-1],
            "parameters": results["parameters"],
            "seconds": results["sets"][first]["seconds_per_image"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--side", type=int, default=240, help="ground-truth side (divisible by 2, 3, 4)")
    args = parser.parse_args()
    keep_freed_memory()
    print(f"{date.today()}, {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"\n| preset | set | network | trainable + frozen parameters | s / image at {args.side}² (GT) |")
    print("|---|---|---|---|---|")
    for preset in args.presets:
        row = bench(preset, args.side)
        counts = row["parameters"]
        parameters = f"{counts['trainable']:,} + {counts['frozen']:,}"
        print(
            f"| `{preset}` | {row['set']} | {row['network']} | {parameters} | {row['seconds']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
