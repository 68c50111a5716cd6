"""The store's failures reach a caller of the engine as one class, `fl.StoreError`,
whatever the store: a service's handling does not change when it moves from
SQLite to PostgreSQL. Ours and bugs pass as they are."""

from __future__ import annotations

import pickle
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from eventsourcing.persistence import OperationalError

import flowledger as fl
from flowledger.infrastructure.store import LogWentBack
from flowledger.infrastructure.store_failures import (
    as_store_error,
    from_the_store,
    is_outage,
    store_errors_as_ours,
)


def sqlite_read_only() -> sqlite3.Error:
    """A real SQLITE_READONLY: a write on a file opened read-only."""
    with tempfile.TemporaryDirectory() as folder:
        sqlite3.connect(Path(folder) / "f.db").close()
        conn = sqlite3.connect(f"file:{Path(folder) / 'f.db'}?mode=ro", uri=True)
        try:
            conn.execute("CREATE TABLE t (x)")
        except sqlite3.Error as e:
            return e
        finally:
            conn.close()
    raise AssertionError("no error")


def sqlite_failure() -> sqlite3.Error:
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("SELECT * FROM no_such_table")
    except sqlite3.Error as e:
        return e
    raise AssertionError("no error")


@pytest.mark.parametrize(("error", "to_do"), [
    (sqlite_failure(), "the projection table no_such_table is gone"),
    (sqlite_read_only(), "the SQLite file, or its folder, is not writable"),
    (psycopg.OperationalError("server closed the connection unexpectedly\n\tThis probably "
                              "means the server terminated abnormally"), "try again once it works"),
    (psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
     "it refuses writes"),
    (psycopg.errors.InsufficientPrivilege("permission denied for table fl_runs"),
     "flowledger --store OWNER-URL setup --grant ROLE"),
    (psycopg.errors.DiskFull("could not extend file"), "its disk is full"),
    (psycopg.errors.UndefinedTable('relation "fl_runs" does not exist'),
     "the projection table fl_runs is gone (dropped or renamed outside flowledger): open the "
     "store again"),
    (psycopg.errors.UndefinedTable('relation "x.stored_events" does not exist'),
     "the log's table stored_events is gone (dropped or renamed outside flowledger): restore "
     "the store from a backup"),
    (OperationalError("the library's own"), "try again once it works")],
    ids=lambda e: type(e).__name__ if isinstance(e, BaseException) else "")
def test_a_store_failure_becomes_a_store_error_saying_what_to_do(error: Exception,
                                                                 to_do: str) -> None:
    ours = as_store_error(error, " during runs() on store 'sqlite:///flow.db'")
    assert isinstance(ours, fl.StoreError) and isinstance(ours, fl.FlowledgerError)
    assert ours.error is error
    said = str(ours)
    assert said.startswith(f"the store failed ({type(error).__name__}: ")
    assert " during runs() on store 'sqlite:///flow.db': " in said  # what, and where
    assert to_do in said and "what the log holds stands" in said
    assert "\n" not in said and "\t" not in said  # one line, in a service's log too
    assert from_the_store(ours)  # the CLI and the worker still know it for one


def sqlite_busy(folder: Path) -> sqlite3.Error:
    """A real SQLITE_BUSY: another connection holds the file's write lock."""
    holder = sqlite3.connect(folder / "busy.db", isolation_level=None)
    waiter = sqlite3.connect(folder / "busy.db", isolation_level=None, timeout=0)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        try:
            waiter.execute("CREATE TABLE t (x)")
        except sqlite3.Error as e:
            return e
        raise AssertionError("not busy")
    finally:
        holder.close()
        waiter.close()


def test_a_lock_held_past_the_timeout_is_a_busy_store_on_both_stores(tmp_path: Path) -> None:
    busy: list[Exception] = [sqlite_busy(tmp_path)]
    busy.append(psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"))
    try:
        raise OperationalError("database is locked") from busy[0]
    except OperationalError as wrapped:  # as the library wraps the driver's
        busy.append(wrapped)
    for error in busy:
        ours = as_store_error(error)
        assert isinstance(ours, fl.StoreBusyError) and isinstance(ours, fl.StoreError)
        assert "another process held its write lock" in str(ours)


@pytest.mark.parametrize("error", [
    fl.ConcurrencyError("lost its lock"), fl.StoreBusyError("busy"),
    NameError("a bug of ours"), ValueError("bad argument"),
    BrokenPipeError("a progress callback's own"), FileNotFoundError("the caller's file")],
    ids=lambda e: type(e).__name__)
def test_ours_bugs_and_the_callers_own_errors_pass_as_they_are(error: Exception) -> None:
    """A bare OSError is the caller's code's (a progress callback, a clock): the
    drivers raise theirs as their own classes."""
    assert as_store_error(error) is error


@pytest.mark.parametrize("error", [
    fl.StoreError("the store failed (X)", psycopg.OperationalError("server closed")),
    fl.StoreBusyError("busy"), fl.StoreUnreachable("no answer"),
    fl.CorruptEventError("damaged", position=3, stream_id=uuid.uuid4(),
                         version=1, topic="t"),
    fl.ProjectionConflictError("written by hand", table="fl_runs")],
    ids=lambda e: type(e).__name__)
def test_our_errors_survive_pickling(error: fl.FlowledgerError) -> None:
    """A process pool's worker or a task queue sends an error back pickled."""
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)
    assert vars(back).keys() == vars(error).keys()
    if isinstance(error, fl.StoreError) and error.error is not None:
        assert isinstance(back.error, psycopg.OperationalError)


def test_a_log_gone_back_says_itself_what_to_do() -> None:
    gone = LogWentBack("the store's log no longer holds this engine's append at position 7:\n"
                       "   restart it once the store is as it should be")
    ours = as_store_error(gone)
    assert isinstance(ours, fl.StoreError) and ours.error is gone
    assert str(ours) == ("the store's log no longer holds this engine's append at position "
                         "7: restart it once the store is as it should be")  # one line


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


def _wrapped(error: BaseException) -> OperationalError:
    """As the persistence library raises a driver's error: wrapped, the cause kept."""
    try:
        raise OperationalError(str(error)) from error
    except OperationalError as e:
        return e


@pytest.mark.parametrize(("error", "outage"), [
    (psycopg.OperationalError("server closed the connection unexpectedly"), True),
    (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
    (psycopg.errors.TooManyConnections('too many connections for role "app"'), True),
    (psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
     True),
    (psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), True),
    (_wrapped(psycopg.errors.CannotConnectNow("the database system is starting up")), True),
    (sqlite_read_only(), True),
    (psycopg.errors.UndefinedColumn('column "positon" does not exist'), False),
    (psycopg.errors.SyntaxError('syntax error at or near "SELEC"'), False),
    (_wrapped(psycopg.errors.InternalError_("unexpected chunk number")), False),
    (sqlite3.OperationalError("no such column: positon"), False),
    (KeyError("a bug of ours"), False)],
    ids=lambda e: type(e).__name__ if isinstance(e, BaseException) else "")
def test_an_outage_is_told_apart_from_a_statement_the_server_found_wrong(
        error: BaseException, outage: bool) -> None:
    """A worker logs an outage in one line; a wrong statement (a bug) keeps its
    traceback, once (`is_outage`)."""
    assert is_outage(error) is outage
