"""Issue 13, the rest: a store opened read-only (`?mode=ro`) refused by the engine
itself, before anything, with what to do; every failure to open a store one of
flowledger's errors (the CLI catches no other); and recover()'s progress.

Real SQLite files throughout; rows are counted with sqlite3 before and after."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from flowledger.engine.faults import SimulatedCrash
from tests.helpers import ExternalLedger, NoReconcileTool, ScriptedLedgerTool, ledger_workflow


class Died(SimulatedCrash):
    """Stands in for the process dying after an append."""


def event_count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])


def crash_after(point: str, nth: int) -> Callable[[str], None]:
    seen = {"n": 0}

    def checkpoint(at: str) -> None:
        if at == point:
            seen["n"] += 1
            if seen["n"] == nth:
                raise Died(at)

    return checkpoint


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    """A store with one session of `wf` (three items, one run blocked on a mutation
    whose outcome is unknown) and nothing else going on."""
    path = tmp_path / "flow.db"
    tool = NoReconcileTool(ExternalLedger(tmp_path / "ledger.db"))
    tool.script = ["ok", "uncertain"]
    with fl.Engine(f"sqlite:///{path}") as engine:
        engine.register(ledger_workflow("wf", tool_name="blind"), tools=[tool])
        assert engine.run_session("wf").status == "suspended"
    return path


def read_only(path: Path) -> str:
    return f"sqlite:///{path}?mode=ro"


# ------------------------------------------------------------------ read-only


def test_run_session_on_a_read_only_store_says_so_and_writes_nothing(store_file: Path
                                                                     ) -> None:
    before = event_count(store_file)
    url = read_only(store_file)
    with fl.Engine(url) as engine:
        engine.register(ledger_workflow("wf", tool_name="blind"))  # recorded: no write
        with pytest.raises(fl.ConfigurationError) as caught:
            engine.run_session("wf")
        assert engine.runs(workflow="wf")  # still reads
    message = str(caught.value)
    assert f"store {url!r} is opened read-only (?mode=ro)" in message
    assert "a session appends to the log; nothing was written" in message
    assert "drop ?mode=ro" in message
    assert not isinstance(caught.value.__cause__, sqlite3.Error)  # ours, not SQLite's
    assert event_count(store_file) == before


@pytest.mark.parametrize(("call", "what"), [
    (lambda e: e.recover(), "recovery continues sessions"),
    (lambda e: e.resolve(e.blocked()[0].run_id, "skip"), "a decision is recorded"),
    (lambda e: e.resume("wf"), "resuming a workflow is recorded"),
    (lambda e: e.register(ledger_workflow("new")), "registering workflow 'new'"),
    (lambda e: e.rebuild_projections(), "a rebuild rewrites the projections"),
    (lambda e: e.serve(), "the worker runs sessions"),
], ids=["recover", "resolve", "resume", "register-new", "rebuild", "serve"])
def test_every_write_on_a_read_only_store_is_refused_before_anything(
        store_file: Path, call: Callable[[fl.Engine], Any], what: str) -> None:
    before = event_count(store_file)
    with fl.Engine(read_only(store_file)) as engine:
        engine.register(ledger_workflow("wf", tool_name="blind"))
        assert engine.blocked()  # the run whose outcome is unknown, for resolve
        with pytest.raises(fl.ConfigurationError) as caught:
            call(engine)
    assert "opened read-only (?mode=ro)" in str(caught.value)
    assert what in str(caught.value)
    assert event_count(store_file) == before


def die_mid_session(store: str, tmp_path: Path) -> None:
    """A process that died mid-session on `store`: its read side (costs, audit)
    did not catch up with the log."""
    crashing = fl.Engine(store, checkpoint=crash_after("after_append:commit", 2))
    crashing.register(ledger_workflow("wf"),
                      tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "ledger.db"))])
    with pytest.raises(Died):
        crashing.run_session("wf")
    crashing.close()


@pytest.fixture
def lagging(tmp_path: Path) -> Path:
    path = tmp_path / "lagging.db"
    die_mid_session(f"sqlite:///{path}", tmp_path)
    return path


# ------------------------------------------------------------------ opening


def test_a_sqlite_file_without_a_store_opened_read_only_says_what_to_do(tmp_path: Path
                                                                         ) -> None:
    path = tmp_path / "bare.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 3")  # an SQLite database, no tables
    with pytest.raises(fl.ConfigurationError) as caught:
        fl.Engine(read_only(path))
    assert "cannot open store" in str(caught.value)
    assert "opened read-only (?mode=ro) and is not a flowledger store yet" in str(caught.value)


def test_a_lock_held_while_the_engine_catches_up_is_store_busy(
        lagging: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the log opened (the projections' catch-up) is ours too."""
    from flowledger.infrastructure import event_log, store_url

    def short_wait(url: str) -> store_url.StoreConfig:
        config = store_url.parse_store_url(url)
        config.env["SQLITE_LOCK_TIMEOUT"] = "1"
        return config

    monkeypatch.setattr(event_log, "parse_store_url", short_wait)
    other = sqlite3.connect(lagging, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(fl.StoreBusyError) as caught:
            fl.Engine(f"sqlite:///{lagging}")
        assert "is locked" in str(caught.value)
        assert "caught up its projections" in str(caught.value)
    finally:
        other.rollback()
        other.close()
    with fl.Engine(f"sqlite:///{lagging}") as engine:
        assert engine.status().workflows


# ------------------------------------------------------------------ recover's progress


def test_recover_reports_its_progress_run_by_run(tmp_path: Path, clock: fl.ManualClock
                                                 ) -> None:
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    ledger = ExternalLedger(tmp_path / "ledger.db")
    items = [f"i{n}" for n in range(10)]
    crashing = fl.Engine(url, clock=clock, checkpoint=crash_after("after_append:commit", 3))
    crashing.register(ledger_workflow("wf", items), tools=[ScriptedLedgerTool(ledger)])
    with pytest.raises(Died):
        crashing.run_session("wf")
    crashing.close()

    clock.advance(3600)  # the lease ran out: the session can be taken over
    calls: list[tuple[int, int]] = []
    with fl.Engine(url, clock=clock) as engine:
        engine.register(ledger_workflow("wf", items), tools=[ScriptedLedgerTool(ledger)])
        results = engine.recover(progress=lambda done, total: calls.append((done, total)))
    assert [r.status for r in results] == ["completed"]
    assert len(results[0].runs) == 7
    # Seven messages pending when recovery starts: the estimate is exact here.
    assert calls[0] == (0, 7)
    assert [done for done, _ in calls] == [0, 1, 2, 3, 4, 5, 6, 7, 7]
    assert {total for _, total in calls} == {7}


def test_recover_with_nothing_to_do_reports_zero_of_zero(store_file: Path) -> None:
    calls: list[tuple[int, int]] = []
    with fl.Engine(f"sqlite:///{store_file}") as engine:
        engine.register(ledger_workflow("wf", tool_name="blind"))
        assert engine.recover(progress=lambda d, t: calls.append((d, t))) == []
    assert calls and set(calls) == {(0, 0)}


def test_the_process_environment_cannot_point_the_library_at_another_store(
        tmp_path, monkeypatch):
    """The library reads FLOWLEDGER_<SETTING> before <SETTING>: a stray variable
    must not send the log somewhere the URL does not say."""
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv("FLOWLEDGER_SQLITE_DBNAME", str(elsewhere))
    monkeypatch.setenv("FLOWLEDGER_PERSISTENCE_MODULE", "eventsourcing.popo")
    monkeypatch.setenv("FLOWLEDGER_POSTGRES_DBNAME", "flowledger_nowhere")
    store = tmp_path / "flow.db"
    with fl.Engine(f"sqlite:///{store}") as engine:
        engine.register(ledger_workflow("wf", tool_name="blind"))
    assert store.exists() and store.stat().st_size > 0
    assert not elsewhere.exists()
