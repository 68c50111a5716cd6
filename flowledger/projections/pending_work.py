"""Pending work (DESIGN §2.4): what the session loop and `status` read.

Per workflow: messages and their status (with payloads, for peek), the backlog
per topic, consumers' wake-ups, runs and whether they are finished, sessions,
and the workflow's status and lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.scheduling import TopicBacklog
from flowledger.domain.session import Session
from flowledger.domain.topic_event import TopicEvent
from flowledger.domain.workflow import Workflow
from flowledger.infrastructure.store import StreamEvents
from flowledger.projections.base import Cursor, Projection
from flowledger.projections.sealing import NO_SEAL, Seal
from flowledger.projections.times import text_time, time_text

_RUN_FIELDS = ("run_id", "workflow_id", "session_id", "handler", "kind", "phase", "status",
               "mutation_state", "retry_of", "holds", "reason", "retry_at", "created_at",
               "updated_at", "position", "open")


# Updated in place, assigning only what changes over a run's life: SQLite
# rewrites an index entry whenever a column of it (or of its WHERE) is
# assigned, so `open` and `workflow_id` (indexed) are left alone here and
# `open` is set only when it changes.
_MUTABLE_RUN_FIELDS = ("phase", "status", "mutation_state", "holds", "reason", "retry_at",
                       "updated_at", "position")
_UPSERT_RUN = (
    f"INSERT INTO fl_runs ({', '.join(_RUN_FIELDS)}) "
    f"VALUES ({', '.join('?' * len(_RUN_FIELDS))}) ON CONFLICT (run_id) DO UPDATE SET "
    + ", ".join(f"{f}=excluded.{f}" for f in _MUTABLE_RUN_FIELDS)
)


# What a fold reads back of a row it does not keep (PendingWork._read_row).
_RUN_ROW = f"SELECT {', '.join(_RUN_FIELDS)} FROM fl_runs WHERE run_id=?"
_MESSAGE_ROW = "SELECT workflow_id, topic, status FROM fl_messages WHERE event_id=?"


def _is_open(row: dict[str, Any]) -> int:
    """Not committed, not superseded, and not failed with nothing held."""
    status = row["status"]
    finished = status in ("committed", "superseded") or (
        status.startswith("failed:") and not row["holds"])
    return 0 if finished else 1


def _ts(value: datetime | None) -> str | None:
    return time_text(value) if value is not None else None


def _dt(value: str | None) -> datetime | None:
    return text_time(value) if value else None


# A workflow's backlog per topic and wake-ups per handler: the session loop's hints.
PendingHints = tuple[dict[str, TopicBacklog], dict[str, datetime]]


class PendingWork(Projection):
    name = "pending_work"
    tables = ("fl_messages", "fl_backlog", "fl_wakeups", "fl_runs", "fl_sessions",
              "fl_workflows")

    def __init__(self) -> None:
        super().__init__()
        # Rows this projection wrote in its last batch, while they are still
        # in play (open runs, reserved messages): the next batch of the same
        # writer need not read them back. See `forget`.
        self._open_runs: dict[str, dict[str, Any]] = {}
        # event id → (workflow id, topic). Not `_reserved`: that is the handler
        # of TopicEvent.Reserved, which an attribute of that name would shadow.
        self._reserved_messages: dict[str, tuple[str, str]] = {}
        # The batch in progress: changed message rows, and per (workflow, topic)
        # the change of its pending and reserved counts and its newest position.
        self._msgs: dict[str, dict[str, Any]] = {}
        self._counts: dict[tuple[str, str], list[int]] = {}
        # Rows the next batch will read, asked for ahead (`prefetch`).
        self._ahead_msgs: dict[str, Any] = {}
        self._ahead_runs: dict[str, Any] = {}
        # Per workflow (hex) whose session runs here: its backlog and wake-ups
        # as stored, kept up to date by this projection's batches (`hints`).
        self._hints: dict[str, PendingHints] = {}

    def forget(self) -> None:
        self._open_runs.clear()
        self._reserved_messages.clear()
        self._msgs.clear()
        self._counts.clear()
        self._hints.clear()

    def hints(self, workflow_id: str) -> PendingHints | None:
        """Workflow `workflow_id`'s backlog and wake-ups as stored, if kept."""
        kept = self._hints.get(workflow_id)
        return (dict(kept[0]), dict(kept[1])) if kept is not None else None

    def keep_hints(self, workflow_id: str, backlog: dict[str, TopicBacklog],
                   wakeups: dict[str, datetime]) -> None:
        """Keep workflow `workflow_id`'s backlog and wake-ups, as just read from
        the store with every batch of this process folded in, and keep them up
        to date: only its session, which runs here, changes them."""
        self._hints[workflow_id] = (dict(backlog), dict(wakeups))

    def drop_asked(self) -> None:
        self._ahead_msgs.clear()
        self._ahead_runs.clear()

    _MESSAGE_EVENTS = (TopicEvent.PayloadReplaced, TopicEvent.Reserved, TopicEvent.Released,
                       TopicEvent.ReservationMoved, TopicEvent.Consumed, TopicEvent.Skipped)

    def prefetch(self, c: Cursor, events: Sequence[Any]) -> None:
        """Ask, with the append's first message, for the message and run rows
        that folding `events` will read and that this projection does not keep:
        read in the middle of the fold, each would cost a round trip of its own
        while the transaction holds the log's lock."""
        new: set[str] = set()
        for e in events:
            key = e.originator_id.hex
            if isinstance(e, (TopicEvent.Published, HandlerRun.Created)):
                new.add(key)
            elif key in new:
                continue
            elif isinstance(e, HandlerRun.Event):
                if key not in self._open_runs and key not in self._ahead_runs:
                    self._ahead_runs[key] = c.prefetch(_RUN_ROW, (key,))
            elif (isinstance(e, self._MESSAGE_EVENTS) and key not in self._reserved_messages
                  and key not in self._ahead_msgs):
                self._ahead_msgs[key] = c.prefetch(_MESSAGE_ROW, (key,))

    @staticmethod
    def _read_row(c: Cursor, ahead: dict[str, Any], key: str, sql: str) -> Any:
        """A row asked for ahead, or else read now."""
        asked = ahead.pop(key, None)
        rows = asked.fetchall() if asked is not None else None
        if rows:
            return rows[0]
        c.execute(sql, (key,))
        return c.fetchone()

    def forget_except(self, workflow_id: str) -> None:
        self._open_runs = {k: r for k, r in self._open_runs.items()
                           if r["workflow_id"] == workflow_id}
        self._hints = {k: h for k, h in self._hints.items() if k == workflow_id}
        self._reserved_messages = {k: m for k, m in self._reserved_messages.items()
                                   if m[0] == workflow_id}
        self._msgs.clear()
        self._counts.clear()

    def handlers(self) -> dict[type, str]:
        return {
            TopicEvent.Published: "_published",
            TopicEvent.PayloadReplaced: "_replaced",
            TopicEvent.Reserved: "_reserved",
            TopicEvent.Released: "_released",
            TopicEvent.ReservationMoved: "_moved",
            TopicEvent.Consumed: "_consumed",
            TopicEvent.Skipped: "_skipped",
            Session.Opened: "_session_opened",
            Session.RunEnded: "_session_run_ended",
            Session.Closed: "_session_closed",
            Workflow.Registered: "_wf_registered",
            Workflow.SessionOpened: "_wf_session",
            Workflow.LeaseRenewed: "_wf_session",
            Workflow.SessionAbandoned: "_wf_session",
            Workflow.SessionTakenOver: "_wf_session",
            Workflow.SessionClosed: "_wf_session",
            Workflow.Paused: "_wf_status",
            Workflow.Errored: "_wf_status",
            Workflow.Resumed: "_wf_status",
        }

    def create_tables(self, c: Cursor) -> None:
        # WITHOUT ROWID and few indexes: every page a projection touches is
        # written to the WAL and synced with the append (ADR 0005).
        c.execute("""CREATE TABLE IF NOT EXISTS fl_messages (
            event_id TEXT PRIMARY KEY, workflow_id TEXT, topic TEXT, message_id TEXT,
            status TEXT, reserved_by TEXT, payload BLOB, first_position INTEGER,
            available_since INTEGER) WITHOUT ROWID""")
        # Partial indexes: an entry exists only while a message is pending (or a
        # run open), so consuming a message or finishing a run deletes one
        # entry instead of moving it, and the index stays as small as the work.
        c.execute("DROP INDEX IF EXISTS fl_messages_pending")  # before 0.1.0: every status
        c.execute("""CREATE INDEX IF NOT EXISTS fl_messages_pending_only
            ON fl_messages (workflow_id, topic, first_position) WHERE status='pending'""")
        c.execute("""CREATE TABLE IF NOT EXISTS fl_backlog (
            workflow_id TEXT, topic TEXT, pending INTEGER, reserved INTEGER,
            newest INTEGER, PRIMARY KEY (workflow_id, topic)) WITHOUT ROWID""")
        c.execute("""CREATE TABLE IF NOT EXISTS fl_wakeups (
            workflow_id TEXT, handler TEXT, wake_at TEXT,
            PRIMARY KEY (workflow_id, handler)) WITHOUT ROWID""")
        c.execute("""CREATE TABLE IF NOT EXISTS fl_runs (
            run_id TEXT PRIMARY KEY, workflow_id TEXT, session_id TEXT, handler TEXT,
            kind TEXT, phase TEXT, status TEXT, mutation_state TEXT, retry_of TEXT,
            holds INTEGER, reason TEXT, retry_at TEXT, created_at TEXT, updated_at TEXT,
            position INTEGER, open INTEGER) WITHOUT ROWID""")
        # Recovery looks up unfinished runs: its cost must follow their number,
        # not the length of the log.
        c.execute("DROP INDEX IF EXISTS fl_runs_open")  # before 0.1.0: finished runs too
        c.execute("CREATE INDEX IF NOT EXISTS fl_runs_open_only ON fl_runs (workflow_id) "
                  "WHERE open=1")
        c.execute("""CREATE TABLE IF NOT EXISTS fl_sessions (
            session_id TEXT PRIMARY KEY, workflow_id TEXT, trigger TEXT, outcome TEXT,
            reason TEXT, consumer_runs INTEGER, opened_at TEXT, closed_at TEXT) WITHOUT ROWID""")
        c.execute("CREATE INDEX IF NOT EXISTS fl_sessions_wf ON fl_sessions (workflow_id)")
        c.execute("""CREATE TABLE IF NOT EXISTS fl_workflows (
            workflow_id TEXT PRIMARY KEY, name TEXT, status TEXT, reason TEXT,
            blocking_run TEXT, paused_until TEXT, open_session TEXT, owner TEXT,
            lease_until TEXT) WITHOUT ROWID""")

    # -------------------------------------------------------------- messages
    # A message changes several times per batch (reserved, then consumed), and
    # its topic's counts with it: both are folded in memory and written once
    # per batch (`_write_messages`).

    def _message(self, c: Cursor, key: str) -> dict[str, Any]:
        """The batch's copy of a message row's changes, from memory or the table."""
        row = self._msgs.get(key)
        if row is None:
            known = self._reserved_messages.pop(key, None)
            if known is not None:
                workflow_id, topic, status = *known, "reserved"
            else:
                workflow_id, topic, status = self._read_row(c, self._ahead_msgs, key,
                                                            _MESSAGE_ROW)
            row = self._msgs[key] = {"new": False, "moved": False, "workflow_id": workflow_id,
                                     "topic": topic, "status": status, "reserved_by": None,
                                     "available_since": None, "payload": None}
        return row

    def _count(self, row: dict[str, Any], d_pending: int, d_reserved: int,
               newest: int | None) -> None:
        counts = self._counts.setdefault((row["workflow_id"], row["topic"]), [0, 0, 0])
        counts[0] += d_pending
        counts[1] += d_reserved
        if newest is not None:
            counts[2] = max(counts[2], newest)

    def _move(self, c: Cursor, e: Any, position: int, status: str,
              reserved_by: UUID | None) -> None:
        row = self._message(c, e.originator_id.hex)
        old = row["status"]
        available = position if status == "pending" else None
        row.update(status=status, reserved_by=reserved_by.hex if reserved_by else None,
                   moved=True)
        if available is not None:
            row["available_since"] = available
        self._count(row, (status == "pending") - (old == "pending"),
                    (status == "reserved") - (old == "reserved"), available)

    def _published(self, c: Cursor, e: TopicEvent.Published, position: int) -> None:
        row = self._msgs[e.originator_id.hex] = {
            "new": True, "workflow_id": e.workflow_id.hex, "topic": e.topic,
            "message_id": e.message_id, "status": "pending", "reserved_by": None,
            "payload": self.seal.seal_bytes(e.payload), "first_position": position,
            "available_since": position}
        self._count(row, 1, 0, position)

    def _replaced(self, c: Cursor, e: TopicEvent.PayloadReplaced, position: int) -> None:
        row = self._message(c, e.originator_id.hex)
        row["payload"] = self.seal.seal_bytes(e.payload)
        if row["status"] == "pending":  # a new payload is new work for consumers that declined
            row["available_since"] = position
            self._count(row, 0, 0, position)

    def _write_messages(self, c: Cursor) -> None:
        new = [(k, r["workflow_id"], r["topic"], r["message_id"], r["status"], r["reserved_by"],
                r["payload"], r["first_position"], r["available_since"])
               for k, r in self._msgs.items() if r["new"]]
        if new:
            c.executemany("INSERT INTO fl_messages VALUES (?,?,?,?,?,?,?,?,?)", new)
        moved = [(r["status"], r["reserved_by"], r["available_since"], r["payload"], k)
                 for k, r in self._msgs.items() if not r["new"] and r["moved"]]
        if moved:
            c.executemany("UPDATE fl_messages SET status=?, reserved_by=?, "
                          "available_since=COALESCE(?, available_since), "
                          "payload=COALESCE(?, payload) WHERE event_id=?", moved)
        replaced = [(r["available_since"], r["payload"], k)  # a new payload, nothing else
                    for k, r in self._msgs.items() if not r["new"] and not r["moved"]]
        if replaced:
            c.executemany("UPDATE fl_messages SET available_since=COALESCE(?, available_since), "
                          "payload=? WHERE event_id=?", replaced)
        if self._counts:
            c.executemany(
                "INSERT INTO fl_backlog VALUES (?,?,?,?,?) ON CONFLICT (workflow_id, topic) "
                "DO UPDATE SET pending=fl_backlog.pending+excluded.pending, "
                "reserved=fl_backlog.reserved+excluded.reserved, "
                "newest=MAX(fl_backlog.newest, excluded.newest)",
                [(w, t, p, r, n) for (w, t), (p, r, n) in self._counts.items()])
            for (w, t), (p, _, n) in self._counts.items():
                kept = self._hints.get(w)
                if kept is not None:  # as the statement above changes the row
                    old = kept[0].get(t)
                    kept[0][t] = (TopicBacklog(p, n) if old is None else
                                  TopicBacklog(old.pending + p, max(old.newest, n)))
        for key, row in self._msgs.items():
            if row["status"] == "reserved":
                self._reserved_messages[key] = (row["workflow_id"], row["topic"])
        self._msgs.clear()
        self._counts.clear()

    def _reserved(self, c: Cursor, e: TopicEvent.Reserved, position: int) -> None:
        self._move(c, e, position, "reserved", e.run_id)

    def _released(self, c: Cursor, e: TopicEvent.Released, position: int) -> None:
        self._move(c, e, position, "pending", None)

    def _moved(self, c: Cursor, e: TopicEvent.ReservationMoved, position: int) -> None:
        self._move(c, e, position, "reserved", e.to_run)

    def _consumed(self, c: Cursor, e: TopicEvent.Consumed, position: int) -> None:
        self._move(c, e, position, "consumed", None)

    def _skipped(self, c: Cursor, e: TopicEvent.Skipped, position: int) -> None:
        self._move(c, e, position, "skipped", None)

    # ------------------------------------------------------------------ runs
    # A run changes several times per append; its row is folded in memory and
    # written once per batch.

    def apply(self, c: Cursor, event: Any, position: int) -> None:
        self.apply_batch(c, [(event, position)])

    def apply_batch(self, c: Cursor, batch: Sequence[tuple[Any, int]]) -> None:
        rows: dict[str, dict[str, Any]] = {}
        for event, position in batch:
            if isinstance(event, HandlerRun.Event):
                self._fold_run(c, rows, event, position)
            else:
                super().apply(c, event, position)
        self._write_messages(c)
        self._ahead_msgs.clear()
        self._ahead_runs.clear()
        for key, row in rows.items():
            if isinstance(row["updated_at"], datetime):  # as the log gives it back: in UTC
                at = row["updated_at"]
                row["updated_at"] = (at.astimezone(UTC) if at.tzinfo else at).isoformat()
            was_open = row["open"]
            row["open"] = _is_open(row)
            c.execute(_UPSERT_RUN, tuple(row[f] for f in _RUN_FIELDS))
            if was_open is not None and was_open != row["open"]:
                c.execute("UPDATE fl_runs SET open=? WHERE run_id=?", (row["open"], key))
            if row["open"]:
                self._open_runs[key] = row
            else:
                self._open_runs.pop(key, None)

    def _fold_run(self, c: Cursor, rows: dict[str, dict[str, Any]], e: Any,
                  position: int) -> None:
        key = e.originator_id.hex
        name = type(e).__name__
        row = rows.get(key) or self._open_runs.get(key)
        if row is None:
            if name == "Created":
                row = dict.fromkeys(_RUN_FIELDS)
                row.update(run_id=key, workflow_id=e.workflow_id.hex,
                           session_id=e.session_id.hex if e.session_id else None,
                           handler=e.handler, kind=e.kind.value, phase="pending",
                           status="active", retry_of=e.retry_of.hex if e.retry_of else None,
                           holds=0, created_at=_ts(e.timestamp))
            else:
                row = dict(zip(_RUN_FIELDS, self._read_row(c, self._ahead_runs, key, _RUN_ROW),
                               strict=True))
        rows[key] = row
        row["updated_at"] = e.timestamp  # stored as text once per batch
        row["position"] = position
        # Which phase, and which ledger state, an event moves to is the event
        # class's own (domain/handler_run.py), as its fold there uses it.
        phase = getattr(e, "phase_reached", None)
        if phase is not None:
            row["phase"] = phase.value
        state = getattr(e, "ledger_state", None)
        if state is not None:
            row["mutation_state"] = state.value
        if name == "Prepared":
            row["holds"] = int(any(e.reservations.values()))
            # wake_at is per prepare: a prepare that omits it clears the previous one.
            c.execute("INSERT INTO fl_wakeups VALUES (?,?,?) ON CONFLICT (workflow_id, handler) "
                      "DO UPDATE SET wake_at=excluded.wake_at "
                      "WHERE fl_wakeups.wake_at IS NOT excluded.wake_at",
                      (row["workflow_id"], row["handler"], _ts(e.wake_at)))
            kept = self._hints.get(row["workflow_id"])
            if kept is not None:
                if e.wake_at is None:
                    kept[1].pop(row["handler"], None)
                else:  # as a read of the row gives it back
                    kept[1][row["handler"]] = text_time(time_text(e.wake_at))
        elif name == "CarriedForward":
            row["holds"] = int(any(e.reservations.values()))
        elif name in ("Committed", "ReservationsReleased", "ReservationsHandedOn"):
            row["holds"] = 0
        if name == "Committed" or name == "Reactivated":
            row.update(status="committed" if name == "Committed" else "active", reason=None,
                       retry_at=None)
        elif name == "Superseded":
            row.update(status="superseded", reason=self.seal.seal_text(e.reason), retry_at=None)
        elif name in ("Paused", "Failed"):
            row.update(status=e.status.value, reason=self.seal.seal_text(e.reason),
                       retry_at=_ts(getattr(e, "retry_at", None)))

    # -------------------------------------------------------------- sessions

    def _session_opened(self, c: Cursor, e: Session.Opened, position: int) -> None:
        c.execute("INSERT INTO fl_sessions VALUES (?,?,?,?,?,?,?,?)",
                  (e.originator_id.hex, e.workflow_id.hex, e.trigger.value, None, None, 0,
                   _ts(e.timestamp), None))

    def _session_run_ended(self, c: Cursor, e: Session.RunEnded, position: int) -> None:
        if e.kind.value == "consumer" and e.status != "superseded":
            c.execute("UPDATE fl_sessions SET consumer_runs=consumer_runs+1 "
                      "WHERE session_id=?", (e.originator_id.hex,))

    def _session_closed(self, c: Cursor, e: Session.Closed, position: int) -> None:
        c.execute("UPDATE fl_sessions SET outcome=?, reason=?, closed_at=? WHERE session_id=?",
                  (e.outcome.value, self.seal.seal_text(e.reason), _ts(e.timestamp),
                   e.originator_id.hex))

    # ------------------------------------------------------------- workflows

    def _wf_registered(self, c: Cursor, e: Workflow.Registered, position: int) -> None:
        c.execute("INSERT INTO fl_workflows VALUES (?,?,?,?,?,?,?,?,?)",
                  (e.originator_id.hex, e.name, "active", None, None, None, None, None, None))

    def _wf_session(self, c: Cursor, e: Any, position: int) -> None:
        name = type(e).__name__
        if name == "SessionClosed":
            values: tuple[Any, ...] = (None, None, None)
        elif name in ("LeaseRenewed", "SessionAbandoned"):
            until = e.lease_until or e.timestamp  # SessionAbandoned: see its docstring
            c.execute("UPDATE fl_workflows SET lease_until=? WHERE workflow_id=?",
                      (_ts(until), e.originator_id.hex))
            return
        else:
            values = (e.session_id.hex, e.owner, _ts(e.lease_until))
        c.execute("UPDATE fl_workflows SET open_session=?, owner=?, lease_until=? "
                  "WHERE workflow_id=?", (*values, e.originator_id.hex))

    def _wf_status(self, c: Cursor, e: Any, position: int) -> None:
        name = type(e).__name__
        if name == "Resumed":
            values: tuple[Any, ...] = ("active", None, None, None)
        elif name == "Paused":
            values = ("paused", self.seal.seal_text(e.reason),
                      e.run_id.hex if e.run_id else None, _ts(e.until))
        else:
            values = ("error", self.seal.seal_text(e.reason),
                      e.run_id.hex if e.run_id else None, None)
        c.execute("UPDATE fl_workflows SET status=?, reason=?, blocking_run=?, paused_until=? "
                  "WHERE workflow_id=?", (*values, e.originator_id.hex))


