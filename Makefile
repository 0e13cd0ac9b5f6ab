# `make run`: install into .venv and run the pipeline (dvc repro on params.yaml).
# `make test`: install into .venv and run the test suite.
# Offline: LICBENCH_MIRROR=../shared/data/mirror make run
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# Stages run `python stages/...`: the venv must come first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: install run test clean-outputs

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

run: install
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: install
	$(BIN)/python -m pytest -q

clean-outputs:
	rm -rf data models mlruns.db mlartifacts
