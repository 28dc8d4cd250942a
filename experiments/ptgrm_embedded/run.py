"""PTG-RM on the embedded photos: target only vs target + PTG-RM vs the same-size plain control.

Xu et al., "Boosting Image Restoration via Priors from Pre-trained Models", CVPR 2024. The CPU-sized
version of the paper's Tables 1 and 3 on two degradations (synthetic low light with the SNR-aware target,
Gaussian denoising σ ∈ [0, 50] with Restormer), all through the real entry point:

1. a prior: a ConStyle v2 prompter pre-trained on the embedded photos (``experiment=constyle_pretrain``,
   the all-in-one types as its pretext classes), the offline stand-in for CLIP (the paper's "-r" variant);
2. for each degradation, one ``-m`` sweep over ``refiner=none,ptgrm,wide_plain`` and ``seed=1,2,3`` of
   ``experiment=ptgrm_<task> guide=prior``, equal steps on the same data stream per seed:
   - ``refiner=none``: the target network alone (the control);
   - ``refiner=ptgrm``: + PTG-RM under the prior's features;
   - ``refiner=wide_plain``: + the same-size plain module of Table 3 (no SVE/CSA, 4× width, no features);
3. the sweep's aggregated table (``restoration.aggregate``): per variant, mean ± std and 95 % interval over
   the seeds of the test PSNR/SSIM on the 4 embedded test photos (the 4 validation photos pick each run's
   best checkpoint), and the paired difference to the target alone.

    python -m experiments.ptgrm_embedded.run                   # defaults below
    python -m experiments.ptgrm_embedded.run --steps 600 --crop 96 --seeds 1 2 3 4 5

It prints every command and the two tables (see README.md). A sweep whose jobs all finished is reused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.launch import run_experiment, run_sweep

TASKS = {"lowlight": "snr_aware_tiny", "denoise": "restormer_tiny"}
# The colour, clipped noise this study measured (experiment=ptgrm_denoise is grey denoising, the paper's).
DATA = {"denoise": ["degradation=noise_gaussian", "datamodule.grey=false"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps of each run")
    parser.add_argument("--crop", type=int, default=64, help="training crop size")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--pretrain-steps", type=int, default=200, help="prior (prompter) pre-training steps")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
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
    tables = {}
    for task in args.tasks:
        jobs = run_sweep(
            [
                f"experiment=ptgrm_{task}",
                f"backbone={TASKS[task]}",
                *DATA.get(task, []),
                "guide=prior",
                f"guide.checkpoint={prior_dir / 'checkpoints' / 'last.ckpt'}",
                "trainer=cpu",
                f"max_steps={args.steps}",
                f"val_every={args.steps // 2}",
                f"datamodule.crop_size={args.crop}",
                "datamodule.batch_size=4",
                "stage.optimizer.lr=5e-4",
                "refiner=none,ptgrm,wide_plain",
                f"seed={','.join(map(str, args.seeds))}",
                'aggregate.baseline="refiner=none"',
                "aggregate.metrics=[test/psnr,test/ssim,test/target/psnr]",
            ],
            args.out / task,
        )
        psnr, ssim = (jobs[0]["test"][f"test/degraded/{key}"] for key in ("psnr", "ssim"))
        table = (args.out / task / "aggregate.md").read_text()
        tables[task] = f"{task}: the degraded input has {psnr:.2f} dB / {ssim:.4f}\n{table}"
    print("\n" + "\n".join(tables.values()))


if __name__ == "__main__":
    main()
