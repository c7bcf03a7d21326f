# Two commands for a newcomer: `make demo` (the adapter, locally) and `make test` (everything).
SHELL := /bin/bash
# The first Python >= 3.11 that runs (3.13, the Lambda runtime, preferred; pyenv's shims may
# exist for versions that are not selected, so each candidate is tried, not just found).
PYTHON ?= $(shell for p in $$HOME/.pyenv/versions/3.13*/bin/python3.13 python3.13 python3.12 \
	python3.11 python3; do "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	>/dev/null 2>&1 && { command -v "$$p"; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# What `make demo` needs: the adapter and the dev kit's dependencies (`.[local]`), not the
# test tools. The full install (STAMP) holds them too.
LOCAL_STAMP := $(VENV)/.installed-local

TOOLS := .tools
CHECKOV := $(TOOLS)/checkov/bin/checkov
PIP_AUDIT := $(TOOLS)/audit/bin/pip-audit

.DEFAULT_GOAL := help
.PHONY: help demo test lint typecheck security unit integration e2e bench bench-load bench-load-outside bench-aggregate bench-corrections clean

help: ## what each target does
	@echo "make TARGET, in a checkout (the first run of each makes .venv):"
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-z][a-z0-9-]*:.*## / {printf "  make %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml src/requirements.txt
	@echo "First run: creating .venv and installing the adapter, the dev kit and the test tools (about a minute; later runs skip this)"
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is needed (3.13 preferred)" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP) $(LOCAL_STAMP)

$(LOCAL_STAMP): pyproject.toml src/requirements.txt
	@echo "First run: creating .venv and installing the adapter and the dev kit (not the test tools; later runs skip this)"
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is needed (3.13 preferred)" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[local]"
	@touch $(LOCAL_STAMP)

demo: $(LOCAL_STAMP) ## run the adapter locally (no AWS account, no Docker) and show every outcome
	$(BIN)/piriod-local demo

lint: $(STAMP) ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy, strict
	$(BIN)/mypy

# checkov and pip-audit each live in a venv of their own: their dependencies are many and
# would clash with the project's.
$(CHECKOV):
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/python -m pip install --quiet "checkov==3.3.30"

$(PIP_AUDIT):
	$(PYTHON) -m venv $(TOOLS)/audit
	$(TOOLS)/audit/bin/python -m pip install --quiet "pip-audit==2.10.1"

security: $(STAMP) $(CHECKOV) $(PIP_AUDIT) ## cfn-lint, checkov, bandit, pip-audit
	$(BIN)/cfn-lint template.yaml
	$(CHECKOV) --quiet --compact --skip-download -f template.yaml
	$(BIN)/bandit -q -c pyproject.toml -r src ops
	bash scripts/audit-requirements.sh $(PIP_AUDIT)

unit: $(STAMP) ## the unit tests
	$(BIN)/pytest -q tests/unit

integration: $(STAMP) ## the integration tests (moto server, the Piriod stand-in)
	$(BIN)/pytest -q tests/integration

e2e: $(STAMP) ## the e2e tests (sam local, in Docker)
	bash scripts/sam-local-setup.sh
	$(BIN)/pytest -q tests/e2e

test: lint typecheck security $(STAMP) ## everything CI runs: lint, types, security, every test
	bash scripts/sam-local-setup.sh
	$(BIN)/pytest -q -n 2 tests/unit tests/integration
	$(BIN)/pytest -q tests/e2e

# Each bench writes its results in bench/ and regenerates the figures of docs/benchmarks.md and
# README.md from them (bench/pages.py).
bench: $(STAMP) ## measure cold starts, the webhook and replay (docs/benchmarks.md)
	$(BIN)/python bench/run.py

# 5,000 records from concurrent senders through 4 webhook processes and 1 replay process while
# Piriod fails in phases; exits 1 if a record is lost or posted twice, or a 5xx was answered.
bench-load: $(STAMP) ## 5,000 records through a Piriod failing in phases
	$(BIN)/python bench/load.py

# The outside load check's shape: 5 webhook instances, a store that serves one request at a
# time, 40 records per delivery, 2,000 records, Piriod healthy; the same exit rule.
bench-load-outside: $(STAMP) ## 2,000 records in the outside check's shape
	$(BIN)/python bench/load.py --shape outside

# 100,000 events into aggregation windows against per-event posting: Piriod calls, throughput,
# DynamoDB capacity per event, a hot line; exits 1 if an event is lost or counted twice.
bench-aggregate: $(STAMP) ## 100,000 events into windows against one usage per event
	$(BIN)/python bench/aggregation.py

# Corrections (issue 23): Piriod calls per cancel and amend of posted records, at the flush that
# restates a corrected generation, for an open window; its write units; corrections against new
# records per second of function time. Exits 1 if Piriod's ledger breaks SPEC 10's invariant.
bench-corrections: $(STAMP) ## cancels and amends: Piriod calls, write units, throughput
	$(BIN)/python bench/corrections.py

clean: ## remove .venv and build and tool caches
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
