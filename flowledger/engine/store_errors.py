"""Which errors the store raised: told without importing any database driver."""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Callable, Generator, Iterator
from typing import Any, ParamSpec, TypeVar

from eventsourcing.persistence import PersistenceError

from flowledger.domain.errors import CorruptEventError, FlowledgerError, StoreError
from flowledger.domain.failures import describe
from flowledger.infrastructure.store import LogWentBack


def from_the_store(error: BaseException) -> bool:
    """Whether the store's driver or the persistence library raised `error` (a bug
    of ours, a NameError, stays one); the library's errors our store raises too
    (`LogWentBack`)."""
    return isinstance(error, (OSError, PersistenceError, StoreError)) or type(
        error).__module__.split(".")[0] in ("sqlite3", "psycopg", "psycopg_pool", "eventsourcing")


def store_cause(error: BaseException) -> BaseException:
    """The driver's own error behind a `StoreError` (else `error` itself)."""
    return error.error if isinstance(error, StoreError) else error


def as_store_error(error: Exception) -> Exception:
    """What a public call raises for `error`: ours and bugs as they are, the
    store's driver's as `StoreError`, the same on every store."""
    if isinstance(error, FlowledgerError) or not from_the_store(error):
        return error
    if isinstance(error, LogWentBack):  # it says itself what happened and what to do
        return StoreError(" ".join(str(error).split()), error)
    return StoreError(
        f"the store failed ({describe(error)}). Nothing more was done, and what the log "
        "holds stands: try again once the store works (`recover`, or the next session, "
        "continues a session this one left)", error)


P = ParamSpec("P")
R = TypeVar("R")


def store_errors_as_ours(method: Callable[P, R]) -> Callable[P, R]:
    """An engine method whose store failures reach its caller as `StoreError`:
    a service catches one class, whatever its store (README, "When the server
    restarts"); a generator it returns is watched as it is read."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = method(*args, **kwargs)
        except Exception as e:
            theirs = as_store_error(e)
            if theirs is e:
                raise
            raise theirs from e
        if isinstance(result, types.GeneratorType):
            return _watched(result)  # type: ignore[return-value]
        return result

    return call


def _watched(generator: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
    try:
        return (yield from generator)
    except Exception as e:
        theirs = as_store_error(e)
        if theirs is e:
            raise
        raise theirs from e


class StoreFailedForHandler(BaseException):
    """The store failed a read the engine made for a handler while it ran (a
    peek, its state, a lookup): not the handler's failure, which would fail
    the run and put its workflow in error. A BaseException, so that neither
    the handler's own `except Exception` nor the run's failure handling takes
    it for the handler's; `RunDriver._step` raises the store's error in its
    place, as a failed append raises it, and the session stops there."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def read_for_handler() -> Iterator[None]:
    """A read the engine makes for a handler: a store failure in it is told
    as `StoreFailedForHandler` (a damaged event too: what needs it stops)."""
    try:
        yield
    except Exception as e:
        if from_the_store(e) or isinstance(e, CorruptEventError):
            raise StoreFailedForHandler(e) from e
        raise
