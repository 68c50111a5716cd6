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
import functools
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeGuard
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
    AggregateRecorder,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import pq

from flowledger.domain.errors import ConfigurationError
from flowledger.domain.text import one_line
from flowledger.infrastructure.busy_appends import BUSY_PATIENCE_S, waiting_out_busy
from flowledger.infrastructure.hash_chain import CHAIN_TABLE, HEAD_SQL, Chain, Link, head_of
from flowledger.infrastructure.inherited_connections import opened_here
from flowledger.infrastructure.postgres_batch import PgBatch, Prepared, Rows
from flowledger.infrastructure.postgres_forecast import GUARD_FAILED, Forecast, create_guard_sql
from flowledger.infrastructure.sqlite_recorder import FastReads, StaleFenceError
from flowledger.infrastructure.store import (
    CREATE_WORKERS,
    AfterInsert,
    BeforeFold,
    Fence,
    FormatRecordGone,
    LogWentBack,
    ProjectionRowTaken,
    ReadAfter,
    Row,
    ServerTakesNoWrites,
    ServerUnavailable,
    SharedSQL,
    first_line,
)
from flowledger.infrastructure.store_check import (
    LOG_OWNER_SQL,
    cannot_connect_now,
    grants,
    no_connection_to_spare,
)
from flowledger.infrastructure.store_failures import advice
from flowledger.infrastructure.store_format import (
    FORMAT_TABLE,
    TABLES_VERSION,
    record_tables_version,
    recorded_tables,
)

logger = logging.getLogger("flowledger.store")

# Rows in one INSERT statement, at most (4 parameters each, of PostgreSQL's 65,535).
_ROWS_PER_INSERT = 1000


# Columns later tables versions added to a table an older release makes too:
# one that makes it again (dropped by hand) makes it without them.
ADDED_COLUMNS = ("column fl_liveness.taken_at",)

# The store's own objects in its schema, by kind and name (`_tables_are_current`),
# and the added columns it has.
_OBJECTS_SQL = (
    "SELECT 'relation ' || relname FROM pg_class WHERE relnamespace = to_regnamespace(%s) "
    "AND relkind IN ('r', 'i', 'S') AND (relname LIKE %s OR relname LIKE %s OR relname LIKE %s) "
    "UNION ALL SELECT 'function ' || proname FROM pg_proc "
    "WHERE pronamespace = to_regnamespace(%s) AND proname LIKE %s "
    "UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
    "WHERE c.relnamespace = to_regnamespace(%s) AND NOT t.tgisinternal AND tgname LIKE %s "
    "UNION ALL SELECT 'column ' || c.relname || '.' || a.attname FROM pg_attribute a "
    "JOIN pg_class c ON c.oid = a.attrelid WHERE c.relnamespace = to_regnamespace(%s) "
    "AND NOT a.attisdropped AND 'column ' || c.relname || '.' || a.attname = ANY(%s)")


# Settings a database or role may give its sessions (ALTER DATABASE/ROLE ...
# SET) that the engine's connections cannot work under, set back on each one
# (those the server lacks, older than 14 say, are skipped):
# - DateStyle: psycopg reads times only in ISO (any other: NotImplementedError);
# - statement_timeout: would cancel an append waiting for the log's lock,
#   which the engine waits for by its own lock timeout and the lease (ADR 0029),
#   and a call's outcome would be lost;
# - idle_session_timeout: would end the engine's idle connections just as it
#   takes them up again, mid-session;
# - default_transaction_isolation: the writers' reads after the log's lock
#   (creating the tables, the fence) must see what committed before it;
#   snapshot reads ask REPEATABLE READ themselves.
# The server's idle_in_transaction_session_timeout is kept: it frees the log's
# lock from a process stopped inside an append. (ADR 0017, "Server settings".)
SESSION_SETTINGS = (("DateStyle", "ISO"), ("statement_timeout", "0"),
                    ("idle_session_timeout", "0"),
                    ("default_transaction_isolation", "read committed"))
_SET_SESSION = (
    "SELECT set_config(s.name, s.value, false) FROM (VALUES "
    + ", ".join(f"('{name}', '{value}')" for name, value in SESSION_SETTINGS)
    + ") AS s(name, value) JOIN pg_settings p ON lower(p.name) = lower(s.name)")


def _opened(conninfo: dict[str, Any], autocommit: bool) -> psycopg.Connection[Any]:
    """A new connection, its session set as the engine needs (SESSION_SETTINGS);
    one the server cannot take now (down, restarting, none to spare) raises
    NotConnected, one it refuses (a login, a database) the library's
    InterfaceError."""
    try:
        conn = opened_here(psycopg.connect(**conninfo, autocommit=autocommit))
    except psycopg.OperationalError as e:
        said = one_line(e)
        if cannot_connect_now(str(e), conninfo):
            raise NotConnected(said) from e
        raise InterfaceError(said) from e
    try:
        conn.execute(_SET_SESSION)
        if not autocommit:
            conn.commit()  # else the transaction's end would set them back
    except BaseException:
        _replace(conn)
        raise
    return conn


class NotConnected(ServerUnavailable):
    """No connection to the server could be opened (it is restarting, say, or
    has none to spare): nothing was sent."""


@dataclass
class _Later:
    """What an append whose answer is read later needs then: whom to tell,
    and how to make it again the ordinary way."""
    answered: Callable[[int | BaseException], None]
    again: Callable[[], int]


@dataclass
class _Unanswered:
    """An append sent on the forecast, its answer not read yet (`settle`)."""
    batch: PgBatch
    position: int  # the last event's, if it is stored as sent
    streams: frozenset[str]  # the ids (hex) of the streams it writes
    before: tuple[Any, Any]  # the recorder's last appended and synced before it
    later: _Later
    thread: int  # the sender's: its reads must see the append


class _PositionsBehind(Exception):
    """The position sequence gave positions at or below the log's head."""


def _first(c: psycopg.Cursor[Any]) -> Any:
    row = c.fetchone()
    return row[0] if row else None


def _usable(conn: psycopg.Connection[Any] | None) -> TypeGuard[psycopg.Connection[Any]]:
    """Whether an idle connection can still be used. The server ends idle
    connections (restarted, `pg_terminate_backend`, an idle timeout) with a
    FATAL message, then the end of the stream, which nobody reads until a
    statement is sent: without this look, each connection would fail the
    first statement sent on it after that, so that a write, a session, a read
    failed for each connection the engine holds. What is waiting is read
    without blocking and parsed by libpq (a NOTICE or a NOTIFY leaves the
    connection usable; the second read meets the end of the stream)."""
    if not _idle(conn):
        return False
    pgconn = conn.pgconn
    try:
        for _ in range(2):
            pgconn.consume_input()  # libpq's socket never blocks
            pgconn.is_busy()  # parses what came
    except psycopg.Error:
        return False
    return (pgconn.status == pq.ConnStatus.OK
            and pgconn.transaction_status == pq.TransactionStatus.IDLE)


# A transaction that waits for the disk to hold everything committed before
# it: a commit waits for the WAL's flush only if its transaction wrote WAL,
# and this writes a logical-decoding message of its own (empty, prefixed
# "flowledger"), on any wal_level. Needs no table, so no grant.
FLUSH_AFTER_COMMIT = "SELECT pg_logical_emit_message(true, 'flowledger', '')"


def _may_flush_after_commit(conn: psycopg.Connection[Any]) -> bool:
    """Whether FLUSH_AFTER_COMMIT runs on this connection (tried, and rolled
    back: a role may not execute it, a server may lack it); else a synced
    append waits for the disk under the lock, within its commit."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(FLUSH_AFTER_COMMIT)
    except psycopg.Error as e:
        if conn.broken or isinstance(e, psycopg.errors.QueryCanceled):
            raise
        logger.info("synced appends wait for the disk within their commit: %s",
                    one_line(e))
        return False
    return True


def _idle(conn: psycopg.Connection[Any] | None) -> TypeGuard[psycopg.Connection[Any]]:
    """Open and in no transaction, as far as this side knows: not left inside
    one (an interrupt), no query whose answer never came. No I/O."""
    return (conn is not None and not conn.closed and not conn.broken
            and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE)


def _replace(conn: psycopg.Connection[Any] | None) -> None:
    """Close a connection that is no longer `_usable` (it may still be open)."""
    if conn is not None and not conn.closed:
        with contextlib.suppress(psycopg.Error, OSError):
            conn.close()


def _in_statements(rows: Sequence[Any]) -> list[Sequence[Any]]:
    """`rows` cut into the parts one multi-row INSERT each takes."""
    return [rows[i:i + _ROWS_PER_INSERT] for i in range(0, len(rows), _ROWS_PER_INSERT)]


def _add_links(c: PgBatch, links: Sequence[Link]) -> None:
    """Queue the tamper-evident chain's links (ADR 0023), a multi-row INSERT a part."""
    for part in _in_statements(links):
        c.add(f"INSERT INTO {CHAIN_TABLE} VALUES " + _values("(%s, %s, %s::bytea)", part)[0],
              [v for link in part for v in link])


