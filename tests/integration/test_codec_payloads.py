"""A handler value the codec keeps (tests/unit/test_codec_values.py) goes through
a run unharmed: a payload keyed by tuples used to poison its topic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

import flowledger as fl
from tests.helpers import MemoryLedger, ScriptedLedgerTool, ledger_workflow, message_status


def test_a_payload_keyed_by_tuples_is_consumed_not_a_poison_message(make_engine) -> None:
    wf = fl.Workflow("wf", topics=["in"])
    seen: list[Any] = []

    @wf.producer(publishes=["in"])
    def p(ctx: Any, state: Any) -> None:
        ctx.publish("in", message_id="m", payload={(1, 2): "a", "when": (2026, 12)})

    @wf.consumer(subscribe=["in"])
    class C:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            messages = ctx.peek("in")
            if not messages:
                return None
            seen.append(messages[0].payload)
            return fl.Prepared(reservations={"in": [messages[0].message_id]},
                               data=messages[0].payload)

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> Any:
            seen.append(prepared.data)
            return {"last": prepared.data}

    engine = make_engine()
    engine.register(wf)
    result = engine.run_session("wf")
    assert result.status == "completed", result.error
    assert seen == [{(1, 2): "a", "when": (2026, 12)}] * 2
    assert message_status(engine, "wf", "in") == {"consumed": 1}


def test_a_clock_time_the_log_cannot_keep_is_refused_and_the_log_stays_readable(
        make_engine) -> None:
    """An engine clock giving a time within a day of the calendar's ends in a
    zone: its instant in UTC is out of range, so the event would be written
    and never read back (every later reading stopping at it, as a log changed
    outside flowledger). Refused before anything of the append is stored; an
    engine with a clock that tells the time goes on from the log."""
    clock = fl.ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    engine = make_engine(clock=clock)
    engine.register(ledger_workflow("wf", items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    assert engine.run_session("wf").status == "completed"
    held = list(engine.events())
    for wrong in (datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),
                  datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))):
        clock.set(wrong)
        with pytest.raises(fl.ConfigurationError, match=r"the engine's clock gave .* which "
                                                        r"the log cannot keep.*Nothing of this "
                                                        r"append was stored"):
            engine.run_session("wf")
        assert list(engine.events()) == held
    clock.set(datetime(2026, 1, 2, tzinfo=UTC))
    again = make_engine(clock=clock)
    again.register(ledger_workflow("wf", items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    assert again.verify().ok
    assert [e.position for e in again.events()] == [e.position for e in held]


def test_a_wake_at_the_log_cannot_keep_fails_the_run_and_says_why(make_engine) -> None:
    """Prepared.wake_at is kept as an instant in UTC: one outside years 1 to
    9999 there fails the run as a logic error, naming it, and nothing of it
    is written that could not be read back."""
    wf = fl.Workflow("wf", topics=["in"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> Any:
        ctx.publish("in", message_id="m", payload=1)
        return state

    @wf.consumer(subscribe=["in"])
    class Sleepy:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            return fl.Prepared(wake_at=datetime(9999, 12, 31, 23,
                                                tzinfo=timezone(timedelta(hours=-5))))

    engine = make_engine()
    engine.register(wf)
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert result.error is not None and "falls outside years 1 to 9999 in UTC" in result.error
    assert engine.verify().ok
    assert len(list(engine.events())) > 5  # all of it reads back
