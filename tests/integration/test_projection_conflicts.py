"""A projection row written outside flowledger, in the way of an append: the
append stores nothing and says which table is out of step with the log and
how to mend it; once the projections are rebuilt, the work goes on."""

from __future__ import annotations

from typing import Any

import pytest

import flowledger as fl
from flowledger.domain.ids import handler_state_id, topic_event_id
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow, message_status


def _messages_in_log(engine: fl.Engine) -> list[str]:
    return [e.name for e in engine.events() if e.aggregate == "TopicEvent"]


def test_a_projection_row_in_the_way_stores_nothing_and_names_the_table(
        make_engine: Any, ledger: ExternalLedger) -> None:
    engine = make_engine()
    engine.register(ledger_workflow(items=["a", "b", "c", "d"]),
                    tools=[ScriptedLedgerTool(ledger)])
    # A row for a message the producer is about to publish, written by hand.
    taken = topic_event_id("wf", "in", "d").hex
    with engine.log.flow_recorder.writing() as c:
        c.execute("INSERT INTO fl_messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (taken, "x", "in", "d", "consumed", None, b"", 1, 1))

    with pytest.raises(fl.ProjectionConflictError) as caught:
        engine.run_session("wf", trigger="manual", max_iterations=0)

    message = str(caught.value)
    assert caught.value.table == "fl_messages"
    assert "fl_messages" in message and "projections rebuild" in message
    assert "nothing of this append was stored" in message.lower()
    assert _messages_in_log(engine) == []  # the producer's append: not stored
    assert ledger.keys() == []

    engine.rebuild_projections()
    result = engine.run_session("wf")
    assert result.status == "completed", result.error
    assert ledger.keys() == ["a", "b", "c", "d"]
    assert message_status(engine, "wf", "in") == {"consumed": 4}


def test_a_snapshot_already_stored_does_not_stop_an_append(
        make_engine: Any, ledger: ExternalLedger) -> None:
    """Snapshots are a cache: one found where an append would store its own
    (here a handler's state at version 20, written by hand and unreadable)
    is left as it is, on both stores, and the work goes on."""
    engine = make_engine()
    items = [f"i{n:02}" for n in range(25)]
    engine.register(ledger_workflow(items=items), tools=[ScriptedLedgerTool(ledger)])
    with engine.log.flow_recorder.writing() as c:
        c.execute("INSERT INTO stored_snapshots VALUES (?, ?, ?, ?)",
                  (handler_state_id("wf", "Append").hex, 20, "not.a:Snapshot", b"\x00"))

    result = engine.run_session("wf")

    assert result.status == "completed", result.error
    assert ledger.keys() == items
    assert message_status(engine, "wf", "in") == {"consumed": 25}
