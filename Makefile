# sd3d developer and batch tasks. `make install && make test` is the whole set-up on a fresh clone.
PYTHON ?= python
SHELL := /bin/bash

IN ?= photos
OUT ?= out
JOBS ?= 1
ARGS ?=

.PHONY: install test lint format batch

install:
	$(PYTHON) -m pip install -q torch==2.13.0 || $(PYTHON) -m pip install -q "torch>=2.4"
	$(PYTHON) -m pip install -q -e ".[dev,rembg]"
	$(PYTHON) scripts/fetch_u2netp.py --dest weights

# The test command (README.md and .ci/run use exactly this target).
test:
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -n 2 --dist loadfile tests

lint:
	$(PYTHON) -m ruff check sd3d recon cli tests benchmarks
	$(PYTHON) -m ruff format --check sd3d recon cli tests benchmarks

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
