"""Running ``python -m restoration.run`` from the demo and the studies, one run per output folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from restoration.aggregate import read_jobs

__all__ = ["run_experiment", "run_sweep"]


def run_experiment(overrides: list[str], output_dir: Path) -> dict:
    """Run the entry point with ``overrides`` into ``output_dir``; return its ``results.json``.

    The command is printed as it starts. A folder that already holds a finished ``results.json`` is not
    run again, so an interrupted study picks up where it stopped. A failed run ends the script with the
    path of its log.
    """
    command = [sys.executable, "-m", "restoration.run", *overrides, f"hydra.run.dir={output_dir}"]
    print("$ python -m restoration.run " + " ".join(command[3:]), flush=True)
    finished = output_dir / "results.json"
    if finished.is_file() and json.loads(finished.read_text())["status"] == "finished":
        print("  (already done: reusing its results.json)", flush=True)
        return json.loads(finished.read_text())
    if subprocess.call(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
        raise SystemExit(f"failed; see {output_dir / 'run.log'}")
    return json.loads(finished.read_text())


def run_sweep(overrides: list[str], sweep_dir: Path) -> list[dict]:
    """Run a ``-m`` sweep of the entry point into ``sweep_dir``; return its jobs' ``results.json``.

    The sweep ends with its aggregated table (``aggregate.md`` / ``aggregate.csv`` in ``sweep_dir``, see
    ``restoration.aggregate``). A folder whose jobs all finished is not run again. What the command prints
    goes to ``sweep_dir/sweep.log``; a failure ends the script with its path.
    """
    command = [sys.executable, "-m", "restoration.run", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    print("$ python -m restoration.run -m " + " ".join(command[4:]), flush=True)
    jobs = read_jobs(sweep_dir) if sweep_dir.is_dir() else []
    if (sweep_dir / "aggregate.md").is_file() and jobs and all(job.finished for job in jobs):
        print("  (already done: reusing its results)", flush=True)
    else:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with (sweep_dir / "sweep.log").open("w") as output:
            status = subprocess.call(command, stdout=output, stderr=subprocess.STDOUT)
        if status != 0:
            raise SystemExit(f"the sweep failed; see {sweep_dir / 'sweep.log'} and the jobs' run.log")
        jobs = read_jobs(sweep_dir)
    return [json.loads((job.folder / "results.json").read_text()) for job in jobs]
