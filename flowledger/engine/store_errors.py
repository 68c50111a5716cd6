"""A store failure during a handler's step is not the handler's (ADR 0029)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from flowledger.domain.errors import CorruptEventError
from flowledger.infrastructure.store_failures import from_the_store


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
