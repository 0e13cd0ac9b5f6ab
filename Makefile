# `make run`: install into .venv and run the pipeline (dvc repro on params.yaml).
# `make test`: install into .venv and run the test suite.
# Offline: LICBENCH_MIRROR=../shared/data/mirror make run
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# Stages run `python stages/...`: the venv must come first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: install run test browser postgres clean-outputs

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# params.yaml is checked first (every problem, one line each), then the DAG;
# after it: the DVC metrics (one file per evaluation set, data/report/<set>/
# metrics.json: each model's bpp, PSNR..., each architecture's BD-rates;
# docs/dvc.md), a row each beside the last commit's value (`dvc metrics show`
# would print a set's in one row, hundreds of characters wide), then each
# set's BD-rate table.
run: install
	$(BIN)/licbench params check
	$(BIN)/dvc repro
	$(BIN)/dvc metrics diff --all
	@for f in data/report/*/bd_rate.md; do [ -f "$$f" ] && { echo; cat "$$f"; }; done; true

test: install
	$(BIN)/python -m pytest -q

# Debian's chromium for the MLflow UI test (tests/test_mlflow_ui.py); needs
# root or sudo and Debian's package mirror. Without it that test is skipped.
browser:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && \
	  /usr/bin/chromium --version; fi

# Debian's PostgreSQL (its newest major version) for the shared MLflow server
# test (tests/test_mlflow_postgres.py, docs/team.md); like `browser`, needs root
# or sudo. Without it that test is skipped.
PG_BINDIR = ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
postgres:
	@if [ -z "$$($(PG_BINDIR))" ]; then SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; fi; \
	$$($(PG_BINDIR))/postgres --version

clean-outputs:
	rm -rf data models mlruns.db mlartifacts
