"""What a session costs the store besides its runs' appends: its opening and its
close, and nothing after. The close folds the session's events into the
read-side projections (costs, audit) in its own transaction, and a catch-up
with nothing to fold takes no write transaction: on a server each transaction
is round trips, and each takes the log's write lock, which every other writer
then waits for (ADR 0017, "What a session costs besides its runs")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from flowledger.domain.ids import handler_state_id, workflow_id
from flowledger.engine.faults import SimulatedCrash
from flowledger.infrastructure.codec import unpack
from flowledger.testing import assert_projections_rebuild_equal
from tests.helpers import (
    ExternalLedger,
    MemoryLedger,
    ScriptedLedgerTool,
    costly_workflow,
    ledger_workflow,
    mid_call_tool,
)


def count_write_transactions(engine: fl.Engine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The write transactions the engine's store begins from now on (each noted
    with whether it was an append: the store begins one for each append too)."""
    recorder = engine.log.flow_recorder
    begun: list[str] = []
    writing, append_rows = recorder.writing, recorder.append_rows

    def counting_writing(*args: Any, **kwargs: Any) -> Any:
        begun.append("write")
        return writing(*args, **kwargs)

    def counting_append(*args: Any, **kwargs: Any) -> Any:
        begun.append("append")
        return append_rows(*args, **kwargs)

    monkeypatch.setattr(recorder, "writing", counting_writing)
    monkeypatch.setattr(recorder, "append_rows", counting_append)
    return begun


def _transactions(begun: list[str]) -> list[str]:
    """An append's own `writing` is part of it: one entry per transaction."""
    out: list[str] = []
    for entry in begun:
        if entry == "write" and out and out[-1] == "append":
            out[-1] = "append+"  # the append's transaction itself
            continue
        out.append(entry)
    return out