# ------------------------------------------------------------------- queries


@dataclass(frozen=True)
class PendingMessage:
    message_id: str
    payload: bytes


@dataclass(frozen=True)
class RunRow:
    run_id: UUID
    workflow_id: UUID
    session_id: UUID | None
    handler: str
    kind: str
    phase: str
    status: str
    mutation_state: str | None
    retry_of: UUID | None
    holds_reservations: bool
    reason: str | None
    retry_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class WorkflowRow:
    workflow_id: UUID
    name: str
    status: str
    reason: str | None
    blocking_run: UUID | None
    paused_until: datetime | None
    open_session: UUID | None
    owner: str | None
    lease_until: datetime | None


def _uuid(value: str | None) -> UUID | None:
    return UUID(value) if value else None


def backlog(c: Cursor, workflow_id: UUID) -> dict[str, TopicBacklog]:
    c.execute("SELECT topic, pending, newest FROM fl_backlog WHERE workflow_id=?",
              (workflow_id.hex,))
    return {t: TopicBacklog(p, n) for t, p, n in c.fetchall()}


def backlog_and_wakeups(c: Cursor, workflow_id: UUID) -> PendingHints:
    """`backlog` and each handler's wake-up in one statement: the session loop
    reads both, and on a server each statement is a round trip."""
    c.execute(*backlog_and_wakeups_query(workflow_id))
    return backlog_and_wakeups_found(c.fetchall())


