"""A consumer run's commit asks again, in its own transaction, the read-ahead
peek its prepare made; the next run's prepare, peeking the same with nothing
of the session appended since, takes that answer instead of a read of its own
(a round trip on a server). The answer must be the one a fresh read gives:
checked against runs where every peek reads afresh, over histories where
runs publish into the topic they consume, peek past what they take, fail and
are retried, or where a second consumer peeks another topic in between."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowledger as fl
from flowledger.engine.handler_runs import RunDriver
from flowledger.projections import pending_work
from tests.helpers import MemoryLedger, ScriptedLedgerTool


def _workflow(name: str, items: list[str], peeks: list[tuple[str, str, tuple[str, ...]]]
              ) -> fl.Workflow:
    """Two consumers: `Take` peeks up to 2 of "in" and takes the first (an item
    "x+" publishes "x+1" back into "in" from its next); `Audit` peeks 2 of
    "side" (published by Take for items ending in "s"): the same limit, so
    only the topic tells their peeks apart. Every peek is noted."""
    wf = fl.Workflow(name, topics=["in", "side", "done"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> Any:
        for item in items:
            ctx.publish("in", message_id=item, payload={"item": item})
        return None

    @wf.consumer(subscribe=["in"], publishes=["in", "side", "done"])
    class Take:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            found = _peek_noted(ctx, peeks, "Take", "in")
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
            found = _peek_noted(ctx, peeks, "Audit", "side")
            if not found:
                return None
            return fl.Prepared({"side": [found[0].message_id]})

    return wf


def _peek_noted(ctx: Any, peeks: list[Any], who: str, topic: str) -> list[Any]:
    """Peek 2 of `topic`, noting who peeked what and found what."""
    found: list[Any] = ctx.peek(topic, limit=2)
    peeks.append((who, topic, tuple(m.message_id for m in found)))
    return found


NAMES = itertools.count()


def _run(make_engine: Any, items: list[str], script: list[str], budgets: list[int]
         ) -> tuple[list[Any], list[str], list[Any]]:
    """A workflow of its own name on the suite's store, run in sessions of
    `budgets` runs: the peeks seen, the ledger's writes, the runs' ends."""
    name = f"wf{next(NAMES)}"
    peeks: list[tuple[str, str, tuple[str, ...]]] = []
    ledger = MemoryLedger()
    engine = make_engine()
    try:
        engine.register(_workflow(name, items, peeks),
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
@given(items=items_st, script=script_st, budgets=budgets_st)
def test_the_commits_answer_is_what_a_fresh_peek_reads(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch, items: list[str],
        script: list[str], budgets: list[int]) -> None:
    got = _run(make_engine, items, script, budgets)
    with monkeypatch.context() as m:
        m.setattr(RunDriver, "_peeked_in_commit", lambda self, *args: None)  # always afresh
        expected = _run(make_engine, items, script, budgets)
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
    monkeypatch.setattr(RunDriver, "_peeked_in_commit", lambda self, *args: None)
    assert got == run()

