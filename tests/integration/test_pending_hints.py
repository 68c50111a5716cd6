"""The session loop's hints (each topic's backlog, each handler's wake-up) are
read from the store once per session and then kept by the projection runner,
which folds every change the session makes (ProjectionRunner.pending_hints):
each time the loop takes them, they equal the store's."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import flowledger as fl
from flowledger.projections import pending_work, runner
from tests.helpers import (
    ExternalLedger,
    ScriptedLedgerTool,
    checked_pending_hints,
    ledger_workflow,
    message_status,
)


def test_a_session_reads_its_hints_from_the_store_once(
        make_engine: Any, ledger: ExternalLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = [0]
    read = pending_work.backlog_and_wakeups

    def counted(c: Any, workflow_id: Any) -> Any:
        reads[0] += 1
        return read(c, workflow_id)

    monkeypatch.setattr(pending_work, "backlog_and_wakeups", counted)
    monkeypatch.setattr(runner, "backlog_and_wakeups", counted)
    engine = make_engine()
    engine.register(ledger_workflow(items=["a", "b", "c", "d"]),
                    tools=[ScriptedLedgerTool(ledger)])

    with checked_pending_hints() as compared:
        result = engine.run_session("wf")

    assert result.status == "completed", result.error
    assert ledger.keys() == ["a", "b", "c", "d"]
    assert compared[0] == 5  # before each of the four runs, and once to find none left
    # The checker's own reads aside, none: the session's opening append read them.
    assert reads[0] - compared[1] == 0


def _waking_workflow() -> fl.Workflow:
    """Two consumers on two topics. `Early` takes one message a run; `Late`
    asks to be woken an hour on and reserves nothing until that hour came."""
    wf = fl.Workflow("wf", topics=["a", "b"])

    @wf.producer(publishes=["a", "b"])
    def produce(ctx: Any, state: Any) -> None:
        for n in range(3):
            ctx.publish("a", message_id=f"a{n}", payload=n)
            ctx.publish("b", message_id=f"b{n}", payload=n)

    @wf.consumer(subscribe=["a"])
    class Early:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            found = ctx.peek("a", limit=1)
            return fl.Prepared({"a": [found[0].message_id]}) if found else None

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.ledger.append("early-" + prepared.reservations["a"][0], "x")

    @wf.consumer(subscribe=["b"])
    class Late:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            due = state is not None and ctx.now >= state
            found = ctx.peek("b", limit=1)
            if not found:
                return None
            if not due:
                return fl.Prepared(wake_at=ctx.now + timedelta(hours=1))
            return fl.Prepared({"b": [found[0].message_id]})

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            if prepared.reservations:
                ctx.tools.ledger.append("late-" + prepared.reservations["b"][0], "x")

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> Any:
            return ctx.now + timedelta(hours=1) if not prepared.reservations else None

    return wf


def test_wake_ups_and_declines_are_kept_as_the_store_has_them(
        make_engine: Any, ledger: ExternalLedger, clock: fl.ManualClock) -> None:
    engine = make_engine()
    engine.register(_waking_workflow(), tools=[ScriptedLedgerTool(ledger)])

    with checked_pending_hints() as compared:
        first = engine.run_session("wf")
        clock.advance("2h")
        second = engine.run_session("wf", trigger="event")

    assert first.status == "completed", first.error
    assert second.status == "completed", second.error
    assert compared[0] >= 6
    assert message_status(engine, "wf", "a") == {"consumed": 3}
    assert sorted(ledger.keys())[:3] == ["early-a0", "early-a1", "early-a2"]


def test_another_engines_session_is_not_hidden_by_what_this_one_kept(
        make_engine: Any, ledger: ExternalLedger) -> None:
    """Two engines take turns at one workflow's sessions: each finds the other's
    changes, not what it kept from its own last session."""
    items = [f"i{n}" for n in range(6)]
    first, second = make_engine(), make_engine()
    for engine in (first, second):
        engine.register(ledger_workflow(items=items), tools=[ScriptedLedgerTool(ledger)])

    with checked_pending_hints() as compared:
        first.run_session("wf", max_iterations=1)
        second.run_session("wf", trigger="event", max_iterations=2)
        first.run_session("wf", trigger="event", max_iterations=1)
        second.run_session("wf", trigger="event", max_iterations=1)
        last = first.run_session("wf", trigger="event")

    assert last.status == "completed", last.error
    assert compared[0] >= 6
    assert ledger.keys() == items


def test_a_session_sees_what_was_rebuilt_since_the_last(
        make_engine: Any, ledger: ExternalLedger) -> None:
    """Each session reads its hints from the store first: a rebuild by another
    engine between two sessions, which moves no tracking position, is seen."""
    worker, admin = make_engine(), make_engine()
    worker.register(ledger_workflow(), tools=[ScriptedLedgerTool(ledger)])
    worker.run_session("wf", trigger="manual", max_iterations=0)  # a, b, c pending
    with worker.log.flow_recorder.writing() as c:  # the backlog damaged by hand
        c.execute("UPDATE fl_backlog SET pending=0")

    with checked_pending_hints() as compared:
        idle = worker.run_session("wf", trigger="event")  # it believes the damage
        admin.rebuild_projections()
        done = worker.run_session("wf", trigger="event")

    assert idle.status == "completed" and idle.consumer_runs == 0
    assert done.status == "completed", done.error
    assert ledger.keys() == ["a", "b", "c"] and compared[0] >= 2


def test_hints_and_retries_of_many_workflows_are_each_ones_own(
        make_engine: Any, ledger: ExternalLedger, clock: fl.ManualClock) -> None:
    """What a worker reads for all its workflows at once (in statements of
    IDS_AT_ONCE workflows) is what each workflow's own reads give."""
    import uuid

    from flowledger.domain.ids import workflow_id

    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    engine.register(ledger_workflow("busy", items=["a", "b", "c"]), tools=[tool])
    engine.register(ledger_workflow("retrying", items=["x"]), tools=[tool])
    engine.run_session("busy", max_iterations=1)
    tool.script = ["transient"]
    assert engine.run_session("retrying").status == "suspended"
    real = [workflow_id("busy"), workflow_id("retrying")]
    asked = [uuid.uuid4() for _ in range(2 * pending_work.IDS_AT_ONCE + 50)]
    asked[5], asked[pending_work.IDS_AT_ONCE + 7] = real
    with engine.log.reading() as c:
        found = pending_work.hints_and_retries_of(c, asked)
        for wf in asked:
            own = (pending_work.backlog_and_wakeups(c, wf),
                   [r.retry_at for r in pending_work.unfinished_runs(c, wf)
                    if r.retry_at is not None])
            assert found[wf] == own
    assert found[real[0]][0][0]["in"].pending == 2
    assert len(found[real[1]][1]) == 1 and found[real[1]][1][0] > clock.now()