def backlog_and_wakeups_query(workflow_id: UUID) -> tuple[str, tuple[Any, ...]]:
    return _hints_sql("workflow_id=?"), (workflow_id.hex,) * 2


def _hints_sql(which: str) -> str:
    """Backlog and wake-up rows (workflow, kind, name, pending, newest, wake_at)
    of the workflows `which` names (its parameters are asked twice)."""
    return (f"SELECT workflow_id, 0, topic, pending, newest, NULL FROM fl_backlog WHERE {which} "
            f"UNION ALL SELECT workflow_id, 1, handler, NULL, NULL, wake_at FROM fl_wakeups "
            f"WHERE {which} AND wake_at IS NOT NULL")


def hints_and_retries_of(c: Cursor, workflow_ids: Sequence[UUID]
                         ) -> dict[UUID, tuple[PendingHints, list[datetime]]]:
    """For each of these workflows: its backlog and wake-ups, and when its
    unfinished runs are to be retried; one statement per IDS_AT_ONCE
    workflows (a worker's look), where reading each workflow cost two."""
    hints: dict[str, list[Any]] = {w.hex: [] for w in workflow_ids}
    retries: dict[str, list[datetime]] = {w.hex: [] for w in workflow_ids}
    ids = list(hints)
    for start in range(0, len(ids), IDS_AT_ONCE):
        chunk = ids[start:start + IDS_AT_ONCE]
        which = f"workflow_id IN ({', '.join('?' * len(chunk))})"
        c.execute(f"{_hints_sql(which)} UNION ALL SELECT workflow_id, 2, NULL, NULL, NULL, "
                  f"retry_at {_OPEN_RUNS} AND {which} AND retry_at IS NOT NULL", chunk * 3)
        for row in c.fetchall():
            if row[1] == 2:
                retries[row[0]].append(text_time(row[5]))
            else:
                hints[row[0]].append(row)
    return {UUID(w): (backlog_and_wakeups_found(rows), retries[w]) for w, rows in hints.items()}


