# sd3d developer and batch tasks. In a fresh virtual environment, `make install && make test` is the
# whole set-up of a clone (.ci/run does exactly that in a venv it creates itself).
PYTHON ?= python
SHELL := /bin/bash

IN ?= photos
OUT ?= out
JOBS ?= 1
ARGS ?=

# Extras installed by `make install` (all that the test suite exercises).
EXTRAS ?= dev,rembg,ray,app,cloud
# torch is pinned here, not in constraints.txt: the right build (CPU wheel, CUDA build) is per machine.
TORCH ?= torch==2.13.0
# The pinned versions the tests are known to pass with; `make lock` refreshes it.
CONSTRAINTS ?= constraints.txt
LATEST_VENV ?= .venv-latest

.PHONY: install install-latest lock test test-latest lint format batch

install:
	$(PYTHON) -m pip install -q "$(TORCH)" || $(PYTHON) -m pip install -q "torch>=2.4"
	$(PYTHON) -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	$(PYTHON) scripts/fetch_u2netp.py --dest weights
	$(PYTHON) scripts/warm_imports.py

# The newest versions pyproject.toml allows (no constraints): what a user's `pip install` gets today.
install-latest:
	$(PYTHON) -m pip install -q "$(TORCH)" || $(PYTHON) -m pip install -q "torch>=2.4"
	$(PYTHON) -m pip install -q --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]"
	$(PYTHON) scripts/fetch_u2netp.py --dest weights
	$(PYTHON) scripts/warm_imports.py

# Re-resolve every dependency to its newest allowed version in a throwaway venv and write the pins.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	$(MAKE) --no-print-directory install-latest PYTHON=.venv-lock/bin/python
	{ echo "# Pinned versions for 'make install' (written by 'make lock'; torch is pinned in the Makefile)."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable --all \
	    | grep -viE '^(torch|nvidia-|triton|pip|setuptools|wheel)(=|-|\b)' | sort -f; } > $(CONSTRAINTS)
	rm -rf .venv-lock

# The test command (README.md and .ci/run use exactly this target). -rs lists every skip and its reason;
# --durations names the slowest tests, so that a CI log shows where the ~15-minute budget goes.
test:
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -rs -n 2 --dist loadfile --durations=15 tests

# The suite against the newest allowed versions, in a fresh venv of its own.
test-latest:
	rm -rf $(LATEST_VENV) && $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(MAKE) --no-print-directory install-latest PYTHON=$(LATEST_VENV)/bin/python
	$(MAKE) --no-print-directory test PYTHON=$(LATEST_VENV)/bin/python

# ruff, and the import contracts of pyproject.toml (the layers of docs/architecture.md).
lint:
	$(PYTHON) -m ruff check sd3d recon cli tests benchmarks
	$(PYTHON) -m ruff format --check sd3d recon cli tests benchmarks
	$(PYTHON) -c 'import sys; from importlinter.cli import lint_imports_command as lint; sys.argv[0] = "lint-imports"; sys.exit(lint())' --no-cache

format:
	$(PYTHON) -m ruff format sd3d recon cli tests benchmarks
	$(PYTHON) -m ruff check --fix sd3d recon cli tests benchmarks

# Batch over a folder: one `sd3d run` per image, JOBS in parallel, up-to-date images skipped, one log
# per image, failures recorded without stopping the others, a summary and a non-zero exit if any failed.
batch:
	@test -d "$(IN)" || { echo "error: input folder $(IN) not found (make batch IN=photos/ OUT=out/)" >&2; exit 2; }
	@mkdir -p "$(OUT)/logs"
	@$(MAKE) --no-print-directory -k -j$(JOBS) -f scripts/batch.mk IN="$(IN)" OUT="$(OUT)" ARGS='$(ARGS)' PYTHON="$(PYTHON)" all; \
	  $(PYTHON) scripts/batch_summary.py "$(OUT)" "$(IN)"
