"""A consumer's commit takes the messages it publishes by id for new, and the
log's unique stream versions check it (engine/publish_guess.py, ADR 0032).

A message already in the log fails the whole commit, nothing of it stored; the
session reads itself back from the log and runs that run's `next` again, its
messages looked up, so the message is replaced as it always was. On a server
the commit's answer is read later, so the failure is found at the next run's
first append: that run, of which nothing was stored, prepares again. Every
tool call is still made once, and the log, its projections and the session's
result are what looking the messages up would have given.
"""

from __future__ import annotations

import collections
import contextlib
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowledger as fl
from flowledger.domain.ids import topic_event_id, workflow_id
from flowledger.engine.handler_runs import RunDriver
from flowledger.engine.publish_guess import PublishGuesses
from flowledger.infrastructure.codec import unpack
from flowledger.testing import assert_projections_rebuild_equal, fresh_store


class Counted(fl.Tool):
    """Counts every call of its mutator, by key."""

    name = "ledger"

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    @fl.mutator(reconcile="find")
    def book(self, key: str) -> str:
        self.calls[key] += 1
        return key

    def find(self, key: str) -> fl.Reconciliation:
        return fl.Reconciliation.applied(key) if self.calls[key] else fl.Reconciliation.failed()


def _workflow(plan: dict[str, Any], seen: collections.Counter[str],
              status: bool = False) -> fl.Workflow:
    """A producer publishes plan["batch"] to `in` (id, then where it goes and
    what it says); Forward books each `in` message and publishes to `out` by
    the id it names, with a cost at each step; Sink books each `out` message.
    `seen` counts the calls of prepare and next, by step and message id;
    plan["on_next"], if set, is run (once) in the next `next`. `status`: a
    Status consumer, first, declines every `in` message and publishes `s` by
    id in its `next`, saying the first message of the batch."""
    wf = fl.Workflow("wf", topics=["in", "out", "status"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> None:
        for message_id, to, value in plan["batch"]:
            ctx.publish("in", message_id=message_id, payload={"to": to, "v": value})

    if status:
        @wf.consumer(subscribe=["in"], publishes=["status"])
        class Status:
            def prepare(self, ctx: Any, state: Any) -> None:
                return None  # Forward takes the message

            def next(self, ctx: Any, prepared: Any, outcome: fl.Outcome) -> None:
                batch = plan["batch"]
                ctx.publish("status", message_id="s", payload=batch[0][0] if batch else None)

    @wf.consumer(subscribe=["in"], publishes=["out"])
    class Forward:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            found = ctx.peek("in", limit=1)
            if not found:
                return None
            m = found[0]
            seen[f"prepare:{m.message_id}"] += 1
            ctx.add_cost(1, "prepare")
            return fl.Prepared({"in": [m.message_id]}, data={"id": m.message_id, **m.payload})

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.add_cost(2, "mutate")
            ctx.tools.ledger.book(f"in:{prepared.data['id']}")

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            seen[f"next:{prepared.data['id']}"] += 1
            ctx.add_cost(4, "next")
            plan.pop("on_next", lambda: None)()
            ctx.publish("out", message_id=prepared.data["to"], payload=prepared.data["v"])

    @wf.consumer(subscribe=["out"])
    class Sink:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            found = ctx.peek("out", limit=1)
            if not found:
                return None
            return fl.Prepared({"out": [found[0].message_id]}, data=found[0].message_id)

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.ledger.book(f"out:{prepared.data}")

    return wf


def _messages(engine: fl.Engine, topic: str, ids: list[str]) -> dict[str, Any]:
    """Each message as the log has it: its version, status and payload."""
    found = {}
    for message_id in ids:
        m = engine.log.load(topic_event_id("wf", topic, message_id), short=True)
        if m is not None:
            found[message_id] = (m.version, m.status.value, unpack(m.payload))
    return found


def _engine(make_engine: Any, plan: dict[str, Any]) -> tuple[fl.Engine, Counted,
                                                              collections.Counter[str]]:
    engine, tool, seen = make_engine(), Counted(), collections.Counter[str]()
    engine.register(_workflow(plan, seen), tools=[tool])
    return engine, tool, seen


def test_a_message_published_again_is_replaced_and_the_session_goes_on(make_engine: Any
                                                                        ) -> None:
    """`out/x` is in the log from an earlier session; the second session's first
    Forward run publishes it again: its commit guessed it new, the log refused
    it, and the session ran that `next` again and replaced the message."""
    plan = {"batch": [("a", "x", 1)]}
    engine, tool, seen = _engine(make_engine, plan)
    first = engine.run_session("wf")
    assert first.status == "completed", first.error
    plan["batch"] = [("b", "x", 2), ("c", "y", 3)]

    second = engine.run_session("wf")

    assert second.status == "completed", second.error
    handlers = collections.Counter(r.handler for r in second.runs)
    assert handlers == {"produce": 1, "Forward": 2, "Sink": 1}  # x stays consumed
    assert len({r.run_id for r in second.runs}) == 4 and all(r.committed for r in second.runs)
    assert seen["next:b"] == 2 and seen["next:c"] == 1  # b's next ran again, once
    assert tool.calls == {"in:a": 1, "in:b": 1, "in:c": 1, "out:x": 1, "out:y": 1}
    # x was consumed in the first session: replaced (its fourth event), it stays so
    assert _messages(engine, "out", ["x", "y"]) == {"x": (4, "consumed", 2),
                                                    "y": (3, "consumed", 3)}
    assert engine.verify().ok
    assert_projections_rebuild_equal(engine)


def test_a_message_this_session_holds_is_not_guessed(make_engine: Any) -> None:
    """a publishes x, then b publishes x again, in one session: x's stream is in
    the session's memory, so b's commit replaces it without a guess (no read
    back: b's `next` runs once)."""
    plan = {"batch": [("a", "x", 1), ("b", "x", 2)]}
    engine, tool, seen = _engine(make_engine, plan)

    result = engine.run_session("wf")

    assert result.status == "completed", result.error
    assert seen["next:a"] == 1 and seen["next:b"] == 1
    assert _messages(engine, "out", ["x"])["x"][2] == 2
    assert max(tool.calls.values()) == 1


def test_after_a_wrong_guess_the_commits_that_follow_look_their_messages_up(
        make_engine: Any) -> None:
    """Every Forward run of the second session publishes an id already in the
    log: only the first guessed (PublishGuesses.PAUSE commits look up after a
    wrong guess), so only its `next` ran twice."""
    plan = {"batch": [(f"a{k}", f"x{k}", k) for k in range(6)]}
    engine, tool, seen = _engine(make_engine, plan)
    assert engine.run_session("wf").status == "completed"
    plan["batch"] = [(f"b{k}", f"x{k}", 10 + k) for k in range(6)]

    second = engine.run_session("wf")

    assert second.status == "completed", second.error
    assert sum(v for k, v in seen.items() if k.startswith("next:b")) == 7
    assert max(tool.calls.values()) == 1 and len(tool.calls) == 18
    replaced = _messages(engine, "out", [f"x{k}" for k in range(6)])
    assert replaced == {f"x{k}": (4, "consumed", 10 + k) for k in range(6)}
    assert_projections_rebuild_equal(engine)


def test_a_session_taken_over_while_its_commit_guessed_is_refused_as_before(
        make_engine: Any) -> None:
    """Another process takes the session over while `next` runs, and the commit
    publishes a message already in the log: refused, the session reads the
    log back, finds the session is no longer its own and stops with the
    refusal the append made (a lost lock), storing nothing more."""
    plan: dict[str, Any] = {"batch": [("a", "x", 1)]}
    engine, tool, seen = _engine(make_engine, plan)
    assert engine.run_session("wf").status == "completed"
    other = make_engine()

    def take_over() -> None:
        wf = other.log.load(workflow_id("wf"))
        assert wf is not None and wf.open_session is not None
        wf.take_over_session(datetime(2030, 1, 1, tzinfo=UTC), "another-process",
                             datetime(2030, 1, 2, tzinfo=UTC), holder_dead=True)
        other.log.append(wf)

    plan["batch"], plan["on_next"] = [("b", "x", 2)], take_over

    with pytest.raises(fl.ConcurrencyError, match="lost its lock"):
        engine.run_session("wf")

    assert seen["next:b"] == 1
    assert tool.calls == {"in:a": 1, "out:x": 1, "in:b": 1}
    assert _messages(engine, "out", ["x"]) == {"x": (3, "consumed", 1)}  # not replaced
    assert engine.verify().ok


def test_a_session_taken_over_by_another_thread_of_this_engine_is_refused(
        make_engine: Any, clock: fl.ManualClock) -> None:
    """The same as above, the takeover made by `recover()` in another thread of
    the same engine once the lease ran out: the owner is the same, so the
    session tells by its workflow's version, which someone else moved, and
    does not run its `next` again. The refused session leaves the lease
    alone as it stops (the session is the other thread's now, under the same
    owner), so the recovering thread runs it to its end."""
    plan: dict[str, Any] = {"batch": [("a", "x", 1)]}
    engine, tool, seen = _engine(make_engine, plan)
    assert engine.run_session("wf").status == "completed"
    recovering, session_done = threading.Event(), threading.Event()

    recovered: list[Any] = []

    def recover() -> None:
        with contextlib.suppress(fl.ConcurrencyError):
            recovered.extend(engine.recover())

    def hold_the_recovered_next() -> None:
        recovering.set()  # the recover thread is in the session's next
        assert session_done.wait(30)

    def take_over() -> None:
        clock.advance("1h")  # the lease ran out
        plan["on_next"] = hold_the_recovered_next
        threading.Thread(target=recover, name="recover").start()
        assert recovering.wait(30)

    plan["batch"], plan["on_next"] = [("b", "x", 2)], take_over

    try:
        with pytest.raises(fl.ConcurrencyError, match="lost its lock"):
            engine.run_session("wf")
    finally:
        session_done.set()
    for thread in threading.enumerate():
        if thread.name == "recover":
            thread.join(30)

    # This session's once, then the recovering thread's twice: its commit took
    # x, published by the first session, for new, and ran `next` again.
    assert seen["next:b"] == 3
    assert tool.calls == {"in:a": 1, "out:x": 1, "in:b": 1}
    assert [r.status for r in recovered] == ["completed"]
    work = engine.pending_work("wf")
    assert work.open_session is None and not work.unfinished_runs
    assert not [e for e in engine.events("wf") if e.name == "SessionAbandoned"]
    assert engine.verify().ok
    assert_projections_rebuild_equal(engine)


@pytest.mark.parametrize("store", [pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)
def test_a_wrong_guess_found_after_the_store_lost_appends_stops_the_session(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a server, b's commit (it republishes x) is sent and its answer read
    later; meanwhile another thread finds the server lost appends (stood in
    for by the recorder's count). The session's memory may then hold what the
    log does not: it stops, as it did before guesses, rather than reading
    itself back."""
    plan: dict[str, Any] = {"batch": [("a", "x", 1)]}
    engine, tool, seen = _engine(make_engine, plan)
    assert engine.run_session("wf").status == "completed"
    commit = RunDriver._commit_asking_next_peek

    def commit_then_lose(driver: RunDriver, label: str) -> None:
        commit(driver, label)
        monkeypatch.setattr(RunDriver, "_commit_asking_next_peek", commit)

        def found_lost() -> None:
            engine.log.flow_recorder.lost_appends += 1

        finder = threading.Thread(target=found_lost)
        finder.start()
        finder.join()

    plan["batch"] = [("b", "x", 2), ("c", "y", 3)]
    plan["on_next"] = lambda: monkeypatch.setattr(
        RunDriver, "_commit_asking_next_peek", commit_then_lose)

    with pytest.raises(fl.ConcurrencyError):
        engine.run_session("wf")
    assert seen["next:b"] == 1  # not run again
    assert tool.calls == {"in:a": 1, "out:x": 1, "in:b": 1}


def _declining(plan: dict[str, Any]) -> fl.Workflow:
    """Waiter declines its message (it waits for something else); Forward,
    without a mutator (its one append is its commit), publishes to `out`."""
    wf = fl.Workflow("wf", topics=["in", "out", "hold"])

    @wf.producer(publishes=["in", "hold"])
    def produce(ctx: Any, state: Any) -> None:
        for message_id, to in plan["batch"]:
            ctx.publish("in", message_id=message_id, payload={"to": to})
        if plan.get("hold"):
            ctx.publish("hold", message_id=plan["hold"], payload=1)

    @wf.consumer(subscribe=["hold"])
    class Waiter:
        def prepare(self, ctx: Any, state: Any) -> None:
            return None

    @wf.consumer(subscribe=["in"], publishes=["out"])
    class Forward:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            found = ctx.peek("in", limit=1)
            if not found:
                return None
            return fl.Prepared({"in": [found[0].message_id]}, data=found[0].payload["to"])

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            ctx.publish("out", message_id=prepared.data, payload=1)

    return wf


def test_a_decline_stands_after_a_wrong_guess(make_engine: Any) -> None:
    """Waiter declined before Forward's commit guessed wrong: the session read
    back from the log does not run it again (a run more, and a budget of two
    runs spent on it)."""
    plan: dict[str, Any] = {"batch": [("a", "x")]}
    engine = make_engine()
    engine.register(_declining(plan))
    assert engine.run_session("wf").status == "completed"
    plan["batch"], plan["hold"] = [("b", "x")], "h"  # x is in the log: the guess is wrong

    result = engine.run_session("wf", max_iterations=2)

    assert [r.handler for r in result.runs] == ["produce", "Waiter", "Forward"]
    assert result.status == "completed", (result.status, result.budget, result.remaining)


@pytest.mark.parametrize("to", ["y", "x"])
def test_ids_that_repeat_in_a_commit_that_guessed_are_still_said(make_engine: Any,
                                                                 to: str) -> None:
    """The commit's run stream is in the log already (an id factory that
    repeats), whether its guess was right (y is new) or wrong (x is not):
    said as such, never redone as a wrong guess under the next id."""
    plan: dict[str, Any] = {"batch": [("a", "x")]}
    first = make_engine(ids=fl.SeededIds(7))
    first.register(_declining(plan))
    assert first.run_session("wf").status == "completed"
    given = fl.SeededIds(7)
    used = [given() for _ in range(3)]  # the session's id, produce's run, Forward's run
    other = fl.SeededIds(8)
    ids = iter([other(), other(), used[2], *(other() for _ in range(20))])
    repeating = make_engine(ids=lambda: next(ids))
    plan["batch"] = [("b", to)]
    repeating.register(_declining(plan))

    with pytest.raises(fl.ConfigurationError, match=r"HandlerRun stream .* in the log already"):
        repeating.run_session("wf")
    assert _messages(repeating, "out", ["x", "y"]) == {"x": (1, "pending", 1)}


def test_a_consumer_that_declined_and_published_is_asked_again(make_engine: Any) -> None:
    """Status declines and publishes `s` in its `next`; `s` is in the log, so
    its commit guessed wrong. On a server that is found after the session
    noted the decline: the decline goes with the commit, and Status is asked
    again, as looking `s` up would have had it."""
    plan: dict[str, Any] = {"batch": [("a", "x", 1)]}
    seen = collections.Counter[str]()
    engine = make_engine()
    engine.register(_workflow(plan, seen, status=True), tools=[Counted()])
    assert engine.run_session("wf").status == "completed"
    plan["batch"] = [("b", "y", 2)]

    second = engine.run_session("wf")

    assert second.status == "completed", second.error
    assert [(r.handler, r.declined) for r in second.runs[:3]] == [
        ("produce", False), ("Status", True), ("Forward", False)]
    assert _messages(engine, "status", ["s"]) == {"s": (2, "pending", "b")}
    assert_projections_rebuild_equal(engine)


# ------------------------------------------------------------------ property

IN_IDS = [f"i{k}" for k in range(5)]
OUT_IDS = [f"o{k}" for k in range(3)]
Session = tuple[list[tuple[str, str, int]], int, int | None]
SESSIONS = st.lists(
    st.tuples(st.lists(st.tuples(st.sampled_from(IN_IDS), st.sampled_from(OUT_IDS),
                                 st.integers(0, 3)), max_size=4),
              st.integers(1, 6), st.one_of(st.none(), st.integers(1, 30))),
    min_size=1, max_size=6)


def _play(store: str, sessions: list[Session], status: bool, guess: bool
          ) -> tuple[dict[str, Any], collections.Counter[str], list[Any]]:
    plan: dict[str, Any] = {"batch": []}
    tool, seen = Counted(), collections.Counter[str]()
    engine = fl.Engine(store, clock=fl.ManualClock(), ids=fl.SeededIds(7))
    try:
        engine.register(_workflow(plan, seen, status), tools=[tool])
        results = []
        with (mock.patch.object(PublishGuesses, "PAUSE", 1) if guess else
              mock.patch.object(PublishGuesses, "may_guess", lambda self: False)):
            for batch, iterations, max_cost in sessions:
                plan["batch"] = batch
                r = engine.run_session("wf", max_iterations=iterations, max_cost=max_cost)
                results.append((r.status, r.error, r.budget, r.remaining, str(r.cost),
                                [(x.handler, x.status.value, x.declined) for x in r.runs]))
        assert engine.verify().ok
        assert_projections_rebuild_equal(engine)
        state = {topic: _messages(engine, topic, ids)
                 for topic, ids in (("in", IN_IDS), ("out", OUT_IDS), ("status", ["s"]))}
        return state, tool.calls, results
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sessions=SESSIONS, status=st.booleans())
def test_guessing_changes_nothing_the_log_or_the_tools_see(
        kind: str, sessions: list[Session], status: bool) -> None:
    """Sessions republishing ids from small pools (with costs, cost budgets,
    and maybe a consumer that declines and publishes by id), played once with
    guesses (wrong ones, redone, every other commit) and once looking every
    message up: the same messages, statuses and payloads, the same calls
    (each at most once), the same session results (runs, status, budget,
    what remains, cost); projections equal their rebuild."""
    with (tempfile.TemporaryDirectory() as folder,
          fresh_store(kind, Path(folder)) as guessing,
          fresh_store(kind, Path(folder)) as looking):
        guessed = _play(guessing, sessions, status, guess=True)
        looked = _play(looking, sessions, status, guess=False)
    assert guessed == looked
    assert all(n == 1 for n in guessed[1].values()), guessed[1]