IDS_AT_ONCE = 300  # workflow ids bound thrice in one statement (SQLite's limit is 999)


def backlog_and_wakeups_found(rows: list[Any]) -> PendingHints:
    topics: dict[str, TopicBacklog] = {}
    wakes: dict[str, datetime] = {}
    for _, kind, name, pending, newest, wake_at in rows:
        if kind == 0:
            topics[name] = TopicBacklog(pending, newest)
        else:
            wakes[name] = text_time(wake_at)
    return topics, wakes


def pending_messages(c: Cursor, workflow_id: UUID, topic: str,
                     limit: int | None, seal: Seal = NO_SEAL) -> list[PendingMessage]:
    sql = ("SELECT message_id, payload FROM fl_messages WHERE workflow_id=? AND topic=? "
           "AND status='pending' ORDER BY first_position")
    if limit is None:
        c.execute(sql, (workflow_id.hex, topic))
    else:
        c.execute(sql + " LIMIT ?", (workflow_id.hex, topic, limit))
    return [PendingMessage(m, seal.open_bytes(p)) for m, p in c.fetchall()]


ReadAhead = list[tuple[PendingMessage, UUID, StreamEvents]]


def pending_messages_read_ahead(c: Cursor, workflow_id: UUID, topic: str, limit: int,
                                with_stream_events: Callable[[str, str, str], str],
                                seal: Seal = NO_SEAL) -> ReadAhead:
    """`pending_messages`, each with its message's stream id and events, read
    in the same statement (`LogStore.with_stream_events`): a consumer's prepare
    peeks and then reserves what it found, which loads those streams."""
    c.execute(*read_ahead_query(workflow_id, topic, limit, with_stream_events))
    return read_ahead_found(c.fetchall(), seal)


