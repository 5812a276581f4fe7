# The two commands that matter: `make run` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8501

.PHONY: setup setup-dev run worker test test-fast lint format bench bench-batched rebuild-llama clean

setup:
	@bash scripts/setup.sh

setup-dev:
	@bash scripts/setup.sh --dev

## Set everything up and start the dashboard and its worker on the embedded SQLite store
## (127.0.0.1 only; `make run ADDRESS=0.0.0.0` serves a team once sign-in is configured).
run: setup
	$(VENV)/bin/storybench serve --port $(PORT) $(if $(ADDRESS),--address $(ADDRESS))

## A worker process beside the dashboard (optional; the dashboard has its own).
worker: setup
	$(VENV)/bin/storybench worker

## Set everything up and pass the whole test suite, slow real-model tests included.
test: setup-dev lint
	$(PY) -m pytest -q

test-fast: setup-dev
	$(PY) -m pytest -q -m "not slow"

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy storybench_core

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) bench/throughput.py

## The quickstart's work at width 1, per sequence, whole evaluation, and llama.cpp's llama-server -np 8 (built on first use).
bench-batched: setup
	$(PY) bench/batched.py --llama-server auto

## Rebuild llama-cpp-python from source with this machine's flags (AMX off), ignoring every wheel cache.
rebuild-llama:
	rm -rf "$${STORYBENCH_WHEEL_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/storybench/wheels}"
	rm -f $(VENV)/.storybench-*.stamp
	@bash scripts/setup.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache tests/artifacts
