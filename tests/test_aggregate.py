"""``restoration.aggregate``: jobs grouped over seeds, mean ± std, 95 % intervals, paired differences."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from restoration.aggregate import Stat, aggregate, main, read_jobs, summarize
from restoration.errors import ConfigError

# Student's t, two-sided 95 %, 2 degrees of freedom (any table): 3 values give mean ± 4.3027·s/√3.
T_2 = 4.302652729911275


def write_job(
    sweep: Path,
    number: int,
    overrides: list[str],
    *,
    seed: int,
    status: str = "finished",
    psnr: float | None = None,
    ssim: float | None = None,
    parameters: int = 1000,
) -> None:
    """A job folder as ``restoration.run`` leaves it: ``<sweep>/<n>/results.json``."""
    folder = sweep / str(number)
    folder.mkdir(parents=True)
    results = {"status": status, "seed": seed, "overrides": [*overrides, f"seed={seed}"]}
    if status == "finished":
        results["test"] = {"test/psnr": psnr, "test/ssim": ssim}
        results["parameters"] = {"trainable": parameters, "frozen": 0}
    (folder / "results.json").write_text(json.dumps(results))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """``-m experiment=x refiner=none,ptgrm seed=1,2,3`` plus a 4th seed of ptgrm that failed."""
    sweep = tmp_path / "multiruns" / "2030-01-01_00-00-00"
    base = ["experiment=ptgrm_lowlight"]
    for number, (seed, psnr, ssim) in enumerate([(1, 20.0, 0.5), (2, 21.0, 0.6), (3, 22.0, 0.7)]):
        write_job(sweep, number, [*base, "refiner=none"], seed=seed, psnr=psnr, ssim=ssim, parameters=400)
    for number, (seed, psnr, ssim) in enumerate([(1, 21.0, 0.5), (2, 23.0, 0.65), (3, 22.0, 0.75)], start=3):
        write_job(sweep, number, [*base, "refiner=ptgrm"], seed=seed, psnr=psnr, ssim=ssim, parameters=1100)
    write_job(sweep, 6, [*base, "refiner=ptgrm"], seed=4, status="failed: data folder /x missing")
    return sweep


def test_stat_is_mean_sample_std_and_student_t_interval() -> None:
    stat = Stat.of([20.0, 21.0, 22.0])
    half = T_2 * 1.0 / math.sqrt(3)
    assert (stat.n, stat.mean, stat.std) == (3, 21.0, 1.0)
    assert stat.low == pytest.approx(21.0 - half) and stat.high == pytest.approx(21.0 + half)
    single = Stat.of([5.0])
    assert single.mean == 5.0 and math.isnan(single.std) and math.isnan(single.low)


def test_groups_over_seeds_with_paired_differences_against_the_baseline(sweep: Path) -> None:
    groups = summarize(read_jobs(sweep), baseline="refiner=none")
    assert [(group.label, group.baseline) for group in groups] == [
        ("refiner=none", True),
        ("refiner=ptgrm", False),
    ]
    baseline, ptgrm = groups
    assert [job.seed for job in ptgrm.jobs] == [1, 2, 3, 4] and [job.name for job in ptgrm.failed] == ["6"]
    assert ptgrm.stats["test/psnr"].mean == pytest.approx(22.0) and ptgrm.stats["test/psnr"].n == 3
    assert baseline.parameters == 400 and ptgrm.parameters == 1100
    # by hand: PSNR differences per seed 1, 2, 0 -> mean 1, std 1; SSIM 0, 0.05, 0.05 -> mean 1/30
    diff = ptgrm.differences["test/psnr"]
    assert (diff.n, diff.mean, diff.std) == (3, pytest.approx(1.0), pytest.approx(1.0))
    assert diff.low == pytest.approx(1 - T_2 / math.sqrt(3)) and diff.high == pytest.approx(
        1 + T_2 / math.sqrt(3)
    )
    ssim = ptgrm.differences["test/ssim"]
    assert ssim.mean == pytest.approx(0.1 / 3) and ssim.std == pytest.approx(math.sqrt(1 / 1200))
    assert baseline.differences == {}


def test_writes_markdown_and_csv_and_lists_the_failed_job(sweep: Path) -> None:
    aggregate(sweep, baseline="refiner=none")
    text = (sweep / "aggregate.md").read_text()
    half = T_2 / math.sqrt(3)
    assert (
        f"| refiner=none (baseline) | 3 | 0 | 400 | 21.00 ± 1.00 [{21 - half:.2f}, {21 + half:.2f}] "
        "| baseline |" in text
    )
    assert (
        f"| refiner=ptgrm | 3 | 1 | 1,100 | 22.00 ± 1.00 [{22 - half:.2f}, {22 + half:.2f}] | +1.00 [" in text
    )
    assert "(3 pairs)" in text
    assert "- job 6 (refiner=ptgrm, seed 4): failed: data folder /x missing" in text
    with (sweep / "aggregate.csv").open() as handle:
        table = list(csv.DictReader(handle))
    row = next(row for row in table if row["group"] == "refiner=ptgrm" and row["metric"] == "test/ssim")
    assert float(row["mean"]) == pytest.approx(0.6333333) and row["n"] == "3" and row["failed"] == "1"
    assert float(row["diff_mean"]) == pytest.approx(1 / 30) and row["seeds"] == "1 2 3"


def test_command_line_exits_non_zero_when_a_job_failed_and_rejects_a_bad_baseline(
    sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(sweep), "--baseline", "refiner=none", "--no-wandb"]) == 1
    assert "refiner=ptgrm" in (sweep / "aggregate.md").read_text()
    assert main([str(sweep), "--baseline", "refiner=wide_plain", "--no-wandb"]) == 1
    printed = capsys.readouterr().err
    assert (
        "aggregate.baseline='refiner=wide_plain' matches 0 groups of this sweep; expected exactly one of"
        in printed
    )
    with pytest.raises(ConfigError, match="no job folders"):
        aggregate(sweep.parent)


def test_unreadable_job_is_failed_not_dropped(sweep: Path) -> None:
    (sweep / "7").mkdir()
    jobs = read_jobs(sweep)
    assert (
        jobs[-1].name == "7" and jobs[-1].status.startswith("failed: ") and "results.json" in jobs[-1].status
    )