def read_ahead_query(workflow_id: UUID, topic: str, limit: int,
                     with_stream_events: Callable[[str, str, str], str]
                     ) -> tuple[str, tuple[Any, ...]]:
    """The statement of `pending_messages_read_ahead`, and its parameters."""
    sql = ("SELECT event_id, message_id, payload, first_position FROM fl_messages "
           "WHERE workflow_id=? AND topic=? AND status='pending' "
           "ORDER BY first_position LIMIT ?")
    return (with_stream_events(sql, "event_id", "first_position"),
            (workflow_id.hex, topic, limit))


def read_ahead_found(rows: list[Any], seal: Seal = NO_SEAL) -> ReadAhead:
    """What `read_ahead_query`'s rows say: each message, its stream id and events."""
    found: ReadAhead = []
    last = None
    for event_id, message_id, payload, _, version, event_topic, state in rows:
        if event_id != last:
            found.append((PendingMessage(message_id, seal.open_bytes(payload)),
                          UUID(event_id), []))
            last = event_id
        if version is not None:
            found[-1][2].append((int(version), event_topic, bytes(state)))
    return found


def message_status(c: Cursor, workflow_id: UUID, topic: str) -> dict[str, int]:
    c.execute("SELECT status, COUNT(*) FROM fl_messages WHERE workflow_id=? AND topic=? "
              "GROUP BY status", (workflow_id.hex, topic))
    return dict(c.fetchall())


