"""The end of a ``-m`` sweep: how its jobs went, the table over seeds, a non-zero exit if any job failed.

Each job writes ``results.json`` in its folder, also when it fails (``"status": "failed: <why>"``), and
a failing job does not stop the sweep (``restoration.run.main``). When the launcher has run every job,
:class:`SweepSummary` (a Hydra callback, ``conf/hydra/default.yaml``) reads the jobs' files, so it
works the same whichever launcher or sweeper ran them: it logs how many finished, writes the aggregated
table (:func:`restoration.aggregate.aggregate`, set by the ``aggregate`` node of the config), and ends the
process with status 1 if any job failed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from restoration.aggregate import aggregate, read_jobs
from restoration.errors import ConfigError

__all__ = ["SweepSummary", "job_statuses"]

log = logging.getLogger(__name__)


def job_statuses(sweep_dir: Path) -> list[tuple[str, str, list[str]]]:
    """``(job folder name, status, overrides)`` of every job folder under ``sweep_dir``, in job order."""
    return [(job.name, job.status, list(job.overrides)) for job in read_jobs(sweep_dir)]


class SweepSummary(Callback):
    """Hydra callback: after a multirun, log ``n of N jobs finished`` and the failed jobs, write the
    aggregated table (``aggregate.md``, ``aggregate.csv``); exit 1 if any job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        jobs = job_statuses(sweep_dir)
        if not jobs:
            return
        failed = [(name, status, overrides) for name, status, overrides in jobs if status != "finished"]
        log.info("sweep %s: %d of %d jobs finished", sweep_dir, len(jobs) - len(failed), len(jobs))
        settings = config.get("aggregate") or {}
        try:
            aggregate(
                sweep_dir,
                baseline=settings.get("baseline"),
                metrics=list(OmegaConf.to_container(settings.get("metrics") or [], resolve=True)),
            )
        except ConfigError as error:  # a bad baseline loses the table, not the jobs: rerun the aggregation
            log.error("%s; rerun with python -m restoration.aggregate %s --baseline ...", error, sweep_dir)
        if not failed:
            return
        # name each failed job by what the sweep varies, not by the overrides all jobs share
        shared = set.intersection(*(set(overrides) for _, _, overrides in jobs))
        summary = "; ".join(
            f"job {name} ({' '.join(item for item in overrides if item not in shared) or 'no overrides'}): "
            f"{status}"
            for name, status, overrides in failed
        )
        log.error("sweep %s: %d of %d jobs failed: %s", sweep_dir, len(failed), len(jobs), summary)
        sys.exit(1)
