"""Sessions (DESIGN §1.5): order, budgets, stop rules, costs.

One session at a time between real processes: tests/e2e/test_session_races.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

import flowledger as fl
from flowledger.domain.ids import workflow_id
from flowledger.projections import pending_work
from tests.helpers import MemoryLedger, ScriptedLedgerTool, ledger_workflow, message_status


def pipeline(order: list[str], n: int = 3, cost: str = "0") -> fl.Workflow:
    wf = fl.Workflow("wf", topics=["a", "b"])

    @wf.producer(publishes=["a"])
    def first(ctx: Any, state: Any) -> None:
        order.append("first")
        for i in range(n):
            ctx.publish("a", message_id=str(i), payload=i)

    @wf.producer(publishes=["a"])
    def second(ctx: Any, state: Any) -> None:
        order.append("second")

    @wf.consumer(subscribe=["a"], publishes=["b"])
    class Up:
        def prepare(self, ctx: Any, state: Any) -> Any:
            m = ctx.peek("a", limit=1)
            return fl.Prepared({"a": [m[0].message_id]}, data=m[0].payload) if m else None

        def next(self, ctx: Any, prepared: Any, outcome: Any) -> None:
            order.append(f"up{prepared.data}")
            ctx.add_cost(cost, "llm")
            ctx.publish("b", message_id=str(prepared.data), payload=prepared.data)

    @wf.consumer(subscribe=["b"])
    class Down:
        def prepare(self, ctx: Any, state: Any) -> Any:
            m = ctx.peek("b", limit=1)
            return fl.Prepared({"b": [m[0].message_id]}, data=m[0].payload) if m else None

        def next(self, ctx: Any, prepared: Any, outcome: Any) -> None:
            order.append(f"down{prepared.data}")
            ctx.add_cost(cost, "llm")

    return wf


def test_producers_run_first_then_consumers_until_no_work(make_engine):
    order: list[str] = []
    engine = make_engine()
    engine.register(pipeline(order))
    result = engine.run_session("wf")
    assert result.status == "completed"
    assert order[:2] == ["first", "second"]
    assert sorted(order[2:]) == sorted(["up0", "up1", "up2", "down0", "down1", "down2"])
    assert result.consumer_runs == 6


def test_event_trigger_skips_producers(make_engine):
    order: list[str] = []
    engine = make_engine()
    engine.register(pipeline(order))
    result = engine.run_session("wf", trigger="event")
    assert result.status == "completed" and order == []


def test_completes_at_once_when_there_is_no_work(make_engine):
    engine = make_engine()
    engine.register(pipeline([], n=0))
    result = engine.run_session("wf")
    assert result.status == "completed" and result.consumer_runs == 0


def test_max_iterations_ends_with_remaining_work_listed(make_engine):
    order: list[str] = []
    engine = make_engine()
    engine.register(pipeline(order, n=3))
    result = engine.run_session("wf", max_iterations=2)
    assert result.status == "budget_exhausted"
    assert result.budget == "max_iterations"
    assert result.consumer_runs == 2
    assert result.remaining == {"Up": {"a": 1}, "Down": {"b": 2}}

    rest = engine.run_session("wf", trigger="event")
    assert rest.status == "completed" and rest.consumer_runs == 4


def test_budget_ending_exactly_when_work_ends_is_completed(make_engine):
    engine = make_engine()
    engine.register(pipeline([], n=1))
    result = engine.run_session("wf", max_iterations=2)
    assert result.status == "completed"


def test_max_cost_is_checked_before_each_consumer_run(make_engine):
    engine = make_engine()
    engine.register(pipeline([], n=3, cost="0.40"))
    result = engine.run_session("wf", max_cost="1.00")
    assert result.status == "budget_exhausted" and result.budget == "max_cost"
    assert result.cost == Decimal("1.20")  # three runs started while under 1.00
    assert result.remaining


def test_session_cost_is_the_exact_sum_of_run_costs(make_engine):
    engine = make_engine()
    engine.register(pipeline([], n=3, cost="0.1"))
    result = engine.run_session("wf")
    assert result.cost == Decimal("0.6")  # exact: no float drift
    run_costs = sum((engine.run(r.run_id).cost for r in result.runs), Decimal(0))
    assert run_costs == result.cost


def test_costs_at_the_edges_sum_exactly(make_engine):
    """Python's 28 digits rounded a sum of a large and a small amount: a
    session of the largest and the finest costs sums them exactly, in its
    result, its runs and the read side."""
    engine = make_engine()
    engine.register(pipeline([], n=2, cost="999999999999999999.000000000000000001"))
    result = engine.run_session("wf")
    expected = Decimal("3999999999999999996.000000000000000004")  # four runs' costs
    assert result.status == "completed" and result.cost == expected
    assert engine.costs().total == expected


@pytest.mark.parametrize(("cost", "why"), [
    ("1000000000000000000", "is too large: a cost is below 1,000,000,000,000,000,000"),
    ("9e999999", "is too large"),
    ("0.0000000000000000001", "has more than 18 decimal places"),
    ("-1", "must be a finite amount >= 0"),
    ("NaN", "must be a finite amount >= 0"),
])
def test_a_cost_beyond_what_sums_exactly_fails_its_run_and_stops_nothing_else(
        make_engine, cost, why):
    """Two costs of 9e999999 overflowed the session's sum outside any handler
    step: the session stayed open and every later session and recovery raised
    `decimal.Overflow`. Such a cost is now refused where it is added."""
    engine = make_engine()
    engine.register(pipeline([], n=1, cost=cost))
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert f"cost {cost!r} {why}" in (result.error or "")
    assert engine.pending_work("wf").open_session is None
    assert engine.recover() == []
    assert engine.verify().ok


def test_fine_costs_add_up_to_no_more_than_the_finest_place(make_engine):
    """1.000000000000000000000 has 21 places, all zeros after the 18th: as a
    cost it is 1."""
    engine = make_engine()
    engine.register(pipeline([], n=1, cost="1.000000000000000000000"))
    result = engine.run_session("wf")
    assert result.status == "completed" and result.cost == 2


def test_session_stops_at_the_first_failure(make_engine, ledger):
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["ok", "auth"]
    engine.register(ledger_workflow(items=["a", "b", "c"]), tools=[tool])
    result = engine.run_session("wf")
    assert result.status == "suspended"
    assert [r.status.value for r in result.runs if r.handler == "Append"] == [
        "committed", "paused:approval"]
    assert message_status(engine, "wf", "in") == {"consumed": 1, "pending": 2}
    # The work it left is listed, as a budget's end lists it (it said none).
    assert result.remaining == {"Append": {"in": 2}}
    closed = [e for e in engine.events() if e.name == "Closed" and e.aggregate == "Session"]
    assert closed[-1].fields["remaining"] == {"Append": {"in": 2}}


def test_wake_at_set_by_prepare_falls_due_later(make_engine, clock):
    wf = fl.Workflow("wf", topics=["in"])
    calls: list[Any] = []

    @wf.producer(publishes=["in"])
    def kick(ctx: Any, state: Any) -> Any:
        if not state:
            ctx.publish("in", message_id="kick", payload=1)
        return True

    @wf.consumer(subscribe=["in"])
    class Timer:
        def prepare(self, ctx: Any, state: Any) -> Any:
            calls.append(ctx.now)
            pending = [m.message_id for m in ctx.peek("in")]
            return fl.Prepared({"in": pending} if pending else {},
                               wake_at=ctx.now + timedelta(minutes=5))

    engine = make_engine()
    engine.register(wf)
    first = engine.run_session("wf", max_iterations=10)
    assert first.status == "completed" and len(calls) == 1  # took the kick; nothing left
    clock.advance(60)
    engine.run_session("wf")
    assert len(calls) == 1  # not due yet
    clock.advance(300)
    due = engine.run_session("wf", max_iterations=10)
    assert len(calls) == 2  # due: run once; it set a new wake_at and is not busy-looped
    assert due.consumer_runs == 1
    # The session loop reads both hints in one statement: the same as read apart.
    wf_id = workflow_id("wf")
    with engine.log.reading() as c:
        both = pending_work.backlog_and_wakeups(c, wf_id)
        wakeups = {h: datetime.fromisoformat(w) for h, w in c.execute(
            "SELECT handler, wake_at FROM fl_wakeups WHERE workflow_id=? AND wake_at IS NOT NULL",
            (wf_id.hex,)).fetchall()}
        apart = pending_work.backlog(c, wf_id), wakeups
    assert both == apart and list(both[0]) == ["in"] and list(both[1]) == ["Timer"]


def test_sessions_of_a_workflow_are_counted_in_the_log(make_engine):
    engine = make_engine()
    engine.register(pipeline([], n=1))
    r = engine.run_session("wf")
    closed = [e for e in engine.events(workflow="wf") if e.name == "Closed"]
    assert closed[-1].stream_id == r.session_id
    assert closed[-1].fields["outcome"] == "completed"


def test_bad_arguments_are_refused_before_anything_is_written(make_engine):
    engine = make_engine()
    engine.register(pipeline([]))
    before = list(engine.events())
    for kwargs in ({"trigger": "nightly"}, {"max_iterations": -1}, {"max_cost": "lots"},
                   {"max_cost": -1}):
        with pytest.raises(fl.InvalidArgument):
            engine.run_session("wf", **kwargs)
    with pytest.raises(fl.NotFoundError, match="not registered"):
        engine.run_session("nope")
    assert list(engine.events()) == before


def test_a_long_session_keeps_only_a_bounded_number_of_streams_loaded(make_engine,
                                                                       monkeypatch):
    """Between runs, a session forgets the streams no run holds once it has loaded
    more than Streams.KEEP: memory stays bounded, and what it loads again from the
    log is the same (every run still commits, projections equal a rebuild)."""
    from flowledger.engine.streams import Streams

    kept: list[int] = []
    trim = Streams.trim

    def watched(self: Streams) -> None:
        trim(self)
        kept.append(len(self._cache))

    monkeypatch.setattr(Streams, "KEEP", 6)
    monkeypatch.setattr(Streams, "trim", watched)
    order: list[str] = []
    engine = make_engine()
    engine.register(pipeline(order, n=15))
    result = engine.run_session("wf")
    assert result.status == "completed", result.error
    assert result.consumer_runs == 30
    assert sorted(order[2:]) == sorted([f"up{i}" for i in range(15)]
                                       + [f"down{i}" for i in range(15)])
    assert len(kept) == 32 and max(kept) <= 6
    assert min(kept) <= 2  # it did forget: only the session and workflow were left

    def tables() -> dict[str, list[Any]]:
        with engine.log.reading() as c:
            return {t: c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                    for t in ("fl_runs", "fl_messages", "fl_backlog")}

    live = tables()
    engine.rebuild_projections(["pending_work"])
    assert tables() == live


def test_ids_that_repeat_are_said_as_such_and_nothing_is_stored(make_engine):
    """An id factory handing out ids the log already holds (two engines given
    one seed) was said as another process having opened the session "at the
    same moment", or as a lost lock: the error names the repeated id instead,
    stores nothing, and the next engine with ids of its own goes on."""
    ledger = MemoryLedger()
    first = make_engine(ids=fl.SeededIds(7))
    first.register(ledger_workflow(items=["x"]), tools=[ScriptedLedgerTool(ledger)])
    assert first.run_session("wf").status == "completed"
    given = fl.SeededIds(7)
    used = [given() for _ in range(4)]  # the session's id, then its runs'
    at = first.last_position()

    again = make_engine(ids=fl.SeededIds(7))  # the same session id first
    again.register(ledger_workflow(items=["x", "y"]), tools=[ScriptedLedgerTool(ledger)])
    with pytest.raises(fl.ConfigurationError, match=rf"Session stream {used[0]} .* in the log "
                       r"already, though nobody took .*\(fl\.SeededIds"):
        again.run_session("wf")
    assert again.last_position() == at

    fresh = iter([fl.SeededIds(8)(), *used[1:]])  # a new session id, then the runs' again
    repeating = make_engine(ids=lambda: next(fresh))
    repeating.register(ledger_workflow(items=["x", "y"]), tools=[ScriptedLedgerTool(ledger)])
    with pytest.raises(fl.ConfigurationError, match=r"HandlerRun stream .* in the log already"):
        repeating.run_session("wf")
    assert ledger.writes == ["x"]  # y's run was refused before its tool was called

    last = make_engine()
    last.register(ledger_workflow(items=["x", "y"]), tools=[ScriptedLedgerTool(ledger)])
    assert last.run_session("wf").status == "completed"
    assert ledger.writes == ["x", "y"]
    assert last.verify().problems == []