_RUN_COLUMNS = ("run_id, workflow_id, session_id, handler, kind, phase, status, "
                "mutation_state, retry_of, holds, reason, retry_at, created_at, updated_at")


def _run_row(r: Any, seal: Seal) -> RunRow:
    return RunRow(UUID(r[0]), UUID(r[1]), _uuid(r[2]), r[3], r[4], r[5], r[6], r[7],
                  _uuid(r[8]), bool(r[9]), seal.open_text(r[10]), _dt(r[11]), _dt(r[12]),
                  _dt(r[13]))


def unfinished_runs(c: Cursor, workflow_id: UUID | None = None,
                    seal: Seal = NO_SEAL) -> list[RunRow]:
    """Runs that are not committed, superseded, or failed with nothing held."""
    c.execute(*unfinished_runs_query(workflow_id))
    return unfinished_runs_found(c.fetchall(), seal)


def unfinished_runs_query(workflow_id: UUID | None = None) -> tuple[str, tuple[Any, ...]]:
    if workflow_id is None:
        return f"SELECT {_RUN_COLUMNS} {_OPEN_RUNS} ORDER BY position", ()
    return (f"SELECT {_RUN_COLUMNS} {_OPEN_RUNS} AND workflow_id=? ORDER BY position",
            (workflow_id.hex,))


