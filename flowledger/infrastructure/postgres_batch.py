"""A PostgreSQL write transaction sent in as few messages as its reads allow.

Each statement of a write transaction sent on its own costs a message each
way and the client and server work around it, for every projection row the
transaction writes. A `PgBatch` instead binds each statement's values on the
client and queues it; the queue goes to the server as one multi-statement
query (the simple query protocol) when a statement's rows are needed, and
with the COMMIT at the end. The server runs the statements in order and stops
at the first error, which leaves the transaction aborted: nothing of it is
stored (ADR 0017).

A statement's PREPARE, the first time a connection meets it, goes in a message
of its own: the server keeps the whole text of the message a statement was
prepared in, and copies it at every EXECUTE of that statement (a PREPARE that
came with a producer's thousands of events made every later EXECUTE copy
megabytes).

Statements are written in the projections' SQLite-flavoured SQL; `translate`
makes them PostgreSQL's.
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg import generators
from psycopg.abc import PQGen
from psycopg.adapt import Transformer
from psycopg.pq import ExecStatus
from psycopg.pq.abc import PGconn, PGresult

Translate = Callable[[str], str]

# Statements prepared per connection, at most (rebuilds and catch-ups write the
# same few; past this, statements are sent with their values in the text).
MAX_PREPARED = 200

_ANSWERED = (ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK)


class Prepared:
    """The statements prepared on one connection (SQL → name), kept by the
    connection's owner. A name is never issued twice on a connection: a
    PREPARE whose outcome is not known (an interrupt during its round trip,
    after the server ran it) leaves at most a statement nobody uses, never a
    name that clashes with the next one."""

    __slots__ = ("issued", "names")

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.issued = 0

    def issue(self) -> str:
        self.issued += 1
        return f"fl_{self.issued}"


class Rows:
    """The rows a queued statement returns, once the queue has been sent."""

    __slots__ = ("_batch", "_rows")

    def __init__(self, batch: PgBatch) -> None:
        self._batch = batch
        self._rows: list[Any] | None = None

    def fetchall(self) -> list[Any]:
        if self._rows is None:
            self._batch.flush()
        assert self._rows is not None
        return self._rows


class PgBatch:
    """A DB-API-like cursor over one write transaction on an autocommit
    connection: statements are queued, sent together, and answered in order."""

    def __init__(self, conn: psycopg.Connection[Any], translate: Translate,
                 prepared: Prepared) -> None:
        self._conn = conn
        # Statements prepared on this connection, and those whose PREPARE is
        # queued, not yet run (SQL → name).
        self._prepared = prepared
        self._preparing: dict[str, str] = {}
        self._translate = translate
        self._binder: psycopg.ClientCursor[Any] | None = None  # made when first needed
        # Quoted here only as standard_conforming_strings has them (a server or
        # a pooler that turned it off gets psycopg's quoting).
        self._quote = (_QUOTE if conn.info.parameter_status("standard_conforming_strings") == "on"
                       else _QUOTE_SAFELY)
        self._encoding = conn.info.encoding
        self._loader = Transformer(conn)
        self._queue: list[str] = []
        self._wanted: list[tuple[int, Rows]] = []  # (statement index, its rows)
        self._prepares: dict[int, str] = {}  # statement index of a PREPARE → its SQL
        self._last: list[Any] = []
        self._unanswered = False  # a query sent whose answer `answer()` reads
        self._after_commit: int | None = None  # the queue index of `commit(then=)`'s statement
        self.failed_after_commit = False  # that statement failed: the COMMIT went through
        # A write transaction's tracking rows, read with its first message and
        # kept up to date by its writes (FlowPostgresRecorder.tracked).
        self.tracking: dict[str, int] | None = None
        self._tracking_rows: Rows | None = None
        self.tracking_changes: dict[str, int | None] = {}  # by this transaction

    # ------------------------------------------------------------- queueing

    def bind(self, sql: str, params: Sequence[Any] | None = None) -> str:
        """`sql` (PostgreSQL's, `%s` placeholders) with `params` bound as literals:
        as an EXECUTE of the statement prepared on this connection, so that the
        server plans it once, not at every transaction."""
        if not params:
            text = sql.replace("%%", "%").rstrip(" \t\r\n;")  # a last ; would be one more
            if not _NOTHING.sub("", text).strip(" \t\r\n;"):
                # It would give no answer, and the answers that follow would be
                # taken for the wrong statements'.
                raise psycopg.ProgrammingError(f"an empty statement: {sql!r}")
            return text
        name = self._prepared.names.get(sql)
        if name is None:
            if self._prepared.issued >= MAX_PREPARED:
                return self._mogrify(sql, params)  # once: not worth preparing
            name = self._preparing.get(sql)
            if name is None:
                name = self._preparing[sql] = self._prepared.issue()
                numbers = itertools.count(1)
                numbered = _PLACEHOLDER.sub(
                    lambda m: "%" if m.group() == "%%" else f"${next(numbers)}", sql)
                self._prepares[len(self._queue)] = sql
                self._queue.append(f"PREPARE {name} AS {numbered}")
        quote, other = self._quote.get, self._literal
        return f"EXECUTE {name}({', '.join([quote(type(v), other)(v) for v in params])})"

    def _literal(self, value: Any) -> str:
        """A value of a type `_QUOTE` does not know, through psycopg."""
        return self._mogrify("%s", (value,))

    def _mogrify(self, sql: str, params: Sequence[Any]) -> str:
        if self._binder is None:
            self._binder = psycopg.ClientCursor(self._conn)
        return self._binder.mogrify(sql, params)

    def add(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """Queue a statement whose result nobody reads (PostgreSQL's SQL)."""
        self._queue.append(self.bind(sql, params))

    def ask(self, sql: str, params: Sequence[Any] | None = None) -> Rows:
        """Queue a statement whose rows are read later (PostgreSQL's SQL)."""
        rows = Rows(self)
        bound = self.bind(sql, params)  # may queue its PREPARE first
        self._wanted.append((len(self._queue), rows))
        self._queue.append(bound)
        return rows

    def flush(self, later: bool = False) -> bool:
        """Send the queue, as one query but for the PREPAREs it holds (each
        goes alone, in order); fill in the rows asked for. `later`: the last
        query's answer is left to `answer()`, if nothing in it was asked for
        (True when it was so left)."""
        if not self._queue:
            return False
        queue, self._queue = self._queue, []
        wanted, self._wanted = dict(self._wanted), []
        prepares, self._prepares = self._prepares, {}
        preparing, self._preparing = self._preparing, {}
        start = 0
        for at in [*prepares, len(queue)]:
            if (later and at == len(queue) and start < at
                    and not any(start <= index < at for index in wanted)):
                self._send_only(queue[start:at])
                return True
            self._send(queue, start, at, wanted)
            if at < len(queue):
                self._send(queue, at, at + 1, wanted)
                # Known prepared once its own message is answered.
                self._prepared.names[prepares[at]] = preparing[prepares[at]]
            start = at + 1
        return False

    def _send(self, queue: list[str], start: int, stop: int, wanted: dict[int, Rows]) -> None:
        """Statements start..stop-1 of the queue as one query. Sent through
        psycopg's connection (its lock, its wait: an interrupt cancels the
        query) but not a cursor, whose bookkeeping for every result cost more
        than the statements' answers here need."""
        if start >= stop:
            return
        query = "\n;\n".join(queue[start:stop]).encode(self._encoding)  # -- ends at \n
        conn = self._conn
        if conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        with conn.lock:
            # Sent inside the wait: an interrupt at any point cancels the query.
            results = conn.wait(_execute(conn.pgconn, query))
        try:
            self._check(results)
        except psycopg.Error:
            # The server stops at the first error, so the last answer is the failed
            # one; the COMMIT went through if an answer before it says so (a
            # COMMIT that fails, a deferred constraint's, answers with the error).
            self.failed_after_commit = (
                self._after_commit is not None and start < self._after_commit < stop
                and any(r.command_status == b"COMMIT" for r in results[:-1]))
            raise
        asked = [index for index in wanted if start <= index < stop]
        if asked and len(results) != stop - start:  # one `execute` held two statements
            raise psycopg.InternalError(f"{len(results)} answers to {stop - start} statements")
        for index in asked:
            result = results[index - start]
            self._loader.set_pgresult(result)
            wanted[index]._rows = self._loader.load_rows(0, result.ntuples, tuple)

    def _check(self, results: list[PGresult]) -> None:
        for result in results:  # the server stops at the first error
            if result.status not in _ANSWERED:
                if result.status == ExecStatus.FATAL_ERROR:
                    raise psycopg.errors.error_from_result(result, encoding=self._encoding)
                raise psycopg.InternalError(f"unexpected answer: {ExecStatus(result.status).name}")

    def _send_only(self, statements: list[str]) -> None:
        """Send statements as one query, leaving their answer on the connection
        (`answer`): nothing else may be sent on it until then."""
        query = "\n;\n".join(statements).encode(self._encoding)
        conn = self._conn
        if conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        self._unanswered = True  # first: an interrupt during the send leaves it to read
        with conn.lock:
            conn.wait(_send_query(conn.pgconn, query))

    @property
    def unanswered(self) -> bool:
        """A query was sent whose answer `answer()` is still to read."""
        return self._unanswered

    def answer(self) -> None:
        """Read the answer `flush(later=True)` left: raises what its
        statements raised (the transaction then is to be rolled back)."""
        if not self._unanswered:
            return
        self._unanswered = False
        conn = self._conn
        with conn.lock:
            results = conn.wait(generators.fetch_many(conn.pgconn))
        self._check(results)

    # ------------------------------------------------ the projections' face

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgBatch:
        """SQLite-flavoured SQL: queued, or sent at once when it returns rows."""
        sql = self._translate(sql)
        if _returns_rows(sql):
            rows = self.ask(sql, params)
            self._last = rows.fetchall()
        else:
            self.add(sql, params)
            self._last = []  # what it returns is not read
        return self

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> PgBatch:
        sql = self._translate(sql)
        for one in params:
            self.add(sql, one)
        return self

    def fetchone(self) -> Any:
        return self._last[0] if self._last else None

    def fetchall(self) -> list[Any]:
        return self._last

    def __iter__(self) -> Iterator[Any]:
        return iter(self._last)

    def prefetch(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """SQLite-flavoured SQL whose rows are read later: sent with the next message."""
        return self.ask(self._translate(sql), params)

    # --------------------------------------------------------- transaction

    def prefetch_tracking(self) -> None:
        """Queue the read of the tracking table, answered with the first message."""
        self._tracking_rows = self.ask("SELECT application_name, notification_id FROM tracking")

    def tracking_rows(self) -> dict[str, int] | None:
        if self._tracking_rows is not None:
            self.tracking = {name: int(at or 0)
                             for name, at in self._tracking_rows.fetchall()}
            self._tracking_rows = None
        return self.tracking

    def tracked(self, name: str, position: int | None) -> None:
        """This transaction wrote `name`'s tracking row (None: deleted it)."""
        self.tracking_changes[name] = position
        rows = self.tracking_rows()
        if rows is not None:
            if position is None:
                rows.pop(name, None)
            else:
                rows[name] = position

    def commit(self, later: bool = False, then: str | None = None) -> bool:
        """Send what is queued with the COMMIT. An unknown outcome (the
        connection lost on the way) raises: never retried here. `later`: see
        `flush` (True: its answer is left to `answer()`). `then`: a statement
        sent after the COMMIT in the same message, its answer waited for; if it
        fails, the transaction was committed (`failed_after_commit`)."""
        self._queue.append("COMMIT")
        if then is not None:
            assert not later, "a statement after the commit is waited for"
            self._after_commit = len(self._queue)
            self._queue.append(self.bind(then))
        return self.flush(later)

    def rollback(self) -> None:
        self._queue, self._wanted, self._prepares, self._preparing = [], [], {}, {}
        if self._unanswered:  # its answer first: nothing else is read before it
            with contextlib.suppress(psycopg.Error):
                self.answer()
        if self._conn.closed or self._conn.broken:
            return
        try:
            self._conn.execute(b"ROLLBACK", prepare=False)
        except psycopg.Error:
            self._conn.close()  # its owner opens a fresh one, nothing prepared on it
            raise

    def close(self) -> None:
        if self._binder is not None:
            self._binder.close()


def _send_query(pgconn: PGconn, query: bytes) -> PQGen[None]:
    """psycopg's generator that sends a query, not waiting for its answer."""
    pgconn.send_query(query)
    yield from generators.send(pgconn)


def _execute(pgconn: PGconn, query: bytes) -> PQGen[list[PGresult]]:
    """psycopg's generator that collects a query's results, with the sending
    inside it."""
    pgconn.send_query(query)
    return (yield from generators.execute(pgconn))


# A placeholder, or a % doubled to be taken as itself.
_PLACEHOLDER = re.compile(r"%%|%s")
# What in a statement is not SQL: comments.
_NOTHING = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)


def _text(value: str) -> str:
    if "\x00" in value:  # it would end the query text there (ADR 0014)
        raise psycopg.DataError(
            "PostgreSQL text cannot hold a NUL character ('\\x00'), and a name or id in "
            "this log holds one (written before flowledger refused them): its "
            "projections cannot be kept here. Keep the log on SQLite; `flowledger copy` "
            "from there names the events")
    return "'" + value.replace("'", "''") + "'"


def _null(value: None) -> str:
    return "NULL"


def _bytes(value: bytes) -> str:
    return "'\\x" + value.hex() + "'::bytea"


def _uuid(value: UUID) -> str:
    return "'" + str(value) + "'::uuid"


# The types the log and the projections write, quoted here (psycopg's general
# machinery costs several times more per value), as SQL literals on a
# connection with standard_conforming_strings on (`FlowPostgresRecorder._connect`
# sets it), where a backslash in a quoted string is an ordinary character.
# `bool` is not here: a subclass of int, it goes through psycopg.
_QUOTE: dict[type, Callable[[Any], str]] = {
    str: _text, int: str, type(None): _null, bytes: _bytes, UUID: _uuid}
# With it off, text and bytes go through psycopg too.
_QUOTE_SAFELY: dict[type, Callable[[Any], str]] = {int: str, type(None): _null, UUID: _uuid}


def _returns_rows(sql: str) -> bool:
    return sql.lstrip()[:6].upper().startswith(("SELECT", "WITH")) or " RETURNING " in sql.upper()
