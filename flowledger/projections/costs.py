"""Costs (DESIGN §2.4): every `ctx.add_cost` as an exact entry, per run, session,
handler, workflow and day.

A cost entry is attributed to the session that counted it: `Session.RunEnded`
counts, for its run, everything not counted before (`HandlerRun.uncounted_cost`).
So the entries a session counted sum, exactly, to that session's cost. Until
then an entry is "not yet counted" (its run is still going, or was cut short
by a crash) and belongs to the session its run was created in.

Hot path (ADR 0005): one row per run (its identity, written with `Created`)
and one row per cost entry, both keyed by run id, so one append writes a
couple of adjacent rows; `RunEnded` updates the run's uncounted rows in place.
Amounts stay decimal strings: SQLite has no exact decimal type, so sums are
made in Python.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from flowledger.domain.amounts import plus
from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.session import Session
from flowledger.projections.base import Cursor, Projection
from flowledger.projections.sealing import NO_SEAL, Seal
from flowledger.projections.times import text_time, time_text


class Costs(Projection):
    name = "costs"
    tables = ("fl_cost_runs", "fl_costs")
    inline = False  # read side only: folded at a session's close, or caught up before reads

    def __init__(self) -> None:
        super().__init__()
        # Scratch of the batch being folded in (see apply_batch).
        self._new_runs: list[tuple[Any, ...]] = []
        self._created_here: set[str] = set()
        self._uncounted: dict[str, list[list[Any]]] = {}  # run → its entries not yet counted
        self._entries: list[list[Any]] = []

    def handlers(self) -> dict[type, str]:
        return {HandlerRun.Created: "_created", HandlerRun.CostAdded: "_cost_added",
                Session.RunEnded: "_run_ended"}

    def create_tables(self, c: Cursor) -> None:
        # WITHOUT ROWID, keyed by run id (time-ordered ids: new rows land on
        # the same last page), no secondary index: see ADR 0005 and 0009.
        c.execute("""CREATE TABLE IF NOT EXISTS fl_cost_runs (
            run_id TEXT PRIMARY KEY, workflow TEXT, handler TEXT, kind TEXT,
            session_id TEXT) WITHOUT ROWID""")
        c.execute("""CREATE TABLE IF NOT EXISTS fl_costs (
            run_id TEXT, seq INTEGER, counted_by TEXT, at TEXT, amount TEXT, label TEXT,
            PRIMARY KEY (run_id, seq)) WITHOUT ROWID""")

    def apply(self, c: Cursor, event: Any, position: int) -> None:
        self.apply_batch(c, [(event, position)])

    def apply_batch(self, c: Cursor, batch: Sequence[tuple[Any, int]]) -> None:
        # Rows of this batch, written at its end with one statement per table:
        # runs created in it (none of their entries is in the table yet), and
        # entries as [run, seq, counted_by, at, amount, label].
        self._new_runs, self._created_here, self._uncounted, self._entries = [], set(), {}, []
        for event, position in batch:
            method = self._dispatch.get(type(event))
            if method is not None:
                method(c, event, position)
        if self._new_runs:
            c.executemany("INSERT INTO fl_cost_runs VALUES (?,?,?,?,?)", self._new_runs)
        if self._entries:
            c.executemany("INSERT INTO fl_costs VALUES (?,?,?,?,?,?)", self._entries)

    def _created(self, c: Cursor, e: HandlerRun.Created, position: int) -> None:
        run = e.originator_id.hex
        self._new_runs.append((run, e.workflow, e.handler, e.kind.value,
                               e.session_id.hex if e.session_id else None))
        self._created_here.add(run)

    def _cost_added(self, c: Cursor, e: HandlerRun.CostAdded, position: int) -> None:
        run = e.originator_id.hex
        entry: list[Any] = [run, e.originator_version, None, time_text(e.timestamp),
                            str(e.amount), self.seal.seal_text(e.label)]
        self._entries.append(entry)
        self._uncounted.setdefault(run, []).append(entry)

    def _run_ended(self, c: Cursor, e: Session.RunEnded, position: int) -> None:
        """The session counts everything of the run that no session counted before."""
        run, session = e.run_id.hex, e.originator_id.hex
        for entry in self._uncounted.pop(run, ()):
            entry[2] = session
        if run not in self._created_here:
            # Created in an earlier batch: entries stored then may be uncounted.
            c.execute("UPDATE fl_costs SET counted_by=? WHERE run_id=? AND counted_by IS NULL",
                      (session, run))


# ------------------------------------------------------------------- queries


@dataclass(frozen=True)
class CostEntry:
    """One `add_cost` of one run (a tool's own cost included)."""

    run_id: UUID
    seq: int  # the CostAdded event's version in the run's stream
    workflow: str
    handler: str
    kind: str
    session_id: UUID | None  # the session that counted it, else the run's own session
    counted: bool
    at: datetime
    amount: Decimal
    label: str


def cost_entries(c: Cursor, workflow: str | None = None,
                 session_id: UUID | None = None, seal: Seal = NO_SEAL) -> Iterator[CostEntry]:
    """Entries in the order they were recorded, optionally of one workflow or
    session; read while iterated, within the cursor's reading."""
    sql = ("SELECT e.run_id, e.seq, r.workflow, r.handler, r.kind, "
           "COALESCE(e.counted_by, r.session_id), e.counted_by IS NOT NULL, e.at, e.amount, "
           "e.label FROM fl_costs e JOIN fl_cost_runs r ON r.run_id = e.run_id WHERE 1=1")
    params: list[Any] = []
    if workflow is not None:
        sql += " AND r.workflow=?"
        params.append(workflow)
    if session_id is not None:
        sql += " AND COALESCE(e.counted_by, r.session_id)=?"
        params.append(session_id.hex)
    c.execute(sql + " ORDER BY e.at, e.run_id, e.seq", params)
    for r in c:
        yield CostEntry(UUID(r[0]), r[1], r[2], r[3], r[4], UUID(r[5]) if r[5] else None,
                        bool(r[6]), text_time(r[7]), Decimal(r[8]), seal.open_text(r[9]) or "")


def counted_by_sessions(c: Cursor, session_ids: Sequence[UUID], chunk: int = 500
                        ) -> dict[UUID, Decimal]:
    """What each of these sessions counted (exact sums, made here: amounts are
    kept as text); read for them alone, not for every session."""
    sums: dict[UUID, Decimal] = {}
    for start in range(0, len(session_ids), chunk):
        ids = [s.hex for s in session_ids[start:start + chunk]]
        c.execute("SELECT counted_by, amount FROM fl_costs WHERE counted_by IN ("
                  + ", ".join("?" * len(ids)) + ")", ids)
        for counted_by, amount in c.fetchall():
            session = UUID(counted_by)
            sums[session] = plus(sums.get(session, Decimal(0)), Decimal(amount))
    return sums