def test_a_session_writes_its_appends_and_nothing_after(make_engine: Any,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    engine.run_session("wf", trigger="manual", max_iterations=0)  # publishes "a"
    begun = count_write_transactions(engine, monkeypatch)
    result = engine.run_session("wf", trigger="event", max_iterations=1)
    assert result.consumer_runs == 1 and result.runs[0].committed
    # The opening, the run's three appends, the close: no catch-up transaction.
    assert _transactions(begun) == ["append+"] * 5
    positions = engine.projections.positions()
    head = engine.log.flow_recorder.max_notification_id()
    assert positions == {"pending_work": head, "costs": head, "audit": head, "log_times": head,
                         "settled": head}
    assert engine.projections.lag() == 0
    assert_projections_rebuild_equal(engine)


def test_a_catch_up_with_nothing_to_fold_writes_nothing(make_engine: Any,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    engine.run_session("wf")
    begun = count_write_transactions(engine, monkeypatch)
    assert engine.projections.catch_up() == 0
    engine.status()
    assert begun == []


class Died(SimulatedCrash):
    """Stands in for the process dying before its session's close."""


def _die_before_close(at: str) -> None:
    if at == "before_append:session_close":
        raise Died(at)


def test_a_catch_up_folds_what_another_engine_appended(make_engine: Any,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """Another engine's session, folded at its own close, leaves nothing to
    fold; one that died before its close leaves its runs' events to the next
    catch-up, which folds them in one write transaction."""
    engine = make_engine()
    other = make_engine()
    other.register(ledger_workflow("other", items=["x"]),
                   tools=[ScriptedLedgerTool(MemoryLedger())])
    other.run_session("other")
    begun = count_write_transactions(engine, monkeypatch)
    assert engine.projections.catch_up() == 0 and begun == []
    dying = make_engine(checkpoint=_die_before_close)
    dying.register(ledger_workflow("dies", items=["y"]),
                   tools=[ScriptedLedgerTool(MemoryLedger())])
    with pytest.raises(Died):
        dying.run_session("dies")
    assert engine.projections.lag() > 0
    assert engine.projections.catch_up() > 0
    assert _transactions(begun) == ["write"]
    assert engine.projections.lag() == 0
    assert_projections_rebuild_equal(engine)


def test_sessions_interleaved_with_another_engines_keep_the_read_side_whole(
        make_engine: Any, tmp_path: Path) -> None:
    """During every tool call of one engine's session, another engine runs a
    session of its own: the first one's events are never contiguous. Each
    engine's catch-ups fold the other's events from the log, each close folds
    from memory only what follows on from where the projections stand, and
    the projections equal their rebuild."""
    ledger = ExternalLedger(tmp_path / "counted.db", count_calls=True)
    engine, other = make_engine(), make_engine()
    other.register(ledger_workflow("other", items=[f"o{k}" for k in range(6)]),
                   tools=[ScriptedLedgerTool(MemoryLedger())])
    other.run_session("other", trigger="manual", max_iterations=0)

    def meanwhile(key: str) -> None:
        other.run_session("other", trigger="event", max_iterations=1)

    engine.register(costly_workflow(["a", "b", "c"], ["0.5"]),
                    tools=[mid_call_tool(meanwhile)(ledger)])
    result = engine.run_session("prop")
    assert result.status == "completed", result.error
    assert ledger.calls_made() == 3
    assert engine.projections.lag() == 0
    assert engine.costs(workflow="prop").total == result.cost
    assert_projections_rebuild_equal(engine)
    assert_projections_rebuild_equal(other)


def test_a_snapshotted_stream_loads_in_one_statement(make_engine: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler's state (snapshotted every 20 versions), a workflow and a
    session load their latest snapshot and the events after it together, and
    come out as the whole stream folded from its first event."""
    engine = make_engine()
    wf = fl.Workflow("counter", topics=["t"])

    @wf.producer(publishes=["t"])
    def count(ctx: Any, state: Any) -> Any:
        return {"n": (state or {}).get("n", 0) + 1}

    engine.register(wf)
    for _ in range(23):
        assert engine.run_session("counter").status == "completed"
    log = engine.log
    recorder = log.flow_recorder
    statements: list[str] = []
    read_all = recorder.read_all

    def counting(sql: str, params: Any) -> Any:
        statements.append(sql)
        return read_all(sql, params)

    monkeypatch.setattr(recorder, "read_all", counting)
    state_id = handler_state_id("counter", "count")
    snapshot, after = recorder.select_latest(state_id)
    assert snapshot is not None and snapshot.originator_version == 20
    assert [e.originator_version for e in after] == [21, 22, 23]
    statements.clear()
    for stream_id in (state_id, workflow_id("counter")):
        loaded = log.load(stream_id)
        assert len(statements) == 1
        statements.clear()
        whole = log.load(stream_id, short=True)  # every event, no snapshot
        assert loaded is not None and whole is not None
        assert loaded.version == whole.version and loaded.__dict__ == whole.__dict__
        statements.clear()
    assert log.load(handler_state_id("counter", "nobody")) is None
    assert unpack(log.load(state_id).state) == {"n": 23}



def test_a_session_reads_what_it_starts_from_in_its_opening_append(
        make_engine: Any, clock: fl.ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workflow's unfinished runs, backlog and wake-ups are asked in the
    opening append's own transaction, and the close leaves nothing to catch
    up: none of them is read apart (each read is a round trip on a server).
    A run paused for a retry is found that way, and continued."""
    from flowledger.projections import pending_work, runner

    engine = make_engine()
    tool = ScriptedLedgerTool(MemoryLedger(), script=["transient"])
    engine.register(ledger_workflow(items=["a", "b"]), tools=[tool])
    first = engine.run_session("wf")
    assert first.status == "suspended"  # "a" failed, its retry is due in a while
    clock.advance(3600)
    apart: list[str] = []
    for name in ("unfinished_runs", "backlog_and_wakeups"):
        monkeypatch.setattr(pending_work, name, _noting(apart, getattr(pending_work, name)))
    monkeypatch.setattr(runner, "backlog_and_wakeups", pending_work.backlog_and_wakeups)
    monkeypatch.setattr(engine.projections, "lag", _noting(apart, engine.projections.lag))
    second = engine.run_session("wf", trigger="event")
    assert second.status == "completed", second.error
    assert [r.committed for r in second.runs] == [True, True]
    assert apart == []
    monkeypatch.undo()
    assert engine.run(second.runs[0].run_id).retry_of == first.runs[-1].run_id
    assert sorted(tool.ledger.keys()) == ["a", "b"]
    assert engine.projections.lag() == 0
    assert_projections_rebuild_equal(engine)


def _noting(calls: list[str], real: Any) -> Any:
    def noted(*args: Any, **kwargs: Any) -> Any:
        calls.append(real.__name__)
        return real(*args, **kwargs)

    return noted
