"""From a sweep to a conclusion: the jobs of a multirun grouped over seeds, with confidence intervals.

    python -m restoration.aggregate logs/ptgrm_lowlight/multiruns/<stamp> --baseline refiner=none

reads every job's ``results.json`` (its status, overrides, seed, metrics and parameter count), groups the
jobs whose overrides differ only in ``seed``, and writes ``aggregate.md`` and ``aggregate.csv`` in the
multirun folder. Per group and metric: the number of finished jobs n, the mean, the sample standard
deviation and a 95 % confidence interval of the mean (Student's t with n - 1 degrees of freedom); against
the baseline group, the paired difference (jobs of the same seed) with its own 95 % interval, which is what
decides whether a change helps when seeds move both runs together. A failed job is listed as failed and
counted in its group, never dropped. When the jobs logged to Weights & Biases, the table also goes to W&B
(a run of job type ``aggregate`` in the sweep's group).

The same runs at the end of every ``-m`` sweep (:class:`restoration.sweep.SweepSummary`), with the baseline
and the columns from the ``aggregate`` node of ``conf/config.yaml``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from restoration.errors import ConfigError

__all__ = ["GroupSummary", "Job", "Stat", "aggregate", "read_jobs", "summarize", "write_csv", "write_text"]

log = logging.getLogger(__name__)

_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Job:
    """One job folder of a multirun, as its ``results.json`` recorded it."""

    name: str  # the job folder's name (its number)
    folder: Path
    status: str  # "finished", or "failed: <why>", "interrupted ..."
    overrides: tuple[str, ...]
    seed: int | None
    metrics: dict[str, float]  # test/* and val/* of results.json
    parameters: int | None  # trainable parameters

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def group_key(self) -> tuple[str, ...]:
        """The overrides without ``seed=``: jobs with the same key repeat one setting over seeds."""
        return tuple(item for item in self.overrides if item.split("=", 1)[0].lstrip("+~") != "seed")


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation and the 95 % interval of the mean of ``n`` values (NaN when n < 2)."""

    n: int
    mean: float
    std: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        n = len(values)
        if n == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        mean = math.fsum(values) / n
        if n == 1:
            return cls(1, mean, math.nan, math.nan, math.nan)
        std = math.sqrt(math.fsum((value - mean) ** 2 for value in values) / (n - 1))
        half = _t_quantile(n - 1) * std / math.sqrt(n)
        return cls(n, mean, std, mean - half, mean + half)


@dataclass
class GroupSummary:
    """The jobs of one setting, their statistics per metric and the paired difference to the baseline."""

    label: str
    key: tuple[str, ...]
    jobs: list[Job]
    baseline: bool = False
    stats: dict[str, Stat] = field(default_factory=dict)
    differences: dict[str, Stat] = field(default_factory=dict)  # paired (same seed) minus the baseline

    @property
    def failed(self) -> list[Job]:
        return [job for job in self.jobs if not job.finished]

    @property
    def parameters(self) -> int | None:
        counts = {job.parameters for job in self.jobs if job.finished and job.parameters is not None}
        return counts.pop() if len(counts) == 1 else None


def _t_quantile(dof: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + _CONFIDENCE / 2, dof))


