"""The read side (DESIGN §2.4, §2.5): typed answers from the projections and the log.

One `ReadSide` answers every question over one view of the store: the
present (the live projections, the whole log) or the past (`Engine.at`: the
same projections folded into memory up to a position, streams read up to that
position). The same code answers both, so "as it was" and "as it is" cannot
drift apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal
from uuid import UUID

from flowledger.authoring.registration import Registration
from flowledger.domain.amounts import plus, total
from flowledger.domain.continuation import Step as Continue
from flowledger.domain.continuation import continuation
from flowledger.domain.errors import InvalidArgument, NotFoundError
from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.ids import topic_event_id, workflow_id
from flowledger.domain.input_record import Input
from flowledger.domain.instants import instant
from flowledger.domain.mutation_ledger import MutationState
from flowledger.domain.phases import RunStatus
from flowledger.domain.run_decider import ACTIONS as ACTIONS  # the CLI offers these
from flowledger.domain.run_decider import actions_for
from flowledger.domain.scheduling import ConsumerView, remaining_work
from flowledger.domain.session import Session, SessionOutcome
from flowledger.domain.topic_event import TopicEvent
from flowledger.domain.workflow import Workflow
from flowledger.infrastructure.codec import unpack
from flowledger.infrastructure.event_log import EventLog
from flowledger.infrastructure.store_failures import store_errors_as_ours
from flowledger.projections import audit, costs, pending_work
from flowledger.projections.base import Cursor
from flowledger.projections.pending_work import RunRow, WorkflowRow
from flowledger.projections.sealing import Seal
from flowledger.read_side.log_view import LoggedEvent, read_positions, read_stream

CostsBy = Literal["run", "session", "handler", "day", "workflow"]
COSTS_BY: tuple[str, ...] = ("run", "session", "handler", "day", "workflow")

def _with_families(statuses: list[str]) -> tuple[str, ...]:
    """Each status, and before the first of a family ("failed:logic") the family
    itself ("failed"), which matches all of its members."""
    out: list[str] = []
    for status in statuses:
        family = status.split(":", 1)[0]
        if family != status and family not in out:
            out.append(family)
        out.append(status)
    return tuple(out)


# What `runs(status=...)` and `sessions(status=...)` accept.
RUN_STATUSES: tuple[str, ...] = _with_families([s.value for s in RunStatus])
SESSION_STATUSES: tuple[str, ...] = ("open", *(o.value for o in SessionOutcome))

Loader = Callable[..., Any]  # (aggregate_id, short=False) -> aggregate | None


# --------------------------------------------------------------- results


@dataclass(frozen=True)
class BlockedRun:
    """A run waiting for a person, with what it attempted and what can be done."""

    run_id: UUID
    workflow: str
    handler: str
    status: str
    reason: str | None
    tool: str | None
    method: str | None
    params: Any
    mutation_state: str | None
    actions: tuple[str, ...]


@dataclass(frozen=True)
class WorkerInfo:
    """A worker (`engine.serve()`, `flowledger worker`) that served the store."""

    owner: str  # host:process id:tag, as session leases name their holder
    workflows: tuple[str, ...]  # what it serves
    started_at: datetime
    # "running"; "stopped" (said so, `stopped_at`, `how`); "gone": ended without
    # saying so (killed, crashed, its machine lost), as the store or host proves
    # (`stopped_at`: when that was found, once noted); "unknown": neither can
    # tell (another host, whose engine's lock the store no longer keeps).
    state: str
    stopped_at: datetime | None = None
    how: str | None = None  # "stopped", "stopped at once", the error that ended it, or gone


@dataclass(frozen=True)
class EngineStatus:
    workflows: list[WorkflowRow]
    open_sessions: list[tuple[UUID, UUID, str, datetime | None]]
    unfinished_runs: list[RunRow]
    blocked: list[BlockedRun]
    # Workflows whose open session's holder is provably gone (the engine knows:
    # Engine.status); `flowledger recover` continues them.
    holders_gone: tuple[str, ...] = ()
    # Workflows whose open session's lease ran out, its holder not known gone
    # (another host, a standby's view): `flowledger recover` continues them too.
    leases_ended: tuple[str, ...] = ()
    # How many of the log's last events the read side had not folded in (0 but
    # on a store opened read-only: Engine.read_side_behind).
    read_side_behind: int = 0
    # Workers not known to have stopped: running, or gone without saying so
    # (Engine.workers; a view of the past has none).
    workers: tuple[WorkerInfo, ...] = ()


@dataclass(frozen=True)
class RunInfo:
    """A run as listings show it."""

    run_id: UUID
    workflow: str
    session_id: UUID | None
    handler: str
    kind: str
    phase: str
    status: str
    mutation_state: str | None
    retry_of: UUID | None
    reason: str | None
    created_at: datetime | None
    updated_at: datetime | None
    # A failed run's traceback (its handler's last frames), as recorded.
    traceback: str | None = None


@dataclass(frozen=True)
class SessionInfo:
    session_id: UUID
    workflow: str
    trigger: str
    status: str  # "open", or the outcome: completed, budget_exhausted, suspended, ...
    reason: str | None
    consumer_runs: int
    opened_at: datetime | None
    closed_at: datetime | None
    cost: Decimal  # what the session counted: exactly Session.cost


@dataclass(frozen=True)
class TopicWork:
    topic: str
    pending: int
    reserved: int


@dataclass(frozen=True)
class PendingWorkReport:
    """What is left to do in one workflow, and what stands in the way."""

    workflow: str
    status: str  # active | paused | error
    reason: str | None
    open_session: UUID | None
    topics: tuple[TopicWork, ...]
    # Per consumer with work: pending messages per subscribed topic ({} for a
    # due wake-up only). None when this engine does not have the workflow's
    # code registered (the log does not record subscriptions).
    consumers_with_work: dict[str, dict[str, int]] | None
    wakeups: dict[str, datetime]  # consumer -> wake_at
    unfinished_runs: tuple[RunInfo, ...]
    blocked_mutations: tuple[RunInfo, ...]  # outcome unknown: needs_reconcile, indeterminate
    as_of: datetime


class _CostSum:
    """One cost line's sums, as its entries are read."""

    def __init__(self) -> None:
        self.amount = Decimal(0)
        self.not_counted = Decimal(0)
        self.entries = 0
        self.runs: set[UUID] = set()

    def add(self, e: costs.CostEntry) -> None:
        self.amount = plus(self.amount, e.amount)
        if not e.counted:
            self.not_counted = plus(self.not_counted, e.amount)
        self.entries += 1
        self.runs.add(e.run_id)


