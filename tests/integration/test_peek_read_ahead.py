"""A consumer's peek reads ahead the streams of the messages it found
(RunDriver.READ_AHEAD), in the same statement: the reservation that follows
loads none of them again, and what it folds from what was read ahead is the
whole stream, so its appends go on from the stream's real version."""

from __future__ import annotations

from typing import Any

import pytest

import flowledger as fl
from flowledger.domain.ids import topic_event_id
from tests.helpers import (
    ExternalLedger,
    ScriptedLedgerTool,
    count_loads,
    ledger_workflow,
    message_status,
)


def test_a_reservation_after_a_peek_loads_no_message_stream(
        make_engine: Any, ledger: ExternalLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine()
    engine.register(ledger_workflow(), tools=[ScriptedLedgerTool(ledger)])
    produced = engine.run_session("wf", trigger="manual", max_iterations=0)
    assert produced.status == "budget_exhausted", produced.error
    loaded = count_loads(monkeypatch)

    result = engine.run_session("wf", trigger="event")  # consumers only, a fresh session

    assert result.status == "completed", result.error
    assert ledger.keys() == ["a", "b", "c"]
    assert message_status(engine, "wf", "in") == {"consumed": 3}
    reserved = {topic_event_id("wf", "in", m) for m in "abc"}
    assert not reserved & set(loaded)


def _republishing_workflow(limit: int | None) -> fl.Workflow:
    """Each session's producer publishes a, b, c, d again (a second event in
    each pending message's stream); each consumer run peeks `limit` messages
    and reserves all it found but the first, or the first when it is the last."""
    wf = fl.Workflow("wf", topics=["in", "done"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> int:
        n = (state or 0) + 1
        for item in "abcd":
            ctx.publish("in", message_id=item, payload={"item": item, "round": n})
        return n

    @wf.consumer(subscribe=["in"], publishes=["done"])
    class Take:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            found = ctx.peek("in", limit=limit)
            if not found:
                return None
            chosen = found[1:] or found
            return fl.Prepared(reservations={"in": [m.message_id for m in chosen]},
                               data=[m.payload for m in chosen])

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.ledger.append("+".join(p["item"] for p in prepared.data),
                                    ",".join(str(p["round"]) for p in prepared.data))

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            for p in prepared.data:
                ctx.publish("done", message_id=p["item"], payload=p)

    return wf


@pytest.mark.parametrize("limit", [3, None, 40], ids=["read-ahead", "no-limit", "past-read-ahead"])
def test_messages_with_several_events_are_reserved_and_consumed_once(
        make_engine: Any, ledger: ExternalLedger, limit: int | None) -> None:
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    engine.register(_republishing_workflow(limit), tools=[tool])
    for _ in range(2):  # round 2 replaces every payload: two events in each stream
        produced = engine.run_session("wf", trigger="manual", max_iterations=0)
        assert produced.status == "budget_exhausted", produced.error

    result = engine.run_session("wf", trigger="event")  # consumers only, a fresh session

    assert result.status == "completed", result.error
    assert message_status(engine, "wf", "in") == {"consumed": 4}
    expected = ["a", "b+c", "d"] if limit == 3 else ["a", "b+c+d"]
    assert ledger.keys() == expected
    assert all(set((ledger.find(k) or "").split(",")) == {"2"} for k in expected)
    assert len(tool.calls) == len(expected)  # every call of the tool: one per run
