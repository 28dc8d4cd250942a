"""The end of a ``-m`` sweep: one line on how its jobs went, and a non-zero exit if any failed.

Each job writes ``results.json`` in its folder, also when it fails (``"status": "failed: <why>"``), and
a failing job does not stop the sweep (``restoration.run.main``). When the launcher has run every job,
:class:`SweepSummary` (a Hydra callback, ``conf/hydra/default.yaml``) reads the jobs' files, so it
works the same whichever launcher ran them, and ends the process with status 1 if any job failed.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

__all__ = ["SweepSummary", "job_statuses"]

log = logging.getLogger(__name__)


def job_statuses(sweep_dir: Path) -> list[tuple[str, str, list[str]]]:
    """``(job folder name, status, overrides)`` of every job folder under ``sweep_dir``, in job order."""
    jobs = []
    folders = [path for path in sweep_dir.iterdir() if path.is_dir() and path.name.isdigit()]
    for folder in sorted(folders, key=lambda path: int(path.name)):
        results_file = folder / "results.json"
        try:
            results = json.loads(results_file.read_text())
        except (OSError, json.JSONDecodeError):
            jobs.append((folder.name, f"failed: {results_file} is missing or unreadable", []))
            continue
        status = str(results.get("status", "unknown"))
        if status == "running":  # the process died before it could record how
            status = "failed: the job ended without recording its status"
        jobs.append((folder.name, status, list(results.get("overrides", []))))
    return jobs


class SweepSummary(Callback):
    """Hydra callback: after a multirun, log ``n of N jobs finished`` and the failed jobs; exit 1 if any."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        jobs = job_statuses(sweep_dir)
        failed = [(name, status, overrides) for name, status, overrides in jobs if status != "finished"]
        log.info("sweep %s: %d of %d jobs finished", sweep_dir, len(jobs) - len(failed), len(jobs))
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
