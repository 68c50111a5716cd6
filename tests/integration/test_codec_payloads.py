"""A handler value the codec keeps (tests/unit/test_codec_values.py) goes through
a run unharmed: a payload keyed by tuples used to poison its topic."""

from __future__ import annotations

from typing import Any

import flowledger as fl
from tests.helpers import message_status


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