@dataclass(frozen=True)
class CostLine:
    key: str  # run id, session id, handler, day (YYYY-MM-DD) or workflow, by `CostReport.by`
    workflow: str
    amount: Decimal  # exact
    not_counted: Decimal  # part of `amount` no session has counted yet (runs still going)
    entries: int  # add_cost calls
    runs: int


@dataclass(frozen=True)
class CostReport:
    by: str
    workflow: str | None
    session_id: UUID | None
    lines: tuple[CostLine, ...]
    total: Decimal


@dataclass(frozen=True)
class Reservation:
    """One run's hold on a message: when it began and how it ended."""

    run_id: UUID
    handler: str
    reserved_at: int  # log position
    reserved_time: datetime
    ended: str  # consumed | skipped | released | moved | held (still reserved)
    ended_at: int | None
    moved_to: UUID | None
    run_status: str  # how the run itself ended (or is doing)
    mutation_state: str | None
    reason: str | None


@dataclass(frozen=True)
class EventHistory:
    """Everything that happened to one message of one topic."""

    workflow: str
    topic: str
    message_id: str
    event_id: UUID
    status: str
    payload: Any
    caused_by: tuple[UUID, ...]
    published_by: UUID | None
    reservations: tuple[Reservation, ...]
    entries: tuple[LoggedEvent, ...]  # the message's own stream, with log positions


