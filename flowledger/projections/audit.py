"""Audit (DESIGN §2.4): an index into the log for "what happened to input X",
"the timeline of run R" and "the history of event E".

The log already holds every fact, and each stream reads in order; what it
cannot answer quickly is which *other* streams speak of a run (the messages it
reserved, consumed and published, the state it committed, the session that
counted it) and which messages an input caused. This projection keeps exactly
those two indexes, as log positions; the answers are read from the log itself
(`flowledger/read_side/queries.py`). Small keyed rows, no secondary index: a
consumer run adds about five rows, all under its own run id (ADR 0009).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.handler_state import HandlerState
from flowledger.domain.input_record import Input
from flowledger.domain.session import Session
from flowledger.domain.topic_event import TopicEvent
from flowledger.domain.workflow import Workflow
from flowledger.projections.base import Cursor, Projection

# Event class → the fields that name a run other than the event's own stream.
_RUN_FIELDS: dict[type, tuple[str, ...]] = {
    TopicEvent.Published: ("run_id",),
    TopicEvent.PayloadReplaced: ("run_id",),
    TopicEvent.Reserved: ("run_id",),
    TopicEvent.Released: ("run_id",),
    TopicEvent.ReservationMoved: ("from_run", "to_run"),
    TopicEvent.Consumed: ("run_id",),
    TopicEvent.Skipped: ("run_id",),
    Input.Registered: ("run_id",),
    HandlerState.Initialised: ("run_id",),
    HandlerState.Committed: ("run_id",),
    Session.RunEnded: ("run_id",),
    Workflow.Paused: ("run_id",),
    Workflow.Errored: ("run_id",),
    HandlerRun.CarriedForward: ("from_run",),
    HandlerRun.ReservationsHandedOn: ("to_run",),
    HandlerRun.Superseded: ("by_run",),
}
# Events that say which inputs caused a message.
_CAUSES = frozenset({TopicEvent.Published, TopicEvent.PayloadReplaced})


class Audit(Projection):
    name = "audit"
    tables = ("fl_audit_mentions", "fl_audit_causes")
    inline = False  # read side only: folded at a session's close, or caught up before reads

    def handlers(self) -> dict[type, str]:
        return {}  # apply_batch reads _RUN_FIELDS directly

    def create_tables(self, c: Cursor) -> None:
        c.execute("""CREATE TABLE IF NOT EXISTS fl_audit_mentions (
            run_id TEXT, position INTEGER, PRIMARY KEY (run_id, position)) WITHOUT ROWID""")
        c.execute("""CREATE TABLE IF NOT EXISTS fl_audit_causes (
            input_id TEXT, event_id TEXT, position INTEGER,
            PRIMARY KEY (input_id, event_id)) WITHOUT ROWID""")

    def apply(self, c: Cursor, event: Any, position: int) -> None:
        self.apply_batch(c, [(event, position)])

    def apply_batch(self, c: Cursor, batch: Sequence[tuple[Any, int]]) -> None:
        mentions: list[tuple[str, int]] = []
        causes: list[tuple[str, str, int]] = []
        for event, position in batch:
            mentions.extend((run.hex, position) for run in runs_named(event))
            causes.extend((i.hex, event.originator_id.hex, position)
                          for i in inputs_causing(event))
        if mentions:
            c.executemany("INSERT INTO fl_audit_mentions VALUES (?,?)", mentions)
        if causes:
            # A replaced payload repeats the causes it keeps: the first position stays.
            c.executemany("INSERT OR IGNORE INTO fl_audit_causes VALUES (?,?,?)", causes)


def runs_named(event: Any) -> list[UUID]:
    """The runs an event names, other than its own stream's."""
    fields = _RUN_FIELDS.get(type(event), ())
    return [run for run in (getattr(event, name) for name in fields) if run is not None]


def inputs_causing(event: Any) -> list[UUID]:
    """The inputs that caused the message an event publishes (or replaces)."""
    return list(event.caused_by) if type(event) in _CAUSES else []


# ------------------------------------------------------------------- queries


def mentions_of(c: Cursor, run_id: UUID) -> list[int]:
    """Log positions of events in other streams that name this run."""
    c.execute("SELECT position FROM fl_audit_mentions WHERE run_id=? ORDER BY position",
              (run_id.hex,))
    return [p for (p,) in c.fetchall()]


def caused_by(c: Cursor, input_id: UUID) -> list[tuple[UUID, int]]:
    """Messages (topic-event stream ids) this input caused, with the position it first did."""
    c.execute("SELECT event_id, position FROM fl_audit_causes WHERE input_id=? "
              "ORDER BY position", (input_id.hex,))
    return [(UUID(e), p) for e, p in c.fetchall()]
