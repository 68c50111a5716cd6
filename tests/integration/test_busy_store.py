"""A session's append waits out another process's long hold of the log's write
lock (infrastructure/busy_appends.py): a mutation whose call returned keeps
its outcome, where failing the append lost it and, without a reconcile, left
it to a person."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import pytest

import flowledger as fl
from flowledger.infrastructure import store_url
from tests.helpers import MemoryLedger, ledger_workflow
from tests.store_contents import pg_connect

LOCK_TIMEOUT_S = 1  # SQLite takes whole seconds
HELD_S = 2.5  # past the lock timeout, twice over


def short_lock_timeout(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engines the test opens wait LOCK_TIMEOUT_S for the write lock, not
    30 s (the real lock, a shorter wait)."""
    if store.startswith("sqlite"):
        env = store_url._sqlite_env
        monkeypatch.setattr(store_url, "_sqlite_env", lambda name: {
            **env(name), "SQLITE_LOCK_TIMEOUT": str(LOCK_TIMEOUT_S)})
        return
    from flowledger.infrastructure.postgres_recorder import FlowPostgresRecorder

    connect = FlowPostgresRecorder._connect

    def shorter(self: FlowPostgresRecorder, setting: str = "") -> Any:
        self.lock_timeout_s = LOCK_TIMEOUT_S
        return connect(self, setting)

    monkeypatch.setattr(FlowPostgresRecorder, "_connect", shorter)


def hold_write_lock(store: str, held: threading.Event) -> None:
    """Another process's transaction holding the log's write lock for HELD_S."""
    if store.startswith("sqlite"):
        lite = sqlite3.connect(store[len("sqlite:///"):], isolation_level=None)
        lite.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(HELD_S)
        lite.rollback()
        lite.close()
        return
    with pg_connect(store) as conn:
        conn.execute("LOCK TABLE stored_events IN EXCLUSIVE MODE")
        held.set()
        time.sleep(HELD_S)
        conn.rollback()


class LockedAfterTheCall(fl.Tool):
    """A ledger without a reconcile whose call, once it has written, lets
    another process take the log's write lock: the outcome's append waits."""

    name = "ledger"

    def __init__(self, ledger: MemoryLedger, store: str) -> None:
        self.ledger, self.store, self.calls = ledger, store, 0
        self.holder: threading.Thread | None = None

    @fl.mutator
    def append(self, key: str, value: str) -> str:
        self.calls += 1
        self.ledger.append(key, value)
        if self.holder is None:
            held = threading.Event()
            self.holder = threading.Thread(target=hold_write_lock, args=(self.store, held))
            self.holder.start()
            assert held.wait(10)
        return f"row-{key}"


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql",
                                                          marks=pytest.mark.postgres)],
                         indirect=True)
def test_an_outcome_waits_out_a_write_lock_held_past_the_timeout(
        store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = MemoryLedger()
    tool = LockedAfterTheCall(ledger, store)
    short_lock_timeout(store, monkeypatch)
    with fl.Engine(store) as engine:
        engine.register(ledger_workflow(items=["a", "b"]), tools=[tool])
        started = time.monotonic()
        result = engine.run_session("wf")
        waited = time.monotonic() - started
        assert tool.holder is not None
        tool.holder.join(10)
        assert result.status == "completed", result.error
        assert tool.calls == 2 and ledger.writes == ["a", "b"]  # each once
        assert engine.blocked() == []
        runs = [engine.run(r.run_id) for r in result.runs if r.handler == "Append"]
        assert [r.mutation.state.value for r in runs if r.mutation] == ["applied", "applied"]
        assert engine.verify().ok
    assert waited >= HELD_S * 0.9  # it did wait for the holder: the lock was held


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_an_append_outside_a_session_still_fails_at_the_lock_timeout(
        store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A person's decision or a registration fails at once, as before: its
    caller can try again, and nothing it holds is lost."""
    short_lock_timeout(store, monkeypatch)
    with fl.Engine(store) as engine:
        held = threading.Event()
        holder = threading.Thread(target=hold_write_lock, args=(store, held))
        holder.start()
        assert held.wait(10)
        try:
            with pytest.raises(fl.StoreBusyError, match="another process held its write lock"):
                engine.register(ledger_workflow(items=[]))
        finally:
            holder.join(10)


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_session_waits_no_longer_than_its_lease(
        store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the lease another worker may take the session over, and a worker
    asked to stop waits no longer: the append then fails as before, nothing
    of it stored, and the session stops to be recovered."""
    ledger = MemoryLedger()
    tool = LockedAfterTheCall(ledger, store)
    policy = fl.RetryPolicy(lease_seconds=1.2)  # one more try after the first timeout
    short_lock_timeout(store, monkeypatch)
    with fl.Engine(store, policy=policy) as engine:
        engine.register(ledger_workflow(items=["a"]), tools=[tool])
        with pytest.raises(fl.StoreBusyError, match="another process held its write lock"):
            engine.run_session("wf")
        assert tool.holder is not None
        tool.holder.join(10)
        assert tool.calls == 1
        assert [r.status for r in engine.recover()] == ["suspended"]  # no reconcile
