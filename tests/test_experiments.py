"""Every experiment exactly as a user types it: ``python -m restoration.run experiment=<name> trainer=smoke``.

At its paper size (network, crop, recipe), on the embedded photos, from a fresh working directory, with
nothing else on the command line. Where the experiment's guide needs downloaded weights, the test first
puts random weights in the real format where the library's own cache holds them after a download (CLIP
in the Hugging Face cache of this test session, ConStyle's released prompter in ``./weights``), as a
user who has the weights would have them.

The experiments whose paper-size networks take minutes on a 2-core CPU (IPT's 115M parameters, the
Restormer targets of PTG-RM), and those over 10 s, carry the ``paper`` mark: ``make test-experiments``
runs them, ``make test`` leaves them out to stay within its time budget (their smoke times are in
experiments/bench/README.md); ``make test`` covers their stages at tiny sizes (tests/test_run.py,
tests/test_ipt_stages.py, tests/test_prompted_restore.py).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from .conftest import CONF, EXPERIMENTS, run_as_typed
from .guide_models import save_official_constyle_prompter, save_random_open_clip_in_cache

# Over a minute each as typed with trainer=smoke on a 2-core CPU (experiments/bench/README.md).
PAPER_SIZE = {
    *(name for name in EXPERIMENTS if name.startswith("ipt_")),
    *(name for name in EXPERIMENTS if name.startswith(("ptgrm_derain", "ptgrm_deblur", "ptgrm_denoise"))),
}
# Over 10 s each: run in `make test-experiments` too, to keep `make test` within its budget; the main
# command of the project, experiment=ptgrm_lowlight (30 s), stays in `make test`.
LONG = {*PAPER_SIZE, "constyle_allinone", "origin_allinone", "ptgrm_lowlight_baseline"}
# What a prompter validates: its pretext and contrastive scores (no image metrics, no grids).
PROMPTER_SCORES = {"pretext_top1", "infonce_top1", "infonce", "cosine"}
IMAGE_SCORES = {"psnr", "ssim", "psnr_y", "ssim_y"}


def _guide_target(experiment: str) -> str | None:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"])
    return cfg.guide.get("_target_") if cfg.get("guide") else None


def _provide_guide_weights(experiment: str, cwd: Path) -> None:
    """The weights a user would have downloaded for the experiment's guide, where they would be."""
    target = _guide_target(experiment)
    if target == "restoration.guides.clip.ClipGuide":
        save_random_open_clip_in_cache("ViT-B-32", "openai")
    elif target == "restoration.guides.constyle.ConStylePrompter":
        save_official_constyle_prompter(cwd / "weights" / "pretrained_ConStyle_v2.pth")


def _the_run(cwd: Path) -> Path:
    (results,) = cwd.glob("logs/*/runs/*/results.json")
    return results.parent


@pytest.mark.parametrize(
    "experiment",
    [
        pytest.param(name, marks=[pytest.mark.paper] if name in LONG else [pytest.mark.slow])
        for name in EXPERIMENTS
    ],
)
def test_experiment_runs_as_typed(experiment: str, tmp_path: Path) -> None:
    _provide_guide_weights(experiment, tmp_path)
    assert run_as_typed(f"experiment={experiment}", "trainer=smoke", cwd=tmp_path) == 0
    run_dir = _the_run(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["experiment"] == experiment and results["status"] == "finished"
    assert results["global_step"] == 2
    scores = PROMPTER_SCORES if experiment == "constyle_pretrain" else IMAGE_SCORES
    baseline = set() if experiment == "constyle_pretrain" else {f"degraded/{name}" for name in scores}
    assert set(results["val"]) >= {f"val/{name}" for name in scores | baseline}
    assert set(results["test"]) >= {f"test/{name}" for name in scores | baseline}
    assert all(math.isfinite(value) for value in (*results["val"].values(), *results["test"].values()))
    guided = experiment.startswith("ptgrm_") and not experiment.endswith("_baseline")
    assert ("val/target/psnr" in results["val"]) == guided
    assert Path(results["best"]["checkpoint"]).is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    # one validation image (chelsea), validated after steps 1 and 2; grids, files and metrics agree
    grids = sorted(path.name for path in (run_dir / "images" / "val").glob("*.png"))
    if experiment == "constyle_pretrain":
        assert grids == []
    elif experiment == "ipt_pretrain":
        assert len(grids) == 2 * 6 and all(name.startswith("chelsea_") for name in grids)
    else:
        assert grids == ["chelsea_step0000001.png", "chelsea_step0000002.png"]
    with open(run_dir / "csv" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    monitored = results["best"]["metric"]
    assert [row["step"] for row in rows if row.get(monitored)] == ["1", "2"]
