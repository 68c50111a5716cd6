"""The pytest plugin (entry point `pytest11`: loaded wherever flowledger is
installed). Its fixtures are named `flowledger_*`, so they never shadow a
project's own `engine`, `clock` or `store`.

Which store: `--flowledger-store sqlite|memory|postgresql`, the ini option
`flowledger_store`, or FLOWLEDGER_TEST_STORE (default: a temporary SQLite file,
which crash tests need). PostgreSQL: `--flowledger-postgres URL`, the ini option
`flowledger_postgres` or FLOWLEDGER_TEST_POSTGRES; each test gets a schema of
its own, dropped afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from flowledger.engine.clock import ManualClock
from flowledger.engine.engine import Engine
from flowledger.engine.worker import Worker
from flowledger.testing.engines import EngineFactory
from flowledger.testing.stores import DEFAULT_POSTGRES, STORE_KINDS, fresh_store


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flowledger", "flowledger.testing")
    group.addoption("--flowledger-store", choices=STORE_KINDS, default=None,
                    help="the store of the flowledger_* fixtures (default: sqlite, a "
                         "temporary file)")
    group.addoption("--flowledger-postgres", default=None, metavar="URL",
                    help="the PostgreSQL database that holds the tests' schemas")
    parser.addini("flowledger_store", "the store of the flowledger_* fixtures "
                  "(sqlite, memory or postgresql)", default="")
    parser.addini("flowledger_postgres", "the PostgreSQL database for flowledger_* "
                  "fixtures' schemas", default="")


def _setting(config: pytest.Config, option: str, ini: str, env: str, default: str) -> str:
    return str(config.getoption(option) or config.getini(ini)
               or os.environ.get(env) or default)


@pytest.fixture
def flowledger_clock() -> ManualClock:
    """A clock that moves only when the test says: `flowledger_clock.advance("5m")`."""
    return ManualClock()


def _configured(config: pytest.Config) -> tuple[str, str]:
    """The store kind and the PostgreSQL test database the run was given."""
    return (_setting(config, "--flowledger-store", "flowledger_store",
                     "FLOWLEDGER_TEST_STORE", "sqlite"),
            _setting(config, "--flowledger-postgres", "flowledger_postgres",
                     "FLOWLEDGER_TEST_POSTGRES", DEFAULT_POSTGRES))


@pytest.fixture
def flowledger_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store, fresh for this test."""
    kind, postgres = _configured(request.config)
    with fresh_store(kind, tmp_path, postgres) as url:
        yield url


@pytest.fixture
def flowledger_fresh_store(request: pytest.FixtureRequest, tmp_path: Path
                           ) -> Callable[[], AbstractContextManager[str]]:
    """A new empty store at each call, of the kind and on the server the run
    was given (`--flowledger-store`, `--flowledger-postgres`, ...): for a
    store per hypothesis example, `with flowledger_fresh_store() as url:`."""
    kind, postgres = _configured(request.config)
    return lambda: fresh_store(kind, tmp_path, postgres)


@pytest.fixture
def flowledger_new_engine(flowledger_store: str, flowledger_clock: ManualClock
                          ) -> Iterator[EngineFactory]:
    """Call it for an engine on the test's store and clock (another one after a
    crash: a new "process"); every engine is closed after the test."""
    factory = EngineFactory(flowledger_store, flowledger_clock)
    yield factory
    factory.close_all()


@pytest.fixture
def flowledger_engine(flowledger_new_engine: EngineFactory) -> Engine:
    """An engine on a fresh store, the manual clock and seeded ids."""
    return flowledger_new_engine()


@pytest.fixture
def flowledger_worker(flowledger_engine: Engine) -> Worker:
    """The worker of `flowledger_engine`, one pass at a time: `run_once()` runs
    every session due on the manual clock (schedules, wake-ups, retries,
    reconciliation) and returns their results."""
    return Worker(flowledger_engine)
