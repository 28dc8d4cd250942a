"""Every ``python -m restoration.run ...`` of the READMEs' code blocks runs, so none can break unseen.

The commands of one README run in its order, in one fresh working directory (one per pytest-xdist worker:
a README's commands may be split between the workers), as typed, with four substitutions a CPU test machine
needs, and nothing else:

- ``trainer=smoke`` takes the place of the command's trainer (or is appended): GPU, DDP and cluster
  settings (``trainer.*``, and ``hydra/launcher=slurm`` with its ``hydra.launcher.*``: the jobs of such a
  sweep run here one after the other; tests/test_launchers.py checks its sbatch script) and step counts
  (``max_steps``, ``val_every``, an Optuna study's ``hydra.sweeper.n_trials``, one here) are dropped with it;
- dataset folders (``/data/...``, ``/x/...``) become small generated datasets in the documented layout
  under the working directory (for ``datamodule=streaming``, a generated folder packed by
  :func:`restoration.data.pack.pack`);
- a file placeholder such as ``logs/<task>/runs/<stamp>/checkpoints/last.ckpt`` is the newest matching
  file; when an earlier command did not make one (or for ``ckpt_path=last``), the test first trains that
  task's experiment with ``trainer=smoke``;
- the guides' downloaded weights are random weights in the library caches (see tests/test_experiments.py).

A command whose smoke form repeats an earlier one of its README, or is ``experiment=<name> trainer=smoke``
(tests/test_experiments.py runs those as typed), does not run a second time.
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
from pathlib import Path

import pytest

from restoration.data.pack import pack
from restoration.data.sources import _hash_fraction

from .conftest import EXPERIMENTS, ROOT, run_as_typed, write_image
from .guide_models import save_official_constyle_prompter, save_random_open_clip_in_cache
from .test_experiments import LONG

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "experiments").glob("**/README.md"))]
# the dataset folders of the examples
DATA_ROOT = re.compile(r"^/(data|x|y)(/|$)")
# the size of generated dataset images: above every recipe's training crop (PTG-RM's 256)
IMAGE_SIZE = (264, 272)


def documented_commands(path: Path) -> list[str]:
    """The arguments after ``-m restoration.run`` of every such line of ``path``'s code blocks."""
    commands, block, inside = [], [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if inside:
                joined = re.sub(r"\\\n\s*", " ", "\n".join(block))
                for command in joined.splitlines():
                    if "-m restoration.run" in command:
                        command = re.split(r"\s#", command)[0]
                        commands.append(command.split("-m restoration.run", 1)[1].strip())
                block = []
            inside = not inside
        elif inside:
            block.append(line)
    return commands


def _long(command: str) -> bool:
    """Whether the command trains a paper-size network that takes over 10 s with ``trainer=smoke``, is a
    sweep of more than two jobs (a study over seeds and variants), or goes through another launcher or an
    Optuna study.

    Those run in ``make test-experiments``; their experiments run as typed in tests/test_experiments.py;
    two-job sweeps and the aggregation in tests/test_run.py; the launchers and studies as typed in
    tests/test_launchers.py and tests/test_hparams_search.py.
    """
    options = dict(arg.split("=", 1) for arg in shlex.split(command) if "=" in arg)
    experiment = options.get("experiment", "")
    tiny = options.get("backbone", "").endswith("_tiny")
    jobs = math.prod(
        len(value.split(",")) for value in options.values() if not value.startswith(("[", "'", '"'))
    )
    machinery = "hydra/launcher" in options or "hparams_search" in options
    return machinery or jobs > 2 or (not tiny and (experiment in LONG or experiment.startswith("ptgrm_")))


def as_smoke(args: list[str]) -> list[str]:
    """The command with ``trainer=smoke`` (see the module docstring)."""
    dropped = ("trainer=", "trainer.", "max_steps=", "val_every=", "hydra.sweeper.n_trials=")
    if "hydra/launcher=slurm" in args:
        dropped = (*dropped, "hydra/launcher=", "hydra.launcher.")
    trials = ["hydra.sweeper.n_trials=1"] if any(arg.startswith("hparams_search=") for arg in args) else []
    return [*(arg for arg in args if not arg.startswith(dropped)), "trainer=smoke", *trials]


def _cases() -> list:
    """One case per command, but for a command whose smoke form repeats an earlier one of its README (the
    trainer choices of the DDP examples) or is ``experiment=<name> trainer=smoke``, which
    tests/test_experiments.py runs as typed: the same run twice tests nothing more."""
    cases = []
    for document in DOCUMENTS:
        seen = {(f"experiment={name}", "trainer=smoke") for name in EXPERIMENTS}
        for index, command in enumerate(documented_commands(document)):
            smoke = tuple(as_smoke(shlex.split(command)))
            if smoke in seen:
                continue
            seen.add(smoke)
            cases.append(
                pytest.param(
                    document,
                    index,
                    command,
                    id=f"{document.relative_to(ROOT)}:{index}",
                    marks=[pytest.mark.paper if _long(command) else pytest.mark.slow],
                )
            )
    return cases


CASES = _cases()


def _make_dataset(path: Path, args: list[str]) -> None:
    """Generated images at ``path``, in the layout the command's datamodule reads."""
    if path.exists():
        return
    names = [f"{image:04d}.png" for image in range(3)]
    if "datamodule=streaming" in args:  # a pack of a generated ImageNet-layout folder
        source = path.with_name(f"{path.name}-source") / "train"
        _make_dataset(source, [])
        pack(source, path, progress=False)
        return
    if "datamodule=paired" in args and path.name not in ("input", "target"):
        folders = [path / split / kind for split in ("train", "val") for kind in ("lq", "gt")]
    elif path.name == "train":
        folders = [path / "n01440764", path / "n01443537"]  # ImageNet's class folders
        # the folder option validates on the files a hash puts in a 1 % holdout: add the first such file
        held_out = next(
            name
            for name in (f"{image:04d}.png" for image in itertools.count(3))
            if _hash_fraction(f"n01440764/{name}") < 0.01
        )
        names.append(held_out)
    else:
        folders = [path]
    for index, folder in enumerate(folders):
        for image, name in enumerate(names):
            # LQ and GT of a pair share a file name, as paired folders match them
            write_image(folder / name, size=IMAGE_SIZE, seed=10 * index + image)


def _with_data(args: list[str], cwd: Path) -> list[str]:
    substituted = []
    for arg in args:
        key, _, value = arg.partition("=")
        if DATA_ROOT.match(value):
            local = cwd / value.lstrip("/")
            _make_dataset(local, args)
            arg = f"{key}={local}"
        substituted.append(arg)
    return substituted


def _with_files(args: list[str], cwd: Path) -> list[str]:
    """Placeholders and ``ckpt_path=last`` resolved, training the experiment they need first if necessary."""
    resolved = []
    for arg in args:
        key, _, value = arg.partition("=")
        needs_run = None
        if key in ("hydra.run.dir", "hydra.sweep.dir"):  # a folder the command writes: any name will do
            resolved.append(f"{key}={re.sub(r'<[^>]*>', 'stamp', value)}")
            continue
        if "<" in value:
            pattern = re.sub(r"<[^>]*>", "*", value)
            task = pattern.split("/")[1] if pattern.startswith("logs/") else None
            if not list(cwd.glob(pattern)) and task is not None:
                needs_run = task
        elif arg == "ckpt_path=last":
            experiment = next(a.split("=", 1)[1] for a in args if a.startswith("experiment="))
            if not list(cwd.glob(f"logs/{experiment}/**/last.ckpt")):
                needs_run = experiment
        if needs_run is not None:
            assert run_as_typed(f"experiment={needs_run}", "trainer=smoke", cwd=cwd) == 0
        if "<" in value:
            matches = sorted(cwd.glob(re.sub(r"<[^>]*>", "*", value)), key=lambda path: path.stat().st_mtime)
            assert matches, f"{arg}: nothing in {cwd} matches the placeholder"
            arg = f"{key}={matches[-1]}"
        resolved.append(arg)
    return resolved


def _provide_weights(cwd: Path) -> None:
    """Random weights where a user who downloaded the guides' weights has them."""
    save_random_open_clip_in_cache("ViT-B-32", "openai")
    save_official_constyle_prompter(cwd / "weights" / "pretrained_ConStyle_v2.pth")


@pytest.fixture(scope="module")
def working_directories(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    """One fresh working directory per README, shared by its commands in order."""
    return {document: tmp_path_factory.mktemp(document.parent.name) for document in DOCUMENTS}


@pytest.mark.parametrize(("document", "index", "command"), CASES)
def test_documented_command_runs(
    document: Path, index: int, command: str, working_directories: dict[Path, Path]
) -> None:
    cwd = working_directories[document]
    args = as_smoke(shlex.split(command))
    _provide_weights(cwd)
    args = _with_files(_with_data(args, cwd), cwd)
    status = run_as_typed(*args, cwd=cwd)
    assert status == 0, f"{document.name}: python -m restoration.run {command} -> exit {status}"
