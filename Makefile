# The two commands of the README: `make demo` (set up, then run the demo) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test test-postgres lint typecheck bench clean

$(BIN)/flowledger: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,postgres]'
	@touch $@

setup: $(BIN)/flowledger

demo: setup
	$(BIN)/flowledger demo

test: setup
	$(BIN)/pytest

# pytest exits 5 when no test carries the mark: nothing to run is not a failure.
test-postgres: setup
	$(BIN)/pytest -m postgres || [ $$? -eq 5 ]

lint: setup
	$(BIN)/ruff check flowledger tests bench examples

# Configured in pyproject.toml ([tool.mypy]): strict for flowledger.domain.
typecheck: setup
	$(BIN)/python -m mypy flowledger

bench: setup
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/runs.py

clean:
	rm -rf $(VENV) flowledger-demo .pytest_cache .hypothesis
