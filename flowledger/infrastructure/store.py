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
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from uuid import UUID

from eventsourcing.persistence import (
    InterfaceError,
    OperationalError,
    ProgrammingError,
    StoredEvent,
)

if TYPE_CHECKING:
    from flowledger.infrastructure.hash_chain import Chain

Cursor = Any  # a DB-API cursor of the store (or its translating wrapper)
Row = tuple[str, int, str, bytes]  # a stored event: stream id (hex), version, topic, state
StreamEvents = list[tuple[int, str, bytes]]  # one stream's events: version, topic, state
# (cursor, events, their positions, hold, the append's fence): see
# ProjectionRunner.apply_inline.
AfterInsert = Callable[[Any, Sequence[Any], Sequence[int], bool, "Fence | None"], None]


# (cursor, events, hold): see ProjectionRunner.prefetch.
BeforeFold = Callable[[Any, Sequence[Any], bool], None]


class Heads(NamedTuple):
    """One look at the log (`heads_and_note`)."""

    head: int  # the log's last position (0: empty)
    tracked: dict[str, int]  # how far each tracked projection has read
    noted: str | None  # the format note asked for, if any
    store_time: datetime | None  # the store's clock, if asked and it keeps one


_CLOCK_ROW = "(clock)"  # not a projection's name
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ProjectionRowTaken(Exception):
    """An append's transaction found a row of `table` (a projection's, or the
    chain's) already under the key it writes; it was rolled back."""

    def __init__(self, table: str, detail: str) -> None:
        super().__init__(f"{table}: {detail}")
        self.table = table
        self.detail = detail


class ServerUnavailable(InterfaceError):
    """No connection to the store's server could be opened now (it is down or
    restarting, or has no connection to spare): nothing was sent, and trying
    again later is safe."""


class ServerTakesNoWrites(ProgrammingError):
    """The store's server is a standby, which takes no writes: a store opened
    to write there is refused at once (it could not append, nor fold in)."""


def first_line(error: BaseException) -> str:
    """An error's first line, on one line: a server's message quotes the
    statement it refused on the lines after."""
    return " ".join(str(error).strip().split("\n")[0].split())


class FormatRecordGone(ProgrammingError):
    """The store's log is chained but its format record was removed outside
    flowledger (store_format.format_record_gone says it, naming the store)."""


class LogWentBack(OperationalError):
    """The store's log no longer holds an append this engine made: it was
    restored from an older backup, or replaced, under the engine, which
    appends nothing more for its life (a worker stops: only a new engine may
    go on from the log as it now is)."""


class ReadAfter:
    """A read made in an append's own transaction, after its writes (SQL as the
    projections write it): what the caller will read next, asked in the same
    message on a server. `rows` is set once the append committed."""

    __slots__ = ("params", "rows", "sql")

    def __init__(self, sql: str, params: Sequence[Any]) -> None:
        self.sql, self.params = sql, params
        self.rows: list[Any] | None = None


class Fence:
    """Append only if stream `stream_id` is exactly at `version`."""

    __slots__ = ("stream_id", "version")

    def __init__(self, stream_id: UUID, version: int) -> None:
        self.stream_id, self.version = stream_id, version


class AppendWakeups(Protocol):
    def wait(self, timeout: float) -> bool:
        """True once an append committed since the last call, else False after
        `timeout` seconds."""

    def close(self) -> None: ...


