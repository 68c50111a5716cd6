# The two commands of the README: `make demo` (set up, then run the demo) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test test-postgres lint typecheck bench clean

$(BIN)/flowledger: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,postgres,crypto]'
	@touch $@

setup: $(BIN)/flowledger

demo: setup
	$(BIN)/flowledger demo

test: setup
	$(BIN)/pytest

# Only the tests that run on PostgreSQL (`make test` runs them too, when the
# server is reachable).
test-postgres: setup
	$(BIN)/pytest -m postgres

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
