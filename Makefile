# pcavae: `make run` trains the default PCA-VAE on the embedded data,
# `make test` runs the test suite. Both create ./.venv and install first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/pcavae_runlocal
CONFIG ?= configs/pcavae.py:runlocal
PYTEST_ARGS ?=

.PHONY: setup run test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[tf,dev]'
	touch $@

run: setup
	$(PY) -m pcavae.main --config=$(CONFIG) --workdir=$(WORKDIR)
	@echo "Outputs: $(WORKDIR)/metrics.jsonl $(WORKDIR)/images/ $(WORKDIR)/checkpoints/"

test: setup
	$(PY) -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS) tests

clean:
	rm -rf $(VENV) workdirs