class LogStore(Protocol):
    """One store's log: appends with the fence and the projection hook, reads by
    position and by stream, tracking, and what its errors mean."""

    events_table_name: str
    position_column: str  # the log's position in SQL
    after_insert: AfterInsert | None
    chain: Chain | None  # the tamper-evident links each append writes (ADR 0023)
    after_abort: Callable[[], None] | None
    # How long a session's append waits out a write lock others hold (busy_appends.py).
    busy_patience_s: float
    # Called before an append's positions are known, where the store's cursor
    # can send reads ahead (`prefetch`); None where it cannot (SQLite: reads
    # cost no round trip).
    before_fold: BeforeFold | None
    MAX_PARAMETERS: int
    # Whether the projections' text columns can keep a NUL character (ADR 0014).
    HOLDS_NUL_IN_TEXT: bool
    # How many times the store was found to have lost appends this process
    # made and believed stored (a server that crashed or failed over).
    lost_appends: int
    # Whether the store's tables, indexes and functions are this release's
    # already, found at opening: the projections then create nothing either.
    tables_current: bool

    def reading(self, snapshot: bool = True, lasting: bool = False
                ) -> AbstractContextManager[Cursor]:
        """One consistent read snapshot (`snapshot=False`: statements that need
        not agree with each other, each as fresh as the store can give).
        `lasting`: held open while the caller works for long between its
        statements (`verify` folding the log), which the server must allow."""

    def writing(self, sync: bool = True, tracking: bool = False
                ) -> AbstractContextManager[Cursor]:
        """One write transaction, holding the log's write lock from its start.
        `tracking`: the caller reads the projections' tracking rows, which a
        store that sends statements together reads with its first message."""

    def place_rows(self, placed: Sequence[tuple[int, Row]]) -> None:
        """Insert events at the positions given, rising and past the log's
        head, with their chain links, in one unsynced transaction and without
        the after-insert hook: a copy keeps its source's positions (its
        projections are rebuilt after)."""

    def append_rows(self, rows: Sequence[Row], appended: Sequence[Any],
                    fence: Fence | None = None, sync: bool = True,
                    snapshots: Sequence[Row] = (), hold: bool = False,
                    read_after: Sequence[ReadAfter] = (),
                    answered: Callable[[int | BaseException], None] | None = None) -> int:
        """Insert events in one transaction, fenced, with the after-insert hook
        in it; the last one's position. `read_after` is read last in it, in order.
        `answered` given: the store may send the append and read its answer
        later (before its next write, and before the sending thread's next
        read), returning the position the append takes if it is stored as
        sent; `answered` is then told the last position it was stored at (it
        may be made again: on a forecast that missed), or what this call would
        have raised. A store that answers at once never calls it."""

    def settle(self) -> None:
        """Read the answer of an append sent without waiting for it (see
        `append_rows`), if one is outstanding."""

    def select_stored(self, c: Cursor, after: int, limit: int,
                      upto: int | None = None) -> list[tuple[int, StoredEvent]]: ...

    def select_stream(self, c: Cursor, stream_id: UUID, upto: int | None
                      ) -> list[tuple[int, int, str, bytes]]: ...

    def select_streams(self, stream_ids: Sequence[UUID]) -> dict[UUID, StreamEvents]:
        """Whole streams by id, each as fresh as the store can give; those with
        no events are left out."""

    def select_from_versions(self, versions: Mapping[UUID, int]) -> dict[UUID, StreamEvents]:
        """Each stream's events from its given version on (that version's
        included), in one statement; streams with none are left out."""

    def with_stream_events(self, sql: str, key: str, order: str) -> str:
        """`sql` with each of its rows followed by the events of one stream."""

    def select_positions(self, c: Cursor, positions: Sequence[int]
                         ) -> list[tuple[int, StoredEvent]]: ...

    def stream_version_at(self, c: Cursor, stream_id: UUID, position: int) -> int | None: ...

    def select_streams_upto(self, c: Cursor, stream_ids: Sequence[UUID], position: int
                            ) -> dict[UUID, list[StoredEvent]]:
        """These streams' events up to a position, a statement per 500 streams;
        streams not begun by then are left out."""

    def stream_start(self, c: Cursor, stream_id: UUID) -> int | None:
        """The log position of a stream's first event (None: it has none)."""

    def note_worker(self, c: Cursor, owner: str, started_at: str, workflows: str) -> None:
        """A worker started (`fl_workers`)."""

    def note_worker_stopped(self, c: Cursor, owner: str, stopped_at: str, how: str) -> None:
        """A worker stopped, and how."""

    def worker_notes(self, c: Cursor) -> list[WorkerNote]:
        """Every worker noted, the latest started first."""

    def forget_workers(self, c: Cursor, owners: Sequence[str]) -> None:
        """Drop these workers' notes."""

    def max_position(self, c: Cursor) -> int: ...

    @property
    def writer_lock(self) -> threading.RLock:
        """Held by the thread whose write transaction runs (reentrant): what the
        projections keep in memory changes only under it."""

    def position_before_last(self, c: Cursor, n: int, upto: int | None = None) -> int:
        """The position after which the log's last `n` events lie, or the last
        `n` up to position `upto` (0: no more than `n` are there)."""

    def select_first_events(self, c: Cursor, stream_ids: Sequence[UUID]) -> list[StoredEvent]:
        """The first event of each of these streams (that has one)."""

    def max_notification_id(self) -> int | None: ...

    def read_all(self, sql: str, params: Sequence[Any]) -> list[Any]: ...

    def tracked(self, c: Cursor, name: str) -> int: ...

    def heads(self, c: Cursor) -> tuple[int, dict[str, int]]: ...

    def heads_and_note(self, c: Cursor, note: str | None, clock: bool = False) -> Heads: ...

    def select_latest(self, stream_id: UUID) -> tuple[StoredEvent | None, list[StoredEvent]]: ...

    def select_snapshots(self, page: int = 100) -> Iterator[StoredEvent]: ...

    def track(self, c: Cursor, name: str, position: int) -> None: ...

    def untrack(self, c: Cursor, name: str) -> None: ...

    def tables_created(self, c: Cursor) -> None:
        """Every table of this release exists now (the projections' too): a
        store whose roles may differ records it, and creates nothing next time."""

    def existing_tables(self, c: Cursor, names: Sequence[str]) -> set[str]:
        """Which of these tables the store holds."""

    def locate(self, stored: StoredEvent) -> tuple[int | None, str | None]: ...

    def is_busy(self, error: BaseException) -> bool:
        """The error says another writer held the store past the lock timeout."""

    def announce(self, owner: str) -> None:
        """This engine (`owner`) is alive, for as long as its process is."""

    def keep_announced(self) -> None:
        """Say so again if the store forgot it (a restarted server)."""

    def store_time(self) -> datetime | None:
        """The store's own clock, where it keeps one that all its writers share
        (PostgreSQL's); None where writers share the engine's host (SQLite)."""

    def listen(self) -> AppendWakeups | None:
        """Wake-ups on appends from any process, where the store sends them
        (PostgreSQL's notifications); None where waiting means polling (SQLite)."""

    def check_head(self, read_head: Callable[[], int]) -> int:
        """The log's head, `read_head()`; LogWentBack raised when it is below
        an append of this engine's that waited for the disk before it was
        read: the log was cut back or restored under it, its connections kept
        (ADR 0017). (An append another thread of this engine makes meanwhile
        is no sign of that.) Where the store cannot tell, the head alone."""

    def replaying(self) -> bool:
        """Whether the store answers now from a standby replaying another
        server's log, whose head may trail what was read elsewhere (asked
        again each time: a URL of several hosts may reach one after a failover)."""

    def holder_alive(self, owner: str | None, patient: bool = False) -> bool | None:
        """Whether a session holder is alive (False: provably gone), or None when
        the store cannot tell (the engine then judges by host and process id).
        `patient`: a store that needs a second look to tell waits for it."""

    def grant(self, role: str, read_only: bool = False) -> list[str]:
        """Let `role` use the store with reads and writes only (`read_only`: with
        reads only, opened with ?mode=ro), now and on tables this engine's role
        creates later; the statements run. Refused where the store has no roles
        (a file: whoever may write it may use it)."""

    def close_connections(self) -> None: ...


