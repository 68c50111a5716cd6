"""The SQLite recorder: the library's, plus a fence and an after-insert hook.

Both run inside the append's own transaction, after the inserts took the write
lock: the fence rejects the append if the workflow stream moved on (a takeover
by another process), and the hook lets projections write their rows and their
tracking position in that same transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError, StoredEvent
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    SQLiteAggregateRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteProcessRecorder,
)

AfterInsert = Callable[[Any, Sequence[Any], Sequence[int]], None]


class StaleFenceError(IntegrityError):
    """The fenced stream is no longer at the version the writer expected."""


class Fence:
    """Append only if stream `stream_id` is exactly at `version`."""

    __slots__ = ("stream_id", "version")

    def __init__(self, stream_id: UUID, version: int) -> None:
        self.stream_id, self.version = stream_id, version


class FastReads:
    """Loads a stream with one statement on the engine's read connection.

    The library's `select_events` goes through the writers' pool with its own
    transaction per call; loads are frequent and read-only.
    """

    events_table_name: str

    def reading(self) -> AbstractContextManager[sqlite3.Cursor]:
        raise NotImplementedError

    def select_events(self, originator_id: UUID | str, *, gt: int | None = None,
                      lte: int | None = None, desc: bool = False,
                      limit: int | None = None) -> Sequence[StoredEvent]:
        sql = (f"SELECT originator_version, topic, state FROM {self.events_table_name} "
               "WHERE originator_id=? ")
        key = originator_id.hex if isinstance(originator_id, UUID) else originator_id
        params: list[Any] = [key]
        if gt is not None:
            sql += "AND originator_version>? "
            params.append(gt)
        if lte is not None:
            sql += "AND originator_version<=? "
            params.append(lte)
        sql += "ORDER BY originator_version " + ("DESC " if desc else "ASC ")
        if limit is not None:
            sql += "LIMIT ? "
            params.append(limit)
        with self.reading() as c:
            c.execute(sql, params)
            rows = c.fetchall()
        oid = originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
        return [StoredEvent(originator_id=oid, originator_version=v, topic=t, state=s)
                for v, t, s in rows]



class FlowSQLiteRecorder(FastReads, SQLiteProcessRecorder):
    after_insert: AfterInsert | None = None
    _reader: sqlite3.Connection | None = None

    def create_table(self) -> None:
        """The library's, made safe for processes that open a new store at once.

        Two creators can both find no tracking table and both try to record its
        first row; the loser fails although the tables now exist. Try again.
        """
        for attempt in range(3):
            try:
                super().create_table()
                return
            except (IntegrityError, OperationalError):
                if attempt == 2:
                    raise

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Cursor]:
        """A read transaction on a connection of its own (no pool round trip).

        Reads are the engine's hot path between appends: one consistent
        snapshot, no write lock.
        """
        if self._reader is None:
            pool = self.datastore.pool
            self._reader = sqlite3.connect(
                pool.db_name, uri=True, isolation_level=None, check_same_thread=False,
                cached_statements=FlowSQLiteConnectionPool.STATEMENT_CACHE,
                timeout=pool.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT)
        cursor = self._reader.cursor()
        cursor.execute("BEGIN")
        try:
            yield cursor
        finally:
            self._reader.rollback()
            cursor.close()

    def close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _insert_events(self, c: SQLiteCursor, stored_events: Sequence[StoredEvent],
                       **kwargs: Any) -> Sequence[int] | None:
        fence: Fence | None = kwargs.pop("fence", None)
        appended: Sequence[Any] | None = kwargs.pop("appended", None)
        ids = super()._insert_events(c, stored_events, **kwargs)
        if fence is not None:
            c.execute(
                f"SELECT MAX(originator_version) FROM {self.events_table_name} "
                "WHERE originator_id=?",
                (fence.stream_id.hex,),
            )
            current = c.fetchone()[0]
            if current != fence.version:
                raise StaleFenceError(
                    f"stream {fence.stream_id} is at version {current}, "
                    f"expected {fence.version}"
                )
        if self.after_insert is not None and appended and ids:
            self.after_insert(c, appended, ids)
        return ids

    def select_stored(self, c: SQLiteCursor, after: int, limit: int,
                      upto: int | None = None) -> list[tuple[int, StoredEvent]]:
        """Notifications after a position, read with the caller's cursor."""
        sql = (f"SELECT rowid, originator_id, originator_version, topic, state "
               f"FROM {self.events_table_name} WHERE rowid>? ")
        params: list[Any] = [after]
        if upto is not None:
            sql += "AND rowid<=? "
            params.append(upto)
        sql += "ORDER BY rowid LIMIT ?"
        params.append(limit)
        c.execute(sql, params)
        return [
            (row[0], StoredEvent(originator_id=UUID(row[1]), originator_version=row[2],
                                 topic=row[3], state=row[4]))
            for row in c.fetchall()
        ]

    def max_position(self, c: SQLiteCursor) -> int:
        return self._max_notification_id(c) or 0


class FlowSQLiteSnapshotRecorder(FastReads, SQLiteAggregateRecorder):
    """The snapshot table, read through the main recorder's read connection."""

    def __init__(self, datastore: SQLiteDatastore, reads_through: FlowSQLiteRecorder) -> None:
        super().__init__(datastore, events_table_name="stored_snapshots")
        self.reads_through = reads_through

    def reading(self) -> AbstractContextManager[sqlite3.Cursor]:
        return self.reads_through.reading()


class FlowSQLiteConnectionPool(SQLiteConnectionPool):
    """The library's pool, with a real prepared-statement cache.

    The library opens connections with `cached_statements=True`, which sqlite3
    reads as a cache of one statement: every other statement is compiled again
    on each use, which costs more than running it.
    """

    STATEMENT_CACHE = 256

    def _create_connection(self) -> SQLiteConnection:
        try:
            c = sqlite3.connect(database=self.db_name, uri=True, check_same_thread=False,
                                isolation_level=None, cached_statements=self.STATEMENT_CACHE,
                                timeout=self.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT)
        except (sqlite3.Error, TypeError) as e:
            raise InterfaceError(e) from e
        if not self.is_sqlite_memory_mode and not self.is_journal_mode_wal:
            mode = c.execute("PRAGMA journal_mode;").fetchone()[0]
            if mode.lower() != "wal":
                c.execute("PRAGMA journal_mode=WAL;")
                self.journal_mode_was_changed_to_wal = True
            self.is_journal_mode_wal = True
        c.row_factory = sqlite3.Row
        return SQLiteConnection(sqlite_conn=c, max_age=self.max_age)


def use_statement_cache(datastore: SQLiteDatastore) -> None:
    old = datastore.pool
    datastore.pool = FlowSQLiteConnectionPool(db_name=old.db_name, lock_timeout=old.lock_timeout)
