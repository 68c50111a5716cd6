"""The store's failures reach a caller of the engine as one class, `fl.StoreError`,
whatever the store: a service's handling does not change when it moves from
SQLite to PostgreSQL. Ours and bugs pass as they are."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import psycopg
import pytest
from eventsourcing.persistence import OperationalError

import flowledger as fl
from flowledger.engine.store_errors import as_store_error, from_the_store, store_errors_as_ours
from flowledger.infrastructure.store import LogWentBack


def sqlite_failure() -> sqlite3.Error:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("SELECT * FROM no_such_table")
    except sqlite3.Error as e:
        return e
    raise AssertionError("no error")


@pytest.mark.parametrize("error", [
    sqlite_failure(), psycopg.OperationalError("server closed the connection unexpectedly"),
    psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
    OperationalError("the library's own"), ConnectionResetError("reset by peer")],
    ids=lambda e: type(e).__name__)
def test_a_store_failure_becomes_a_store_error_keeping_the_drivers(error: Exception) -> None:
    ours = as_store_error(error)
    assert isinstance(ours, fl.StoreError) and isinstance(ours, fl.FlowledgerError)
    assert ours.error is error
    said = str(ours)
    assert said.startswith(f"the store failed ({type(error).__name__}: ")
    assert "what the log holds stands" in said and "try again" in said
    assert from_the_store(ours)  # the CLI and the worker still know it for one


@pytest.mark.parametrize("error", [
    fl.ConcurrencyError("lost its lock"), fl.StoreBusyError("busy"),
    NameError("a bug of ours"), ValueError("bad argument")], ids=lambda e: type(e).__name__)
def test_ours_and_bugs_pass_as_they_are(error: Exception) -> None:
    assert as_store_error(error) is error


def test_a_log_gone_back_says_itself_what_to_do() -> None:
    gone = LogWentBack("the store's log no longer holds this engine's append at position 7:\n"
                       "   restart it once the store is as it should be")
    ours = as_store_error(gone)
    assert isinstance(ours, fl.StoreError) and ours.error is gone
    assert str(ours) == ("the store's log no longer holds this engine's append at position "
                         "7: restart it once the store is as it should be")


class Calls:
    @store_errors_as_ours
    def read(self, error: Exception | None) -> int:
        if error is not None:
            raise error
        return 1

    @store_errors_as_ours
    def follow(self, error: Exception) -> Iterator[int]:
        yield 1
        raise error


def test_a_method_raises_store_errors_as_ours_and_returns_as_before() -> None:
    calls = Calls()
    assert calls.read(None) == 1
    driver = psycopg.OperationalError("terminating connection due to administrator command")
    with pytest.raises(fl.StoreError) as raised:
        calls.read(driver)
    assert raised.value.error is driver and raised.value.__cause__ is driver
    with pytest.raises(NameError):
        calls.read(NameError("x"))


def test_a_generator_is_watched_as_it_is_read() -> None:
    driver = sqlite_failure()
    items = Calls().follow(driver)
    assert next(items) == 1
    with pytest.raises(fl.StoreError) as raised:
        next(items)
    assert raised.value.error is driver
    with pytest.raises(KeyError):
        list(Calls().follow(KeyError("ours")))
