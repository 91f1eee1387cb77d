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
VENV_PIP := $(VENV)/.pip
ARGS ?=
OUTPUTS := $(CURDIR)/outputs
STORE := sqlite:///$(OUTPUTS)/mlflow.db
PORT ?= 5000

.PHONY: install train test fuzz sweep search ui server serve bench lint format docs llama-cpp smollm2 clean

$(VENV_PIP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	touch $(VENV_PIP)

$(STAMP): pyproject.toml | $(VENV_PIP)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m pipeline.train $(ARGS)

# Test files are spread over TEST_WORKERS processes (pytest-xdist; each file stays in one, so
# its module fixtures are built once). TEST_WORKERS=0 runs them in this process, in order.
# Each process, and each it starts, computes on TEST_THREADS threads: with torch's default of
# one per core, two workers and their runs spun twice as many threads as cores (the heaviest
# files took 25% longer and 45% more CPU time).
# Three workers on two cores: most tests wait on the processes they start (on 2 cores the suite
# took 6:59 with three against 7:33 with two).
# llama.cpp's tools are built first where missing (the GGUF tests run them), side by side with
# the install: pip mostly waits on the network and the disk, the compiler on the CPU.
TEST_WORKERS ?= 3
TEST_THREADS ?= 1
test:
	$(MAKE) --no-print-directory -j2 install llama-cpp
	OMP_NUM_THREADS=$(TEST_THREADS) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# The fuzzers (tests/test_fuzz_*.py) with FUZZ_EXAMPLES new cases each (default 50): data and
# weight files through the library and the command line, settings and resumes that train
# gpt-tiny (100 each: 20 minutes on 2 cores; no per-test time limit, as one fuzzer's cases
# are one test). `make test` runs a fixed sample of the same fuzzers.
FUZZ_EXAMPLES ?= 50
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/test_fuzz_config.py tests/test_fuzz_data.py \
		tests/test_fuzz_weights.py tests/test_fuzz_training.py -m "fuzz or not fuzz" --timeout 0 $(ARGS)

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

# Serve an MLflow model over HTTP (POST /invocations): MODEL=models:/<name>@<alias>, or a run's
# model_uri from run.json. MLflow starts uvicorn from the PATH, hence the venv's bin on it.
SERVE_PORT ?= 5001
serve: $(STAMP)
	$(if $(MODEL),,$(error Pass the model to serve: make serve MODEL=models:/<name>@candidate))
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" MLFLOW_TRACKING_URI="$(or $(MLFLOW_TRACKING_URI),$(STORE))" \
		$(VENV)/bin/mlflow models serve -m "$(MODEL)" --env-manager local --host 127.0.0.1 --port $(SERVE_PORT)

# The benchmark suite (benchmarks/README.md): outputs/bench/<date>/results.{json,md} and the
# MLflow experiment `benchmarks`. ARGS=--quick for a short run.
bench: $(STAMP)
	$(PY) -m benchmarks.run $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline tests benchmarks hydra_plugins
	$(VENV)/bin/ruff format --check pipeline tests benchmarks hydra_plugins
	$(VENV)/bin/lint-imports

# llama.cpp's tools (llama-tokenize, llama-simple, llama-perplexity), built from the sources
# vendored in llama-cpp-python's sdist into a cache outside the clone (no prebuilt wheel runs on
# glibc 2.36), once per machine. The GGUF tests run them against our exports; make test builds
# them when they are missing. The build needs only the venv's pip, not the installed project.
# GGML_NATIVE=OFF builds for any x86-64 CPU with AVX2 (ARM: its baseline) instead of this one:
# a native build on a virtual Xeon that lists AVX-512 and AMX died with SIGILL (illegal
# instruction) in its AMX path for q8_0 files, and a cache shared with other CPUs would too.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/gpt-finetune-pipeline/llama.cpp-$(LLAMA_CPP_VERSION)-portable
LLAMA_TOOLS := llama-tokenize llama-simple llama-perplexity
llama-cpp: $(LLAMA_CPP)/bin/llama-perplexity

$(LLAMA_CPP)/bin/llama-perplexity: | $(VENV_PIP)
	rm -rf $(LLAMA_CPP).tmp && mkdir -p $(LLAMA_CPP).tmp
	$(PY) -m pip download --quiet --no-deps --no-binary=:all: llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(LLAMA_CPP).tmp
	tar xzf $(LLAMA_CPP).tmp/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_CPP).tmp
	cmake -S $(LLAMA_CPP).tmp/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp -B $(LLAMA_CPP).tmp/build \
		-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF > $(LLAMA_CPP).tmp/cmake.log
	cmake --build $(LLAMA_CPP).tmp/build -j $$(nproc) --target $(LLAMA_TOOLS) > $(LLAMA_CPP).tmp/build.log
	mkdir -p $(LLAMA_CPP)/bin
	cp $(addprefix $(LLAMA_CPP).tmp/build/bin/,$(LLAMA_TOOLS)) $(LLAMA_CPP)/bin/
	rm -rf $(LLAMA_CPP).tmp

# The real SmolLM2-135M-Instruct GGUF into outputs/models/ (python -m pipeline.fetch).
smollm2: $(STAMP)
	$(PY) -m pipeline.fetch

# docs/config-reference.md from the schema (tests/test_docs.py fails when it is stale).
docs: $(STAMP)
	$(PY) -m pipeline.cli.reference docs/config-reference.md

format: $(STAMP)
	$(VENV)/bin/ruff check --fix pipeline tests benchmarks hydra_plugins
	$(VENV)/bin/ruff format pipeline tests benchmarks hydra_plugins

clean:
	rm -rf $(OUTPUTS)/runs $(OUTPUTS)/multirun $(OUTPUTS)/evaluate $(OUTPUTS)/data $(OUTPUTS)/mlartifacts $(OUTPUTS)/mlflow.db $(OUTPUTS)/search $(OUTPUTS)/optuna.db .pytest_cache
