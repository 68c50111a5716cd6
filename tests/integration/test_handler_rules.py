"""Each rule of DESIGN §1.1 and §1.2 a handler can break aborts its run as a logic error."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

import flowledger as fl
from tests.helpers import ExternalLedger, ScriptedLedgerTool, message_status


def run_broken(make_engine: Any, ledger: ExternalLedger, prepare: Any = None,
               mutate: Any = None, next_: Any = None, produce: Any = None,
               swallow: bool = False) -> tuple[fl.Engine, fl.SessionResult, ScriptedLedgerTool]:
    """One workflow whose handlers do what the test says; returns the session result."""
    wf = fl.Workflow("wf", topics=["in", "out", "other"])

    @wf.producer(publishes=["in"])
    def producer(ctx: Any, state: Any) -> None:
        if produce is not None:
            produce(ctx)
        else:
            ctx.publish("in", message_id="m1", payload={"n": 1})

    def guarded(fn: Any, *args: Any) -> Any:
        if not swallow:
            return fn(*args)
        try:
            return fn(*args)
        except Exception:
            return None

    @wf.consumer(subscribe=["in"], publishes=["out"])
    class Consumer:
        def prepare(self, ctx: Any, state: Any) -> Any:
            if prepare is not None:
                guarded(prepare, ctx)
            pending = ctx.peek("in")
            return fl.Prepared({"in": [pending[0].message_id]}) if pending else None

        def mutate(self, ctx: Any, prepared: Any) -> None:
            if mutate is not None:
                guarded(mutate, ctx)

        def next(self, ctx: Any, prepared: Any, outcome: Any) -> None:
            if next_ is not None:
                guarded(next_, ctx)

    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    engine.register(wf, tools=[tool])
    return engine, engine.run_session("wf"), tool


CASES = {
    "mutation in prepare": dict(prepare=lambda ctx: ctx.tools.ledger.append("k", "v")),
    "publish in prepare": dict(prepare=lambda ctx: ctx.publish("out", "x", 1)),
    "read in mutate": dict(mutate=lambda ctx: ctx.tools.ledger.find("k")),
    "peek in mutate": dict(mutate=lambda ctx: ctx.peek("in")),
    "publish in mutate": dict(mutate=lambda ctx: ctx.publish("out", "x", 1)),
    "read in next": dict(next_=lambda ctx: ctx.tools.ledger.find("k")),
    "mutation in next": dict(next_=lambda ctx: ctx.tools.ledger.append("k", "v")),
    "peek in next": dict(next_=lambda ctx: ctx.peek("in")),
    "publish to an undeclared topic": dict(next_=lambda ctx: ctx.publish("other", "x", 1)),
    "peek an unsubscribed topic": dict(prepare=lambda ctx: ctx.peek("out")),
    "input_id in next": dict(
        next_=lambda ctx: ctx.publish("out", "x", 1, input_id=__import__("uuid").uuid4())),
    "register an input in next": dict(next_=lambda ctx: ctx.register_input("s", "t", "1")),
    "mutation in a producer": dict(produce=lambda ctx: ctx.tools.ledger.append("k", "v")),
    "peek in a producer": dict(produce=lambda ctx: ctx.peek("in")),
}


@pytest.mark.parametrize("swallow", [False, True], ids=["raised", "swallowed"])
@pytest.mark.parametrize("case", list(CASES))
def test_rule_violation_fails_the_run_as_logic_error(make_engine, ledger, case, swallow):
    _engine, result, tool = run_broken(make_engine, ledger, swallow=swallow, **CASES[case])

    assert result.status == "failed", f"{case}: {result.status} {result.error}"
    failed = [r for r in result.runs if r.status.value != "committed"]
    assert len(failed) == 1 and failed[0].status.value == "failed:logic"
    assert (failed[0].reason or "").startswith("RuleBroken: workflow 'wf'")
    assert tool.calls == []  # no side effect escaped
    assert ledger.keys() == []


def test_second_mutation_fails_the_run_and_keeps_the_first_applied(make_engine, ledger):
    def twice(ctx: Any) -> None:
        ctx.tools.ledger.append("k1", "v")
        ctx.tools.ledger.append("k2", "v")

    engine, result, tool = run_broken(make_engine, ledger, mutate=twice)

    assert result.status == "failed"
    run = engine.run(next(r for r in result.runs if r.handler == "Consumer").run_id)
    assert run.status.value == "failed:logic"
    assert "at most one mutator call" in (run.reason or "")
    assert tool.calls == [("k1", "v")]
    assert ledger.keys() == ["k1"]
    # The first mutation was applied: the reservation stays with the run.
    assert message_status(engine, "wf", "in") == {"reserved": 1}


def test_a_call_after_the_mutation_is_a_logic_error(make_engine, ledger):
    def then_cost(ctx: Any) -> None:
        ctx.tools.ledger.append("k1", "v")
        ctx.tools.ledger.find("k1")

    engine, result, _tool = run_broken(make_engine, ledger, mutate=then_cost)
    run = engine.run(next(r for r in result.runs if r.handler == "Consumer").run_id)
    assert run.status.value == "failed:logic"
    assert "last thing mutate does" in (run.reason or "")


def _one_message(prepare: Any, topics: tuple[str, ...] = ("in",)) -> fl.Workflow:
    """Workflow "wf": a producer publishes "m1" to "in"; a consumer of "in"
    prepares with `prepare(ctx, state)`."""
    wf = fl.Workflow("wf", topics=list(topics))

    @wf.producer(publishes=["in"])
    def producer(ctx: Any, state: Any) -> None:
        ctx.publish("in", message_id="m1", payload=1)

    @wf.consumer(subscribe=["in"])
    class Consumer:
        def prepare(self, ctx: Any, state: Any) -> Any:
            return prepare(ctx, state)

    return wf


def test_reserving_an_unsubscribed_topic_is_a_logic_error(make_engine):
    engine = make_engine()
    engine.register(_one_message(lambda ctx, state: fl.Prepared({"other": ["m1"]}),
                                 topics=("in", "other")))
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert "does not subscribe" in (result.error or "")


def test_reserving_a_consumed_or_unknown_message_is_a_logic_error(make_engine):
    wanted = {"ids": ["nope"]}
    engine = make_engine()
    engine.register(_one_message(lambda ctx, state: fl.Prepared({"in": wanted["ids"]})))
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert "which is unknown" in (result.error or "")
    assert message_status(engine, "wf", "in") == {"pending": 1}


def test_a_bad_peek_limit_fails_the_run_with_what_was_wrong(make_engine):
    """A bool is not a limit (True would read as 1 on one store and fail on
    the other): the run fails saying so, even when prepare catches the error,
    and the message stays pending."""
    def prepare(ctx: Any, state: Any) -> Any:
        with contextlib.suppress(Exception):  # caught: the run fails all the same
            ctx.peek("in", limit=True)
        return fl.Prepared({"in": ["m1"]})

    engine = make_engine()
    engine.register(_one_message(prepare))
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert "peek limit must be an int >= 0 (got True)" in (result.error or "")
    assert message_status(engine, "wf", "in") == {"pending": 1}


def test_publish_same_message_id_replaces_payload_and_keeps_status(make_engine):
    wf = fl.Workflow("wf", topics=["in"])
    payloads = iter([{"v": 1}, {"v": 2}, {"v": 3}])
    consumed: list[Any] = []

    @wf.producer(publishes=["in"])
    def producer(ctx: Any, state: Any) -> None:
        ctx.publish("in", message_id="same", payload=next(payloads))

    @wf.consumer(subscribe=["in"])
    class Take:
        def prepare(self, ctx: Any, state: Any) -> Any:
            pending = ctx.peek("in")
            if not pending:
                return None
            consumed.append(pending[0].payload)
            return fl.Prepared({"in": ["same"]})

    engine = make_engine()
    engine.register(wf)
    engine.run_session("wf", max_iterations=0)  # published v1, still pending
    engine.run_session("wf")  # v2 replaces v1 while pending; consumed with v2
    assert consumed == [{"v": 2}]
    engine.run_session("wf")  # v3 replaces v2; the message stays consumed
    assert consumed == [{"v": 2}]
    assert message_status(engine, "wf", "in") == {"consumed": 1}
    published = [e for e in engine.events(workflow="wf")
                 if e.aggregate == "TopicEvent" and e.name in ("Published", "PayloadReplaced")]
    assert [e.fields["payload"] for e in published] == [{"v": 1}, {"v": 2}, {"v": 3}]


def test_caused_by_is_inherited_through_next(make_engine, ledger):
    wf = fl.Workflow("wf", topics=["in", "mid", "out"])

    @wf.producer(publishes=["in"])
    def producer(ctx: Any, state: Any) -> None:
        a = ctx.register_input(source="mail", type="email", id="<a@x>", title="A")
        b = ctx.register_input(source="mail", type="email", id="<b@x>", title="B")
        ctx.publish("in", message_id="1", payload=1, input_id=a)
        ctx.publish("in", message_id="2", payload=2, input_id=b)
        ctx.publish("in", message_id="3", payload=3)  # gets an implicit input

    @wf.consumer(subscribe=["in"], publishes=["mid"])
    class Batch:
        def prepare(self, ctx: Any, state: Any) -> Any:
            ids = [m.message_id for m in ctx.peek("in")]
            return fl.Prepared({"in": ids}) if ids else None

        def next(self, ctx: Any, prepared: Any, outcome: Any) -> None:
            total = sum(map(int, prepared.reservations["in"]))
            ctx.publish("mid", message_id="batch", payload=total)

    @wf.consumer(subscribe=["mid"], publishes=["out"])
    class Forward:
        def prepare(self, ctx: Any, state: Any) -> Any:
            ids = [m.message_id for m in ctx.peek("mid")]
            return fl.Prepared({"mid": ids}) if ids else None

        def next(self, ctx: Any, prepared: Any, outcome: Any) -> None:
            ctx.publish("out", message_id="final", payload="done")

    engine = make_engine()
    engine.register(wf)
    assert engine.run_session("wf").status == "completed"

    published = {e.fields["message_id"]: e.fields["caused_by"] for e in engine.events(workflow="wf")
                 if e.name == "Published"}
    inputs = {e.fields["external_id"]: e.stream_id for e in engine.events(workflow="wf")
              if e.aggregate == "Input"}
    assert set(inputs) == {"<a@x>", "<b@x>", "3"}
    assert published["1"] == [inputs["<a@x>"]]
    assert published["3"] == [inputs["3"]]
    assert set(published["batch"]) == set(inputs.values())
    assert set(published["final"]) == set(inputs.values())


def test_register_input_twice_returns_the_same_id(make_engine):
    wf = fl.Workflow("wf", topics=["in"])
    ids: list[Any] = []

    @wf.producer(publishes=["in"])
    def producer(ctx: Any, state: Any) -> None:
        ids.append(ctx.register_input(source="s", type="t", id="42", title="first"))
        ids.append(ctx.register_input(source="s", type="t", id=42))

    engine = make_engine()
    engine.register(wf)
    engine.run_session("wf")
    engine.run_session("wf")
    assert len(set(ids)) == 1
    registered = [e for e in engine.events(workflow="wf") if e.aggregate == "Input"]
    assert len(registered) == 1 and registered[0].fields["title"] == "first"


@pytest.mark.parametrize("given", ["text", "not an id", "number"])
def test_an_input_id_given_as_text_is_the_id_it_spells_and_anything_else_is_named(
        make_engine, given):
    """str(id), as an id comes back from a queue or a file, was said never to
    have been returned by register_input; text that spells no id, or a number,
    raised a bare ValueError naming no run."""
    wf = fl.Workflow("wf", topics=["in"])
    ids: list[Any] = []

    @wf.producer(publishes=["in"])
    def producer(ctx: Any, state: Any) -> None:
        registered = ctx.register_input(source="s", type="t", id="1")
        ids.append(registered)
        ctx.publish("in", message_id="m", payload=1, input_id={
            "text": str(registered), "not an id": "A-1", "number": 7}[given])

    engine = make_engine()
    engine.register(wf)
    result = engine.run_session("wf")
    if given == "text":
        assert result.status == "completed", result.error
        (message,) = [e for e in engine.events(workflow="wf") if e.name == "Published"]
        assert [str(i) for i in message.fields["caused_by"]] == [str(ids[0])]
    else:
        assert result.status == "failed"
        assert "producer of 'producer'" in (result.error or "")
        assert "It is not an input id: pass the uuid.UUID ctx.register_input returned" in (
            result.error or "")


def test_a_failed_producer_leaves_no_trace_in_topics_inputs_or_state(make_engine):
    wf = fl.Workflow("wf", topics=["in"])

    @wf.producer(publishes=["in"])
    def producer(ctx: Any, state: Any) -> Any:
        ctx.register_input(source="s", type="t", id="1")
        ctx.publish("in", message_id="m", payload=1)
        raise RuntimeError("crashed half way")

    engine = make_engine()
    engine.register(wf)
    result = engine.run_session("wf")

    assert result.status == "failed"
    aggregates = {e.aggregate for e in engine.events(workflow="wf")}
    assert aggregates == {"Workflow", "Session", "HandlerRun"}


def test_a_run_publishing_very_many_messages_is_warned_of_once(
        make_engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A run's messages wait in memory until it commits (a scale trial's run of
    100,000 took 1.1 GB): past MANY_PUBLISHES, a warning says so, once, and
    what to do; the run commits all the same."""
    import logging

    from flowledger.engine import context

    monkeypatch.setattr(context, "MANY_PUBLISHES", 5)
    wf = fl.Workflow("backfill", topics=["item"])

    @wf.producer(publishes=["item"])
    def fill(ctx: Any, state: Any) -> None:
        for i in range(12):
            ctx.publish("item", message_id=str(i), payload=i)

    engine = make_engine()
    engine.register(wf)
    with caplog.at_level(logging.WARNING, logger="flowledger.engine"):
        assert engine.run_session("backfill").status == "completed"
    said = [r.getMessage() for r in caplog.records if "messages so far" in r.getMessage()]
    assert len(said) == 1 and "has published 5 messages so far" in said[0], said
    assert "Split a backfill across runs" in said[0] and "'fill'" in said[0]
    assert engine.pending_work("backfill").topics[0].pending == 12
