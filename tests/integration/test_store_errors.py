"""A store that fails under a call (here: a projection table dropped outside
flowledger, which fails the first append that writes it) is said to a caller as
`fl.StoreError` on every store, the driver's error kept, and nothing the log
held is lost: the same handling serves SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

import flowledger as fl
from tests.helpers import ScriptedLedgerTool, ledger_workflow
from tests.store_contents import run_sql


def driver_of(store: str) -> str:
    return "sqlite3" if store.startswith("sqlite") else "psycopg"


def logged(engine: fl.Engine) -> list[tuple[Any, ...]]:
    return [(e.position, e.stream_id, e.version, e.name) for e in engine.events()]


def test_a_failing_store_raises_store_error_and_loses_nothing(
        make_engine: Any, store: str, ledger: Any) -> None:
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    engine.register(ledger_workflow(items=["a"]), tools=[tool])
    assert engine.run_session("wf").status == "completed"
    before = logged(engine)
    engine.register(ledger_workflow(items=["a", "b"]), tools=[tool])
    run_sql(store, "DROP TABLE fl_messages")  # what publishing writes
    with pytest.raises(fl.StoreError) as failed:
        engine.run_session("wf")
    driver = failed.value.error
    assert type(driver).__module__.split(".")[0] == driver_of(store), repr(driver)
    assert failed.value.__cause__ is driver
    assert str(failed.value).startswith("the store failed (")
    assert "fl_messages" in str(failed.value)  # what failed, named
    assert logged(engine)[:len(before)] == before
    assert [key for key, _ in tool.calls] == ["a"]  # nothing called under the failure
    # A read the store fails is said the same way.
    run_sql(store, "DROP TABLE fl_runs")
    with pytest.raises(fl.StoreError, match="fl_runs"):
        engine.runs()
