"""ConStyle v2 on the embedded photos: does the frozen prompter help a tiny prompted U-Net (all-in-one)?

Fan, Zhang and Chang, "ConStyle v2: A Strong Prompter for All-in-One Image Restoration", arXiv 2406.18242
(2024). Two commands of the real entry point:

1. pre-train the prompter on the embedded training photos (``experiment=constyle_pretrain``, degradation-type
   pretext);
2. one ``-m`` sweep of ``experiment=constyle_allinone backbone=constyle_nafnet_tiny`` over
   ``stage.prompt_input=prompter,zeros`` and ``seed=1,2,3``: the prompted network under the frozen prompter
   of step 1, and the same U-Net (same parameters, same recipe and data stream per seed) fed all-zero
   prompts, the control that isolates what the prompts add. The validation photos pick each run's best
   checkpoint; every run is tested on the 4 test photos under each of the 8 degradation types
   (``datamodule.eval_every_type=true``, fixed degradation seed).

The sweep ends with its aggregated table (``restoration.aggregate``); this script adds the per-type table
(mean ± std over seeds, and the paired difference prompted − zeros with its 95 % interval) from the
sweep's ``aggregate.csv``.

    python -m experiments.constyle_embedded.run                      # defaults below
    python -m experiments.constyle_embedded.run --steps 1000 --pretrain-steps 300 --seeds 1 2 3 4 5

A sweep whose jobs all finished is reused, so an interrupted study picks up where it stopped.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from hydra import compose, initialize_config_dir

from experiments.launch import run_experiment, run_sweep

CONF = Path(__file__).resolve().parents[2] / "conf"


def _degradation_types() -> list[str]:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return list(compose(config_name="config", overrides=["degradation=allinone"]).degradation.ops)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps of each restoration network")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="prompter pre-training steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=Path("logs/constyle_embedded"))
    args = parser.parse_args()

    common = ["trainer=cpu", "datamodule.crop_size=64"]
    pretrain = args.out / "pretrain"
    run_experiment(
        [
            "experiment=constyle_pretrain",
            *common,
            "datamodule.batch_size=16",
            "stage.queue_size=1024",  # a multiple of the batch; 11 photos need no 65,760-entry queue
            f"max_steps={args.pretrain_steps}",
            f"val_every={args.pretrain_steps}",
            "test=false",
        ],
        pretrain,
    )
    study = args.out / "study"
    run_sweep(
        [
            "experiment=constyle_allinone",
            "backbone=constyle_nafnet_tiny",
            f"guide.checkpoint={pretrain / 'checkpoints' / 'last.ckpt'}",
            *common,
            "datamodule.batch_size=8",
            "datamodule.eval_every_type=true",
            f"max_steps={args.steps}",
            f"val_every={args.steps // 2}",
            "stage.prompt_input=prompter,zeros",
            f"seed={','.join(map(str, args.seeds))}",
            'aggregate.baseline="stage.prompt_input=zeros"',
        ],
        study,
    )
    with (study / "aggregate.csv").open() as handle:
        rows = {(row["group"], row["metric"]): row for row in csv.DictReader(handle)}
    prompted, zeros = "stage.prompt_input=prompter", "stage.prompt_input=zeros"
    types = _degradation_types()

    def cell(group: str, metric: str) -> str:
        row = rows[group, metric]
        return f"{float(row['mean']):.2f} ± {float(row['std']):.2f}"

    print((study / "aggregate.md").read_text())
    degraded = float(rows[zeros, "test/degraded/psnr"]["mean"])
    print(f"PSNR per type, mean ± std over {len(args.seeds)} seeds, 4 test photos per type")
    print(f"(the degraded inputs, all types: {degraded:.2f} dB)")
    print(f"| | {' | '.join(types)} |")
    print(f"|---|{'---|' * len(types)}")
    print(f"| zero prompts (control) | {' | '.join(cell(zeros, f'test/{name}/psnr') for name in types)} |")
    print(f"| prompted | {' | '.join(cell(prompted, f'test/{name}/psnr') for name in types)} |")
    differences = []
    for name in types:
        row = rows[prompted, f"test/{name}/psnr"]
        low, high = float(row["diff_ci_low"]), float(row["diff_ci_high"])
        differences.append(f"{float(row['diff_mean']):+.2f} [{low:.2f}, {high:.2f}]")
    print(f"| Δ prompted − zeros [95 % CI] | {' | '.join(differences)} |")


if __name__ == "__main__":
    main()
