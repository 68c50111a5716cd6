"""Which appends wait for the disk (ADR 0011).

A killed process loses no committed append either way (the crash tests show
that); what an fsync adds is surviving the machine itself. The rule: the
append holding a mutation's `in_flight` (before the external call) and the
session's close are committed with `synchronous=FULL`; the other appends of a
session are not, and a person's decisions and registrations are. This test
reads the statements SQLite ran on the writer connection.
"""

from __future__ import annotations

from typing import Any

import pytest

import flowledger as fl
from tests.helpers import ScriptedLedgerTool, ledger_workflow


def transactions(statements: list[str]) -> list[tuple[str, str]]:
    """(synchronous mode in force at COMMIT, the transaction's SQL) per write transaction."""
    mode, body, out = "FULL", [], []
    for sql in statements:
        if sql.startswith("PRAGMA synchronous="):
            mode = sql.split("=", 1)[1]
        elif sql.startswith("BEGIN IMMEDIATE"):
            body = []
        elif sql == "COMMIT":
            out.append((mode, "\n".join(body)))
        else:
            body.append(sql)
    return out


def synced(txs: list[tuple[str, str]], event: str) -> list[bool]:
    return [mode == "FULL" for mode, sql in txs if event in sql]


# It reads SQLite's own statements (PostgreSQL's synchronous_commit: ADR 0017).
pytestmark = pytest.mark.parametrize("store", ["sqlite"], indirect=True)


def test_only_in_flight_and_session_close_wait_for_the_disk(make_engine: Any,
                                                            ledger: Any) -> None:
    engine = make_engine()
    engine.register(ledger_workflow(items=["a", "b"]), tools=[ScriptedLedgerTool(ledger)])
    seen: list[str] = []
    with engine.log.writing():
        pass  # opens the writer connection
    writer = engine.log.flow_recorder._writer
    assert writer is not None
    writer.set_trace_callback(seen.append)

    result = engine.run_session("wf")
    assert result.status == "completed"
    txs = transactions(seen)

    assert synced(txs, "HandlerRun.MutationInFlight") == [True, True]
    assert synced(txs, "Session.Closed") == [True]
    assert synced(txs, "Session.Opened") == [True]
    # Covered by the next synced append: outcomes, commits, the producer's run.
    assert synced(txs, "HandlerRun.MutationApplied") == [False, False]
    assert synced(txs, "HandlerRun.Committed") == [False, False, False]


def test_a_persons_decision_waits_for_the_disk(make_engine: Any, ledger: Any) -> None:
    engine = make_engine(policy=fl.RetryPolicy(reconcile_max_attempts=1))
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["uncertain"]
    tool.reconcile_script = ["retry"]  # gives up at once: indeterminate, a person decides
    engine.register(ledger_workflow(items=["a"]), tools=[tool])
    assert engine.run_session("wf").status == "suspended"
    (blocked,) = engine.blocked()
    seen: list[str] = []
    writer = engine.log.flow_recorder._writer
    assert writer is not None
    writer.set_trace_callback(seen.append)

    engine.resolve(blocked.run_id, "did_not_happen")

    decision, *catch_up = transactions(seen)
    assert decision[0] == "FULL" and "Workflow.Resumed" in decision[1]
    assert all(mode == "NORMAL" for mode, _ in catch_up)  # projections: rebuilt if lost
