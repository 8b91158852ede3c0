# The two Quick start commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# test servers that `make test` starts (see scripts/test-clusters.sh)
CLUSTERS ?= all

.PHONY: run demo test lint typecheck unit clusters tools browser-tools clusters-down bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	JOBBRIDGE="$(BIN)/jobbridge" bash scripts/serve-demo.sh

demo: $(VENV)/.installed
	JOBBRIDGE="$(BIN)/jobbridge" bash scripts/demo.sh

test: $(VENV)/.installed-test clusters tools browser-tools lint typecheck unit

clusters:
	@if bash scripts/test-clusters.sh up $(CLUSTERS); then :; \
	elif [ "$$CI" = "true" ]; then echo "test servers could not be started" >&2; exit 1; \
	else echo "test servers could not be started: their tests will be skipped" >&2; fi

tools: $(VENV)/.installed-test
	VENV="$(VENV)" bash scripts/test-tools.sh

browser-tools: $(VENV)/.installed-test
	VENV="$(VENV)" bash scripts/browser-tools.sh

clusters-down:
	bash scripts/test-clusters.sh down all

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy src/jobbridge

unit: $(VENV)/.installed-test
	$(BIN)/pytest -ra

bench: $(VENV)/.installed
	@for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