_OPEN_RUNS = "FROM fl_runs WHERE open=1"  # runs not committed, superseded or failed


def unfinished_runs_found(rows: list[Any], seal: Seal = NO_SEAL) -> list[RunRow]:
    return [_run_row(r, seal) for r in rows]


def workflows(c: Cursor, seal: Seal = NO_SEAL) -> list[WorkflowRow]:
    c.execute("SELECT workflow_id, name, status, reason, blocking_run, paused_until, "
              "open_session, owner, lease_until FROM fl_workflows ORDER BY name")
    return [WorkflowRow(UUID(r[0]), r[1], r[2], seal.open_text(r[3]), _uuid(r[4]), _dt(r[5]),
                        _uuid(r[6]), r[7], _dt(r[8])) for r in c.fetchall()]


def open_sessions(c: Cursor) -> list[tuple[UUID, UUID, str, datetime | None]]:
    c.execute("SELECT session_id, workflow_id, trigger, opened_at FROM fl_sessions "
              "WHERE outcome IS NULL ORDER BY opened_at")
    return [(UUID(s), UUID(w), t, _dt(o)) for s, w, t, o in c.fetchall()]


# ------------------------------------------------------- listings (read side)


@dataclass(frozen=True)
class SessionRow:
    session_id: UUID
    workflow_id: UUID
    trigger: str
    outcome: str | None  # None while the session is open
    reason: str | None
    consumer_runs: int
    opened_at: datetime | None
    closed_at: datetime | None