@dataclass(frozen=True)
class MutationRecord:
    run_id: UUID
    handler: str
    title: str | None
    tool: str
    method: str
    params: Any
    state: str
    result: Any
    reason: str | None
    position: int  # where it went in flight
    time: datetime


@dataclass(frozen=True)
class InputHistory:
    """What happened to one input: the messages it caused (directly or downstream),
    every run that reserved them, each mutation, and the whole story in log order."""

    input_id: UUID
    workflow: str
    source: str
    type: str
    external_id: str
    title: str | None
    registered_by: UUID | None
    events: tuple[EventHistory, ...]
    runs: tuple[RunInfo, ...]
    mutations: tuple[MutationRecord, ...]
    entries: tuple[LoggedEvent, ...]


@dataclass(frozen=True)
class RunTimeline:
    """Every event of a run's stream, and every event of other streams that names
    it (messages it reserved, consumed or published, the state it committed, the
    session that counted it), in log order."""

    run: RunInfo
    entries: tuple[LoggedEvent, ...]


# ------------------------------------------------------------- the reader


def parse_uuid(value: UUID | str, what: str) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise InvalidArgument(f"{value!r} is not a {what} id (a UUID)") from None


# --------------------------------------------------------------- short ids

IdKind = Literal["run", "session", "input"]
ID_KINDS: tuple[str, ...] = ("run", "session", "input")
MIN_SHORT_ID = 4  # hex digits: fewer would match half the store
_HEX = frozenset("0123456789abcdef")
# Where each kind of id is listed: (table, column), as hex text.
_ID_TABLES: dict[str, tuple[str, str]] = {
    "run": ("fl_runs", "run_id"),
    "session": ("fl_sessions", "session_id"),
    "input": ("fl_audit_causes", "input_id"),
}


class AmbiguousId(InvalidArgument):
    """A short id that more than one id of its kind starts or ends with."""

    def __init__(self, message: str, candidates: tuple[UUID, ...]) -> None:
        super().__init__(message)
        self.candidates = candidates


def short_id_digits(text: str) -> str | None:
    """`text` as the hex digits an id or short id is made of (dashes dropped,
    lower case), or None if it is not one."""
    digits = text.strip().replace("-", "").lower()
    return digits if digits and set(digits) <= _HEX and len(digits) <= 32 else None


SHORT_ID = 8  # the CLI prints an id as its last 8 hex digits


def names_id(hex_id: str, digits: str) -> bool:
    """Whether `digits` name the id whose hex is `hex_id`: its start, its end,
    or the start of its short id (its last 8 digits, as the CLI prints them)."""
    return (hex_id.startswith(digits) or hex_id.endswith(digits)
            or hex_id[-SHORT_ID:].startswith(digits))


def matching_ids(c: Cursor, kind: str, digits: str) -> list[UUID]:
    """Ids of `kind` that `digits` name (`names_id`)."""
    table, column = _ID_TABLES[kind]
    short_start = "_" * (32 - SHORT_ID) + digits + "%"  # the hex is 32 digits long
    c.execute(f"SELECT DISTINCT {column} FROM {table} "
              f"WHERE {column} LIKE ? OR {column} LIKE ? OR {column} LIKE ?",
              (digits + "%", "%" + digits, short_start))
    return sorted({UUID(value) for (value,) in c.fetchall()})


def check_choice(value: str | None, valid: tuple[str, ...], what: str) -> None:
    """A filter value that must be one of a fixed set: a clear InvalidArgument if not."""
    if value is not None and value not in valid:
        raise InvalidArgument(f"{what} {value!r} is not one of: {', '.join(valid)}")


def _within(moment: datetime | None, since: datetime | None, until: datetime | None) -> bool:
    if since is None and until is None:
        return True
    if moment is None:
        return False
    moment = instant(moment)
    return (since is None or moment >= since) and (until is None or moment < until)


_COUNT_LIMIT = 2**63  # what both stores' integers hold


