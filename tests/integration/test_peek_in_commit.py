"""A session answers a consumer's peek from the pending messages it last read
of that topic (engine/pending_window.py), kept to its own appends; a run's
commit reads them again in its own transaction when they will not answer
its peek again. The answer must be the one a fresh read gives: checked
against runs where every peek reads afresh, over histories where runs
publish into the topic they consume, peek past what they take, fail and are
retried, or where a second consumer peeks another topic in between."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowledger as fl
from flowledger.engine.pending_window import PendingWindow
from flowledger.projections import pending_work
from tests.helpers import MemoryLedger, ScriptedLedgerTool


def _workflow(name: str, items: list[str], peeks: list[tuple[str, str, tuple[str, ...]]],
              limits: tuple[int, int] = (2, 2)) -> fl.Workflow:
    """Two consumers: `Take` peeks up to limits[0] of "in" and takes the first
    (an item "x+" publishes "x+1" back into "in" from its next); `Audit` peeks
    limits[1] of "side" (published by Take for items ending in "s"): with the
    same limit, only the topic tells their peeks apart. Every peek is noted."""
    wf = fl.Workflow(name, topics=["in", "side", "done"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> Any:
        for item in items:
            ctx.publish("in", message_id=item, payload={"item": item})
        return None

    @wf.consumer(subscribe=["in"], publishes=["in", "side", "done"])
    class Take:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            found = _peek_noted(ctx, peeks, "Take", "in", limits[0])
            if not found:
                return None
            return fl.Prepared({"in": [found[0].message_id]}, data=found[0].payload)

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.ledger.append(prepared.data["item"], "v")

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            item = prepared.data["item"]
            if item.endswith("+") and len(item) < 6:
                ctx.publish("in", message_id=item + "1+", payload={"item": item + "1+"})
            if item.endswith("s"):
                ctx.publish("side", message_id=item, payload={"item": item})
            ctx.publish("done", message_id=item, payload={})

    @wf.consumer(subscribe=["side"])
    class Audit:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            found = _peek_noted(ctx, peeks, "Audit", "side", limits[1])
            if not found:
                return None
            return fl.Prepared({"side": [found[0].message_id]})

    return wf


def _peek_noted(ctx: Any, peeks: list[Any], who: str, topic: str, limit: int) -> list[Any]:
    """Peek `limit` of `topic`, noting who peeked what and found what."""
    found: list[Any] = ctx.peek(topic, limit=limit)
    peeks.append((who, topic, tuple(m.message_id for m in found)))
    return found


NAMES = itertools.count()


def _always_afresh(m: pytest.MonkeyPatch) -> None:
    """Every peek reads the store: no window is kept, none is read in a commit."""
    m.setattr(PendingWindow, "answer", lambda self, topic, limit: None)


def _run(make_engine: Any, items: list[str], script: list[str], budgets: list[int],
         limits: tuple[int, int] = (2, 2)) -> tuple[list[Any], list[str], list[Any]]:
    """A workflow of its own name on the suite's store, run in sessions of
    `budgets` runs: the peeks seen, the ledger's writes, the runs' ends."""
    name = f"wf{next(NAMES)}"
    peeks: list[tuple[str, str, tuple[str, ...]]] = []
    ledger = MemoryLedger()
    engine = make_engine()
    try:
        engine.register(_workflow(name, items, peeks, limits),
                        tools=[ScriptedLedgerTool(ledger, list(script))])
        engine.run_session(name, trigger="manual", max_iterations=0)
        results = [engine.run_session(name, trigger="event", max_iterations=b) for b in budgets]
    finally:
        engine.close()
    runs = [(r.handler, r.status.value) for result in results for r in result.runs]
    return peeks, sorted(ledger.writes), runs


items_st = st.lists(st.sampled_from(["a", "b+", "cs", "d", "e+", "fs"]), min_size=1,
                    max_size=5, unique=True)
script_st = st.lists(st.sampled_from(["ok", "ok", "transient", "auth"]), max_size=6)
budgets_st = st.lists(st.integers(1, 6), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(items=items_st, script=script_st, budgets=budgets_st,
       limits=st.tuples(st.integers(1, 3), st.integers(1, 3)))
def test_a_peek_answered_without_reading_is_what_a_fresh_peek_reads(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch, items: list[str],
        script: list[str], budgets: list[int], limits: tuple[int, int]) -> None:
    got = _run(make_engine, items, script, budgets, limits)
    with monkeypatch.context() as m:
        _always_afresh(m)
        expected = _run(make_engine, items, script, budgets, limits)
    assert got == expected


def test_the_next_run_takes_the_commits_answer_instead_of_reading(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    fresh = pending_work.pending_messages_read_ahead

    def counting(c: Any, workflow_id: Any, topic: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(topic)
        return fresh(c, workflow_id, topic, *args, **kwargs)

    monkeypatch.setattr(pending_work, "pending_messages_read_ahead", counting)
    peeks, writes, runs = _run(make_engine, ["a", "bs", "d"], [], [10])
    assert writes == ["a", "bs", "d"]
    assert peeks == [("Take", "in", ("a", "bs")), ("Take", "in", ("bs", "d")),
                     ("Take", "in", ("d",)), ("Audit", "side", ("bs",))]
    # Only each consumer's first peek reads: the next ones of Take were
    # answered in Take's commits.
    assert reads == ["in", "side"]
    assert runs == [("Take", "committed")] * 3 + [("Audit", "committed")]


def test_a_run_that_did_not_peek_in_between_makes_the_next_peek_read(
        make_engine: Any) -> None:
    """Take's commit asks "in" again; then Refill, which reserves a message it
    knows by id without peeking, publishes "z" into "in": Take's next peek
    must see "z" (the commit's answer is older than Refill's append)."""
    peeks: list[tuple[str, ...]] = []
    wf = fl.Workflow("refilled", topics=["in", "tick"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> Any:
        for item in ("a", "b"):
            ctx.publish("in", message_id=item, payload={})
        return None

    @wf.consumer(subscribe=["tick"], publishes=["in"])
    class Refill:  # declared first: chosen whenever "tick" has work
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            return fl.Prepared({"tick": ["t1"]})

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            ctx.publish("in", message_id="z", payload={})

    @wf.consumer(subscribe=["in"], publishes=["tick"])
    class Take:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            found = ctx.peek("in", limit=2)
            peeks.append(tuple(m.message_id for m in found))
            return fl.Prepared({"in": [found[0].message_id]}) if found else None

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            if prepared.reservations["in"] == ["a"]:
                ctx.publish("tick", message_id="t1", payload={})

    engine = make_engine()
    engine.register(wf)
    result = engine.run_session("refilled")
    assert result.status == "completed", result.error
    assert [r.handler for r in result.runs] == ["produce", "Take", "Refill", "Take", "Take"]
    assert peeks == [("a", "b"), ("b", "z"), ("z",)]


def test_a_peek_of_another_limit_on_the_same_topic_reads(make_engine: Any,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Skim peeks 1 of "in" and declines; Take peeks 2 of "in", takes the first
    and publishes a new message into "in", which gives Skim work again: Skim's
    peek after Take's commit must not take the answer to Take's (2 messages)."""
    def run() -> list[tuple[str, tuple[str, ...]]]:
        peeks: list[tuple[str, tuple[str, ...]]] = []
        wf = fl.Workflow(f"limits{next(NAMES)}", topics=["in"])

        @wf.producer(publishes=["in"])
        def produce(ctx: Any, state: Any) -> Any:
            for item in ("a", "b", "c"):
                ctx.publish("in", message_id=item, payload={})
            return None

        @wf.consumer(subscribe=["in"])
        class Skim:
            def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
                peeks.append(("Skim", tuple(m.message_id for m in ctx.peek("in", limit=1))))
                return None

        @wf.consumer(subscribe=["in"], publishes=["in"])
        class Take:
            def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
                found = ctx.peek("in", limit=2)
                peeks.append(("Take", tuple(m.message_id for m in found)))
                return fl.Prepared({"in": [found[0].message_id]}) if found else None

            def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
                taken = prepared.reservations["in"][0]
                if len(taken) == 1:
                    ctx.publish("in", message_id=taken + "2", payload={})

        engine = make_engine()
        try:
            engine.register(wf)
            assert engine.run_session(wf.name, max_iterations=8).status in (
                "completed", "budget_exhausted")
        finally:
            engine.close()
        return peeks

    got = run()
    assert ("Skim", ("b",)) in got and ("Take", ("b", "c")) in got
    _always_afresh(monkeypatch)
    assert got == run()



