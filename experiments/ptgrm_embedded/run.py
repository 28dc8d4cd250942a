"""PTG-RM on the embedded photos: target only vs target + PTG-RM vs the same-size plain control.

Xu et al., "Boosting Image Restoration via Priors from Pre-trained Models", CVPR 2024. The CPU-sized
version of the paper's Tables 1 and 3 on two degradations (synthetic low light with the SNR-aware target,
Gaussian denoising σ ∈ [0, 50] with Restormer), all through the real entry point:

1. a prior: a ConStyle v2 prompter pre-trained on the embedded photos (``experiment=constyle_pretrain``,
   the all-in-one types as its pretext classes), the offline stand-in for CLIP (the paper's "-r" variant);
2. for each degradation, three runs of equal steps on the same data stream:
   - ``target only``: ``experiment=ptgrm_<task>_baseline``;
   - ``+ PTG-RM (prior)``: ``experiment=ptgrm_<task> guide=prior``;
   - ``+ wide plain``: the same with ``refiner.wide_plain=true`` (Table 3's control: no SVE/CSA, 4× width,
     no use of the features);
3. the best checkpoint of each tested on the 4 validation photos.

    python -m experiments.ptgrm_embedded.run                   # defaults below
    python -m experiments.ptgrm_embedded.run --steps 300 --pretrain-steps 150

It prints every command and a markdown table (see README.md). A run whose folder already holds a finished
results.json is reused, so an interrupted study picks up where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.launch import run_experiment

TASKS = {"lowlight": "snr_aware_tiny", "denoise": "restormer_tiny"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=600, help="training steps of each run")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="prior (prompter) pre-training steps")
    parser.add_argument("--out", type=Path, default=Path("logs/ptgrm_embedded"))
    args = parser.parse_args()

    prior_dir = args.out / "prior"
    run_experiment(
        [
            "experiment=constyle_pretrain",
            "degradation=allinone",
            "backbone.num_classes=8",
            "trainer=cpu",
            "datamodule.crop_size=64",
            "datamodule.batch_size=8",
            "stage.queue_size=512",
            f"max_steps={args.pretrain_steps}",
            f"val_every={args.pretrain_steps}",
            "test=false",
        ],
        prior_dir,
    )
    prior = ["guide=prior", f"guide.checkpoint={prior_dir / 'checkpoints' / 'last.ckpt'}"]
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for task, target in TASKS.items():
        shared = [
            f"backbone={target}",
            "trainer=cpu",
            f"max_steps={args.steps}",
            f"val_every={args.steps // 2}",
            "datamodule.crop_size=96",
            "datamodule.batch_size=4",
            "stage.optimizer.lr=5e-4",
        ]
        variants = {
            "target only": [f"experiment=ptgrm_{task}_baseline"],
            "+ PTG-RM (prior)": [f"experiment=ptgrm_{task}", *prior],
            "+ wide plain": [f"experiment=ptgrm_{task}", *prior, "refiner.wide_plain=true"],
        }
        for label, overrides in variants.items():
            name = label.strip("+ ").split()[0].replace("-", "")
            results = run_experiment([*overrides, *shared], args.out / task / name)
            rows.setdefault(task, {})[label] = results["test"]

    keys = ("psnr", "ssim")
    print("\n| task | model | PSNR | SSIM | target's PSNR |")
    print("|---|---|---|---|---|")
    for task, models in rows.items():
        degraded = next(iter(models.values()))
        cells = " | ".join(f"{degraded[f'test/degraded/{key}']:.4g}" for key in keys)
        print(f"| {task} | degraded input | {cells} | |")
        for label, test in models.items():
            cells = " | ".join(f"{test[f'test/{key}']:.4g}" for key in keys)
            target_psnr = test.get("test/target/psnr")
            print(f"| {task} | {label} | {cells} | {'' if target_psnr is None else f'{target_psnr:.2f}'} |")


if __name__ == "__main__":
    main()
