"""The SQLite recorder: the library's, plus a fence and an after-insert hook.

Both run inside the append's own transaction, after the inserts took the write
lock: the fence rejects the append if the workflow stream moved on (a takeover
by another process), and the hook lets projections write their rows and their
tracking position in that same transaction.
"""

from __future__ import annotations

import functools
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError, StoredEvent
from eventsourcing.sqlite import (
    SQLITE3_DEFAULT_LOCK_TIMEOUT,
    SQLiteAggregateRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteDatastore,
    SQLiteProcessRecorder,
)

from flowledger.domain.errors import ConfigurationError
from flowledger.infrastructure.busy_appends import BUSY_PATIENCE_S, waiting_out_busy
from flowledger.infrastructure.hash_chain import HEAD_SQL, INSERT_SQL, Chain, head_of
from flowledger.infrastructure.store import (
    CREATE_WORKERS,
    AfterInsert,
    BeforeFold,
    Fence,
    ProjectionRowTaken,
    ReadAfter,
    Row,
    SharedSQL,
    StreamEvents,
)

WAL_PAGES = 4000  # about 16 MB of WAL between checkpoints (4 KiB pages)

class StaleFenceError(IntegrityError):
    """The fenced stream is no longer at the version the writer expected."""


class FastReads:
    """Loads a stream with one statement on the engine's read connection.

    The library's `select_events` goes through its connection pool with an
    explicit transaction per call; loads are frequent, read-only and one
    statement each.
    """

    events_table_name: str
    MAX_PARAMETERS = 500  # SQLite's default limit on bound parameters is 999

    def read_all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Rows of one statement, in its own (implicit) read transaction."""
        raise NotImplementedError

    def select_events(self, originator_id: UUID | str, *, gt: int | None = None,
                      lte: int | None = None, desc: bool = False,
                      limit: int | None = None) -> Sequence[StoredEvent]:
        sql = (f"SELECT originator_version, topic, CAST(state AS BLOB) "
               f"FROM {self.events_table_name} "
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
        rows = self.read_all(sql, params)
        oid = originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
        return [StoredEvent(originator_id=oid, originator_version=v, topic=t, state=s)
                for v, t, s in rows]

    def select_streams(self, stream_ids: Sequence[UUID]) -> dict[UUID, StreamEvents]:
        """Several whole streams in one statement per MAX_PARAMETERS of them (a
        run that publishes many messages asks for all of their streams at once,
        where one read each cost a round trip each on a server). Streams with
        no events are left out."""
        return self._streams(stream_ids, 1,
                             lambda n: f"originator_id IN ({', '.join('?' * n)})",
                             lambda chunk: [i.hex for i in chunk])

    def select_from_versions(self, versions: Mapping[UUID, int]) -> dict[UUID, StreamEvents]:
        """Each stream's events from the given version on (what changed in the
        streams a reader keeps), in one statement per MAX_PARAMETERS / 2 streams."""
        return self._streams(
            list(versions.items()), 2,
            lambda n: " OR ".join(["(originator_id = ? AND originator_version >= ?)"] * n),
            lambda chunk: [v for stream_id, version in chunk for v in (stream_id.hex, version)])

    def _streams(self, items: Sequence[Any], parameters_each: int,
                 where: Callable[[int], str], parameters: Callable[[list[Any]], list[Any]]
                 ) -> dict[UUID, StreamEvents]:
        found: dict[UUID, StreamEvents] = {}
        step = self.MAX_PARAMETERS // parameters_each
        for start in range(0, len(items), step):
            chunk = list(items[start:start + step])
            # Padded (repeating its last item) to a power of two: a few statements
            # for the drivers' statement caches, not one per length.
            chunk += chunk[-1:] * (min(step, 1 << (len(chunk) - 1).bit_length()) - len(chunk))
            rows = self.read_all(
                f"SELECT originator_id, originator_version, topic, CAST(state AS BLOB) "
                f"FROM {self.events_table_name} WHERE {where(len(chunk))} "
                "ORDER BY originator_id, originator_version", parameters(chunk))
            for stream, version, topic, state in rows:
                key = stream if isinstance(stream, UUID) else UUID(stream)
                found.setdefault(key, []).append((version, topic, bytes(state)))
        return found


class FlowSQLiteRecorder(SharedSQL, FastReads, SQLiteProcessRecorder):
    after_insert: AfterInsert | None = None
    busy_patience_s = BUSY_PATIENCE_S  # busy_appends.py
    chain: Chain | None = None  # set once the store's format is settled
    after_abort: Callable[[], None] | None = None  # an append's transaction rolled back
    before_fold: BeforeFold | None = None  # unused: reads of a file cost no round trip
    snapshot_table_name = "stored_snapshots"
    _writer: sqlite3.Connection | None = None
    _writer_syncs = True
    # Appends the store lost while this process lived on: never on a file
    # (what a crash of the machine loses, it loses with the process).
    lost_appends = 0
    # A file has no roles: whoever may write it may create in it, and does at
    # each opening (the library's recorders do).
    tables_current = False

    # Idle reading connections kept; more are opened while more threads read
    # at once, and closed as they come back.
    IDLE_READERS = 4

    def __init__(self, datastore: SQLiteDatastore, events_table_name: str = "stored_events"
                 ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        # The writer connection is one thread's at a time: for a write
        # transaction, or for a read between them. Reentrant: a read inside
        # this thread's own write goes to a reader instead.
        self._writer_lock = threading.RLock()
        # Reading connections lent to one read each (`_reading_connection`),
        # with the generation they were opened in (`close_connections` starts
        # a new one: one lent across a close is closed when given back).
        self._idle_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._generation = 0
        self._shares_cache = bool(datastore.pool.is_sqlite_memory_mode)  # memory://

    def tables_created(self, c: Any) -> None:
        pass

    def existing_tables(self, c: Any, names: Sequence[str]) -> set[str]:
        c.execute("SELECT name FROM sqlite_master WHERE type='table' AND name IN "
                  f"({', '.join('?' * len(names))})", list(names))
        return {str(row[0]) for row in c.fetchall()}

    def grant(self, role: str, read_only: bool = False) -> list[str]:
        raise ConfigurationError(
            f"cannot grant {role!r} the use of an SQLite store: a file has no roles. Whoever "
            "may read and write the file (and its folder) may use it; nothing was changed")

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), CREATE_WORKERS]

    def create_table(self) -> None:
        """The library's (and the workers' notes), made safe for processes that
        open a new store at once.

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

    def _connect(self) -> sqlite3.Connection:
        pool = self.datastore.pool
        return sqlite3.connect(
            pool.db_name, uri=True, isolation_level=None, check_same_thread=False,
            cached_statements=FlowSQLiteConnectionPool.STATEMENT_CACHE,
            timeout=pool.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT)

    @contextmanager
    def reading(self, snapshot: bool = True, lasting: bool = False
                ) -> Iterator[sqlite3.Cursor]:
        """A read transaction on a connection of its own (no pool round trip).

        Reads are the engine's hot path between appends: one consistent
        snapshot, no write lock. (`snapshot=False` allows each statement a
        snapshot of its own; in-process, one transaction costs no more.)
        """
        with self._reading_connection(brief=not snapshot) as conn:
            cursor = conn.cursor()
            cursor.execute("BEGIN")
            try:
                yield cursor
            finally:
                conn.rollback()
                cursor.close()

    @contextmanager
    def _reading_connection(self, brief: bool) -> Iterator[sqlite3.Connection]:
        """For a `brief` read (one statement: the session loop's, a stream's
        load), the writer's connection if no thread is writing or reading on
        it: its page cache holds what this process just wrote, where a
        connection of its own would re-read every page another connection
        changed. Else (a read that may be long, one inside this thread's write
        transaction, or while another thread uses the writer) a reading
        connection lent for this read alone: two threads on one connection
        would begin a transaction inside the other's, and a long read holding
        the writer would hold up every other thread's writes (a lease's
        renewal too). A `memory://` store waits for the writer instead: its
        connections share one cache, whose table locks another connection's
        read meets at once ("database table is locked"), without waiting."""
        if (brief or self._shares_cache) and self._writer_lock.acquire(
                blocking=self._shares_cache):
            try:
                writer = self._writer
                if writer is None and self._shares_cache:
                    writer = self._writer_connection()
                if writer is not None and not writer.in_transaction:
                    yield writer
                    return
            finally:
                self._writer_lock.release()
        with self._readers_lock:
            conn = self._idle_readers.pop() if self._idle_readers else None
            generation = self._generation
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            with self._readers_lock:
                kept = (generation == self._generation and not conn.in_transaction
                        and len(self._idle_readers) < self.IDLE_READERS)
                if kept:
                    self._idle_readers.append(conn)
            if not kept:
                conn.close()

    def read_all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._reading_connection(brief=True) as conn:
            return conn.execute(sql, params).fetchall()

    @contextmanager
    def writing(self, sync: bool = True, tracking: bool = False) -> Iterator[sqlite3.Cursor]:
        """A write transaction on the engine's one writer connection.

        BEGIN IMMEDIATE takes the write lock first (waiting up to the lock
        timeout), so a transaction that reads before it writes never fails
        on a snapshot another process moved on.

        `sync`: the commit waits until the log file is on disk (fsync), so it
        survives a power loss; without it, it survives the process dying but
        may be lost with the machine until the next synced commit, which
        syncs everything before it too (ADR 0011). `tracking` changes nothing
        here: each statement is a call, not a round trip. One thread's at a
        time: another thread's transaction waits for it to end. One that fails
        drops what the projections kept (`after_abort`) before it lets the
        writer go: another thread's fold must not run into the dropping.
        """
        self._writer_lock.acquire()
        try:
            conn = self._writer_connection()
            if sync != self._writer_syncs:
                conn.execute(f"PRAGMA synchronous={'FULL' if sync else 'NORMAL'}")
                self._writer_syncs = sync
            cursor = conn.cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                cursor.close()
                raise OperationalError(e) from e
            try:
                yield cursor
            except BaseException:
                conn.rollback()
                raise
            else:
                try:
                    conn.commit()
                except sqlite3.Error:
                    conn.rollback()
                    raise
            finally:
                cursor.close()
        except BaseException:
            if self.after_abort is not None:
                self.after_abort()
            raise
        finally:
            self._writer_lock.release()

    def _writer_connection(self) -> sqlite3.Connection:
        """The writer connection, opened the first time (with the lock held)."""
        if self._writer is None:
            self._writer = self._connect()
            self._writer_syncs = True  # the library's and SQLite's default: FULL
            # Checkpoint the WAL into the database every WAL_PAGES pages instead
            # of SQLite's 1,000: an append writes a dozen pages, mostly the same
            # hot ones, so rarer checkpoints copy each of them once for many
            # appends (ADR 0010).
            self._writer.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        return self._writer

    @property
    def writer_lock(self) -> threading.RLock:
        return self._writer_lock

    def settle(self) -> None:
        """Every append here is answered at once: nothing to read later."""

    def append_rows(self, rows: Sequence[Row], appended: Sequence[Any],
                    fence: Fence | None = None, sync: bool = True,
                    snapshots: Sequence[Row] = (), hold: bool = False,
                    read_after: Sequence[ReadAfter] = (),
                    answered: Callable[[int | BaseException], None] | None = None) -> int:
        """Insert events (stream id hex, version, topic, state) in one transaction;
        returns the last one's position.

        The after-insert hook folds `appended` (the same events, as domain
        objects) into the projections inside that transaction. `snapshots`
        (rows of the same shape) go to the snapshot table in it too. `hold` is
        passed on to the hook. `read_after` is read last in the transaction, in order.
        """
        append = functools.partial(self._append_rows, rows, appended, fence, sync,
                                   snapshots, hold, read_after)
        if fence is None:
            return append()
        return waiting_out_busy(append, self.is_busy, self.busy_patience_s)

    def _append_rows(self, rows: Sequence[Row], appended: Sequence[Any], fence: Fence | None,
                     sync: bool, snapshots: Sequence[Row], hold: bool,
                     read_after: Sequence[ReadAfter]) -> int:
        """`append_rows`, once (a session's is tried again while the store is
        busy: busy_appends.py)."""
        read: list[list[Any]] = []
        with self.writing(sync) as c:
            try:
                c.executemany(self._insert_sql, rows)
            except sqlite3.IntegrityError as e:
                raise IntegrityError(e) from e
            # Positions are rowids, given in order while this transaction
            # holds the write lock (events are never deleted).
            if fence is None:
                last = c.execute("SELECT last_insert_rowid()").fetchone()[0]
            else:
                last, at = c.execute(self._fenced_sql, (fence.stream_id.hex,)).fetchone()
                if at != fence.version:
                    raise StaleFenceError(f"stream {fence.stream_id} is at version {at}, "
                                          f"expected {fence.version}")
            positions = range(last - len(rows) + 1, last + 1)
            if snapshots:  # a cache: one already there stands (as on PostgreSQL)
                c.executemany(f"INSERT OR IGNORE INTO {self.snapshot_table_name} "
                              "VALUES (?, ?, ?, ?)", snapshots)
            try:
                self._link(c, positions, rows)
                if self.after_insert is not None:
                    self.after_insert(c, appended, positions, hold, fence)
                read = [c.execute(r.sql, r.params).fetchall() for r in read_after]
            except sqlite3.IntegrityError as e:
                taken = re.match(r"UNIQUE constraint failed: (\w+)\.", str(e))
                if taken is None:
                    raise
                raise ProjectionRowTaken(taken[1], str(e)) from e
        for asked, rows_read in zip(read_after, read, strict=True):
            asked.rows = rows_read  # committed
        return int(last)

    def place_rows(self, placed: Sequence[tuple[int, Row]]) -> None:
        with self.writing(sync=False) as c:
            try:
                c.executemany(f"INSERT INTO {self.events_table_name} (rowid, originator_id, "
                              "originator_version, topic, state) VALUES (?, ?, ?, ?, ?)",
                              [(position, *row) for position, row in placed])
            except sqlite3.IntegrityError as e:
                raise IntegrityError(e) from e
            self._link(c, [p for p, _ in placed], [row for _, row in placed])

    def _link(self, c: sqlite3.Cursor, positions: Sequence[int], rows: Sequence[Row]) -> None:
        """The tamper-evident chain's links of events just inserted (ADR 0023)."""
        if self.chain is not None:
            head = head_of(c.execute(HEAD_SQL).fetchall())
            c.executemany(INSERT_SQL, self.chain.links(head, positions, rows))

    @property
    def _insert_sql(self) -> str:
        return f"INSERT INTO {self.events_table_name} VALUES (?, ?, ?, ?)"

    @property
    def _fenced_sql(self) -> str:
        """The last position, and the fenced stream's version, in one statement."""
        return (f"SELECT last_insert_rowid(), (SELECT MAX(originator_version) FROM "
                f"{self.events_table_name} WHERE originator_id=?)")

    def close_connections(self) -> None:
        with self._readers_lock:  # those lent now are closed as they come back
            idle, self._idle_readers = self._idle_readers, []
            self._generation += 1
        for conn in idle:
            conn.close()
        with self._writer_lock:
            if self._writer is not None:
                self._writer.close()
            self._writer = None

    def select_stored(self, c: sqlite3.Cursor, after: int, limit: int,
                      upto: int | None = None) -> list[tuple[int, StoredEvent]]:
        """Notifications after a position, read with the caller's cursor."""
        sql = (f"SELECT rowid, originator_id, originator_version, topic, "
               "CAST(state AS BLOB) "
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

    def max_position(self, c: sqlite3.Cursor) -> int:
        """The last position, read with the caller's cursor (0 in an empty log)."""
        c.execute(self.select_max_notification_id_statement)
        return c.fetchone()[0] or 0

    # ------------------------------------------------- the store seam (store.py)

    position_column = "rowid"  # a stored event's log position
    HOLDS_NUL_IN_TEXT = True

    def stream_key(self, stream_id: UUID | str) -> str:
        return stream_id.hex if isinstance(stream_id, UUID) else str(stream_id)

    def select_positions(self, c: sqlite3.Cursor, positions: Sequence[int]
                         ) -> list[tuple[int, StoredEvent]]:
        """The stored events at these positions (at most MAX_PARAMETERS), in log order."""
        c.execute(f"SELECT rowid, originator_id, originator_version, topic, "
               "CAST(state AS BLOB) "
                  f"FROM {self.events_table_name} WHERE rowid IN "
                  f"({','.join('?' * len(positions))}) ORDER BY rowid", list(positions))
        return [(row[0], StoredEvent(originator_id=UUID(row[1]), originator_version=row[2],
                                     topic=row[3], state=row[4])) for row in c.fetchall()]

    @staticmethod
    def is_busy(error: BaseException) -> bool:
        """Another writer held the store past the lock timeout."""
        return is_lock_timeout(error)

    def announce(self, owner: str) -> None:
        """Nothing to hold: on SQLite a holder is known by its process id."""

    def keep_announced(self) -> None:
        """Nothing to hold again."""

    def listen(self) -> None:
        """None: SQLite sends no notifications; waiting for appends polls."""
        return None

    def check_head(self, read_head: Callable[[], int]) -> int:
        """The head alone: a file replaced under a running engine is not looked for."""
        return read_head()

    def replaying(self) -> bool:
        """False: a file is no standby."""
        return False

    def store_time(self) -> None:
        """None: an SQLite file's writers share one host, and its clock."""
        return None

    def holder_alive(self, owner: str | None, patient: bool = False) -> bool | None:
        """None: the engine judges by the owner's host and process id."""
        return None


class FlowSQLiteSnapshotRecorder(FastReads, SQLiteAggregateRecorder):
    """The snapshot table, read through the main recorder's read connection."""

    def __init__(self, datastore: SQLiteDatastore, reads_through: FlowSQLiteRecorder) -> None:
        super().__init__(datastore, events_table_name="stored_snapshots")
        self.reads_through = reads_through

    def read_all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return self.reads_through.read_all(sql, params)


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
            # Switching a new file to WAL needs the file to itself: a process
            # opening the same new store at the same instant makes it fail at
            # once (SQLite does not wait on this lock). Try again, briefly, up
            # to the lock timeout in all: a holder that keeps the file (each
            # try may wait that long itself) is reported, not waited out 200
            # times over.
            give_up = time.monotonic() + (self.lock_timeout or SQLITE3_DEFAULT_LOCK_TIMEOUT)
            while True:
                try:
                    mode = c.execute("PRAGMA journal_mode;").fetchone()[0]
                    if mode.lower() != "wal":
                        c.execute("PRAGMA journal_mode=WAL;")
                        self.journal_mode_was_changed_to_wal = True
                    break
                except sqlite3.OperationalError as e:
                    if not is_lock_timeout(e) or time.monotonic() >= give_up:
                        raise InterfaceError(e) from e
                    time.sleep(0.01 + 0.04 * random.random())
            self.is_journal_mode_wal = True
        c.row_factory = sqlite3.Row
        return SQLiteConnection(sqlite_conn=c, max_age=self.max_age)


def use_statement_cache(datastore: SQLiteDatastore) -> None:
    old = datastore.pool
    datastore.pool = FlowSQLiteConnectionPool(db_name=old.db_name, lock_timeout=old.lock_timeout)


def is_lock_timeout(error: BaseException) -> bool:
    """Another writer held the database past the lock timeout (SQLITE_BUSY or
    SQLITE_LOCKED, extended codes included), raised by sqlite3 or wrapped by
    the library."""
    cause = error if isinstance(error, sqlite3.Error) else error.__cause__
    code = getattr(cause, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
