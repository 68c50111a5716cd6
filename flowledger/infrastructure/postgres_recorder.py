"""The PostgreSQL recorder: the library's table, our transaction (ADR 0017).

The log is the library's `stored_events` table (`notification_id bigserial`
is the log position). Appends do not go through the library's insert path:
its database-functions mode drops the table lock, and its retry on insert can
repeat an append whose commit outcome is unknown. Instead every write
transaction — an append, a projection catch-up, a rebuild — first takes the
log table's EXCLUSIVE lock, as SQLite's BEGIN IMMEDIATE takes the file's
write lock: writers run one at a time, so positions are given in commit order
and no reader ever skips an event that commits later; the fence and the
projection hook run inside it. Reads take a REPEATABLE READ snapshot.

Projections write SQL in the subset both stores run; `PgCursor` translates the
little that differs (placeholders, `WITHOUT ROWID`, integer and blob types,
`IS NOT` between values).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
    AggregateRecorder,
    IntegrityError,
    InterfaceError,
    OperationalError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

from flowledger.infrastructure.sqlite_recorder import FastReads, StaleFenceError
from flowledger.infrastructure.store import AfterInsert, Fence, Row, SharedSQL

# A constant key for the advisory lock that serialises table creation.
_CREATE_LOCK = 0x666C6F77  # "flow"

_TRANSLATIONS = [
    (re.compile(r"\)\s*WITHOUT ROWID"), ")"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bIS NOT (?=excluded\.|\?)"), "IS DISTINCT FROM "),
    (re.compile(r"\bINSERT OR IGNORE INTO\b"), "INSERT INTO"),
    # SQLite's two-argument MAX is PostgreSQL's GREATEST (one argument: the aggregate).
    (re.compile(r"\bMAX\(([^(),]+),\s*([^(),]+)\)"), r"GREATEST(\1, \2)"),
]


def translate(sql: str) -> str:
    """SQLite-flavoured SQL of the projections, as PostgreSQL runs it."""
    ignore = "INSERT OR IGNORE INTO" in sql
    for pattern, replacement in _TRANSLATIONS:
        sql = pattern.sub(replacement, sql)
    sql = sql.replace("%", "%%").replace("?", "%s")
    if ignore:
        sql += " ON CONFLICT DO NOTHING"
    return sql


class PgCursor:
    """A psycopg cursor that takes the projections' SQL as written."""

    _cache: dict[str, str] = {}

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._c = cursor

    def _sql(self, sql: str) -> str:
        done = self._cache.get(sql)
        if done is None:
            done = self._cache[sql] = translate(sql)
        return done

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        self._c.execute(self._sql(sql), params)
        return self

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> PgCursor:
        self._c.executemany(self._sql(sql), params)
        return self

    def fetchone(self) -> Any:
        return self._c.fetchone()

    def fetchall(self) -> list[Any]:
        return self._c.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._c)

    @property
    def rowcount(self) -> int:
        return self._c.rowcount

    def close(self) -> None:
        self._c.close()


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


class _PgReads(FastReads):
    """Streams read by id on PostgreSQL: the id column is a uuid."""

    def select_events(self, originator_id: UUID | str, *, gt: int | None = None,
                      lte: int | None = None, desc: bool = False,
                      limit: int | None = None) -> Sequence[StoredEvent]:
        found = super().select_events(_uuid(originator_id).hex, gt=gt, lte=lte, desc=desc,
                                      limit=limit)
        return [StoredEvent(e.originator_id, e.originator_version, e.topic, bytes(e.state))
                for e in found]


