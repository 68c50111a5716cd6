"""Invariants of DESIGN §1 and §2, stated for all inputs (hypothesis).

Random histories: items to process, tool outcomes, reconcile answers, costs,
budgets, sessions, time passing, and a person's decisions. After each history:
  * an event is reserved by at most one unfinished run, and by the run it names;
  * no run records two mutations, and no item is written to the ledger twice;
  * a session's cost is the exact sum of what its runs spent;
  * appends per run stay within the §2.2 bound.
"""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from hypothesis import HealthCheck, given, settings

import flowledger as fl
from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.ids import topic_event_id
from flowledger.domain.phases import RunKind
from flowledger.infrastructure.event_log import EventLog
from tests.helpers import ExternalLedger, ScriptedLedgerTool, costly_workflow, decide, history


class AppendCounter:
    """Counts, per run stream, the appends that carried its events."""

    def __init__(self) -> None:
        self.per_run: Counter[UUID] = Counter()
        self._original = EventLog.append

    def __enter__(self) -> AppendCounter:
        counter = self

        def append(log: EventLog, *aggregates: Any, **kwargs: Any) -> Any:
            runs = {a.id for a in aggregates if isinstance(a, HandlerRun) and a.has_pending_events}
            result = counter._original(log, *aggregates, **kwargs)
            for r in runs:
                counter.per_run[r] += 1
            return result

        EventLog.append = append  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        EventLog.append = self._original  # type: ignore[method-assign]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(h=history)
def test_invariants_hold_for_random_histories(h: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ledger = ExternalLedger(Path(tmp) / "ledger.db")
        tool = ScriptedLedgerTool(ledger)
        tool.script = list(h["script"])
        tool.reconcile_script = list(h["reconcile"])
        clock = fl.ManualClock()
        engine = fl.Engine("memory://", clock=clock, ids=fl.SeededIds(1),
                           policy=fl.RetryPolicy(transient_max_attempts=3,
                                                 reconcile_max_attempts=2))
        try:
            engine.register(costly_workflow(h["items"], h["costs"]), tools=[tool])
            results: list[fl.SessionResult] = []
            with AppendCounter() as appends:
                for max_iterations, decision in h["sessions"]:
                    results.append(engine.run_session("prop", max_iterations=max_iterations))
                    clock.advance(7200)
                    decide(engine, decision)
            check_invariants(engine, tool, results, appends, h["items"])
        finally:
            engine.close()


def check_invariants(engine: fl.Engine, tool: ScriptedLedgerTool,
                     results: list[fl.SessionResult], appends: AppendCounter,
                     items: list[str]) -> None:
    runs: dict[UUID, HandlerRun] = {}
    mutations: Counter[UUID] = Counter()
    session_costs: dict[UUID, Decimal] = defaultdict(Decimal)
    for e in engine.events(workflow="prop"):
        if e.aggregate == "HandlerRun" and e.name == "Created":
            runs[e.stream_id] = engine.run(e.stream_id)
        if e.name == "MutationInFlight":
            mutations[e.stream_id] += 1
        if e.aggregate == "Session" and e.name == "RunEnded":
            session_costs[e.stream_id] += e.fields["cost"]

    # No run records two mutations; no item reaches the ledger twice.
    assert all(n == 1 for n in mutations.values())
    assert len(tool.writes) == len(set(tool.writes)), tool.writes

    # Reservation exclusivity: each reserved message belongs to exactly one
    # unfinished run, the one the message names.
    holders: dict[tuple[str, str], UUID] = {}
    for run in runs.values():
        if run.holds_reservations:
            for key in run.reserved_message_ids:
                assert key not in holders, f"{key} held by {holders[key]} and {run.id}"
                holders[key] = run.id
    for item in items:
        event = engine.log.load(topic_event_id("prop", "in", item))
        if event is None:
            continue
        if event.status.value == "reserved":
            assert holders.get(("in", item)) == event.reserved_by
            assert not runs[event.reserved_by].is_finished
        else:
            assert ("in", item) not in holders

    # A session's cost is the exact sum of what its runs spent in it, and all
    # sessions together account for every cost any run recorded.
    for result in results:
        if result.session_id is not None:
            assert result.cost == session_costs.get(result.session_id, Decimal(0))
    total_runs = sum((r.cost for r in runs.values()), Decimal(0))
    assert total_runs == sum(session_costs.values(), Decimal(0))

    # Appends per run: a run that went straight through stays within §2.2
    # (4 for a consumer with a mutation — we use 3 —, 1 without, 1 producer).
    for run_id, count in appends.per_run.items():
        run = runs[run_id]
        straight = run.status.value == "committed" and run.retry_of is None and not any(
            e.name in ("Paused", "Failed", "Reactivated") for e in engine.events(run=run_id))
        if not straight:
            continue
        if run.kind is RunKind.PRODUCER or run.mutation is None:
            assert count == 1, (run.handler, count)
        else:
            assert count <= 3, (run.handler, count)
