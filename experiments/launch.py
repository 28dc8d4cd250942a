"""Running ``python -m restoration.run`` from the demo and the studies, one run per output folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

__all__ = ["run_experiment"]


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