def topic_counts(c: Cursor, workflow_id: UUID) -> dict[str, tuple[int, int]]:
    """Per topic: (pending, reserved) messages."""
    c.execute("SELECT topic, pending, reserved FROM fl_backlog WHERE workflow_id=?",
              (workflow_id.hex,))
    return {t: (p, r) for t, p, r in c.fetchall()}


def session_rows(c: Cursor, workflow_id: UUID | None = None, seal: Seal = NO_SEAL, *,
                 status: str | None = None, limit: int | None = None) -> Iterator[SessionRow]:
    """Sessions, newest first (by opening), filtered and cut by the store:
    `status` "open" or an outcome (or its family, as `run_rows`). Read while
    iterated, within the cursor's reading."""
    sql = ("SELECT session_id, workflow_id, trigger, outcome, reason, consumer_runs, opened_at, "
           "closed_at FROM fl_sessions WHERE 1=1")
    params: list[Any] = []
    if workflow_id is not None:
        sql += " AND workflow_id=?"
        params.append(workflow_id.hex)
    if status == "open":
        sql += " AND outcome IS NULL"
    elif status is not None:
        sql += _in_family("outcome", status, params)
    c.execute(sql + " ORDER BY opened_at DESC, session_id DESC" + _limit(limit, params), params)
    return (SessionRow(UUID(r[0]), UUID(r[1]), r[2], r[3], seal.open_text(r[4]), r[5],
                       _dt(r[6]), _dt(r[7]))
            for r in c)  # as read: a listing cut in Python stops there


def _in_family(column: str, status: str, params: list[Any]) -> str:
    """`column` is `status` exactly, or of its family: "failed" is also
    failed:logic and failed:internal."""
    params += [status, len(status) + 1, status + ":"]
    return f" AND ({column}=? OR substr({column}, 1, ?)=?)"


def _limit(limit: int | None, params: list[Any]) -> str:
    if limit is None:
        return ""
    params.append(limit)
    return " LIMIT ?"


def run_rows(c: Cursor, workflow_id: UUID | None = None, session_id: UUID | None = None,
             handler: str | None = None, seal: Seal = NO_SEAL, *, status: str | None = None,
             limit: int | None = None) -> Iterator[RunRow]:
    """Runs, newest first (by creation), filtered and cut by the store (a scan
    without an index: listings are not on the hot path, appends are).
    `status`: exact, or a family ("failed": failed:logic, failed:internal).
    Read while iterated, within the cursor's reading."""
    sql = f"SELECT {_RUN_COLUMNS} FROM fl_runs WHERE 1=1"
    params: list[Any] = []
    for column, value in (("workflow_id", workflow_id), ("session_id", session_id)):
        if value is not None:
            sql += f" AND {column}=?"
            params.append(value.hex)
    if handler is not None:
        sql += " AND handler=?"
        params.append(handler)
    if status is not None:
        sql += _in_family("status", status, params)
    c.execute(sql + " ORDER BY created_at DESC, run_id DESC" + _limit(limit, params), params)
    return (_run_row(r, seal) for r in c)  # as read: a listing cut in Python stops there
