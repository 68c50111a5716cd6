"""A reader that keeps aggregates (the worker keeps every workflow it serves)
brings them up to date with one read of what was appended since
(`EventLog.refreshed`): each comes out as a fresh load of its stream would,
and one whose stream no longer holds the very event it was last folded to,
or whose new events cannot be read, is left out to be loaded afresh."""

from __future__ import annotations

from collections.abc import Callable

import flowledger as fl
from flowledger.domain.ids import workflow_id
from tests.helpers import MemoryLedger, ScriptedLedgerTool, count_loads, ledger_workflow
from tests.store_contents import position_column, run_sql


def _engine_with(make_engine: Callable[..., fl.Engine], *names: str) -> fl.Engine:
    engine = make_engine()
    for name in names:
        engine.register(ledger_workflow(name, items=["a", "b"]),
                        tools=[ScriptedLedgerTool(MemoryLedger())])
    return engine


def test_kept_workflows_refreshed_in_one_read_equal_fresh_loads(
        make_engine: Callable[..., fl.Engine], monkeypatch) -> None:
    engine = _engine_with(make_engine, "one", "two", "idle")
    log = engine.log
    kept = [log.kept(workflow_id(name)) for name in ("one", "two", "idle")]
    engine.run_session("one")
    engine.run_session("two", max_iterations=1)
    loads = count_loads(monkeypatch)
    reads: list[str] = []
    real = log.flow_recorder.read_all
    monkeypatch.setattr(log.flow_recorder, "read_all",
                        lambda sql, params: reads.append(sql) or real(sql, params))
    refreshed = log.refreshed(kept)
    assert loads == [] and len(reads) == 1
    monkeypatch.undo()
    assert set(refreshed) == {workflow_id(n) for n in ("one", "two", "idle")}
    for stream_id, (wf, _) in refreshed.items():
        fresh = log.load(stream_id)
        assert wf.version == fresh.version and wf.__dict__ == fresh.__dict__
    assert refreshed[workflow_id("one")].aggregate.version > 1
    again = log.refreshed(list(refreshed.values()))  # marked by the refresh itself
    assert {i: k.aggregate.version for i, k in again.items()} == {
        i: k.aggregate.version for i, k in refreshed.items()}


def test_a_stream_that_lost_its_kept_event_or_cannot_be_read_is_left_out(
        store: str, make_engine: Callable[..., fl.Engine]) -> None:
    """Three workflows kept: one whose events from its kept version on were
    removed, one whose event at its kept version was written over with another
    of its events of the same type (as a restore followed by new appends
    leaves it), one whose new event is damaged. Only the fourth is refreshed."""
    engine = _engine_with(make_engine, "cut", "rewritten", "damaged", "fine")
    log = engine.log
    names = ("cut", "rewritten", "damaged", "fine")
    for name in names:
        engine.run_session(name, max_iterations=0)
        engine.run_session(name, max_iterations=0)
    kept = [log.kept(workflow_id(name)) for name in names]
    for name in ("damaged", "fine"):
        engine.run_session(name, max_iterations=1)
    pos = position_column(store)
    cut = workflow_id("cut")
    run_sql(store, "DELETE FROM stored_events WHERE originator_id IN (?, ?) AND "
                   "originator_version >= ?", (cut.hex, str(cut), kept[0].aggregate.version))
    rewritten, version = workflow_id("rewritten"), kept[1].aggregate.version
    (topic,) = run_sql(store, "SELECT topic FROM stored_events WHERE originator_id IN (?, ?) "
                              "AND originator_version = ?", (rewritten.hex, str(rewritten),
                                                             version))[0]
    (other,) = run_sql(store, "SELECT MIN(originator_version) FROM stored_events WHERE "
                              "originator_id IN (?, ?) AND topic = ?",
                       (rewritten.hex, str(rewritten), topic))[0]
    assert other < version
    run_sql(store, "UPDATE stored_events SET state = (SELECT state FROM stored_events WHERE "
                   "originator_id IN (?, ?) AND originator_version = ?) WHERE originator_id IN "
                   "(?, ?) AND originator_version = ?",
            (rewritten.hex, str(rewritten), other, rewritten.hex, str(rewritten), version))
    damaged = workflow_id("damaged")
    (last,) = run_sql(store, f"SELECT MAX({pos}) FROM stored_events WHERE originator_id IN "
                             "(?, ?)", (damaged.hex, str(damaged)))[0]
    run_sql(store, f"UPDATE stored_events SET state=? WHERE {pos}=?", (b"\xc1", last))
    refreshed = log.refreshed(kept)
    assert set(refreshed) == {workflow_id("fine")}
    assert refreshed[workflow_id("fine")].aggregate.__dict__ == log.load(
        workflow_id("fine")).__dict__
