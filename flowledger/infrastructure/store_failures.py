"""How a store's failure under a call is told to the caller: one class on every
store (`StoreError`, ADR 0030), saying what failed, where, and what to do.

What the driver raised is recognised here, where the drivers are known, by the
codes they attach (SQLite's result codes, PostgreSQL's SQLSTATE) without
importing an optional driver.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
import types
from collections.abc import Callable, Generator, Iterator
from typing import Any, ParamSpec, TypeVar

from eventsourcing.persistence import PersistenceError

from flowledger.domain.errors import FlowledgerError, StoreBusyError, StoreError
from flowledger.domain.failures import describe
from flowledger.domain.text import one_line
from flowledger.infrastructure.hash_chain import CHAIN_TABLE
from flowledger.infrastructure.sqlite_recorder import is_lock_timeout
from flowledger.infrastructure.store import LogWentBack, ServerUnavailable
from flowledger.infrastructure.store_check import no_connection_to_spare, server_unavailable
from flowledger.infrastructure.store_format import FORMAT_TABLE
from flowledger.infrastructure.store_url import StoreConfig, shown


def from_the_store(error: BaseException) -> bool:
    """Whether the store's driver or the persistence library raised `error` (a bug
    of ours, a NameError, stays one); the library's errors our store raises too
    (`LogWentBack`), and ours that say the store failed."""
    return isinstance(error, (OSError, PersistenceError, StoreError)) or type(
        error).__module__.split(".")[0] in ("sqlite3", "psycopg", "psycopg_pool", "eventsourcing")


def as_store_error(error: BaseException, where: str = "") -> BaseException:
    """What a public call raises for `error`: ours and bugs as they are, the
    store's failure as `StoreError` (`StoreBusyError` for a lock held past the
    timeout). `where`: " during NAME() on store URL", for the message. A bare
    OSError is the caller's own code's (a progress callback, a clock): the
    drivers raise theirs as their own classes."""
    if (isinstance(error, FlowledgerError) or not from_the_store(error)
            or type(error).__module__ == "builtins"):
        return error
    if isinstance(error, LogWentBack):  # it says itself what happened and what to do
        return StoreError(one_line(error), error)
    said = one_line(describe(error))
    if is_busy(error):
        return StoreBusyError(
            f"the store was busy ({said}){where}: another process held its write lock past "
            "the lock timeout. Nothing of the append that waited was stored, and what the "
            "log holds stands: try again when that process is done", error)
    return StoreError(f"the store failed ({said}){where}: {_what_to_do(error)}. Nothing more "
                      "was done, and what the log holds stands: each append is in it whole "
                      "or not at all", error)


def opening_failed(config: StoreConfig, error: BaseException, doing: str
                   ) -> StoreError | None:
    """What opening a store raises for a failure that is the server's state, not
    the store's: its server unreachable now (a worker waits for it), or
    another process holding its write lock past the lock timeout while this
    one was `doing` something. None for any other failure."""
    if isinstance(error, ServerUnavailable):
        return server_unavailable(config, error)
    if is_busy(error):
        return StoreBusyError(
            f"store {config.shown!r} is locked: another process held its write lock for "
            f"longer than the lock timeout while this one {doing}. Nothing was changed; "
            "try again when that process is done", error)
    return None


# PostgreSQL's classes of errors that are the server's state, not a statement's:
# a connection lost or refused, resources short, the server stopping.
_OUTAGE_CLASSES = ("08", "53", "57", "58")
_SQLITE_OUTAGES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR,
                   sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY)


def is_outage(error: BaseException) -> bool:
    """A store failure its one line says whole (a server away, restarting or
    short of connections, a lock held, writes refused, or one `advice` knows):
    a traceback would add nothing. A statement the server found wrong is not."""
    if advice(error) is not None or is_busy(error) or isinstance(error, ServerUnavailable):
        return True
    if _code(error, sqlite=_SQLITE_OUTAGES):
        return True
    for seen in _wrapped(error):
        state = getattr(seen, "sqlstate", None)
        if state is not None and state[:2] in _OUTAGE_CLASSES:
            return True
        if (state is None and type(seen).__module__.startswith("psycopg")
                and type(seen).__name__ == "OperationalError"):
            return True  # the connection lost on the client's side: no SQLSTATE
    return False


def is_busy(error: BaseException) -> bool:
    """A write lock another process held past the lock timeout, on either store
    (each recorder's `is_busy` says it for its own)."""
    return is_lock_timeout(error) or _code(error, sqlstate=("55P03",))


# The log's own tables: one gone is not made again from anything else.
_LOG_TABLES = ("stored_events", "stored_snapshots", "tracking", CHAIN_TABLE, FORMAT_TABLE,
               "fl_liveness")
_MISSING = re.compile(r'no such table: (?:\w+\.)?(\w+)|relation "(?:\w+\.)?(\w+)" does not exist')


def _what_to_do(error: BaseException) -> str:
    return advice(error) or ("try again once it works (`recover()`, or the next session, "
                             "continues a session this call left)")


def advice(error: BaseException) -> str | None:
    """What to do about a store's failure, where its cause is known (a store
    that refuses writes, a permission, a full disk, a table gone); else None."""
    if _code(error, sqlite=(sqlite3.SQLITE_READONLY,)):
        return ("the SQLite file, or its folder, is not writable by this process (its owner "
                "or permissions): fix those, or open the store with `?mode=ro` to read it only")
    if _code(error, sqlstate=("25006",)):
        return ("it refuses writes (a read-only role or database, or a standby after a "
                "failover): connect to a server that takes them (`target_session_attrs="
                "read-write` in the URL), or open the store with `?mode=ro` to read it only")
    if _code(error, sqlite=(sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH), sqlstate=("42501",)):
        return ("the role it connects as may not do this: have the store's owner grant it "
                "(`flowledger --store OWNER-URL setup --grant ROLE`)")
    if _code(error, sqlite=(sqlite3.SQLITE_FULL,), sqlstate=("53100",)):
        return "its disk is full: free space, then try again"
    spare = no_connection_to_spare(str(error))
    if spare is not None:
        return spare
    missing = _MISSING.search(str(error))
    if missing is not None:
        table = missing.group(1) or missing.group(2)
        if table in _LOG_TABLES:
            return (f"the log's table {table} is gone (dropped or renamed outside "
                    "flowledger): restore the store from a backup")
        return (f"the projection table {table} is gone (dropped or renamed outside "
                "flowledger): open the store again (a new engine, or the next command), "
                "which makes it again and folds the log into it")
    return None


def _code(error: BaseException, sqlite: tuple[int, ...] = (),
          sqlstate: tuple[str, ...] = ()) -> bool:
    """Whether `error`, or what it wraps, carries one of these codes."""
    for seen in _wrapped(error):
        code = getattr(seen, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in sqlite:
            return True
        if getattr(seen, "sqlstate", None) in sqlstate:
            return True
    return False


def _wrapped(error: BaseException) -> Iterator[BaseException]:
    """`error` and what it wraps: the library wraps the driver's error, which
    may wrap another."""
    seen: BaseException | None = error
    for _ in range(3):
        if seen is None:
            return
        yield seen
        seen = seen.__cause__


P = ParamSpec("P")
R = TypeVar("R")

_calls = threading.local()  # how deep in decorated calls this thread is


def store_errors_as_ours(method: Callable[P, R]) -> Callable[P, R]:
    """A public method (or function) whose store failures reach its caller as
    `StoreError`: a service catches one class, whatever its store. The message
    names the outermost such call, and its store: the object's `store` (a
    URL), or the URLs it was given. A generator it returns is watched as it
    is read."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        depth = getattr(_calls, "depth", 0)
        _calls.depth = depth + 1
        try:
            result = method(*args, **kwargs)
        except Exception as e:
            if depth == 0:  # the outermost call names itself
                _raise_as_ours(e, _where(method, args))
            raise
        finally:
            _calls.depth = depth
        if isinstance(result, types.GeneratorType):
            return _watched(result, _where(method, args))  # type: ignore[return-value]
        return result

    return call


def _where(method: Callable[..., Any], args: tuple[Any, ...]) -> str:
    store = getattr(args[0], "store", None) if args else None
    urls = [store] if isinstance(store, str) else [a for a in args[:2] if isinstance(a, str)]
    on = " and ".join(repr(shown(url)) for url in urls)
    return f" during {method.__name__}()" + (f" on store{'s' if len(urls) > 1 else ''} {on}"
                                              if urls else "")


def _watched(generator: Generator[Any, Any, Any], where: str) -> Generator[Any, Any, Any]:
    try:
        return (yield from generator)
    except Exception as e:
        _raise_as_ours(e, where)
        raise


def _raise_as_ours(error: Exception, where: str) -> None:
    """Raise what a caller is told for `error`, if that is not `error` itself."""
    ours = as_store_error(error, where)
    if ours is not error:
        raise ours from error