class FlowPostgresRecorder(SharedSQL, _PgReads, PostgresApplicationRecorder):
    """The log on PostgreSQL, through the store seam (store.LogStore)."""

    after_insert: AfterInsert | None = None
    after_abort: Any = None
    snapshot_table_name = "stored_snapshots"
    position_column = "notification_id"

    def stream_key(self, stream_id: UUID | str) -> UUID:
        return _uuid(stream_id)
    MAX_PARAMETERS = 5000

    def __init__(self, datastore: PostgresDatastore, conninfo: dict[str, Any],
                 lock_timeout_s: float = 30.0) -> None:
        super().__init__(datastore, events_table_name="stored_events")
        self.conninfo = conninfo
        self.lock_timeout_s = lock_timeout_s
        self.schema = datastore.schema
        self._local = threading.local()
        self._writer: psycopg.Connection[Any] | None = None
        self._writer_lock = threading.RLock()

    # ------------------------------------------------------------ connections

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(**self.conninfo, autocommit=False)
        except psycopg.OperationalError as e:  # no server, refused, bad credentials
            raise InterfaceError(" ".join(str(e).split())) from e
        with conn.cursor() as c:
            c.execute(f"SET lock_timeout = '{int(self.lock_timeout_s * 1000)}ms'")
            c.execute(f"SET search_path TO \"{self.schema}\"")
        conn.commit()
        return conn

    def _reader(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "reader", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._local.reader = self._connect()
        return conn

    def create_table(self) -> None:
        """The library's tables, plus ours, created once even when several
        processes open a new store at the same instant (an advisory lock)."""
        conn = self._connect()
        try:
            with conn.cursor() as c:
                c.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
                c.execute(f"CREATE SCHEMA IF NOT EXISTS \"{self.schema}\"")
                for statement in self.sql_create_statements:
                    if "CREATE TYPE" in statement.as_string():  # no IF NOT EXISTS for types
                        c.execute("SAVEPOINT create_type")
                        try:
                            c.execute(statement)
                        except psycopg.errors.DuplicateObject:
                            c.execute("ROLLBACK TO SAVEPOINT create_type")
                        continue
                    c.execute(statement)
                c.execute(f"CREATE TABLE IF NOT EXISTS {self.snapshot_table_name} ("
                          "originator_id uuid NOT NULL, originator_version bigint NOT NULL, "
                          "topic text, state bytea, "
                          "PRIMARY KEY (originator_id, originator_version))")
                c.execute("CREATE TABLE IF NOT EXISTS tracking (application_name text "
                          "PRIMARY KEY, notification_id bigint)")
            conn.commit()
        finally:
            conn.close()

    @contextmanager
    def reading(self) -> Iterator[PgCursor]:
        conn = self._reader()
        with conn.cursor() as raw:
            raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield PgCursor(raw)
            finally:
                with contextlib.suppress(psycopg.Error):  # a broken one is replaced
                    conn.rollback()

    def read_all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """One statement: its own snapshot, on an autocommit connection (one round
        trip, where an explicit read transaction takes three)."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "single", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._local.single = self._connect()
            conn.autocommit = True
        with conn.cursor() as raw:
            return PgCursor(raw).execute(sql, params).fetchall()

    @contextmanager
    def writing(self, sync: bool = True) -> Iterator[PgCursor]:
        """One write transaction, holding the log table's EXCLUSIVE lock from its
        start (waiting up to the lock timeout): writers run one at a time.
        `sync=False`: the commit does not wait for the WAL flush (ADR 0011)."""
        with self._writer_lock:
            if self._writer is None or self._writer.closed or self._writer.broken:
                self._writer = self._connect()
            conn = self._writer
            raw = conn.cursor()
            try:
                raw.execute(f"LOCK TABLE {self.events_table_name} IN EXCLUSIVE MODE"
                            + ("" if sync else "; SET LOCAL synchronous_commit = off"))
            except psycopg.errors.LockNotAvailable as e:
                conn.rollback()
                raw.close()
                raise OperationalError(e) from e
            except BaseException:
                conn.rollback()
                raw.close()
                raise
            try:
                yield PgCursor(raw)
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                raise
            else:
                try:
                    conn.commit()  # an unknown outcome raises: never retried here
                except BaseException:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                    raise
            finally:
                raw.close()

    # -------------------------------------------------------------- liveness

    _liveness: psycopg.Connection[Any] | None = None

    @staticmethod
    def _liveness_key(owner: str) -> int | None:
        """The advisory lock an owner ("host:pid:token") holds while alive."""
        token = owner.rpartition(":")[2]
        try:
            key = int(token, 16) & 0xFFFFFFFF
        except ValueError:
            return None
        return key - (1 << 32) if key >= (1 << 31) else key  # a signed int4

    def announce(self, owner: str) -> None:
        """Hold `owner`'s advisory lock on a connection of its own for as long as
        this process lives: when the process dies, the server drops the
        connection and the lock with it, and the holder is provably gone."""
        key = self._liveness_key(owner)
        if key is None:
            return
        conn = psycopg.connect(**self.conninfo, autocommit=True)
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (_CREATE_LOCK, key))
        self._liveness = conn

    def holder_alive(self, owner: str | None) -> bool | None:
        """False when `owner`'s connection is gone (its advisory lock is free),
        True while it holds it, None when this store cannot tell."""
        key = self._liveness_key(owner or "")
        if key is None:
            return None
        conn = psycopg.connect(**self.conninfo, autocommit=True)
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                               (_CREATE_LOCK, key)).fetchone()
            free = bool(row and row[0])
            if free:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_CREATE_LOCK, key))
            return not free
        finally:
            conn.close()

    def close_connections(self) -> None:
        if self._liveness is not None and not self._liveness.closed:
            self._liveness.close()
        self._liveness = None
        for conn in (self._writer, getattr(self._local, "reader", None),
                     getattr(self._local, "single", None)):
            if conn is not None and not conn.closed:
                conn.close()
        self._writer = None
        self._local.reader = self._local.single = None

    # ----------------------------------------------------------------- writes

    def append_rows(self, rows: Sequence[Row], appended: Sequence[Any],
                    fence: Fence | None = None, sync: bool = True,
                    snapshots: Sequence[Row] = (), hold: bool = False) -> int:
        try:
            with self.writing(sync) as c:
                raw = c._c
                positions: list[int] = []
                try:
                    # One pipelined statement per event, in order: each gets its
                    # position as it is inserted.
                    raw.executemany(f"INSERT INTO {self.events_table_name} (originator_id, "
                                    "originator_version, topic, state) VALUES "
                                    "(%s, %s, %s, %s) RETURNING notification_id", rows,
                                    returning=True)
                    while True:
                        positions.append(int(raw.fetchone()[0]))  # type: ignore[index]
                        if not raw.nextset():
                            break
                except psycopg.errors.UniqueViolation as e:
                    raise IntegrityError(e) from e
                if fence is not None:
                    raw.execute(f"SELECT MAX(originator_version) FROM {self.events_table_name} "
                                "WHERE originator_id=%s", (fence.stream_id,))
                    at = raw.fetchone()[0]  # type: ignore[index]
                    if at != fence.version:
                        raise StaleFenceError(f"stream {fence.stream_id} is at version {at}, "
                                              f"expected {fence.version}")
                if snapshots:
                    raw.executemany(f"INSERT INTO {self.snapshot_table_name} VALUES "
                                    "(%s, %s, %s, %s) ON CONFLICT DO NOTHING", snapshots)
                if self.after_insert is not None:
                    self.after_insert(c, appended, positions, hold)
        except BaseException:
            if self.after_abort is not None:
                self.after_abort()
            raise
        return int(positions[-1]) if rows else 0

    # ------------------------------------------------------------------ reads

    def select_stored(self, c: PgCursor, after: int, limit: int,
                      upto: int | None = None) -> list[tuple[int, StoredEvent]]:
        sql = (f"SELECT notification_id, originator_id, originator_version, topic, state "
               f"FROM {self.events_table_name} WHERE notification_id>? ")
        params: list[Any] = [after]
        if upto is not None:
            sql += "AND notification_id<=? "
            params.append(upto)
        sql += "ORDER BY notification_id LIMIT ?"
        params.append(limit)
        return [(row[0], StoredEvent(originator_id=_uuid(row[1]), originator_version=row[2],
                                     topic=row[3], state=bytes(row[4])))
                for row in c.execute(sql, params).fetchall()]

    def select_positions(self, c: PgCursor, positions: Sequence[int]
                         ) -> list[tuple[int, StoredEvent]]:
        rows = c.execute(f"SELECT notification_id, originator_id, originator_version, topic, "
                         f"state FROM {self.events_table_name} WHERE notification_id = "
                         "ANY(?) ORDER BY notification_id", (list(positions),)).fetchall()
        return [(row[0], StoredEvent(originator_id=_uuid(row[1]), originator_version=row[2],
                                     topic=row[3], state=bytes(row[4]))) for row in rows]

    def max_position(self, c: PgCursor) -> int:
        return int(c.execute(f"SELECT MAX(notification_id) FROM {self.events_table_name}"
                             ).fetchone()[0] or 0)

    def max_notification_id(self) -> int | None:
        with self.reading() as c:
            return self.max_position(c) or None

    @staticmethod
    def is_busy(error: BaseException) -> bool:
        cause = error if isinstance(error, psycopg.Error) else error.__cause__
        return isinstance(cause, psycopg.errors.LockNotAvailable)


class FlowPostgresSnapshotRecorder(_PgReads, AggregateRecorder):
    """The snapshot table, read through the main recorder's read connection;
    snapshots are written inside appends (FlowPostgresRecorder.append_rows)."""

    events_table_name = "stored_snapshots"

    def __init__(self, reads_through: FlowPostgresRecorder) -> None:
        self.reads_through = reads_through

    def read_all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return self.reads_through.read_all(sql, params)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        raise NotImplementedError("snapshots are written inside appends (append_rows)")
