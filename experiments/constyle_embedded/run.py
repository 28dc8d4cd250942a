"""ConStyle v2 on the embedded photos: does the frozen prompter help a tiny NAFNet on the all-in-one mix?

Fan, Zhang and Chang, "ConStyle v2: A Strong Prompter for All-in-One Image Restoration", arXiv 2406.18242
(2024). Three runs through the real entry point, then one evaluation per degradation type:

1. pre-train the prompter on the embedded photos (``experiment=constyle_pretrain``, degradation-type pretext);
2. train the prompted tiny NAFNet (``experiment=constyle_allinone backbone=constyle_nafnet_tiny``) under the
   frozen prompter of step 1, and the plain tiny NAFNet (``experiment=origin_allinone backbone=nafnet_tiny``),
   for the same number of steps on the same data stream;
3. test the last checkpoint of each on the 4 validation photos once per degradation type (the all-in-one
   mix restricted to that type with ``degradation.weights``, degraded with the fixed validation seed), so
   every type is scored on every photo.

    python -m experiments.constyle_embedded.run                      # defaults below
    python -m experiments.constyle_embedded.run --steps 500 --pretrain-steps 300

It prints every command it runs and a markdown table of PSNR / SSIM per type (see README.md). A run
whose folder already holds a finished results.json is not repeated: an interrupted study picks up where
it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_dir

from experiments.launch import run_experiment

CONF = Path(__file__).resolve().parents[2] / "conf"


def _degradation_types() -> list[str]:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return list(compose(config_name="config", overrides=["degradation=allinone"]).degradation.ops)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each restoration network")
    parser.add_argument("--pretrain-steps", type=int, default=1000, help="prompter pre-training steps")
    parser.add_argument("--out", type=Path, default=Path("logs/constyle_embedded"))
    args = parser.parse_args()

    common = ["trainer=cpu", "datamodule.crop_size=64"]
    pretrain = args.out / "pretrain"
    run_experiment(
        [
            "experiment=constyle_pretrain",
            *common,
            "datamodule.batch_size=16",
            "stage.queue_size=1024",  # a multiple of the batch; 15 photos need no 65,760-entry queue
            f"max_steps={args.pretrain_steps}",
            f"val_every={args.pretrain_steps}",
            "test=false",
        ],
        pretrain,
    )
    prompter = f"guide.checkpoint={pretrain / 'checkpoints' / 'last.ckpt'}"
    models = {
        "prompted (constyle_nafnet_tiny)": [
            "experiment=constyle_allinone",
            "backbone=constyle_nafnet_tiny",
            prompter,
        ],
        "origin (nafnet_tiny)": ["experiment=origin_allinone", "backbone=nafnet_tiny"],
    }
    training = [*common, "datamodule.batch_size=8", f"max_steps={args.steps}", f"val_every={args.steps}"]
    types = _degradation_types()
    scores: dict[str, dict[str, tuple[float, float]]] = {}
    for model, overrides in models.items():
        run_dir = args.out / model.split()[0]
        run_experiment([*overrides, *training, "test=false"], run_dir)
        checkpoint = f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
        scores[model] = {}
        for index, name in enumerate(types):
            weights = ",".join("1" if i == index else "0" for i in range(len(types)))
            results = run_experiment(
                [*overrides, *common, "train=false", checkpoint, f"degradation.weights=[{weights}]"],
                run_dir / "per_type" / name,
            )
            scores[model][name] = (results["test"]["test/psnr"], results["test"]["test/ssim"])
            degraded = (results["test"]["test/degraded/psnr"], results["test"]["test/degraded/ssim"])
            scores.setdefault("degraded input", {})[name] = degraded

    print(f"\n| PSNR / SSIM, 4 photos | {' | '.join(types)} | mean |")
    print(f"|---|{'---|' * (len(types) + 1)}")
    for model in ("degraded input", *models):
        cells = [f"{scores[model][name][0]:.2f} / {scores[model][name][1]:.4f}" for name in types]
        mean_psnr = sum(scores[model][name][0] for name in types) / len(types)
        mean_ssim = sum(scores[model][name][1] for name in types) / len(types)
        print(f"| {model} | {' | '.join(cells)} | {mean_psnr:.2f} / {mean_ssim:.4f} |")


if __name__ == "__main__":
    main()