def test_peeks_of_a_long_backlog_read_once_per_window(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """40 messages taken one at a time: the first peek reads READ_AHEAD (16)
    messages, and only the commits that leave the window unable to answer the
    next peek read it again, in their own transaction: those of runs 16 and
    32. The second finds the last 8, all there are, so the window is complete
    and answers the last peek (nothing) too. No other run reads to peek."""
    direct: list[int] = []
    in_commit: list[int] = []
    fresh, asked = pending_work.pending_messages_read_ahead, pending_work.read_ahead_query

    def reading(c: Any, workflow_id: Any, topic: str, limit: int, *args: Any) -> Any:
        direct.append(limit)
        return fresh(c, workflow_id, topic, limit, *args)

    def asking(workflow_id: Any, topic: str, limit: int, *args: Any) -> Any:
        in_commit.append(limit)
        return asked(workflow_id, topic, limit, *args)

    monkeypatch.setattr(pending_work, "pending_messages_read_ahead", reading)
    monkeypatch.setattr(pending_work, "read_ahead_query", asking)
    items = [f"m{i:02}" for i in range(40)]
    wf = fl.Workflow("backlog", topics=["in"])
    taken: list[str] = []

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> Any:
        for item in items:
            ctx.publish("in", message_id=item, payload={})
        return None

    @wf.consumer(subscribe=["in"])
    class Take:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            found = ctx.peek("in", limit=1)
            return fl.Prepared({"in": [found[0].message_id]}) if found else None

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            taken.extend(prepared.reservations["in"])

    engine = make_engine()
    try:
        engine.register(wf)
        assert engine.run_session("backlog").status == "completed"
    finally:
        engine.close()
    assert taken == items
    assert direct == [16]
    assert len(in_commit) - len(direct) == 2  # the direct read builds its query too
    assert set(in_commit) == {16}
