# sd3d developer and batch tasks. `make install && make test` is the whole set-up on a fresh clone.
PYTHON ?= python
SHELL := /bin/bash

.PHONY: install test lint format

install:
	$(PYTHON) -m pip install -q torch==2.13.0 || $(PYTHON) -m pip install -q "torch>=2.4"
	$(PYTHON) -m pip install -q -e ".[dev]"

# The test command (README.md and .ci/run use exactly this target).
test:
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -n 2 --dist loadfile tests

lint:
	$(PYTHON) -m ruff check sd3d recon cli tests benchmarks
	$(PYTHON) -m ruff format --check sd3d recon cli tests benchmarks

format:
	$(PYTHON) -m ruff format sd3d recon cli tests benchmarks
	$(PYTHON) -m ruff check --fix sd3d recon cli tests benchmarks
