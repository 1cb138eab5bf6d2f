# Two commands do all set-up on a fresh machine:
#   make quickstart   create .venv, install, run benchmarks/quickstart.yaml on synthetic data
#   make test         create .venv, install with the dev extra, run the test suite
#   make perf         run every perf measurement, write benchmarks/perf/REPORT.md (~70 min on 2 cores; PERF_ARGS=--quick: minutes)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: quickstart test perf install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall only when the project's dependency files change.
$(VENV)/.installed-base: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $@ $(VENV)/.installed-base

install: $(VENV)/.installed-base

quickstart: $(VENV)/.installed-base
	$(BIN)/metadg bench benchmarks/quickstart.yaml

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 -q

perf: $(VENV)/.installed-base
	$(BIN)/python benchmarks/perf/report.py $(PERF_ARGS) --out benchmarks/perf/REPORT.md

clean:
	rm -rf $(VENV) runs mlflow.db mlartifacts metadg-journal .pytest_cache
