"""The store seam: what the engine, projections and read side ask of a log store.

Above `infrastructure/`, nothing knows which store it runs on (SQLite file or
PostgreSQL): it reaches the store through this interface, which each store's
recorder implements (`sqlite_recorder.FlowSQLiteRecorder`, ...). Projections
write their SQL in the common subset both stores run (`?` placeholders,
`INSERT ... ON CONFLICT ... DO UPDATE`, partial indexes, `IS NOT`); a store
whose dialect differs translates it at its cursor. `scratch_database` gives
time travel a private in-memory database to fold projections into.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.persistence import StoredEvent

Cursor = Any  # a DB-API cursor of the store (or its translating wrapper)
Row = tuple[str, int, str, bytes]  # a stored event: stream id (hex), version, topic, state
# (cursor, events, their positions, hold): see ProjectionRunner.apply_inline.
AfterInsert = Callable[[Any, Sequence[Any], Sequence[int], bool], None]


class Fence:
    """Append only if stream `stream_id` is exactly at `version`."""

    __slots__ = ("stream_id", "version")

    def __init__(self, stream_id: UUID, version: int) -> None:
        self.stream_id, self.version = stream_id, version


class LogStore(Protocol):
    """One store's log: appends with the fence and the projection hook, reads by
    position and by stream, tracking, and what its errors mean."""

    events_table_name: str
    after_insert: AfterInsert | None
    after_abort: Callable[[], None] | None
    MAX_PARAMETERS: int

    def reading(self) -> AbstractContextManager[Cursor]:
        """One consistent read snapshot."""

    def writing(self, sync: bool = True) -> AbstractContextManager[Cursor]:
        """One write transaction, holding the log's write lock from its start."""

    def append_rows(self, rows: Sequence[Row], appended: Sequence[Any],
                    fence: Fence | None = None, sync: bool = True,
                    snapshots: Sequence[Row] = (), hold: bool = False) -> int:
        """Insert events in one transaction, fenced, with the after-insert hook
        in it; the last one's position."""

    def select_stored(self, c: Cursor, after: int, limit: int,
                      upto: int | None = None) -> list[tuple[int, StoredEvent]]: ...

    def select_stream(self, c: Cursor, stream_id: UUID, upto: int | None
                      ) -> list[tuple[int, int, str, bytes]]: ...

    def select_positions(self, c: Cursor, positions: Sequence[int]
                         ) -> list[tuple[int, StoredEvent]]: ...

    def stream_version_at(self, c: Cursor, stream_id: UUID, position: int) -> int | None: ...

    def max_position(self, c: Cursor) -> int: ...

    def max_notification_id(self) -> int | None: ...

    def read_all(self, sql: str, params: Sequence[Any]) -> list[Any]: ...

    def tracked(self, c: Cursor, name: str) -> int: ...

    def track(self, c: Cursor, name: str, position: int) -> None: ...

    def untrack(self, c: Cursor, name: str) -> None: ...

    def locate(self, stored: StoredEvent) -> tuple[int | None, str | None]: ...

    def is_busy(self, error: BaseException) -> bool:
        """The error says another writer held the store past the lock timeout."""

    def announce(self, owner: str) -> None:
        """This engine (`owner`) is alive, for as long as its process is."""

    def holder_alive(self, owner: str | None) -> bool | None:
        """Whether a session holder is alive (False: provably gone), or None when
        the store cannot tell (the engine then judges by host and process id)."""

    def close_connections(self) -> None: ...


def scratch_database() -> tuple[Any, Cursor]:
    """A private in-memory database and a cursor in an open transaction: time
    travel folds projections into it, whatever the store."""
    db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    c = db.cursor()
    c.execute("BEGIN")
    return db, c
