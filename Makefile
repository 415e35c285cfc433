# zipmount — the two commands of the README work on a fresh Debian machine:
#   make demo   mount a bucket served by an embedded S3 server and read zarr arrays through it
#   make test   the whole suite: lint, typecheck, unit, then the tests with real FUSE mounts and
#               real S3 server processes on loopback (docs/DEVELOPMENT.md)
PYTHON ?= python3
VENV := .venv
ZARR3_VENV := .venv-zarr3
PIP_FLAGS := --quiet --disable-pip-version-check

PYTEST := $(VENV)/bin/python -m pytest

.PHONY: all system-deps venv test lint demo bench fuzz cli-docs clean

all: test

system-deps:
	@scripts/ensure-system-deps.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) --upgrade pip
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[test]'
	# torch's CPU build, for the README's training loop (tests/test_e2e_training.py, bench/loader.py):
	# pinned, because an unpinned torch resolves to a CUDA build of several GB
	$(VENV)/bin/pip install $(PIP_FLAGS) 'torch==2.13.0'
	touch $@

# zarr-python 3 cannot share an environment with zarr-python 2: its client checks run here.
$(ZARR3_VENV)/.installed:
	$(PYTHON) -m venv $(ZARR3_VENV)
	$(ZARR3_VENV)/bin/pip install $(PIP_FLAGS) 'zarr>=3' numpy xarray -e .
	touch $@

venv: $(VENV)/.installed $(ZARR3_VENV)/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check zipmount tests bench scripts

.PHONY: typecheck unit
typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

# the tests that need neither a FUSE mount nor an S3 server, but the reference model's (~2 min)
# (markers set in tests/conftest.py), one process per CPU
unit: system-deps $(VENV)/.installed
	$(PYTEST) tests -m "not fuse and not s3 and not model" -n auto

test: system-deps venv lint typecheck unit
	$(PYTEST) tests -m "fuse or s3 or model"

demo: system-deps $(VENV)/.installed
	$(VENV)/bin/python scripts/demo.py

bench: venv
	@scripts/ensure-system-deps.sh nginx-light
	$(VENV)/bin/python -m bench.run

# A long fuzzing run and a long reference-model session (~20 min on an idle 2-core machine);
# ZIPMOUNT_MODEL_SHRINK=1 shrinks a failure to a minimal sequence (slow).
fuzz: $(VENV)/.installed
	ZIPMOUNT_FUZZ_EXAMPLES=20000 $(VENV)/bin/python -m pytest tests/test_fuzz.py
	ZIPMOUNT_MODEL_EXAMPLES=200 ZIPMOUNT_MODEL_STEPS=50 ZIPMOUNT_MODEL_RANDOM=1 \
		$(VENV)/bin/python -m pytest tests/model

# The man page and bash/zsh completions, generated from the argument parser, into build/.
cli-docs: $(VENV)/.installed
	$(VENV)/bin/python scripts/cli_docs.py build

clean:
	rm -rf $(VENV) $(ZARR3_VENV) .bench .demo build *.egg-info