def read_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder (a number) under ``sweep_dir``, in job order; an unreadable one is a failed job."""
    jobs = []
    folders = [path for path in sweep_dir.iterdir() if path.is_dir() and path.name.isdigit()]
    for folder in sorted(folders, key=lambda path: int(path.name)):
        results_file = folder / "results.json"
        try:
            results = json.loads(results_file.read_text())
        except (OSError, json.JSONDecodeError):
            jobs.append(
                Job(
                    folder.name,
                    folder,
                    f"failed: {results_file} is missing or unreadable",
                    _overrides_from_hydra(folder),
                    None,
                    {},
                    None,
                )
            )
            continue
        status = str(results.get("status", "unknown"))
        if status == "running":  # the process died before it could record how
            status = "failed: the job ended without recording its status"
        metrics = {
            key: float(value)
            for split in ("test", "val")
            for key, value in (results.get(split) or {}).items()
            if isinstance(value, int | float)
        }
        parameters = (results.get("parameters") or {}).get("trainable")
        overrides = results.get("overrides") or _overrides_from_hydra(folder)
        jobs.append(
            Job(folder.name, folder, status, tuple(overrides), results.get("seed"), metrics, parameters)
        )
    return jobs


def _overrides_from_hydra(folder: Path) -> list[str]:
    """A job's overrides from Hydra's ``.hydra/overrides.yaml`` (for a job that wrote no results.json)."""
    path = folder / ".hydra" / "overrides.yaml"
    return [str(item) for item in OmegaConf.load(path)] if path.is_file() else []


def summarize(
    jobs: Sequence[Job], *, baseline: str | Sequence[str] | None = None, metrics: Sequence[str] = ()
) -> list[GroupSummary]:
    """Group ``jobs`` over seeds and compute each group's statistics (and differences to ``baseline``).

    Args:
        jobs: the jobs of one multirun (:func:`read_jobs`).
        baseline: the overrides that pick the baseline group (``"refiner=none"``, several separated by
            spaces); ``None``: no differences.
        metrics: the metrics to compute (``test/psnr``); empty: every metric a finished job recorded.
    """
    groups: dict[tuple[str, ...], GroupSummary] = {}
    shared = set.intersection(*(set(job.group_key) for job in jobs)) if jobs else set()
    for job in jobs:
        if job.group_key not in groups:
            label = " ".join(item for item in job.group_key if item not in shared) or "all jobs"
            groups[job.group_key] = GroupSummary(label=label, key=job.group_key, jobs=[])
        groups[job.group_key].jobs.append(job)
    names = list(metrics) or sorted({key for job in jobs if job.finished for key in job.metrics})
    for group in groups.values():
        finished = [job for job in group.jobs if job.finished]
        group.stats = {
            name: Stat.of([job.metrics[name] for job in finished if name in job.metrics]) for name in names
        }
    reference = _baseline_group(list(groups.values()), baseline)
    if reference is not None:
        reference.baseline = True
        by_seed = {job.seed: job for job in reference.jobs if job.finished}
        for group in groups.values():
            if group is reference:
                continue
            pairs = [(job, by_seed[job.seed]) for job in group.jobs if job.finished and job.seed in by_seed]
            group.differences = {
                name: Stat.of(
                    [
                        job.metrics[name] - base.metrics[name]
                        for job, base in pairs
                        if name in job.metrics and name in base.metrics
                    ]
                )
                for name in names
                if reference.stats[name].n > 0  # a metric the baseline lacks (target/psnr) has no difference
            }
    return list(groups.values())


def _baseline_group(groups: list[GroupSummary], baseline: str | Sequence[str] | None) -> GroupSummary | None:
    if not baseline:
        return None
    wanted = set(baseline.split()) if isinstance(baseline, str) else set(baseline)
    matches = [group for group in groups if wanted <= set(group.key)]
    if len(matches) != 1:
        found = "; ".join(group.label for group in groups)
        raise ConfigError(
            f"aggregate.baseline={' '.join(sorted(wanted))!r} matches {len(matches)} groups of this sweep; "
            f"expected exactly one of: {found}"
        )
    return matches[0]


# ---- writing ------------------------------------------------------------------------------------


def _number(value: float, metric: str) -> str:
    if math.isnan(value):
        return "–"
    if "psnr" in metric:  # dB: differences of a few hundredths are noise
        return f"{value:.2f}"
    return f"{value:.4f}" if "ssim" in metric or abs(value) < 1 else f"{value:.2f}"


def _stat_cell(stat: Stat, metric: str) -> str:
    if stat.n == 0:
        return "–"
    if stat.n == 1:
        return f"{_number(stat.mean, metric)} (n=1)"
    return (
        f"{_number(stat.mean, metric)} ± {_number(stat.std, metric)} "
        f"[{_number(stat.low, metric)}, {_number(stat.high, metric)}]"
    )


def _difference_cell(stat: Stat | None, metric: str) -> str:
    if stat is None:  # the baseline has no such metric
        return "–"
    if stat.n == 0:
        return "no paired seeds"
    sign = "+" if stat.mean >= 0 else ""
    if stat.n == 1:
        return f"{sign}{_number(stat.mean, metric)} (1 pair)"
    return (
        f"{sign}{_number(stat.mean, metric)} [{_number(stat.low, metric)}, {_number(stat.high, metric)}] "
        f"({stat.n} pairs)"
    )


def markdown(groups: Sequence[GroupSummary], metrics: Sequence[str], *, title: str) -> str:
    """The table: one row per group, ``mean ± std [95 % CI]`` per metric and, with a baseline, the paired
    difference ``Δ [95 % CI]``; the failed jobs listed under it."""
    with_baseline = any(group.baseline for group in groups)
    header = ["group", "n", "failed", "trainable parameters"]
    for metric in metrics:
        header.append(metric)
        if with_baseline:
            header.append(f"Δ {metric}")
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        label = f"{group.label} (baseline)" if group.baseline else group.label
        parameters = group.parameters
        row = [
            label,
            str(sum(job.finished for job in group.jobs)),
            str(len(group.failed)),
            "–" if parameters is None else f"{parameters:,}",
        ]
        for metric in metrics:
            row.append(_stat_cell(group.stats.get(metric, Stat.of([])), metric))
            if with_baseline:
                row.append(
                    "baseline" if group.baseline else _difference_cell(group.differences.get(metric), metric)
                )
        lines.append("| " + " | ".join(row) + " |")
    failed = [(group, job) for group in groups for job in group.failed]
    if failed:
        lines += ["", "Failed jobs:"]
        lines += [f"- job {job.name} ({group.label}, seed {job.seed}): {job.status}" for group, job in failed]
    return "\n".join(lines) + "\n"


_CSV_COLUMNS = (
    "group",
    "baseline",
    "metric",
    "n",
    "failed",
    "trainable_parameters",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "diff_n",
    "diff_mean",
    "diff_std",
    "diff_ci_low",
    "diff_ci_high",
    "seeds",
)


def rows(groups: Sequence[GroupSummary]) -> list[dict[str, Any]]:
    """One row per group and metric, every number (the CSV and the W&B table)."""
    table = []
    for group in groups:
        for metric, stat in group.stats.items():
            diff = group.differences.get(metric, Stat.of([]))
            table.append(
                {
                    "group": group.label,
                    "baseline": group.baseline,
                    "metric": metric,
                    "n": stat.n,
                    "failed": len(group.failed),
                    "trainable_parameters": group.parameters,
                    "mean": stat.mean,
                    "std": stat.std,
                    "ci_low": stat.low,
                    "ci_high": stat.high,
                    "diff_n": diff.n,
                    "diff_mean": diff.mean,
                    "diff_std": diff.std,
                    "diff_ci_low": diff.low,
                    "diff_ci_high": diff.high,
                    "seeds": " ".join(str(job.seed) for job in group.jobs if job.finished),
                }
            )
    return table


def write_csv(path: Path, table: list[dict[str, Any]], columns: Sequence[str] = _CSV_COLUMNS) -> None:
    """``table`` as a CSV file with these ``columns``, written atomically (a ``.partial`` file renamed)."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(table)
    partial.replace(path)


