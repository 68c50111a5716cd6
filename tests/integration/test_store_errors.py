"""A store that fails under a call (here: a projection table dropped outside
flowledger, which fails the first append that writes it) is said to a caller as
`fl.StoreError` on every store, the driver's error kept, and nothing the log
held is lost: the same handling serves SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
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
    said = str(failed.value)
    assert said.startswith("the store failed (")
    assert " during run_session() on store '" in said  # where
    assert "the projection table fl_messages is gone" in said and "open the store again" in said
    assert logged(engine)[:len(before)] == before
    assert [key for key, _ in tool.calls] == ["a"]  # nothing called under the failure
    # A read the store fails is said the same way, named by the call made (not
    # by the read side's own calls under it).
    session = engine.sessions()[0].session_id.hex[:8]
    run_sql(store, "DROP TABLE fl_sessions")
    with pytest.raises(fl.StoreError, match=r"during runs\(\) on store .*fl_sessions is gone"):
        engine.runs(session=session)  # looked up by the read side's resolve_id()


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
        assert "the log's table stored_events is gone" in str(failed.value)
        assert "restore the store from a backup" in str(failed.value)
    finally:
        run_sql(store, "ALTER TABLE stored_events_away RENAME TO stored_events")
        view.close()
    assert fl.verify_store(store).ok


@pytest.mark.parametrize("call", [
    lambda e: e.runs(limit=-1), lambda e: e.runs(limit=2**70), lambda e: e.sessions(limit="a"),
    lambda e: e.events(after=2**70), lambda e: e.events(last=2**70),
    lambda e: e.events(upto=-3),
    lambda e: e.follow(after=True, stop=threading.Event()),  # refused before any wait
    lambda e: e.run_session("wf", max_iterations=2**70), lambda e: e.runs(handler="a\x00b")],
    ids=["limit<0", "limit-huge", "limit-text", "after-huge", "last-huge", "upto<0",
         "after-bool", "iterations-huge", "handler-nul"])
def test_counts_and_positions_out_of_range_are_refused_alike_on_every_store(
        make_engine: Any, call: Any) -> None:
    """Each store failed on its own way (an OverflowError on one, a StoreError
    saying to try again on the other, an answer on a third): now a clear
    InvalidArgument before anything is read."""
    engine = make_engine()
    engine.register(ledger_workflow(items=[]))
    with pytest.raises(fl.InvalidArgument, match=r"must be (a whole number|0 or more|at most)|NUL"):
        call(engine)


def test_a_projection_table_dropped_is_made_again_and_folded_in_at_the_next_opening(
        make_engine: Any, store: str, ledger: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Reopening made a dropped projection table again, empty, while its
    tracking said the log was folded in: `runs()` answered no runs, with
    nothing to tell. Now the next opening folds that projection in again."""
    engine = make_engine()
    engine.register(ledger_workflow(items=["a", "b"]), tools=[ScriptedLedgerTool(ledger)])
    assert engine.run_session("wf").status == "completed"
    before = engine.runs()
    engine.close()
    run_sql(store, "DROP TABLE fl_runs")
    with caplog.at_level(logging.WARNING, logger="flowledger"):
        again = make_engine()
    assert "lacks the table(s) fl_runs of projection pending_work" in caplog.text
    assert again.runs() == before and len(before) == 3
    from flowledger.testing import assert_projections_rebuild_equal

    assert_projections_rebuild_equal(again)


def test_a_copy_the_store_stops_midway_is_a_store_error_saying_how_to_go_on(
        tmp_path: Path, ledger: Any) -> None:
    """The copy's own message (how far it got, run it again to go on), as a
    StoreError: the target's log table taken away after the first batch."""
    from flowledger.infrastructure.copying import BATCH

    source = f"sqlite:///{tmp_path / 'source.db'}"
    with fl.Engine(source) as engine:
        items = [f"i{n}" for n in range(BATCH // 8)]  # more events than a batch
        engine.register(ledger_workflow(items=items), tools=[ScriptedLedgerTool(ledger)])
        assert engine.run_session("wf", max_iterations=len(items)).status == "completed"
        assert engine.last_position() > BATCH
    target = f"sqlite:///{tmp_path / 'target.db'}"

    def take_the_table_away(done: int, total: int) -> None:
        if done:  # told first where the copy starts (0), then after each batch
            run_sql(target, "ALTER TABLE stored_events RENAME TO elsewhere")

    with pytest.raises(fl.StoreError, match=r"stopped after 2,000 of about [0-9,]+ events "
                                            r".*run the same command again") as stopped:
        fl.copy_store(source, target, take_the_table_away)
    assert stopped.value.error is not None



def test_no_server_at_opening_is_a_store_error_keeping_the_drivers() -> None:
    """StoreUnreachable is a kind of StoreError: `except fl.StoreError` catches
    the store's failure at opening as under a call, with the driver's error."""
    psycopg = pytest.importorskip("psycopg")
    with pytest.raises(fl.StoreError) as refused:
        fl.Engine("postgresql://postgres@127.0.0.1:9/nowhere")  # the discard port: nobody
    assert isinstance(refused.value, fl.StoreUnreachable)
    assert isinstance(refused.value.error, psycopg.OperationalError)
    assert "\n" not in str(refused.value)
