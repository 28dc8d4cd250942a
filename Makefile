# The Makefile owns the environment: every target below creates or updates .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Keep the suite (and the demo) on the CPU even where a GPU is visible; CI has none.
CPU_ENV := CUDA_VISIBLE_DEVICES= WANDB_MODE=offline WANDB_SILENT=true HYDRA_FULL_ERROR=0
# The suite runs in one pytest-xdist worker per core, at most 4 (a paper-size run takes a few GB), each with
# its share of the cores (tests/conftest.py); `make test PARALLEL=` runs it in one process.
PARALLEL ?= -n auto --maxprocesses 4 --dist worksteal

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-fast test-experiments lint format bench clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-cache-dir -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## create or update .venv (editable install with the dev extras)

demo: $(STAMP) ## the PTG-RM main job offline on the CPU: prior, then target alone vs + PTG-RM vs + wide plain over 3 seeds, table and grid
	$(CPU_ENV) $(BIN)/python -m experiments.demo

test: $(STAMP) ## run the test suite (CPU only, no network; the paper-size experiments are in test-experiments)
	$(CPU_ENV) $(BIN)/python -m pytest -m "not paper" $(PARALLEL) --durations=15

test-fast: $(STAMP) ## the suite without the tests marked slow
	$(CPU_ENV) $(BIN)/python -m pytest -m "not slow and not paper" $(PARALLEL)

test-experiments: $(STAMP) ## the experiments at paper size that take minutes each on a CPU (IPT, Restormer)
	$(CPU_ENV) $(BIN)/python -m pytest -m paper --durations=0

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## run the benchmarks in experiments/bench (numbers go into its README by hand)
	$(BIN)/python -m experiments.bench.degradations
	$(BIN)/python -m experiments.bench.backbones
	$(BIN)/python -m experiments.bench.ipt
	$(BIN)/python -m experiments.bench.ptgrm
	$(BIN)/python -m experiments.bench.validation

clean: ## remove run outputs and caches (keeps .venv)
	rm -rf logs outputs multirun wandb .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './.venv/*' -prune -exec rm -rf {} +

distclean: clean ## also remove .venv
	rm -rf $(VENV)
