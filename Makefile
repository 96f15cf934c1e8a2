# pcavae: `make run` trains the default PCA-VAE on the embedded data,
# `make test` runs the test suite. Both create ./.venv and install first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/pcavae_runlocal
CONFIG ?= configs/pcavae.py:runlocal
PYTEST_ARGS ?=
TORCH_VERSION ?= 2.13.0

.PHONY: setup run test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[tf,dev]'
	touch $@

# torch (CPU) only for the Inception weight conversion and its test.
$(VENV)/.installed-convert: $(VENV)/.installed
	$(PY) -m pip install -q 'torch==$(TORCH_VERSION)'
	$(PY) -m pip install -q -e '.[convert]'
	touch $@

run: setup
	$(PY) -m pcavae.main --config=$(CONFIG) --workdir=$(WORKDIR)
	@echo "Outputs: $(WORKDIR)/metrics.jsonl $(WORKDIR)/images/ $(WORKDIR)/checkpoints/"

test: setup $(VENV)/.installed-convert
	$(PY) -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) workdirs
