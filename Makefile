# Every target creates the virtual environment on a fresh machine by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml
STAMP := $(VENV)/.installed

.PHONY: run test lint bench services clean check-config

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[test,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/sentinel run --config $(CONFIG)

check-config: $(STAMP)
	$(BIN)/sentinel check-config --config $(CONFIG)

services:
	bash scripts/ensure-services.sh

test: $(STAMP) services
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/scheduler_bench.py --checks 1000 --seconds 60
	$(BIN)/python bench/scheduler_bench.py --checks 100 --seconds 30
	$(BIN)/python bench/escalation_bench.py
	$(BIN)/python bench/idle_rss.py

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
