# Two commands on a fresh machine: `make train` and `make test`. Both create .venv once.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The pinned torch is installed first so that the project's range does not pull a newer
# (multi-GB CUDA) build. Override on a GPU machine, e.g. TORCH="torch==2.13.0 --index-url ...".
TORCH ?= torch==2.13.0
# make sweep without ARGS runs this grid (a variable, so make does not split it at the commas).
SWEEP_GRID ?= optim.lr=3e-4,1e-3,3e-3
STAMP := $(VENV)/.installed
ARGS ?=
OUTPUTS := $(CURDIR)/outputs
STORE := sqlite:///$(OUTPUTS)/mlflow.db
PORT ?= 5000

.PHONY: install train test sweep search ui server bench lint format docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m pipeline.train $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# A grid sweep with Hydra's multirun; pass your own grid with ARGS.
sweep: $(STAMP)
	$(PY) -m pipeline.train -m $(or $(ARGS),$(SWEEP_GRID))

# A Bayesian search (conf/hparams_search/$(SEARCH).yaml); ARGS adds overrides for every trial.
SEARCH ?= optim
search: $(STAMP)
	$(PY) -m pipeline.train -m hparams_search=$(SEARCH) $(ARGS)

ui: $(STAMP)
	mkdir -p $(OUTPUTS)/mlartifacts
	$(VENV)/bin/mlflow ui --backend-store-uri $(STORE) --default-artifact-root $(OUTPUTS)/mlartifacts --host 127.0.0.1 --port $(PORT)

server: $(STAMP)
	mkdir -p $(OUTPUTS)/mlartifacts
	$(VENV)/bin/mlflow server --backend-store-uri $(or $(BACKEND),$(STORE)) --artifacts-destination $(OUTPUTS)/mlartifacts --host 127.0.0.1 --port $(PORT)

# The benchmark suite (benchmarks/README.md): outputs/bench/<date>/results.{json,md} and the
# MLflow experiment `benchmarks`. ARGS=--quick for a short run.
bench: $(STAMP)
	$(PY) -m benchmarks.run $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline tests benchmarks hydra_plugins
	$(VENV)/bin/ruff format --check pipeline tests benchmarks hydra_plugins
	$(VENV)/bin/lint-imports

# docs/config-reference.md from the schema (tests/test_docs.py fails when it is stale).
docs: $(STAMP)
	$(PY) -m pipeline.cli.reference docs/config-reference.md

format: $(STAMP)
	$(VENV)/bin/ruff check --fix pipeline tests benchmarks hydra_plugins
	$(VENV)/bin/ruff format pipeline tests benchmarks hydra_plugins

clean:
	rm -rf $(OUTPUTS)/runs $(OUTPUTS)/multirun $(OUTPUTS)/evaluate $(OUTPUTS)/data $(OUTPUTS)/mlartifacts $(OUTPUTS)/mlflow.db $(OUTPUTS)/search $(OUTPUTS)/optuna.db .pytest_cache