def whole_count(value: int | None, what: str) -> int | None:
    """A count or position a caller gives a query (`limit`, `after`, `last`):
    a whole number both stores can hold, or None; else a clear InvalidArgument,
    the same on every store (the stores failed each in its own way)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be a whole number (or None), got {value!r}")
    if value < 0:
        raise InvalidArgument(f"{what} must be 0 or more, got {value}")
    if value >= _COUNT_LIMIT:
        raise InvalidArgument(f"{what} must be at most {_COUNT_LIMIT - 1}, got {value}")
    return value


def amount(value: Any, what: str) -> Decimal | None:
    """An amount a caller gives (`max_cost`; the CLI's `--max-cost`): a finite
    decimal of 0 or more, or None; else a clear InvalidArgument naming `what`."""
    if value is None:
        return None
    try:
        parsed = None if isinstance(value, bool) else Decimal(str(value))
    except InvalidOperation:
        parsed = None
    if parsed is None or not parsed.is_finite() or parsed < 0:
        raise InvalidArgument(f"{what} must be an amount of 0 or more (a decimal, such as "
                              f"2.50), got {value!r}")
    return parsed


def aware(moment: datetime | None, what: str) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        raise InvalidArgument(f"{what} must be a timezone-aware datetime, got {moment!r}")
    return moment


class ReadSide:
    """Answers over one view of the store. See the module docstring."""

    def __init__(self, log: EventLog, tables: Callable[[], AbstractContextManager[Cursor]],
                 load: Loader, registered: Mapping[str, Registration],
                 now: Callable[[], datetime], upto: int | None = None,
                 unfolded: Callable[[], Sequence[tuple[Any, int]]] | None = None) -> None:
        """`unfolded`: the log's events the projections have not folded in, with
        their positions (a store opened read-only, which cannot fold them in):
        the ids and mentions they hold are looked up in them too, read once
        for this view (an engine makes one per query)."""
        self.log = log
        self.store = log.config.url  # named by a store failure's message
        self._read_unfolded = unfolded
        self._unfolded_events: Sequence[tuple[Any, int]] | None = None
        self._tables = tables  # a read cursor on the projections' tables
        self._load = load
        self._registered = registered
        self._now = now
        self.upto = upto  # None: the whole log
        self._seal = Seal(log.column_cipher)  # projections' sealed copies (ADR 0022)

    # ------------------------------------------------------------ helpers

    def _workflow_names(self, c: Cursor) -> dict[UUID, str]:
        return {w.workflow_id: w.name for w in pending_work.workflows(c, self._seal)}

    def _require_workflow(self, c: Cursor, name: str) -> WorkflowRow:
        for w in pending_work.workflows(c, self._seal):
            if w.name == name:
                return w
        names = sorted(w.name for w in pending_work.workflows(c, self._seal))
        raise NotFoundError(f"no workflow named {name!r} in store {self.log.config.shown}"
                            + self._when() + f" (it holds: {', '.join(names) or 'none'})")

    def _when(self) -> str:
        return f" at log position {self.upto}" if self.upto is not None else ""

    @store_errors_as_ours
    def resolve_id(self, kind: str, value: UUID | str) -> UUID:
        """The id of `kind` ("run", "session" or "input") that `value` names: a
        UUID, or any unique prefix of its hex (with or without dashes), or its
        short id as printed (the last 8 digits), or the start of that. An
        ambiguous one is refused with the candidates (AmbiguousId); one that
        matches nothing is a NotFoundError."""
        if kind not in _ID_TABLES:
            raise InvalidArgument(f"id kind {kind!r} is not one of {', '.join(ID_KINDS)}")
        if isinstance(value, UUID):
            return value
        text = str(value)
        with contextlib.suppress(ValueError):
            return UUID(text)
        digits = short_id_digits(text)
        an = "an" if kind == "input" else "a"
        if digits is None:
            raise InvalidArgument(f"{text!r} is not {an} {kind} id: give the id, a prefix of "
                                  f"it or its short id (hex digits, e.g. as `flowledger "
                                  f"log` prints them)")
        if len(digits) < MIN_SHORT_ID:
            raise InvalidArgument(f"{kind} id {text!r} is too short: give at least "
                                  f"{MIN_SHORT_ID} hex digits of it")
        with self._tables() as c:
            found = sorted(set(matching_ids(c, kind, digits)) | {
                i for i in self._unfolded_ids(kind) if names_id(i.hex, digits)})
        if len(found) == 1:
            return found[0]
        if not found:
            raise NotFoundError(f"no {kind} {text!r} in store {self.log.config.shown}"
                                f"{self._when()} (no {kind} id starts or ends with {digits}, "
                                "nor has a short id that starts with them)")
        shown = ", ".join(str(i) for i in found[:10])
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        raise AmbiguousId(f"{kind} id {text!r} is ambiguous: it matches {len(found)} "
                          f"{kind}s ({shown}{more}); give more digits", tuple(found))

    def _unfolded(self) -> Sequence[tuple[Any, int]]:
        if self._unfolded_events is None:
            read = self._read_unfolded
            self._unfolded_events = read() if read is not None else ()
        return self._unfolded_events

    def _unfolded_ids(self, kind: str) -> set[UUID]:
        """Ids of `kind` in the events the projections have not folded in."""
        if kind == "input":
            return {i for event, _ in self._unfolded() for i in audit.inputs_causing(event)}
        stream = {"run": "HandlerRun", "session": "Session"}[kind]
        return {event.originator_id for event, _ in self._unfolded()
                if type(event).__qualname__.partition(".")[0] == stream}

    def _run(self, run_id: UUID | str) -> HandlerRun:
        rid = self.resolve_id("run", run_id)
        run = self._load(rid, short=True)
        if not isinstance(run, HandlerRun):
            raise NotFoundError(f"no run {rid} in store {self.log.config.shown}{self._when()}")
        return run

    @staticmethod
    def _info_of(run: HandlerRun) -> RunInfo:
        m = run.mutation
        return RunInfo(run.id, run.workflow, run.session_id, run.handler, run.kind.value,
                       run.phase.value, run.status.value, m.state.value if m else None,
                       run.retry_of, run.reason, run.created_on, run.modified_on,
                       run.traceback)

    @staticmethod
    def _info_of_row(row: RunRow, names: dict[UUID, str]) -> RunInfo:
        return RunInfo(row.run_id, names.get(row.workflow_id, row.workflow_id.hex),
                       row.session_id, row.handler, row.kind, row.phase, row.status,
                       row.mutation_state, row.retry_of, row.reason, row.created_at,
                       row.updated_at)

    def _stream(self, stream_id: UUID, workflow: UUID | None = None) -> list[LoggedEvent]:
        return read_stream(self.log, stream_id, self.upto, workflow)

    # ----------------------------------------------------------- aggregates

    @store_errors_as_ours
    def run(self, run_id: UUID | str) -> HandlerRun:
        """A run as its stream tells it (as of this view)."""
        return self._run(run_id)

    @store_errors_as_ours
    def session(self, session_id: UUID | str) -> Session:
        sid = self.resolve_id("session", session_id)
        session = self._load(sid)
        if not isinstance(session, Session):
            raise NotFoundError(f"no session {sid} in store {self.log.config.shown}"
                                + self._when())
        return session

    @store_errors_as_ours
    def workflow(self, name: str) -> Workflow:
        """The workflow aggregate: its status, reason and session lock."""
        wf = self._load(workflow_id(name))
        if not isinstance(wf, Workflow):
            raise NotFoundError(f"no workflow named {name!r} in store {self.log.config.shown}"
                                + self._when())
        return wf

    # -------------------------------------------------------------- status

    @store_errors_as_ours
    def status(self) -> EngineStatus:
        with self._tables() as c:
            wfs = pending_work.workflows(c, self._seal)
            sessions = pending_work.open_sessions(c)
            unfinished = pending_work.unfinished_runs(c, seal=self._seal)
        return EngineStatus(wfs, sessions, unfinished, self.blocked())

    @store_errors_as_ours
    def blocked(self) -> list[BlockedRun]:
        """Everything waiting for a person (DESIGN §1.4): mutations whose outcome is
        unknown, runs paused for approval, and workflows in error."""
        with self._tables() as c:
            rows = pending_work.unfinished_runs(c, seal=self._seal)
            wfs = pending_work.workflows(c, self._seal)
        now = self._now()
        waiting: dict[UUID, HandlerRun] = {}
        for row in rows:
            if row.status != RunStatus.ACTIVE.value:
                run = self._run(row.run_id)
                if continuation(run, cleared=False, now=now)[0] is Continue.BLOCKED:
                    waiting[run.id] = run
        for wf in wfs:
            stuck = wf.status == "error" or (wf.status == "paused" and wf.paused_until is None)
            if stuck and wf.blocking_run is not None and wf.blocking_run not in waiting:
                waiting[wf.blocking_run] = self._run(wf.blocking_run)
        return [blocked_record(run) for run in waiting.values()]

    @store_errors_as_ours
    def pending_work(self, workflow: str) -> PendingWorkReport:
        """Backlog per topic, consumers with work, wake-ups, unfinished and blocked runs."""
        with self._tables() as c:
            row = self._require_workflow(c, workflow)
            counts = pending_work.topic_counts(c, row.workflow_id)
            backlog, wakeups = pending_work.backlog_and_wakeups(c, row.workflow_id)
            names = self._workflow_names(c)
            unfinished = [self._info_of_row(r, names)
                          for r in pending_work.unfinished_runs(c, row.workflow_id, self._seal)]
        wf = self.workflow(workflow)
        topics = list(dict.fromkeys([*wf.topics, *sorted(counts)]))
        now = self._now()
        reg = self._registered.get(workflow)
        consumers = None
        if reg is not None:
            views = [ConsumerView(c.name, c.subscribe) for c in reg.definition.consumers]
            consumers = remaining_work(views, backlog, {}, wakeups, now)
        unsettled = (MutationState.NEEDS_RECONCILE.value, MutationState.INDETERMINATE.value)
        return PendingWorkReport(
            workflow, row.status, row.reason, row.open_session,
            tuple(TopicWork(t, *counts.get(t, (0, 0))) for t in topics), consumers, wakeups,
            tuple(unfinished), tuple(r for r in unfinished if r.mutation_state in unsettled),
            now)

    # ------------------------------------------------------------ listings

    @store_errors_as_ours
    def runs(self, workflow: str | None = None, status: str | None = None,
             since: datetime | None = None, until: datetime | None = None,
             handler: str | None = None, session: UUID | str | None = None,
             limit: int | None = 100) -> list[RunInfo]:
        """Runs, newest first; `status` exact or a family ("failed", "paused"),
        `since`/`until` bound the time each was created (until excluded)."""
        check_choice(status, RUN_STATUSES, "run status")
        since, until = aware(since, "since"), aware(until, "until")
        limit = whole_count(limit, "limit")
        if handler is not None and "\x00" in handler:  # no name holds one (ADR 0014)
            raise InvalidArgument(f"handler {handler!r} holds a NUL character: no handler's "
                                  "name does")
        sid = self.resolve_id("session", session) if session is not None else None
        timed = since is not None or until is not None  # compared as times, here
        with self._tables() as c:
            wf_id = self._require_workflow(c, workflow).workflow_id if workflow else None
            names = self._workflow_names(c)
            rows = pending_work.run_rows(c, wf_id, sid, handler, self._seal, status=status,
                                         limit=None if timed else limit)
            found = [self._info_of_row(r, names) for r in itertools.islice(
                (r for r in rows if _within(r.created_at, since, until)), limit)]
        # A failed run's traceback is on its stream, not in the listing's rows.
        return [dataclasses.replace(r, traceback=self._run(r.run_id).traceback)
                if r.status.startswith("failed") else r for r in found]

    @store_errors_as_ours
    def sessions(self, workflow: str | None = None, status: str | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 limit: int | None = 100) -> list[SessionInfo]:
        """Sessions, newest first; `status` is "open" or an outcome; `since`/`until`
        bound the time each was opened (until excluded)."""
        check_choice(status, SESSION_STATUSES, "session status")
        since, until = aware(since, "since"), aware(until, "until")
        limit = whole_count(limit, "limit")
        timed = since is not None or until is not None  # compared as times, here
        with self._tables() as c:
            wf_id = self._require_workflow(c, workflow).workflow_id if workflow else None
            names = self._workflow_names(c)
            rows = list(itertools.islice(
                (r for r in pending_work.session_rows(c, wf_id, self._seal, status=status,
                                                      limit=None if timed else limit)
                 if _within(r.opened_at, since, until)), limit))
            counted = costs.counted_by_sessions(c, [r.session_id for r in rows])
        return [SessionInfo(r.session_id, names.get(r.workflow_id, "?"), r.trigger,
                            r.outcome or "open", r.reason, r.consumer_runs, r.opened_at,
                            r.closed_at, counted.get(r.session_id, Decimal(0))) for r in rows]

    # --------------------------------------------------------------- costs

    @store_errors_as_ours
    def costs(self, workflow: str | None = None, session: UUID | str | None = None,
              by: CostsBy = "session") -> CostReport:
        """Exact sums of what runs reported with add_cost, grouped by run, session,
        handler, day (UTC) or workflow; one line per workflow and key."""
        if by not in COSTS_BY:
            raise InvalidArgument(f"costs by {by!r}: choose one of {', '.join(COSTS_BY)}")
        sid = self.resolve_id("session", session) if session is not None else None
        with self._tables() as c:
            if workflow is not None:
                self._require_workflow(c, workflow)
            # Summed as read: what is held is a line per group, not every entry.
            groups: dict[tuple[str, str], _CostSum] = {}
            for e in costs.cost_entries(c, workflow, sid, self._seal):
                group = groups.get((e.workflow, _cost_key(e, by)))
                if group is None:
                    group = groups[(e.workflow, _cost_key(e, by))] = _CostSum()
                group.add(e)
        lines = [CostLine(key, wf, g.amount, g.not_counted, g.entries, len(g.runs))
                 for (wf, key), g in groups.items()]
        if by in ("handler", "workflow"):
            lines.sort(key=lambda line: (line.workflow, line.key))
        # Otherwise in the order each line's first cost was recorded: entries come
        # in that order, and so were the groups made.
        return CostReport(by, workflow, sid, tuple(lines),
                          total(line.amount for line in lines))

    # --------------------------------------------------------------- audit

    @store_errors_as_ours
    def mentions_of(self, run_id: UUID) -> list[int]:
        """Positions of events in other streams that name the run."""
        with self._tables() as c:
            told = audit.mentions_of(c, run_id)
        return sorted(set(told) | {
            position for event, position in self._unfolded()
            if run_id in audit.runs_named(event)})

    @store_errors_as_ours
    def run_timeline(self, run_id: UUID | str) -> RunTimeline:
        run = self._run(run_id)
        own = self._stream(run.id, run.workflow_id)
        others = self.mentions_of(run.id)
        if self.upto is not None:
            others = [p for p in others if p <= self.upto]
        entries = sorted([*own, *read_positions(self.log, others)], key=lambda e: e.position)
        return RunTimeline(self._info_of(run), tuple(entries))

    @store_errors_as_ours
    def event_history(self, workflow: str, topic: str, message_id: str) -> EventHistory:
        event_id = topic_event_id(workflow, topic, str(message_id))
        found = self._event_history(event_id)
        if found is None:
            wf: Workflow | None = self._load(workflow_id(workflow))
            if wf is not None and wf.topics and topic not in wf.topics:
                raise NotFoundError(f"workflow {workflow!r} has no topic {topic!r} (its "
                                    f"topics: {', '.join(wf.topics)}){self._when()}")
            raise NotFoundError(f"no message {message_id!r} in topic {topic!r} of workflow "
                                f"{workflow!r}{self._when()}")
        return found

    def _event_history(self, event_id: UUID) -> EventHistory | None:
        message: TopicEvent | None = self._load(event_id, short=True)
        if message is None:
            return None
        entries = self._stream(event_id, message.workflow_id)
        opened: dict[UUID, LoggedEvent] = {}
        closed: list[tuple[UUID, LoggedEvent, str, LoggedEvent | None, UUID | None]] = []
        for e in entries:
            f = e.fields
            if e.name == "Reserved":
                opened[f["run_id"]] = e
            elif e.name == "ReservationMoved":
                start = opened.pop(f["from_run"], None)
                if start is not None:
                    closed.append((f["from_run"], start, "moved", e, f["to_run"]))
                opened[f["to_run"]] = e
            elif e.name in ("Released", "Consumed", "Skipped"):
                start = opened.pop(f["run_id"], None)
                if start is not None:
                    closed.append((f["run_id"], start, e.name.lower(), e, None))
        closed += [(run_id, start, "held", None, None) for run_id, start in opened.items()]
        closed.sort(key=lambda item: item[1].position)
        reservations = []
        for run_id, start, ended, end, moved_to in closed:
            run = self._run(run_id)
            reservations.append(Reservation(
                run_id, run.handler, start.position, start.timestamp, ended,
                end.position if end else None, moved_to, run.status.value,
                run.mutation_state.value if run.mutation_state else None, run.reason))
        return EventHistory(message.workflow, message.topic, message.message_id, event_id,
                            message.status.value, unpack(message.payload),
                            tuple(message.caused_by), message.published_by,
                            tuple(reservations), tuple(entries))

    @store_errors_as_ours
    def input_history(self, input_id: UUID | str) -> InputHistory:
        iid = self.resolve_id("input", input_id)
        record = self._load(iid, short=True)
        if not isinstance(record, Input):
            raise NotFoundError(f"no input {iid} in store {self.log.config.shown}{self._when()}")
        with self._tables() as c:
            caused = [e for e, p in audit.caused_by(c, iid)
                      if self.upto is None or p <= self.upto]
        for event, _ in self._unfolded():
            if iid in audit.inputs_causing(event) and event.originator_id not in caused:
                caused.append(event.originator_id)
        events = [h for h in map(self._event_history, caused) if h is not None]
        run_ids = list(dict.fromkeys(r.run_id for h in events for r in h.reservations))
        runs = [self._run(r) for r in run_ids]
        registration = self._stream(iid, record.workflow_id)
        entries: dict[int, LoggedEvent] = {e.position: e for e in registration}
        for h in events:
            entries.update((e.position, e) for e in h.entries)
        mutations = []
        for run in runs:
            stream = self._stream(run.id, run.workflow_id)
            entries.update((e.position, e) for e in stream)
            started = next((e for e in stream if e.name == "MutationInFlight"), None)
            m = run.mutation
            if m is not None and started is not None:
                mutations.append(MutationRecord(
                    run.id, run.handler, run.title, m.tool, m.method, unpack(m.params),
                    m.state.value, unpack(m.result), m.reason, started.position,
                    started.timestamp))
        mutations.sort(key=lambda m: m.position)
        return InputHistory(
            iid, registration[0].fields["workflow"], record.source,
            record.type, record.external_id, record.title, record.registered_by,
            tuple(events), tuple(self._info_of(r) for r in runs), tuple(mutations),
            tuple(entries[p] for p in sorted(entries)))


def _cost_key(entry: costs.CostEntry, by: str) -> str:
    if by == "run":
        return str(entry.run_id)
    if by == "session":
        return str(entry.session_id) if entry.session_id else "-"
    if by == "handler":
        return entry.handler
    if by == "day":
        return entry.at.astimezone(UTC).date().isoformat()
    return entry.workflow


def blocked_record(run: HandlerRun) -> BlockedRun:
    """What a person needs to decide on a blocked run, and the decisions that apply."""
    m = run.mutation
    actions: tuple[str, ...] = actions_for(run) or ("resume",)
    return BlockedRun(run.id, run.workflow, run.handler, run.status.value, run.reason,
                      m.tool if m else None, m.method if m else None,
                      unpack(m.params) if m else None, m.state.value if m else None,
                      actions)

