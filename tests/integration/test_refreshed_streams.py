"""A reader that keeps aggregates (the worker keeps every workflow it serves)
brings them up to date with one read of what was appended since
(`EventLog.refreshed`): each comes out as a fresh load of its stream would,
and one whose stream no longer holds its version, or whose new events cannot
be read, is left out to be loaded afresh."""

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
    kept = [log.load(workflow_id(name)) for name in ("one", "two", "idle")]
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
    for stream_id, wf in refreshed.items():
        fresh = log.load(stream_id)
        assert wf.version == fresh.version and wf.__dict__ == fresh.__dict__
    assert refreshed[workflow_id("one")].version > 1


def test_a_stream_that_lost_its_kept_version_or_cannot_be_read_is_left_out(
        store: str, make_engine: Callable[..., fl.Engine]) -> None:
    engine = _engine_with(make_engine, "cut", "damaged", "fine")
    log = engine.log
    for name in ("cut", "damaged", "fine"):
        engine.run_session(name, max_iterations=0)
    kept = [log.load(workflow_id(name)) for name in ("cut", "damaged", "fine")]
    for name in ("damaged", "fine"):
        engine.run_session(name, max_iterations=1)
    pos = position_column(store)
    cut = workflow_id("cut")
    run_sql(store, "DELETE FROM stored_events WHERE originator_id IN (?, ?) AND "
                   "originator_version >= ?", (cut.hex, str(cut), kept[0].version))
    damaged = workflow_id("damaged")
    (last,) = run_sql(store, f"SELECT MAX({pos}) FROM stored_events WHERE originator_id IN "
                             "(?, ?)", (damaged.hex, str(damaged)))[0]
    run_sql(store, f"UPDATE stored_events SET state=? WHERE {pos}=?", (b"\xc1", last))
    refreshed = log.refreshed(kept)
    assert set(refreshed) == {workflow_id("fine")}
    assert refreshed[workflow_id("fine")].__dict__ == log.load(workflow_id("fine")).__dict__
