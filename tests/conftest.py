"""Fixtures shared by every suite: a clock, engines on real stores, an external ledger.

Every test that takes `store` (or `make_engine`) runs on an SQLite file and on
PostgreSQL (tests/postgres.py says when the server is not reachable, and
skips those; with FLOWLEDGER_REQUIRE_POSTGRES=1, as in CI, it fails instead).

The fixtures are flowledger.testing's (its pytest plugin), under the short
names the suite uses; `store` adds PostgreSQL to every test that takes it.
The helpers the tests build with (ledger tools, workflows, ways to look at a
store) are in tests/helpers.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from flowledger.testing.engines import EngineFactory
from tests import pgbouncer, postgres
from tests.helpers import ExternalLedger


@pytest.fixture(autouse=True)
def _no_libpq_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Store URLs take the parts they leave out from PGUSER, PGHOST, PGPORT and
    PGDATABASE: a machine that sets them must not change what the tests mean."""
    for name in ("PGUSER", "PGHOST", "PGPORT", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clock(flowledger_clock: fl.ManualClock) -> fl.ManualClock:
    return flowledger_clock


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store per test: an SQLite file, and (marked `postgres`) a schema of
    its own on the PostgreSQL server, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'flow.db'}"
        return
    with postgres.fresh_schema() as url:
        yield url


@pytest.fixture
def ledger(tmp_path: Path) -> ExternalLedger:
    return ExternalLedger(tmp_path / "ledger.db")


@pytest.fixture
def make_engine(store: str, clock: fl.ManualClock) -> Iterator[Callable[..., fl.Engine]]:
    """flowledger.testing's engine factory, on this suite's `store` (both stores)."""
    factory = EngineFactory(store, clock)
    yield factory
    factory.close_all()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [postgres.report(), pgbouncer.report()]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Said at the end too: `-q` hides the header."""
    terminalreporter.write_line(postgres.report())
    terminalreporter.write_line(pgbouncer.report())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    postgres.skip_unless_reachable(items)