def _values(template: str, rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """A multi-row VALUES list for `rows` (each row as `template`) and its parameters."""
    return ", ".join([template] * len(rows)), [v for row in rows for v in row]


def _fence_before(fence: Fence, rows: Sequence[Row]) -> int | None:
    """The version the fenced stream is at before `rows` are appended, if they
    bring it to `fence.version` (None: it has no event yet)."""
    own = sum(1 for r in rows if r[0] == fence.stream_id.hex)
    return fence.version - own if fence.version > own else None


# A constant key for the advisory lock that serialises table creation.
_CREATE_LOCK = 0x666C6F77  # "flow"

# The server as it is now: its timeline (a standby's promotion moves it on),
# when its postmaster started (a restart), and when its shared statistics were
# last reset (a reinitialisation after one of its processes crashed, which
# keeps the start time; also `pg_stat_reset_shared`). Any role may read them;
# NULL on a standby. A lock taken under another incarnation was lost with it,
# not with its holder; a part that moves for another reason only makes a free
# lock "cannot tell".
_SERVER_INCARNATION = ("(CASE WHEN pg_is_in_recovery() THEN NULL ELSE "
                       "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) || ' ' || "
                       "extract(epoch FROM pg_postmaster_start_time())::text || ' ' || "
                       "COALESCE(extract(epoch FROM (SELECT stats_reset FROM pg_stat_bgwriter))"
                       "::text, '') END)")
# As this release's notes say it: marked, so that an engine of the release
# before `taken_at`, which takes a free lock under the present incarnation as
# proof that its holder is gone, never judges this release's engines so (the
# lock's connection ended by a reaper while its call goes on; ADR 0017). Their
# notes are its own, unmarked: this release judges them by their lease.
_INCARNATION = f"({_SERVER_INCARNATION} || ' noted with taken_at')"

_TRANSLATIONS = [
    (re.compile(r"\)\s*WITHOUT ROWID"), ")"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    (re.compile(r"\bIS NOT (?=excluded\.|\?)"), "IS DISTINCT FROM "),
    (re.compile(r"\bINSERT OR IGNORE INTO\b"), "INSERT INTO"),
]
_MIN_MAX = re.compile(r"\b(MIN|MAX)\(", re.IGNORECASE)
_SCALAR = {"MAX": "GREATEST", "MIN": "LEAST"}


def _scalar_min_max(sql: str) -> str:
    """SQLite's MIN and MAX of several values are PostgreSQL's LEAST and
    GREATEST (of one value: the aggregates, left alone), whatever their
    arguments hold. Where an argument is NULL, SQLite's give NULL and
    PostgreSQL's skip it: the projections give them columns that hold none."""
    out, at = [], 0
    for m in _MIN_MAX.finditer(sql):
        depth, commas, i = 1, 0, m.end()
        while depth and i < len(sql):
            if sql[i] == "'":  # a literal's commas and parentheses are not the call's
                i = sql.find("'", i + 1)
                if i < 0:
                    break
            depth += {"(": 1, ")": -1}.get(sql[i], 0)
            commas += sql[i] == "," and depth == 1
            i += 1
        if commas:
            out += [sql[at:m.start()], _SCALAR[m.group(1).upper()], "("]
            at = m.end()
    return "".join(out) + sql[at:]


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """SQLite-flavoured SQL of the projections, as PostgreSQL runs it (the
    projections write a few dozen statements, each translated once)."""
    ignore = "INSERT OR IGNORE INTO" in sql
    for pattern, replacement in _TRANSLATIONS:
        sql = pattern.sub(replacement, sql)
    sql = _scalar_min_max(sql)
    sql = sql.replace("%", "%%").replace("?", "%s")
    if ignore:
        sql += " ON CONFLICT DO NOTHING"
    return sql


class PgCursor:
    """A psycopg cursor that takes the projections' SQL as written (reads;
    write transactions use `PgBatch`)."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._c = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        self._c.execute(translate(sql), params)
        return self

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> PgCursor:
        self._c.executemany(translate(sql), params)
        return self

    def fetchone(self) -> Any:
        return self._c.fetchone()

    def fetchall(self) -> list[Any]:
        return self._c.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._c)

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
    before_fold: BeforeFold | None = None
    chain: Chain | None = None  # set once the store's format is settled
    snapshot_table_name = "stored_snapshots"
    position_column = "notification_id"
    stream_key_sql = "CAST({column} AS uuid)"
    clock_sql = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)"
    MAX_PARAMETERS = 5000
    HOLDS_NUL_IN_TEXT = False

    def select_events(self, originator_id: UUID | str, *, gt: int | None = None,
                      lte: int | None = None, desc: bool = False,
                      limit: int | None = None) -> Sequence[StoredEvent]:
        """One stream's events. A stream the append still unanswered does not
        write is read without waiting for its answer (nothing of it can be in
        what is read): a run's commit looks up the messages it publishes while
        the server stores the run's outcome."""
        sent = self._unanswered
        apart = sent is not None and _uuid(originator_id).hex not in sent.streams
        self._apart.stream = apart
        try:
            return super().select_events(originator_id, gt=gt, lte=lte, desc=desc, limit=limit)
        finally:
            self._apart.stream = False

    def stream_key(self, stream_id: UUID | str) -> UUID:
        return _uuid(stream_id)

    def __init__(self, datastore: PostgresDatastore, conninfo: dict[str, Any],
                 lock_timeout_s: float = 30.0, read_only: bool = False) -> None:
        super().__init__(datastore, events_table_name="stored_events")
        self.conninfo = conninfo
        # Opened with ?mode=ro: every connection refuses writes, nothing is
        # created or mended; on a standby (`_on_standby`) its advisory locks
        # and notifications are not the primary's.
        self.read_only = read_only
        self._on_standby = False
        self.lock_timeout_s = lock_timeout_s
        self.schema = datastore.schema
        # Reading connections (`_lent`): the idle ones per kind; every one open,
        # with the generation it was opened in (`close_connections` starts a new
        # one). Reentrant: the collector may end an abandoned read, and give its
        # connection back, in a thread that holds it.
        self._idle: dict[str, list[psycopg.Connection[Any]]] = {"reader": [], "single": []}
        self._reading: dict[psycopg.Connection[Any], int] = {}
        self._generation = 0
        self._reading_lock = threading.RLock()
        # The writer connections, synced and unsynced (see `writing`).
        self._writers: dict[bool, psycopg.Connection[Any]] = {}
        self._writer_lock = threading.RLock()
        self._liveness_lock = threading.Lock()
        # Per writer connection: the statements prepared on it (PgBatch).
        self._prepared: dict[bool, Prepared] = {}
        # Whether the synced writer may wait for the disk after the lock
        # (`writing`): the role may run FLUSH_AFTER_COMMIT.
        self._flush_after_lock = False
        self._forecast = Forecast(self.events_table_name)
        # An append sent whose answer is still to be read (`settle`), and
        # whether a thread is reading it.
        self._unanswered: _Unanswered | None = None
        self._settling = False
        # Set while this thread reads one stream that append does not write.
        self._apart = threading.local()
        self._sequence = ""  # the log's position sequence (create_table)
        # The last event this recorder appended (position, stream, version):
        # looked for when a writer connection is opened again (`_lost_appends`).
        self._last_appended: tuple[int, str, int] | None = None
        self.lost_appends = 0
        # Owners whose liveness lock this engine found free: when it took it
        # last (by the store's note), and when this engine first found it free.
        self._found_free: dict[str, tuple[Any, float]] = {}
        # The last append this recorder made that waited for the disk: no crash
        # of the server loses it, so a log without it went back (`_went_back`).
        self._last_synced: tuple[int, str, int] | None = None
        # Why this engine appends no more: the log went back behind its own
        # last append (`_went_back`).
        self._gone_back: str | None = None
        # Whether the store's tables are this release's already (create_table).
        self.tables_current = False

    # ------------------------------------------------------------ connections

    def _connect(self, setting: str = "") -> psycopg.Connection[Any]:
        conn = _opened(self.conninfo, autocommit=False)
        with conn.cursor() as c:
            c.execute(f"SET lock_timeout = '{int(self.lock_timeout_s * 1000)}ms'")
            c.execute("SET standard_conforming_strings = on")  # PgBatch's literals
            c.execute(f"SET search_path TO \"{self.schema}\"")
            if self.read_only:  # the server refuses any write, whatever asks for it
                c.execute("SET default_transaction_read_only = on")
            if setting:
                c.execute(setting)
        conn.commit()
        return conn

    # How long a living engine may take to take its liveness lock again after
    # the server ended that lock's connection alone: at its next write, and
    # within a second (the heartbeat) while a session waits on a handler or a
    # tool. A lock free for longer, never taken again, proves its owner gone.
    RETAKE_WITHIN_S = 3.0

    # Idle reading connections kept per kind; more are opened while more
    # threads read at once, and closed as they come back.
    IDLE_READERS = 4

    @contextmanager
    def _lent(self, kind: str) -> Iterator[psycopg.Connection[Any]]:
        """A reading connection of `kind` ("reader": the snapshot reader, whose
        transactions psycopg begins as REPEATABLE READ READ ONLY; "single":
        autocommit), lent for one read and given back, from whichever thread
        ends it (a generator reading across a `yield` may be closed elsewhere).
        Each read has its own, nested ones too: a read made while another is
        open (a generator's, suspended) must not end that one's snapshot.
        Lent, not kept per thread: a service's pool of request threads holds
        as many as read at once, not two per thread for the engine's life."""
        conn = self._take(kind)
        try:
            yield conn
        finally:
            self._give_back(kind, conn)

    def _take(self, kind: str) -> psycopg.Connection[Any]:
        """An idle connection of `kind`, or a new one."""
        self._settle_before_reading()
        with self._reading_lock:
            idle, generation = self._idle[kind], self._generation
            while idle:
                conn = idle.pop()
                if _usable(conn):
                    return conn
                self._reading.pop(conn, None)
                _replace(conn)  # the server ended it while it was idle
        conn = self._connect()
        if kind == "reader":
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
        else:
            conn.autocommit = True
        with self._reading_lock:
            # Opened before a close that ran meanwhile: closed once given back.
            self._reading[conn] = generation
        return conn

    def _close_idle_readers(self) -> None:
        """Close the reading connections kept idle (the next reads open others)."""
        with self._reading_lock:
            idle = [conn for kept in self._idle.values() for conn in kept]
            self._idle = {kind: [] for kind in self._idle}
            for conn in idle:
                self._reading.pop(conn, None)
        for conn in idle:
            _replace(conn)

    def _give_back(self, kind: str, conn: psycopg.Connection[Any]) -> None:
        """Kept idle if there is room, it is of this generation and idle (not
        left in a transaction, say by an interrupt); else closed. Whether the
        server ended it meanwhile is looked at when it is next taken."""
        with self._reading_lock:
            if (self._reading.get(conn) == self._generation and _idle(conn)
                    and len(self._idle[kind]) < self.IDLE_READERS):
                self._idle[kind].append(conn)
                return
            self._reading.pop(conn, None)
        _replace(conn)

    def create_table(self) -> None:
        """The library's tables, plus ours, created once even when several
        processes open a new store at the same instant (an advisory lock).
        A store whose tables this release or a newer one made in full is left
        as it is (`tables_current`), so a role that may only read and write
        opens it (ADR 0013). A store opened read-only is only looked at: it
        must hold this release's tables, and its server may be a standby (one
        opened to write there is refused)."""
        conn = self._connect()
        behind = False
        try:
            with conn.cursor() as c:
                c.execute("SELECT pg_is_in_recovery()")
                self._on_standby = bool(_first(c))
                if self._on_standby and not self.read_only:
                    raise ServerTakesNoWrites(
                        "its server is a standby (in recovery), which takes no writes")
                self.tables_current = self._tables_are_current(c)
                if not self.read_only:
                    if not self.tables_current:
                        self._create_tables(c)
                    self._sequence = self._sequence_of(c)
                    behind = self._sequence_behind(c)
            conn.commit()
        except psycopg.errors.InsufficientPrivilege as e:  # said with what to do
            raise ProgrammingError(first_line(e)) from e
        finally:
            conn.close()
        if self.read_only and not self.tables_current:
            if self._chained_without_format_record():
                raise FormatRecordGone("its chain holds links and its format record is gone")
            raise ProgrammingError("it is opened read-only (?mode=ro), and its tables cannot "
                                   "be made or brought up to date")
        if behind:
            self._set_sequence_past_head()

    def _chained_without_format_record(self) -> bool:
        """A store whose tables look missing because its format record is gone,
        its chain still holding links (store_format's refusal, read-only)."""
        with self._connect() as conn:
            chain, record = conn.execute(
                "SELECT to_regclass(%s), to_regclass(%s)",
                (f'"{self.schema}".{CHAIN_TABLE}', f'"{self.schema}".{FORMAT_TABLE}')
            ).fetchone() or (None, None)
            if chain is None or conn.execute(
                    f"SELECT 1 FROM {CHAIN_TABLE} LIMIT 1").fetchone() is None:
                return False
            return record is None or conn.execute(
                f"SELECT 1 FROM {FORMAT_TABLE} WHERE name = 'cipher'").fetchone() is None

    def _create_tables(self, c: psycopg.Cursor[Any]) -> None:
        """What this release's store holds, made where missing (CREATE in the schema)."""
        c.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
        c.execute("SELECT to_regnamespace(%s) IS NULL", (f'"{self.schema}"',))
        if _first(c):  # else not asked: it needs CREATE on the database
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
        c.execute("CREATE TABLE IF NOT EXISTS fl_liveness (owner text PRIMARY KEY, "
                  "key integer NOT NULL, incarnation text)")
        # When the owner last took its lock (holder_alive): a column
        # tables version 2 added.
        c.execute("ALTER TABLE fl_liveness ADD COLUMN IF NOT EXISTS taken_at timestamptz")
        c.execute(CREATE_WORKERS)
        self._create_append_notification(c)
        c.execute("SELECT 1 FROM pg_proc WHERE proname = 'fl_guard' AND pronamespace = "
                  "%s::regnamespace", (f'"{self.schema}"',))
        if not c.fetchone():  # created once: a role that only reads need not create
            c.execute(create_guard_sql(self.schema))

    def _tables_are_current(self, c: psycopg.Cursor[Any]) -> bool:
        """Whether the store records this release's tables version or a newer
        one (`store_format`), and every table, index, sequence, function and
        trigger of ours it had when that was recorded is still there, with the
        columns later versions added (one dropped by hand is made again by a
        role that may create)."""
        c.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{self.schema}".{FORMAT_TABLE}',))
        if not _first(c):
            return False
        version, objects = recorded_tables(PgCursor(c))  # the connection's search_path: ours
        if version < TABLES_VERSION:
            return False
        c.execute(_OBJECTS_SQL, self._objects_params())
        present = {str(row[0]) for row in c.fetchall()}
        return objects | set(ADDED_COLUMNS) <= present and self._notifies_its_channel(c)

    def _objects_params(self) -> tuple[Any, ...]:
        schema = f'"{self.schema}"'
        return (schema, r"fl\_%", r"stored\_%", "tracking%", schema, r"fl\_%", schema,
                r"fl\_%", schema, list(ADDED_COLUMNS))

    def _sequence_behind(self, c: psycopg.Cursor[Any]) -> bool:
        """Whether the position sequence is behind the log's head (looked at
        without the log's lock: mended under it, `_set_sequence_past_head`)."""
        if not self._sequence:
            return False
        c.execute(f'SELECT MAX(notification_id) > COALESCE(pg_sequence_last_value(%s::regclass), '
                  f'0) FROM "{self.schema}".{self.events_table_name}', (self._sequence,))
        return bool(_first(c))

    def _sequence_of(self, c: psycopg.Cursor[Any]) -> str:
        c.execute("SELECT pg_get_serial_sequence(%s, 'notification_id')",
                  (f'"{self.schema}".{self.events_table_name}',))
        row = c.fetchone()
        return str(row[0]) if row and row[0] else ""

    def tables_created(self, c: PgCursor | PgBatch) -> None:
        assert isinstance(c, PgBatch)
        objects = sorted(str(row[0]) for row in c.ask(_OBJECTS_SQL, self._objects_params())
                         .fetchall())
        record_tables_version(c, ",".join(objects))

    def existing_tables(self, c: PgCursor | PgBatch, names: Sequence[str]) -> set[str]:
        c.execute("SELECT t.relname FROM pg_class AS t JOIN pg_namespace AS n ON n.oid = "
                  "t.relnamespace WHERE n.nspname = current_schema() AND t.relkind IN "
                  f"('r', 'p') AND t.relname IN ({', '.join('?' * len(names))})", list(names))
        return {str(row[0]) for row in c.fetchall()}

    @property
    def channel(self) -> str:
        """The notification channel of this store's log (one per schema): cut,
        as a name, at 63 bytes."""
        return f"flowledger_{self.schema}".encode()[:63].decode(errors="ignore")

    @property
    def _notify_body(self) -> str:
        return f"BEGIN PERFORM pg_notify('{self.channel}', ''); RETURN NULL; END"

    def _notifies_its_channel(self, c: psycopg.Cursor[Any]) -> bool:
        """Whether the log's trigger function notifies this schema's channel (not
        a channel of another name: an older release's, or the schema's before
        it was renamed)."""
        c.execute("SELECT prosrc FROM pg_proc WHERE proname = 'fl_notify_appended' "
                  "AND pronamespace = to_regnamespace(%s)", (f'"{self.schema}"',))
        found = c.fetchone()
        return found is not None and str(found[0]).strip() == self._notify_body

    def _create_append_notification(self, c: psycopg.Cursor[Any]) -> None:
        """Every transaction that appends to the log notifies `channel` as it
        commits (a statement trigger: any writer, one notification per
        transaction), so a waiting worker is woken instead of polling."""
        body = self._notify_body
        if not self._notifies_its_channel(c):
            # Replaced, not dropped: the trigger keeps calling it. Older releases
            # cut a non-ASCII schema's channel by characters, past 63 bytes.
            c.execute(f"CREATE OR REPLACE FUNCTION \"{self.schema}\".fl_notify_appended() "
                      f"RETURNS trigger LANGUAGE plpgsql AS $$ {body} $$")
        c.execute("SELECT 1 FROM pg_trigger WHERE tgname = 'fl_appended' "
                  "AND tgrelid = %s::regclass", (f'"{self.schema}".{self.events_table_name}',))
        if c.fetchone():
            return  # created already: re-creating would lock the log table
        c.execute(f"CREATE TRIGGER fl_appended AFTER INSERT ON {self.events_table_name} "
                  f"FOR EACH STATEMENT EXECUTE FUNCTION \"{self.schema}\".fl_notify_appended()")

    def listen(self) -> PgAppendWakeups:
        """Wake-ups by the log's notifications; on a standby, which sends none,
        its waits poll until LISTEN is taken again (the server promoted)."""
        return PgAppendWakeups(self.conninfo, self.channel)

    @contextmanager
    def reading(self, snapshot: bool = True, lasting: bool = False) -> Iterator[PgCursor]:
        """`snapshot`: one REPEATABLE READ transaction for all the statements;
        else each statement is its own snapshot, on an autocommit connection (one
        round trip a statement, where a transaction adds two). `lasting`: the
        server's idle_in_transaction_session_timeout does not end it."""
        if not snapshot:
            with self._lent("single") as single, single.cursor() as raw:
                yield PgCursor(raw)
            return
        with self._lent("reader") as conn, conn.cursor() as raw:
            try:
                if lasting:
                    raw.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
                yield PgCursor(raw)
            finally:
                # Ended by COMMIT, which changes nothing here: psycopg forgets the
                # statements it prepared on the connection at every ROLLBACK.
                with contextlib.suppress(psycopg.Error):  # a broken one is replaced
                    conn.commit()

    def read_all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """One statement: its own snapshot, on an autocommit connection."""
        with self._lent("single") as single, single.cursor() as raw:
            return PgCursor(raw).execute(sql, params).fetchall()

    def _writer(self, sync: bool) -> psycopg.Connection[Any]:
        """The writer connection, synced or not (see `writing`)."""
        conn = self._writers.get(sync)
        if not _usable(conn):
            _replace(conn)
            conn = self._writers[sync] = self._connect(
                "" if sync else "SET synchronous_commit = off")
            conn.autocommit = True  # transactions are begun and ended in the batch
            # PgBatch prepares its statements itself:
            # none of psycopg's own on this connection.
            conn.prepare_threshold = None
            self._prepared[sync] = Prepared()
            self._check_last_appended(conn)
            if sync:
                self._flush_after_lock = _may_flush_after_commit(conn)
        return conn

    def _check_last_appended(self, conn: psycopg.Connection[Any]) -> None:
        """A writer connection opened again (the server restarted, crashed,
        failed over, or ended it): the last event this recorder appended must
        still be in the log. An append committed without waiting for the disk
        (ADR 0011), or one a standby had not received, is lost when the server
        dies before writing it, while this process lives on with it in memory;
        nothing may then be appended on top of it (ADR 0017, "Appends a server
        lost"). WAL is replayed in order: if the last is there, all are."""
        last = self._last_appended
        if last is None:
            return
        try:
            found = self._holds(conn, last)
        except BaseException:
            # Not looked at: the next append opens a connection again, and looks.
            self._writers = {k: c for k, c in self._writers.items() if c is not conn}
            _replace(conn)
            raise
        self._last_appended = None
        if found:
            return
        if self.after_abort is not None:
            self.after_abort()  # what the projections kept may hold what was lost
        synced = self._last_synced
        if synced is not None and (synced == last or not self._holds(conn, synced)):
            # No crash loses an append that waited for the disk: the log went back.
            head = conn.execute(f"SELECT MAX(notification_id) FROM {self.events_table_name}"
                                ).fetchone()
            self._went_back(synced[0], int(head[0] or 0) if head else 0)
        self.lost_appends += 1
        self._forecast.forget()
        raise OperationalError(
            f"the server no longer holds this engine's last append (position {last[0]}): "
            "it crashed, restarted or failed over before that append reached its disk (an "
            "append is committed without waiting for the disk where a crash of the engine's "
            "own process could not lose it, ADR 0011). Nothing is appended on what was "
            "lost: the session stops here, and recovery continues it from the log")

    def _holds(self, conn: psycopg.Connection[Any], appended: tuple[int, str, int]) -> bool:
        """Whether the log holds this append (position, stream, version)."""
        position, stream, version = appended
        return conn.execute(
            f"SELECT 1 FROM {self.events_table_name} WHERE notification_id = %s AND "
            "originator_id = %s AND originator_version = %s",
            (position, _uuid(stream), version)).fetchone() is not None

    @contextmanager
    def writing(self, sync: bool = True, tracking: bool = False,
                later: bool = False) -> Iterator[PgBatch]:
        """One write transaction, holding the log table's EXCLUSIVE lock from its
        start (waiting up to the lock timeout): writers run one at a time.
        `sync=False`: the commit does not wait for the WAL flush (ADR 0011); it
        runs on a writer connection whose sessions are set so, where a `SET
        LOCAL` would cost a statement per transaction.

        Statements are queued and sent together (postgres_batch.py): the
        BEGIN, the lock, the tracking rows (when `tracking`: the caller will
        fold projections) and an append's inserts and fence go in the first
        message; the projections' writes go with the next read or the COMMIT.
        An error of any statement rolls the whole transaction back, wherever it
        surfaces. `later`: the COMMIT's message is sent and its answer left on
        the connection (`PgBatch.answer`), if nothing in it was asked for.

        A synced transaction commits without waiting for the disk, releasing
        the lock, and a second one in the same message waits for it
        (FLUSH_AFTER_COMMIT): other writers append while the disk flushes,
        and the answer still means "on disk" (ADR 0017, "The disk waited for
        after the lock").
        """
        with self._writer_lock:
            self.settle()
            self.keep_announced()
            batch = PgBatch(self._writer(sync), translate, self._prepared[sync])
            flush_after = sync and self._flush_after_lock
            try:
                batch.add("BEGIN")
                if flush_after:
                    batch.add("SET LOCAL synchronous_commit = off")
                batch.add(f"LOCK TABLE {self.events_table_name} IN EXCLUSIVE MODE")
                if tracking:
                    batch.prefetch_tracking()
                yield batch
                batch.commit(later, FLUSH_AFTER_COMMIT if flush_after else None)
                self._forecast.tracked(batch.tracking_changes)
            except psycopg.errors.LockNotAvailable as e:
                with contextlib.suppress(psycopg.Error):
                    batch.rollback()
                raise OperationalError(e) from e
            except BaseException as e:
                with contextlib.suppress(psycopg.Error):
                    batch.rollback()
                self._forecast.forget()
                if isinstance(e, psycopg.errors.ReadOnlySqlTransaction):
                    self._drop_writer(sync)
                if batch.failed_after_commit:
                    raise self._not_flushed(e) from None
                raise
            finally:
                batch.close()
            if self._note_read_only and not batch.unanswered:
                self._note_again(self._writers[sync])

    def _note_again(self, writer: psycopg.Connection[Any]) -> None:
        """The liveness lock's note was refused (the server refused writes: the
        lock's connection, opened then, refuses them still), and a write went
        through since on `writer`: the note is written there. The lock itself
        stays where it is: freed a moment, it could prove a living engine gone
        to one that found it free before (`holder_alive`)."""
        with self._liveness_lock:
            if self._held_key is not None:
                self._note_held(writer, self._held_key)

    def _drop_writer(self, sync: bool) -> None:
        """A writer connection the server refused a write on: a database or role
        set read-only (`default_transaction_read_only`) is read when a connection
        opens, so this one would refuse every write after the setting is lifted.
        The next write opens another, which takes the server's present setting."""
        conn = self._writers.pop(sync, None)
        _replace(conn)

    def _not_flushed(self, e: BaseException) -> psycopg.Error:
        """A synced append committed, and its wait for the disk (FLUSH_AFTER_COMMIT)
        failed: this engine waits within its commits until its synced writer
        connection is opened again (which tries the statement again)."""
        self._flush_after_lock = False
        said = one_line(e)
        logger.warning("waiting for the disk after the log's lock failed (%s): this "
                       "engine's appends wait for it within their commit until its writer "
                       "connection is opened again", said)
        return psycopg.OperationalError(
            f"the append was committed, but the wait for the disk that follows it failed "
            f"({said}): it is not known whether it reached the disk. This engine's appends "
            "now wait for the disk within their commit")

    def _insert_sql(self, chunk: Sequence[Row], fence: Fence | None,
                    rows: Sequence[Row]) -> tuple[str, list[Any]]:
        """One INSERT for these events. With a fence, it inserts nothing unless
        the fenced stream is, before this append, at the version that this
        append's own events of it bring to `fence.version` (the statement's
        snapshot predates its own rows)."""
        values, params = _values("(%s::uuid, %s::bigint, %s, %s::bytea)", chunk)
        sql = (f"INSERT INTO {self.events_table_name} (originator_id, originator_version, "
               f"topic, state) ")
        if fence is None:
            sql += f"VALUES {values}"
        else:
            sql += (f"SELECT * FROM (VALUES {values}) AS appended WHERE "
                    f"(SELECT MAX(originator_version) FROM {self.events_table_name} "
                    "WHERE originator_id=%s) IS NOT DISTINCT FROM %s")
            params += [fence.stream_id, _fence_before(fence, rows)]
        return sql + " RETURNING notification_id, originator_id, originator_version", params

    @staticmethod
    def _positions(rows: Sequence[Row], inserted: list[Any], fence: Fence | None) -> list[int]:
        """Each row's position, in the rows' order. PostgreSQL gives a multi-row
        VALUES its serial numbers in order; RETURNING's order is not promised,
        so the rows are matched by stream and version, and the order checked:
        positions must follow the order the events were appended in."""
        given = {(i.hex, v): int(p) for p, i, v in inserted}  # i: a UUID
        if not given and rows and fence is not None:
            raise StaleFenceError(f"stream {fence.stream_id} is no longer at the version "
                                  f"{fence.version} this append was fenced on")
        positions = [given[(r[0], r[1])] for r in rows]  # r[0]: the stream id's hex
        if any(a >= b for a, b in itertools.pairwise(positions)):
            raise OperationalError(f"positions {positions} were not given in the order of "
                                   "the appended events; nothing was stored")
        return positions

    def tracked(self, c: PgCursor | PgBatch, name: str) -> int:
        rows = c.tracking_rows() if isinstance(c, PgBatch) else None
        if rows is None:
            return super().tracked(c, name)
        return rows.get(name, 0)

    def track(self, c: PgCursor | PgBatch, name: str, position: int) -> None:
        super().track(c, name, position)
        if isinstance(c, PgBatch):
            c.tracked(name, position)

    def untrack(self, c: PgCursor | PgBatch, name: str) -> None:
        super().untrack(c, name)
        if isinstance(c, PgBatch):
            c.tracked(name, None)

    # -------------------------------------------------------------- liveness

    _liveness: psycopg.Connection[Any] | None = None
    _held_key: int | None = None  # the advisory lock this engine holds while alive
    _owner = ""  # whose lock it is (`announce`)
    # The lock is held, and its note was refused by a server refusing writes.
    _note_read_only = False
    _retakes_failed = 0  # failed tries in a row to take the lock again (`keep_announced`)

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
        connection and the lock with it, and the holder is provably gone. An
        engine on a store opened read-only holds no session: it holds none."""
        key = self._liveness_key(owner)
        if key is None or self.read_only:
            return
        self._owner = owner
        self._liveness, self._held_key = self._hold_liveness(key, wait=True), key

    def _hold_liveness(self, key: int, wait: bool) -> psycopg.Connection[Any] | None:
        """A connection of its own holding advisory lock `key` (None: not
        waiting, and it is held elsewhere), and the lock noted as taken under
        the server's present incarnation (`_note_held`). The connection is
        exempt from the server's idle timeout; like every connection, it finds
        a vanished server by its TCP settings (`store_url.TCP_DEFAULTS`, or the
        URL's)."""
        conn = _opened(self.conninfo, autocommit=True)  # idle_session_timeout = 0 too
        try:
            if wait:
                conn.execute("SELECT pg_advisory_lock(%s, %s)", (_CREATE_LOCK, key))
            else:
                row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                   (_CREATE_LOCK, key)).fetchone()
                if not (row and row[0]):
                    _replace(conn)  # its old connection's backend has not ended yet, say
                    return None
        except BaseException:
            _replace(conn)
            raise
        self._note_held(conn, key)
        return conn

    def _note_held(self, conn: psycopg.Connection[Any], key: int) -> None:
        """Write down, after taking the lock, under which incarnation of the
        server this engine holds it (`fl_liveness`): a free lock proves its
        owner gone only if the owner took it under the present one. A failover
        or a restart frees every lock, the living's too, and a living owner may
        take a while to reach the new server (`holder_alive`). Also clears the
        notes taken under an earlier incarnation whose lock is free (they
        prove nothing any more); those of owners that died under this one
        stay, their proof. A note that cannot be written leaves this engine
        judged by its lease, never wrongly gone."""
        table = f'"{self.schema}".fl_liveness'
        try:
            conn.execute(f"INSERT INTO {table} (owner, key, incarnation, taken_at) "
                         f"VALUES (%s, %s, {_INCARNATION}, clock_timestamp()) "
                         "ON CONFLICT (owner) DO UPDATE SET key = excluded.key, "
                         "incarnation = excluded.incarnation, taken_at = excluded.taken_at",
                         (self._owner, key))
        except psycopg.Error as e:
            # Refused as the server refused writes: noted again once a write goes
            # through (`_note_again`), said once; the writes say it themselves.
            read_only = isinstance(e, psycopg.errors.ReadOnlySqlTransaction)
            if not self._note_read_only:
                logger.log(logging.INFO if read_only else logging.WARNING,
                           "could not note this engine's liveness lock: %s", one_line(e))
            self._note_read_only = read_only
            return
        self._note_read_only = False
        try:
            # CASE: the server may not evaluate the conditions in their written
            # order, and the proofs of this incarnation's dead must not be locked.
            # An older release's notes of this incarnation stay: its proofs.
            conn.execute(f"DELETE FROM {table} WHERE CASE WHEN incarnation IS DISTINCT FROM "
                         f"{_INCARNATION} AND incarnation IS DISTINCT FROM "
                         f"{_SERVER_INCARNATION} THEN pg_try_advisory_xact_lock(%s, key) "
                         "ELSE false END", (_CREATE_LOCK,))
        except psycopg.Error as e:
            logger.warning("could not clear the liveness notes of an earlier server: %s", e)

    def keep_announced(self) -> None:
        """Take the owner's advisory lock again if the server ended the
        connection that held it (called before each write and at each
        heartbeat). Until then, after a restart or a failover, other processes
        cannot tell whether it lives and go by its leases (`holder_alive`); after
        its connection alone was ended (an idle timeout, `pg_terminate_backend`)
        they judge it gone. Never waits on the lock and never
        raises: if it cannot be taken now, the next call tries again, and the
        fence keeps a holder taken over meanwhile from appending."""
        with self._liveness_lock:  # the key read under it: a close may be ending it
            key = self._held_key
            if key is None or _usable(self._liveness):
                return
            _replace(self._liveness)
            self._liveness = None
            try:
                self._liveness = self._hold_liveness(key, wait=False)
            except (psycopg.Error, InterfaceError) as e:  # InterfaceError: not connected
                # Said once a streak: it is tried before every write and every second.
                self._retakes_failed += 1
                logger.log(logging.WARNING if self._retakes_failed == 1 else logging.DEBUG,
                           "could not take this engine's liveness lock again (tried before "
                           "each write and each heartbeat): %s", one_line(e))
                return
            if self._retakes_failed:
                logger.info("took this engine's liveness lock again after %d tries",
                            self._retakes_failed + 1)
                self._retakes_failed = 0

    def grant(self, role: str, read_only: bool = False) -> list[str]:
        conn = self._connect()
        found = None
        try:
            with conn.cursor() as c:
                # What the owner creates later (an upgrade's tables) is granted
                # too: as the owner's default, whoever runs this (a superuser's
                # own default would cover only what the superuser creates).
                c.execute(LOG_OWNER_SQL, (self.schema, self.events_table_name))
                found = c.fetchone()
                statements = grants(self.schema, role, later_too=True, read_only=read_only,
                                    owner=found[0] if found else None)
                for statement in statements:
                    c.execute(statement.encode())
            conn.commit()
        except psycopg.Error as e:
            if isinstance(e, psycopg.errors.UndefinedObject):
                todo = "create the role first (CREATE ROLE ... LOGIN)"
            elif isinstance(e, psycopg.errors.InsufficientPrivilege):
                todo = ("grant as the role that owns the store's tables"
                        f"{f' ({found[0]})' if found else ''}, or as a superuser")
            else:  # the server refused it for another cause (read-only, say)
                todo = advice(e) or "try again once the server takes it"
            raise ConfigurationError(
                f"cannot grant {role!r} the use of the store in schema {self.schema!r}: "
                f"{one_line(e)}. Nothing was granted; {todo}") from None
        finally:
            conn.close()
        return statements

    def check_head(self, read_head: Callable[[], int]) -> int:
        if self._gone_back is not None:
            raise LogWentBack(self._gone_back)
        synced = self._last_synced  # first: one that commits after the read is no cut
        head = read_head()
        if synced is not None and head < synced[0]:
            self._went_back(synced[0], head)
        return head

    def replaying(self) -> bool:
        return bool(self.read_all("SELECT pg_is_in_recovery()", ())[0][0])

    def store_time(self) -> datetime:
        """The server's clock: every engine on this store judges leases by it."""
        return self.read_all("SELECT clock_timestamp()", ())[0][0]

    def holder_alive(self, owner: str | None, patient: bool = False) -> bool | None:
        """False when `owner` is gone: its advisory lock is free, it took it under
        the server's present incarnation, and it has not taken it again for
        RETAKE_WITHIN_S since this engine first found it free. True while it
        holds it. None when this store cannot tell (yet): no lock for that
        owner, one last taken before a failover, a restart or a
        reinitialisation (its owner may not have reached the server since), or
        a lock found free less than RETAKE_WITHIN_S ago: the server ends a
        connection (an idle timeout, `pg_terminate_backend`) without ending its
        process, which takes its lock again at its next write or heartbeat,
        while its tool call goes on (ADR 0017). `patient`: wait out what is
        left of that time, then look again, rather than answer None."""
        key = self._liveness_key(owner or "")
        if owner is None or key is None or self._on_standby:  # a standby's locks are its own
            return None
        (free, here, taken), = self.read_all(
            "SELECT pg_try_advisory_xact_lock(?, ?), "  # released as the statement ends
            f"COALESCE((SELECT incarnation = {_INCARNATION} FROM fl_liveness "
            "WHERE owner = ?), false), (SELECT taken_at FROM fl_liveness WHERE owner = ?)",
            (_CREATE_LOCK, key, owner, owner))
        if not free:
            self._found_free.pop(owner, None)
            return True
        if not here or taken is None:  # taken is None: noted by a release without taken_at
            return None
        now = time.monotonic()
        first = self._found_free.get(owner)
        if first is None or first[0] != taken:  # else taken again and freed since: living
            first = self._found_free[owner] = (taken, now)
        if now - first[1] >= self.RETAKE_WITHIN_S:
            return False
        if not patient:
            return None
        time.sleep(self.RETAKE_WITHIN_S - (now - first[1]))
        return self.holder_alive(owner)

    @property
    def writer_lock(self) -> threading.RLock:
        return self._writer_lock

    def close_connections(self) -> None:
        self.settle()
        with self._liveness_lock:
            self._held_key = None  # not announced again by a write still under way
            if self._liveness is not None and not self._liveness.closed:
                with contextlib.suppress(psycopg.Error):  # closed: nobody asks after it
                    self._liveness.execute(f'DELETE FROM "{self.schema}".fl_liveness '
                                           "WHERE owner = %s", (self._owner,))
                self._liveness.close()
            self._liveness = None
        with self._reading_lock:  # lent ones too: a pool's threads outlive the engine
            reading, self._reading = self._reading, {}
            self._idle = {kind: [] for kind in self._idle}
            self._generation += 1
        for conn in (*self._writers.values(), *reading):
            if not conn.closed:
                conn.close()
        self._writers = {}

    # ----------------------------------------------------------------- writes

    # How long an append waits for a server it cannot connect to (restarting,
    # failing over) before it fails: nothing was sent, so trying again is safe.
    RECONNECT_WITHIN_S = 30.0
    busy_patience_s = BUSY_PATIENCE_S  # busy_appends.py

    def append_rows(self, rows: Sequence[Row], appended: Sequence[Any],
                    fence: Fence | None = None, sync: bool = True,
                    snapshots: Sequence[Row] = (), hold: bool = False,
                    read_after: Sequence[ReadAfter] = (),
                    answered: Callable[[int | BaseException], None] | None = None) -> int:
        """Insert events in one transaction (`_append_rows`). A writer connection
        that cannot be opened (the server restarting: nothing was sent) is tried
        again for up to RECONNECT_WITHIN_S, so that a run whose tool call
        returned while the server restarted still records the outcome it holds,
        as it would have a moment later; the fence refuses it if the session
        was taken over meanwhile. A connection lost while sending is not: its
        outcome is unknown."""
        lost = self.lost_appends  # as the caller last checked it
        append = functools.partial(
            self._append_rows, rows, appended, fence, sync, snapshots, hold, read_after, lost,
            answered)
        return self._reconnecting(append) if fence is None else self._patiently(append)

    def _patiently(self, append: Callable[[], int]) -> int:
        """A session's append: tried again while no connection can be opened
        (`_reconnecting`) and while another process holds the write lock past
        the lock timeout (busy_appends.py)."""
        return waiting_out_busy(functools.partial(self._reconnecting, append), self.is_busy,
                                self.busy_patience_s)

    def place_rows(self, placed: Sequence[tuple[int, Row]]) -> None:
        positions, rows = [p for p, _ in placed], [row for _, row in placed]
        with self.writing(sync=False) as c:
            head = c.ask(HEAD_SQL) if self.chain is not None else None
            for part in _in_statements(placed):
                values, params = _values("(%s::bigint, %s::uuid, %s::bigint, %s::text, "
                                         "%s::bytea)", [(p, *row) for p, row in part])
                c.add(f"INSERT INTO {self.events_table_name} (notification_id, originator_id, "
                      f"originator_version, topic, state) VALUES {values}", params)
            if head is not None and self.chain is not None:
                _add_links(c, self.chain.links(head_of(head.fetchall()), positions, rows))
            # Positions given bypass the sequence: it is kept past them.
            c.add("SELECT setval(%s, %s)", [self._sequence, positions[-1]])
        self._forecast.forget()  # its head is not where it was
        self._last_appended = (positions[-1], rows[-1][0], rows[-1][1])

    def _reconnecting(self, append: Callable[[], int]) -> int:
        """`append`, tried again while no connection can be opened to make it."""
        deadline, delay, tries = time.monotonic() + self.RECONNECT_WITHIN_S, 0.05, 0
        while True:
            tries += 1
            try:
                return append()
            except NotConnected as e:
                if time.monotonic() + delay > deadline:
                    raise
                if no_connection_to_spare(str(e)) is not None:
                    self._close_idle_readers()  # this engine's own may be what fills it
                logger.log(logging.WARNING if tries == 1 else logging.DEBUG,  # once a streak
                           "could not connect to append (%s); trying again%s", one_line(e),
                           f" for up to {self.RECONNECT_WITHIN_S:.0f}s" if tries == 1
                           else f" in {delay:.2f}s")
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _append_rows(self, rows: Sequence[Row], appended: Sequence[Any],
                     fence: Fence | None, sync: bool, snapshots: Sequence[Row], hold: bool,
                     read_after: Sequence[ReadAfter], lost: int,
                     answered: Callable[[int | BaseException], None] | None = None) -> int:
        """On the forecast (one message) while this writer is the only one
        appending, else reading the head first (postgres_forecast.py). A
        forecast that missed stored nothing. `read_after` goes last, in the
        COMMIT's message. `lost`: the appends known lost when the caller began;
        one found lost since (by another thread, while this append waited for
        the server) stops it: the caller's memory may hold what the log lost.
        `answered`: an unsynced append on the forecast, with nothing to read
        back, is sent and its answer read later (`settle`)."""
        with self._writer_lock:
            self.settle()
            if self._gone_back is not None:  # for this engine's life: it knows what was lost
                raise LogWentBack(self._gone_back)
            if self.lost_appends != lost:
                raise OperationalError(
                    "the server lost appends this engine had made (it crashed or failed over "
                    "before they reached its disk) while this append waited for it: nothing "
                    "of this append was stored")
            if 0 < len(rows) <= _ROWS_PER_INSERT and self._forecast.usable(
                    self.chain is not None):
                later = None
                if answered is not None and not sync and not read_after:
                    later = _Later(answered, functools.partial(
                        self._append_ordinary, rows, appended, fence, sync, snapshots, hold))
                try:
                    return self._append(rows, appended, fence, sync, snapshots, hold, True,
                                        read_after, later)
                except psycopg.Error as e:
                    if not self._forecast_missed(e):
                        raise
            return self._append_ordinary(rows, appended, fence, sync, snapshots, hold,
                                         read_after)

    def _append_ordinary(self, rows: Sequence[Row], appended: Sequence[Any],
                         fence: Fence | None, sync: bool, snapshots: Sequence[Row],
                         hold: bool, read_after: Sequence[ReadAfter] = ()) -> int:
        """The append made reading the head first (two messages)."""
        try:
            return self._append(rows, appended, fence, sync, snapshots, hold, False,
                                read_after)
        except _PositionsBehind:
            self._set_sequence_past_head()  # nothing was stored: once more, past the head
        try:
            return self._append(rows, appended, fence, sync, snapshots, hold, False,
                                read_after)
        except _PositionsBehind:
            raise OperationalError(
                "the log's position sequence gave positions at or below the log's head "
                "again, just after it was set past it: something sets it back while "
                "engines append. Nothing of this append was stored") from None

    def settle(self) -> None:
        """Read the answer of an append sent without waiting for it: before
        every write (they share its connections), and before a read of the
        thread that sent it (`_settle_before_reading`), which must see it. Its
        caller is told how it went (`answered`); an append whose forecast
        missed is made again the ordinary way (a connection lost with the
        answer is never: its outcome is unknown). Never raises but for an
        interrupt, after telling the caller."""
        if self._unanswered is None and not self._settling:
            return
        with self._writer_lock:  # held by whoever reads it: the others wait for it
            if self._unanswered is None:
                return
            self._settling = True  # first: another thread that finds neither goes on
            sent, self._unanswered = self._unanswered, None
            try:
                self._read_answer(sent)
            finally:
                self._settling = False

    def _settle_before_reading(self) -> None:
        """A read waits for the answer of an append its own thread sent (it
        must see it), unless it reads one stream that append does not write;
        or while another thread reads an answer (its own append's, perhaps).
        Another thread's read goes on: it asked nothing of that append."""
        sent = self._unanswered
        if self._settling or (sent is not None and sent.thread == threading.get_ident()
                              and not getattr(self._apart, "stream", False)):
            self.settle()

    def _read_answer(self, sent: _Unanswered) -> None:
        try:
            sent.batch.answer()
        except BaseException as e:
            with contextlib.suppress(psycopg.Error):
                sent.batch.rollback()
            self._forecast.forget()
            if self.after_abort is not None:
                self.after_abort()
            self._last_appended, self._last_synced = sent.before
            result = self._after_refusal(e, sent)
            sent.later.answered(result)
            if not isinstance(e, Exception):
                raise  # an interrupt, told to the caller first
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result from None  # an interrupt while it was made again
            return
        sent.later.answered(sent.position)

    def _forecast_missed(self, e: BaseException) -> bool:
        """Whether an append on the forecast was refused by its guard (another
        writer moved the log; nothing was stored): forecasts then pause."""
        if isinstance(e, psycopg.Error) and e.sqlstate == GUARD_FAILED:
            self._forecast.missed()
            return True
        return False

    def _after_refusal(self, e: BaseException, sent: _Unanswered) -> int | BaseException:
        """What an append sent on the forecast comes to when its answer is an
        error: made again the ordinary way if another writer moved the log (or
        the position sequence was set back), else what it would have raised."""
        again = self._forecast_missed(e)
        if not again and isinstance(e, psycopg.errors.UniqueViolation):
            taken = self._taken(e)
            if not isinstance(taken, _PositionsBehind):
                return taken
            again = True
        if not again:
            if isinstance(e, psycopg.errors.LockNotAvailable):
                # A session's append (busy_appends.py), whose answer came late:
                # nothing of it was stored, so it is made again, patiently.
                try:
                    return self._patiently(sent.later.again)
                except BaseException as failed:
                    return failed
            return e
        try:
            return self._reconnecting(sent.later.again)
        except BaseException as failed:
            return failed

    def _went_back(self, position: int, head: int) -> None:
        """The log no longer holds this engine's append at `position` and ends
        at `head`: the store was restored from an older backup (or replaced)
        under it. Nothing is appended on top, for this engine's life; what it
        remembers of the log is dropped, and the sessions it had begun stop
        (`lost_appends`, as for appends a crashed server lost)."""
        self.lost_appends += 1
        self._forecast.forget()
        self._gone_back = (
            f"the store's log no longer holds this engine's append at position {position} (it "
            f"ends at position {head}): it was restored from an older backup, or replaced, "
            "while this engine ran. This engine appends nothing more: restart it once the store is "
            "as it should be. What ran after the backup is no longer recorded and may be done "
            "again by any engine; see the README (Backups)")
        raise LogWentBack(self._gone_back)

    def _set_sequence_past_head(self) -> None:
        """The position sequence, set back by hand (`ALTER SEQUENCE ... RESTART`)
        or by a restore or a replication that does not carry it, would give
        positions the log already holds, or positions below its head that no
        reader would ever look at again: set it past the head, under the log's
        lock. Said in the log, as nothing of flowledger's sets it back."""
        with self.writing(sync=True) as c:
            found = c.ask(
                f"SELECT head, setval(%s, head) FROM (SELECT MAX(notification_id) AS head "
                f"FROM {self.events_table_name}) AS log "
                "WHERE head > COALESCE(pg_sequence_last_value(%s::regclass), 0)",
                (self._sequence, self._sequence)).fetchall()
        if found:
            logger.warning("the log's position sequence %s was behind the log's head (%s), "
                           "set back outside flowledger; it is set past the head again",
                           self._sequence, found[0][0])

    def _append(self, rows: Sequence[Row], appended: Sequence[Any], fence: Fence | None,
                sync: bool, snapshots: Sequence[Row], hold: bool, forecast: bool,
                read_after: Sequence[ReadAfter] = (), later: _Later | None = None) -> int:
        links: list[Link] = []
        positions: list[int] = []
        head: tuple[int, bytes] | None = None
        inserts: list[Rows] = []
        head_rows: Rows | None = None
        asked: list[Rows] = []
        try:
            before = (self._last_appended, self._last_synced)
            with self.writing(sync, tracking=not forecast, later=later is not None) as c:
                if forecast:
                    positions, head, links = self._send_forecast(c, rows, fence)
                else:
                    inserts, head_rows = self._send_reading_head(c, rows, fence)
                # What the fold will read travels in the same message.
                if self.before_fold is not None:
                    self.before_fold(c, appended, hold)
                if not forecast:
                    positions = self._positions_given(rows, fence, inserts)
                    head = head_of(head_rows.fetchall()) if head_rows is not None else None
                    if head is not None and positions and positions[0] <= head[0]:
                        raise _PositionsBehind  # the sequence was set back: rolled back
                    if (head is not None and self._last_appended is not None
                            and head[0] < self._last_appended[0]):
                        self._went_back(self._last_appended[0], head[0])  # rolled back too
                if self.chain is not None and not forecast:  # a forecast's went with it
                    links = self.chain.links(head, positions, rows)
                    _add_links(c, links)
                for snapshot in snapshots:
                    c.add(f"INSERT INTO {self.snapshot_table_name} VALUES "
                          "(%s::uuid, %s, %s, %s::bytea) ON CONFLICT DO NOTHING", snapshot)
                if self.after_insert is not None:
                    self.after_insert(c, appended, positions, hold, fence)
                asked = [c.prefetch(r.sql, r.params) for r in read_after]
                tracking = c.tracking_rows()
        except psycopg.errors.UniqueViolation as e:
            if self.after_abort is not None:
                self.after_abort()
            raise self._taken(e) from e
        except BaseException:
            if self.after_abort is not None:
                self.after_abort()
            raise
        if c.unanswered:  # registered at once: its answer is read by `settle`
            assert later is not None
            self._unanswered = _Unanswered(
                c, int(positions[-1]), frozenset(r[0] for r in rows), before, later,
                threading.get_ident())
        for wanted, answer in zip(read_after, asked, strict=True):
            wanted.rows = answer.fetchall()  # committed
        if rows:
            self._forecast.learn(positions[-1], (links[-1][0], links[-1][2]) if links else None,
                                 tracking)
            self._last_appended = (int(positions[-1]), rows[-1][0], rows[-1][1])
            if sync:
                self._last_synced = self._last_appended
        return int(positions[-1]) if rows else 0

    def _taken(self, e: psycopg.errors.UniqueViolation) -> Exception:
        """What a unique key an append ran into says."""
        if "notification_id" in (e.diag.constraint_name or ""):
            return _PositionsBehind()  # a position taken: the sequence was set back
        if e.diag.table_name == self.events_table_name:  # a stream's version taken
            return IntegrityError(e)
        # A projection's or the chain's: not another writer's doing.
        return ProjectionRowTaken(e.diag.table_name or "?", one_line(e))

    def _send_reading_head(self, c: PgBatch, rows: Sequence[Row], fence: Fence | None
                           ) -> tuple[list[Rows], Rows | None]:
        """Queue the first message's reads: the chain's head and the inserts (the
        first carries the fence), whose answers give the positions."""
        head = c.ask(HEAD_SQL) if self.chain is not None else None
        inserts = [c.ask(*self._insert_sql(chunk, fence if n == 0 else None, rows))
                   for n, chunk in enumerate(_in_statements(rows))]
        return inserts, head

    def _positions_given(self, rows: Sequence[Row], fence: Fence | None,
                         inserts: Sequence[Rows]) -> list[int]:
        positions: list[int] = []
        for n, (chunk, inserted) in enumerate(zip(_in_statements(rows), inserts, strict=True)):
            positions.extend(self._positions(chunk, inserted.fetchall(),
                                             fence if n == 0 else None))
        return positions

    def _send_forecast(self, c: PgBatch, rows: Sequence[Row], fence: Fence | None
                       ) -> tuple[list[int], tuple[int, bytes] | None, list[Link]]:
        """Queue the guard, the inserts at the forecast positions, their chain
        links and the sequence kept past them as one statement (sent with the
        rest of the transaction; each statement costs the server its own start
        and answer): the positions, the chain's head and the links. The inserts
        take their rows joined with the guard's, so the guard runs first and
        its error leaves nothing inserted; the sequence is set from what both
        inserts made, after them. The guard reads the log as it was before the
        inserts (one snapshot for the whole statement)."""
        f = self._forecast
        assert f.head is not None and f.tracking is not None
        c.tracking = dict(f.tracking)
        guard, params = f.guard(fence, _fence_before(fence, rows) if fence is not None else None)
        positions = list(range(f.head + 1, f.head + 1 + len(rows)))
        # Typed: values selected, not inserted, get no type from the columns.
        values, inserted = _values("(%s::bigint, %s::uuid, %s::bigint, %s::text, %s::bytea)",
                                   [(p, *r) for p, r in zip(positions, rows, strict=True)])
        sql = (f"WITH guard AS ({guard}), inserted AS (INSERT INTO {self.events_table_name} "
               f"(notification_id, originator_id, originator_version, topic, state) "
               f"SELECT e.* FROM (VALUES {values}) AS e, guard RETURNING notification_id)")
        params += inserted
        links: list[Link] = []
        if self.chain is not None:
            links = self.chain.links(f.chain_head, positions, rows)
            chained, linked = _values("(%s::bigint, %s::bigint, %s::bytea)", links)
            sql += (f", chained AS (INSERT INTO {CHAIN_TABLE} SELECT l.* FROM (VALUES {chained})"
                    " AS l, guard RETURNING position)")
            params += linked
        # Positions given here bypass the sequence: it is kept past them, for
        # any writer that takes the next one from it. Read after every insert
        # (its arguments are): one refused leaves the sequence as it was.
        after = " + 0 * (SELECT COUNT(*) FROM chained)" if links else ""
        c.add(sql + f" SELECT setval(%s, (SELECT MAX(notification_id) FROM inserted){after})",
              [*params, self._sequence])
        return positions, f.chain_head, links

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


class PgAppendWakeups:
    """Woken by the log's notifications (LISTEN on a connection of its own)."""

    # On a standby, how often to try LISTEN again: a promoted standby (or a URL
    # of several hosts that now reaches the primary) sends notifications again.
    LISTEN_AGAIN_S = 10.0

    def __init__(self, conninfo: dict[str, Any], channel: str) -> None:
        self.conninfo, self.channel = conninfo, channel
        self.closed = False
        try:
            self.conn = self._listening()
        except psycopg.OperationalError:  # away, or no connection to spare: polled meanwhile
            self.conn = None
        self._listen_again_at = time.monotonic() + (
            self.LISTEN_AGAIN_S if self.conn is not None else 0.0)

    def _listening(self) -> psycopg.Connection[Any] | None:
        """A connection listening to the log's channel; None on a standby (a
        URL of several hosts may reach one after a failover), which sends no
        notifications: waits then only sleep, and the waiter polls the head."""
        conn = opened_here(psycopg.connect(**self.conninfo, autocommit=True))
        try:
            conn.execute(_SET_SESSION)  # idle for long: idle_session_timeout
            conn.execute(f'LISTEN "{self.channel}"')
        except psycopg.errors.ReadOnlySqlTransaction:
            conn.close()
            return None
        except BaseException:
            conn.close()
            raise
        return conn

    def wait(self, timeout: float) -> bool:
        """True once an append was committed since the last wait (or during this
        one), False after `timeout` seconds without one. True too when the
        server had ended the connection: it listens again on a new one, and
        what was appended meanwhile is not known."""
        woken = False
        if self.conn is None:  # a standby: polled, and LISTEN tried again now and then
            return self._polled(timeout)
        try:
            for _ in self.conn.notifies(timeout=max(0.0, timeout), stop_after=1):
                woken = True
        except psycopg.OperationalError:
            if self.closed:  # closed by another thread to end the wait
                return False
            _replace(self.conn)
            self.conn = self._listening()
            return True
        return woken

    def _polled(self, timeout: float) -> bool:
        """A wait on a standby: False after `timeout`; True once LISTEN was
        taken again (the server was promoted, or another host answered), as
        what was appended meanwhile is not known."""
        now = time.monotonic()
        if now < self._listen_again_at:
            time.sleep(max(0.0, min(timeout, self._listen_again_at - now)))
            return False
        self._listen_again_at = now + self.LISTEN_AGAIN_S
        try:
            self.conn = self._listening()
        except psycopg.OperationalError:  # the server is away: polled meanwhile
            self.conn = None
        if self.conn is not None:
            return True
        time.sleep(max(0.0, timeout))
        return False

    def close(self) -> None:
        self.closed = True
        if self.conn is not None:
            self.conn.close()


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