# Workers that served the store (ADR 0019, "Workers a store knows"): written by
# each worker as it starts and stops, outside the log (no event: an older
# release reading the log would not know one). Whether one still runs is asked
# of the store and the host each time, not kept.
CREATE_WORKERS = ("CREATE TABLE IF NOT EXISTS fl_workers (owner TEXT PRIMARY KEY, "
                  "started_at TEXT NOT NULL, workflows TEXT NOT NULL, stopped_at TEXT, "
                  "stopped TEXT)")
WorkerNote = tuple[str, str, str, "str | None", "str | None"]  # as fl_workers holds it


def _in_parts(values: Sequence[Any], size: int = 500) -> Iterator[tuple[list[Any], str]]:
    """The values `size` at a time, each part with the `?, ?, ...` of its IN list."""
    for start in range(0, len(values), size):
        part = list(values[start:start + size])
        yield part, ", ".join("?" * len(part))


class SharedSQL:
    """The seam's methods whose SQL both stores run as written (`?` placeholders:
    the PostgreSQL cursor translates them); a recorder says only which column
    holds a position and how it keys a stream."""

    events_table_name: str
    snapshot_table_name: str
    position_column: str

    def read_all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def stream_key(self, stream_id: UUID | str) -> Any:
        """A stream id as the store's originator_id column holds it."""
        raise NotImplementedError

    def tracked(self, c: Cursor, name: str) -> int:
        """How far projection `name` has read into the log (0: not at all)."""
        c.execute("SELECT MAX(notification_id) FROM tracking WHERE application_name=?", (name,))
        return int(c.fetchone()[0] or 0)

    def select_first_events(self, c: Cursor, stream_ids: Sequence[UUID]) -> list[StoredEvent]:
        """The first event of each of these streams (that has one)."""
        found: list[StoredEvent] = []
        for ids, marks in _in_parts(stream_ids):
            c.execute(f"SELECT originator_id, topic, CAST(state AS BLOB) "
                      f"FROM {self.events_table_name} WHERE originator_version=1 AND "
                      f"originator_id IN ({marks})", [self.stream_key(i) for i in ids])
            found += [StoredEvent(originator_id=UUID(str(sid)), originator_version=1, topic=t,
                                  state=bytes(b)) for sid, t, b in c.fetchall()]
        return found

    def position_before_last(self, c: Cursor, n: int, upto: int | None = None) -> int:
        where, params = (f"WHERE {self.position_column} <= ? ", (upto, n)) if upto is not None \
            else ("", (n,))
        c.execute(f"SELECT {self.position_column} FROM {self.events_table_name} {where}"
                  f"ORDER BY {self.position_column} DESC LIMIT 1 OFFSET ?", params)
        row = c.fetchone()
        return int(row[0]) if row is not None else 0

    # The store's own clock in microseconds since the epoch, as SQL, where it
    # keeps one that all its writers share (PostgreSQL's; see `store_time`).
    clock_sql: str | None = None

    def heads(self, c: Cursor) -> tuple[int, dict[str, int]]:
        """The log's last position (0: empty) and how far each tracked projection
        has read into it, in one statement (a round trip, where each is one)."""
        found = self.heads_and_note(c, None)
        return found.head, found.tracked

    def heads_and_note(self, c: Cursor, note: str | None, clock: bool = False) -> Heads:
        """`heads`, the value of the store's format note `note` (None: not noted,
        or not asked) and, if `clock`, the store's time (None where it keeps no
        clock of its own), in the same statement."""
        sql = (f"SELECT NULL, MAX({self.position_column}), NULL FROM {self.events_table_name} "
               "UNION ALL SELECT application_name, notification_id, NULL FROM tracking")
        if note is not None:
            sql += " UNION ALL SELECT name, NULL, value FROM fl_store_format WHERE name = ?"
        if clock and self.clock_sql is not None:
            sql += f" UNION ALL SELECT '{_CLOCK_ROW}', {self.clock_sql}, NULL"
        c.execute(sql, (note,) if note is not None else ())
        head, tracked, noted, store_time = 0, {}, None, None
        for name, at, value in c.fetchall():
            if name is None:
                head = int(at or 0)
            elif name == _CLOCK_ROW:
                store_time = _EPOCH + timedelta(microseconds=int(at))
            elif note is not None and name == note and value is not None:
                noted = str(value)
            else:
                tracked[name] = int(at or 0)
        return Heads(head, tracked, noted, store_time)

    def select_latest(self, stream_id: UUID) -> tuple[StoredEvent | None, list[StoredEvent]]:
        """A snapshotted stream's latest snapshot (None: it has none) and its
        events after it, in one statement: the library reads each with a
        statement of its own, a round trip each on a server."""
        key = self.stream_key(stream_id)
        snapshots, events = self.snapshot_table_name, self.events_table_name
        latest = f"(SELECT MAX(originator_version) FROM {snapshots} WHERE originator_id=?)"
        rows = self.read_all(
            f"SELECT 1, originator_version, topic, CAST(state AS BLOB) FROM {snapshots} "
            f"WHERE originator_id=? AND originator_version={latest} UNION ALL "
            f"SELECT 0, originator_version, topic, CAST(state AS BLOB) FROM {events} "
            f"WHERE originator_id=? AND originator_version>COALESCE({latest}, 0) "
            "ORDER BY 1 DESC, 2", (key, key, key, key))
        stored = [StoredEvent(originator_id=stream_id, originator_version=version, topic=topic,
                              state=bytes(state)) for _, version, topic, state in rows]
        if rows and rows[0][0] == 1:
            return stored[0], stored[1:]
        return None, stored

    def select_snapshots(self, page: int = 100) -> Iterator[StoredEvent]:
        """Every stored snapshot, by stream and version (what `verify` checks),
        read `page` at a time: a large store's do not fit in memory at once."""
        sql = (f"SELECT originator_id, originator_version, topic, CAST(state AS BLOB) "
               f"FROM {self.snapshot_table_name} {{}}"
               f"ORDER BY originator_id, originator_version LIMIT {int(page)}")
        after: tuple[Any, ...] | None = None
        while True:
            rows = self.read_all(sql.format(
                "" if after is None else "WHERE (originator_id, originator_version) > (?, ?) "),
                after or ())
            for stream, version, topic, state in rows:
                yield StoredEvent(originator_id=UUID(str(stream)), originator_version=version,
                                  topic=topic, state=bytes(state))
            if len(rows) < page:
                return
            after = (rows[-1][0], rows[-1][1])

    def track(self, c: Cursor, name: str, position: int) -> None:
        c.execute("INSERT INTO tracking VALUES (?, ?) ON CONFLICT (application_name) "
                  "DO UPDATE SET notification_id=excluded.notification_id", (name, position))

    def untrack(self, c: Cursor, name: str) -> None:
        c.execute("DELETE FROM tracking WHERE application_name=?", (name,))

    # The originator_id column's value for a stream id held as hex text in `column`.
    stream_key_sql = "{column}"

    def with_stream_events(self, sql: str, key: str, order: str) -> str:
        """A query whose rows are those of `sql`, each repeated with the events
        (version, topic, state; NULLs where there are none) of the stream whose
        hex id is in its column `key`, in the order of its column `order`: what
        a reader would otherwise load stream by stream, a round trip each."""
        stream = self.stream_key_sql.format(column=f"q.{key}")
        return (f"SELECT q.*, e.originator_version, e.topic, CAST(e.state AS BLOB) "
                f"FROM ({sql}) AS q LEFT JOIN {self.events_table_name} AS e "
                f"ON e.originator_id={stream} "
                f"ORDER BY q.{order}, q.{key}, e.originator_version")

    def select_stream(self, c: Cursor, stream_id: UUID, upto: int | None
                      ) -> list[tuple[int, int, str, bytes]]:
        """(position, version, topic, state) of one stream's events, up to a position."""
        pos = self.position_column
        sql = (f"SELECT {pos}, originator_version, topic, CAST(state AS BLOB) "
               f"FROM {self.events_table_name} "
               "WHERE originator_id=?")
        params: list[Any] = [self.stream_key(stream_id)]
        if upto is not None:
            sql += f" AND {pos}<=?"
            params.append(upto)
        c.execute(sql + " ORDER BY originator_version", params)
        return [(p, v, t, bytes(s)) for p, v, t, s in c.fetchall()]

    def select_streams_upto(self, c: Cursor, stream_ids: Sequence[UUID], position: int
                            ) -> dict[UUID, list[StoredEvent]]:
        found: dict[UUID, list[StoredEvent]] = {}
        for ids, marks in _in_parts(stream_ids):
            c.execute(f"SELECT originator_id, originator_version, topic, CAST(state AS BLOB) "
                      f"FROM {self.events_table_name} WHERE originator_id IN "
                      f"({marks}) AND {self.position_column}<=? "
                      "ORDER BY originator_id, originator_version",
                      [*(self.stream_key(i) for i in ids), position])
            for sid, version, topic, state in c.fetchall():
                stream = UUID(str(sid))
                found.setdefault(stream, []).append(StoredEvent(
                    originator_id=stream, originator_version=version, topic=topic,
                    state=bytes(state)))
        return found

    def note_worker(self, c: Cursor, owner: str, started_at: str, workflows: str) -> None:
        c.execute("INSERT INTO fl_workers VALUES (?, ?, ?, NULL, NULL) ON CONFLICT (owner) "
                  "DO UPDATE SET started_at=excluded.started_at, workflows=excluded.workflows, "
                  "stopped_at=NULL, stopped=NULL", (owner, started_at, workflows))

    def note_worker_stopped(self, c: Cursor, owner: str, stopped_at: str, how: str) -> None:
        c.execute("UPDATE fl_workers SET stopped_at=?, stopped=? WHERE owner=?",
                  (stopped_at, how, owner))

    def worker_notes(self, c: Cursor) -> list[WorkerNote]:
        c.execute("SELECT owner, started_at, workflows, stopped_at, stopped FROM fl_workers "
                  "ORDER BY started_at DESC, owner")
        return [tuple(row) for row in c.fetchall()]

    def forget_workers(self, c: Cursor, owners: Sequence[str]) -> None:
        for ids, marks in _in_parts(owners):
            c.execute(f"DELETE FROM fl_workers WHERE owner IN ({marks})", ids)

    def stream_start(self, c: Cursor, stream_id: UUID) -> int | None:
        c.execute(f"SELECT {self.position_column} FROM {self.events_table_name} "
                  "WHERE originator_id=? AND originator_version=1", (self.stream_key(stream_id),))
        row = c.fetchone()
        return int(row[0]) if row is not None else None

    def stream_version_at(self, c: Cursor, stream_id: UUID, position: int) -> int | None:
        c.execute(f"SELECT MAX(originator_version) FROM {self.events_table_name} "
                  f"WHERE originator_id=? AND {self.position_column}<=?",
                  (self.stream_key(stream_id), position))
        version = c.fetchone()[0]
        return int(version) if version is not None else None

    def locate(self, stored: StoredEvent) -> tuple[int | None, str | None]:
        """The log position of a stored event, or that it is a snapshot: found by
        its stream, version and exact stored body (only to name a corrupt one)."""
        key = (self.stream_key(stored.originator_id), stored.originator_version, stored.state)
        where = "WHERE originator_id=? AND originator_version=? AND state=?"
        rows = self.read_all(
            f"SELECT {self.position_column} FROM {self.events_table_name} {where}", key)
        if rows:
            return int(rows[0][0]), None
        if self.read_all(f"SELECT 1 FROM {self.snapshot_table_name} {where}", key):
            return None, "snapshot"
        return None, None


def stored_after(store: LogStore, c: Cursor, after: int, upto: int | None = None,
                 batch: int = 2000) -> Iterator[list[tuple[int, StoredEvent]]]:
    """The stored events after position `after` (up to `upto`), `batch` at a
    time, in position order, read with the caller's cursor."""
    while upto is None or after < upto:
        rows = store.select_stored(c, after, batch, upto)
        if not rows:
            return
        yield rows
        after = rows[-1][0]


def scratch_database() -> tuple[Any, Cursor]:
    """A private in-memory database and a cursor in an open transaction: time
    travel folds projections into it, whatever the store."""
    db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    c = db.cursor()
    c.execute("BEGIN")
    return db, c