def write_text(path: Path, text: str) -> None:
    """``text`` into ``path`` atomically: readers see the old file or the whole new one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def _wandb_settings(jobs: Sequence[Job]) -> dict[str, Any] | None:
    """The W&B project/entity/mode the jobs logged to (their ``.hydra/config.yaml``), or None."""
    for job in jobs:
        path = job.folder / ".hydra" / "config.yaml"
        if not path.is_file():
            continue
        config = OmegaConf.load(path)
        node = OmegaConf.select(config, "logger.wandb")
        if node is None:
            return None
        offline = bool(node.get("offline")) or os.environ.get("WANDB_MODE") in ("offline", "dryrun")
        return {
            "project": node.get("project"),
            "entity": node.get("entity"),
            "mode": "offline" if offline else "online",
        }
    return None


def _log_to_wandb(sweep_dir: Path, settings: dict[str, Any], table: list[dict[str, Any]], text: str) -> None:
    """The table as a W&B run of job type ``aggregate`` in the sweep's group (the jobs' group)."""
    import wandb

    group = "/".join(sweep_dir.resolve().parts[-3:])  # <task_name>/multiruns/<stamp>, as the jobs' group
    run = wandb.init(
        project=settings["project"],
        entity=settings["entity"],
        mode=settings["mode"],
        group=group,
        name=f"{group} aggregate",
        job_type="aggregate",
        dir=str(sweep_dir),
        reinit="finish_previous",
    )
    columns = list(_CSV_COLUMNS)
    run.log({"aggregate": wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in table])})
    run.summary["aggregate_markdown"] = text
    run.finish()


def aggregate(
    sweep_dir: str | Path,
    *,
    baseline: str | Sequence[str] | None = None,
    metrics: Sequence[str] = ("test/psnr", "test/ssim"),
    wandb: bool = True,
) -> list[GroupSummary]:
    """Summarise the multirun in ``sweep_dir``: write ``aggregate.md`` / ``aggregate.csv``, log the table.

    ``metrics`` are the columns of the markdown table (the CSV has every metric); a metric no finished job
    recorded is left out with a warning. ``wandb``: also log to W&B when the jobs did.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(
            f"{sweep_dir}: no such multirun folder (expected logs/<task_name>/multiruns/<stamp>)"
        )
    jobs = read_jobs(sweep_dir)
    if not jobs:
        raise ConfigError(
            f"{sweep_dir}: no job folders (0/, 1/, ...) with results.json; is it a multirun folder?"
        )
    groups = summarize(jobs, baseline=baseline)
    recorded = {key for job in jobs if job.finished for key in job.metrics}
    shown = [metric for metric in metrics if metric in recorded]
    for metric in metrics:
        if metric not in recorded:
            log.warning("aggregate: no finished job of %s recorded %s; column left out", sweep_dir, metric)
    finished = sum(job.finished for job in jobs)
    title = (
        f"{sweep_dir}: {len(jobs)} jobs ({finished} finished) in {len(groups)} groups over seeds; "
        f"mean ± std [95 % CI of the mean]"
        + ("; Δ: paired difference to the baseline (same seed) [95 % CI]" if baseline else "")
    )
    text = markdown(groups, shown, title=title)
    table = rows(groups)
    write_text(sweep_dir / "aggregate.md", text)
    write_csv(sweep_dir / "aggregate.csv", table)
    log.info(
        "aggregate of the sweep (%s, %s):\n%s", sweep_dir / "aggregate.md", sweep_dir / "aggregate.csv", text
    )
    if wandb:
        try:
            settings = _wandb_settings(jobs)
            if settings is not None:
                _log_to_wandb(sweep_dir, settings, table, text)
        except Exception as error:  # the files are written; W&B (network, login) must not lose them
            log.warning(
                "aggregate: the table did not reach W&B (%s: %s); it is in %s",
                type(error).__name__, error, sweep_dir / "aggregate.csv",
            )  # fmt: skip
    return groups


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m restoration.aggregate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder: logs/<task_name>/multiruns/<stamp>")
    parser.add_argument(
        "--baseline",
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="the overrides of the baseline group, e.g. refiner=none; differences are paired by seed",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=["test/psnr", "test/ssim"],
        help="the columns of aggregate.md (aggregate.csv has every metric)",
    )
    parser.add_argument("--no-wandb", action="store_true", help="do not log the table to W&B")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        groups = aggregate(
            args.sweep_dir, baseline=args.baseline, metrics=args.metrics, wandb=not args.no_wandb
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 1 if any(group.failed for group in groups) else 0


if __name__ == "__main__":
    sys.exit(main())
