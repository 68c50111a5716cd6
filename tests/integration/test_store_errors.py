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


def test_a_view_of_the_past_says_a_failing_store_the_same_way(
        make_engine: Any, store: str, ledger: Any) -> None:
    """`engine.at(position)`'s answers raised the driver's errors when the
    store failed under them."""
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
    assert engine.run_session("wf").status == "completed"
    run_id = engine.runs()[0].run_id
    view = engine.at(engine.last_position())
    run_sql(store, "ALTER TABLE stored_events RENAME TO stored_events_away")
    try:
        with pytest.raises(fl.StoreError, match=r"during run\(\) on store '") as failed:
            view.run(run_id)
        assert "a table it needs is gone" in str(failed.value)
    finally:
        run_sql(store, "ALTER TABLE stored_events_away RENAME TO stored_events")
        view.close()
    assert fl.verify_store(store).ok


@pytest.mark.parametrize("call", [
    lambda e: e.runs(limit=-1), lambda e: e.runs(limit=2**70), lambda e: e.sessions(limit="a"),
    lambda e: e.events(after=2**70), lambda e: e.events(last=2**70),
    lambda e: e.events(upto=-3), lambda e: e.follow(after=True)],
    ids=["limit<0", "limit-huge", "limit-text", "after-huge", "last-huge", "upto<0",
         "after-bool"])
def test_counts_and_positions_out_of_range_are_refused_alike_on_every_store(
        make_engine: Any, call: Any) -> None:
    """Each store failed on its own way (an OverflowError on one, a StoreError
    saying to try again on the other, an answer on a third): now a clear
    InvalidArgument before anything is read."""
    engine = make_engine()
    with pytest.raises(fl.InvalidArgument, match=r"must be (a whole number|from 0 to)"):
        list(call(engine))
