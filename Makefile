# Two commands for a newcomer: `make demo` (the adapter, locally) and `make test` (everything).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.13 || echo /root/.pyenv/versions/3.13.0/bin/python3.13)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration e2e bench clean

$(STAMP): pyproject.toml src/requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/piriod-local demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

e2e: $(STAMP)
	bash scripts/sam-local-setup.sh
	$(BIN)/pytest -q tests/e2e

test: lint typecheck $(STAMP)
	bash scripts/sam-local-setup.sh
	$(BIN)/pytest -q -n 2 tests/unit tests/integration
	$(BIN)/pytest -q tests/e2e

bench: $(STAMP)
	$(BIN)/python benchmarks/batch_latency.py

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
