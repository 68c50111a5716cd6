"""Lock takeover (ADR 0007), recovery and snapshots, in one process.

A stale holder in a real process being fenced: tests/e2e/test_takeover_processes.py.
"""

from __future__ import annotations

from uuid import UUID

import flowledger as fl
from tests.helpers import ScriptedLedgerTool, ledger_workflow


def test_recover_leaves_a_live_session_alone(make_engine, ledger):
    holder = make_engine()
    wf = ledger_workflow(items=["a"])
    tool = ScriptedLedgerTool(ledger)
    holder.register(wf, tools=[tool])
    # Open a session by hand and leave it open, as a live process would.
    from flowledger.domain.session import Trigger
    from flowledger.engine.session_runner import SessionRequest, SessionRunner
    from flowledger.engine.streams import Streams

    reg = holder._registration("wf")
    runner = SessionRunner(reg, holder._scope_factory(reg), holder.store)
    now = holder.clock.now()
    opened = runner.open_new(Streams(holder.log), SessionRequest(Trigger.MANUAL, 10, None),
                             holder.owner, now, holder.policy.lease_until(now), holder.ids())
    assert not isinstance(opened, fl.SessionResult)

    other = make_engine()
    other.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
    assert [r.status for r in other.recover()] == ["busy"]
    assert other.run_session("wf").status == "busy"
    assert ledger.keys() == []


def test_recover_is_a_no_op_when_nothing_is_unfinished(make_engine, ledger):
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("wf")
    before = list(engine.events())
    assert engine.recover() == []
    assert list(engine.events()) == before


def test_deleting_snapshots_changes_nothing_but_speed(make_engine, ledger, store):
    engine = make_engine()
    engine.register(ledger_workflow(items=[]), tools=[ScriptedLedgerTool(ledger)])
    for _ in range(130):  # enough sessions for the workflow stream to be snapshotted
        engine.run_session("wf")
    from flowledger.domain.ids import workflow_id

    with_snapshots = engine.log.load(workflow_id("wf"))
    with engine.log.writing() as c:
        c.execute("SELECT COUNT(*) FROM stored_snapshots")
        assert c.fetchone()[0] > 0
        c.execute("DELETE FROM stored_snapshots")
    fresh = make_engine()
    without = fresh.log.load(workflow_id("wf"))
    state = {k: v for k, v in vars(with_snapshots).items() if k != "_pending_events"}
    assert {k: v for k, v in vars(without).items() if k != "_pending_events"} == state
    fresh.register(ledger_workflow(items=["z"]), tools=[ScriptedLedgerTool(ledger)])
    assert fresh.run_session("wf").status == "completed"


def test_every_snapshot_equals_the_fold_of_its_stream(make_engine, ledger):
    """Snapshots are taken from the aggregates in hand: each must equal a replay
    of its stream's events up to the snapshot's version (workflow, session and
    handler-state streams alike)."""
    engine = make_engine()
    items = [f"i{n:03d}" for n in range(210)]  # > 200 runs: the session is snapshotted too
    engine.register(ledger_workflow(items=items), tools=[ScriptedLedgerTool(ledger)])
    assert engine.run_session("wf", max_iterations=len(items)).status == "completed"
    with engine.log.reading() as c:
        c.execute("SELECT originator_id, originator_version FROM stored_snapshots")
        taken = c.fetchall()
    assert engine.log.snapshots is not None
    kinds = set()
    for stream, version in taken:
        stream = UUID(str(stream))  # text on SQLite, uuid on PostgreSQL
        (snapshot,) = engine.log.snapshots.get(stream, lte=version, desc=True, limit=1)
        restored = snapshot.mutate(None)
        replayed = engine.log.load(stream, version, short=True)  # events only
        assert restored.version == replayed.version == version
        assert vars(restored) == vars(replayed), (stream, version)
        kinds.add(type(restored).__name__)
    assert {"Session", "HandlerState"} <= kinds, kinds


def test_dropped_projections_are_rebuilt_from_the_log_on_start(make_engine, ledger, store):
    engine = make_engine()
    engine.register(ledger_workflow(items=["a", "b"]), tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("wf", max_iterations=1)
    with engine.log.writing() as c:
        for t in ("fl_messages", "fl_backlog", "fl_runs", "fl_sessions", "fl_workflows",
                  "fl_wakeups"):
            c.execute(f"DROP TABLE {t}")
        c.execute("DELETE FROM tracking WHERE application_name='pending_work'")
    engine.close()
    again = make_engine()
    again.register(ledger_workflow(items=["a", "b"]), tools=[ScriptedLedgerTool(ledger)])
    result = again.run_session("wf", trigger="event")
    assert result.status == "completed"
    assert ledger.keys() == ["a", "b"]



def test_a_session_this_engine_left_and_took_back_is_not_taken_again(make_engine, ledger,
                                                                      monkeypatch):
    """A session stops mid-call and its lease cannot be ended (the store fails
    as the engine tries): this engine takes it back at once. Once it runs it
    again, it is no longer "left": another thread's recover() finds it busy,
    and the call is made once more, not twice (a review found the left
    session judged gone for ever, and taken over again mid-call)."""
    import contextlib
    import threading

    from tests.helpers import mid_call_tool

    calls: list[str] = []
    inside, go_on = threading.Event(), threading.Event()

    def action(key: str) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the session stops mid-call
        inside.set()  # the takeover's call, long
        go_on.wait(30)

    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[mid_call_tool(action)(ledger)])
    real = engine._append_and_catch_up

    def store_fails_once(*aggregates):
        monkeypatch.setattr(engine, "_append_and_catch_up", real)
        raise OSError("the store is down")

    monkeypatch.setattr(engine, "_append_and_catch_up", store_fails_once)
    with contextlib.suppress(KeyboardInterrupt):
        engine.run_session("wf")
    assert engine.status().holders_gone == ("wf",)  # left by this very engine
    first: list[fl.SessionResult] = []
    taking_back = threading.Thread(target=lambda: first.extend(engine.recover()))
    taking_back.start()
    try:
        assert inside.wait(30)
        assert engine.status().holders_gone == ()
        assert [r.status for r in engine.recover()] == ["busy"]
    finally:
        go_on.set()
        taking_back.join(30)
    assert [r.status for r in first] == ["completed"]
    assert calls == ["a", "a"]  # the stopped call (reconciled: not made) and its retry


def test_a_holder_killed_and_not_yet_collected_by_its_parent_is_gone() -> None:
    """A process killed under a parent that has not waited for it yet (a
    zombie) still has its process id, and was taken for alive: its session
    waited for the lease to run out, and `status` showed its worker running."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from flowledger.engine.engine import _host_says

    def _owner_alive(owner: str) -> bool:  # False only when provably dead
        return _host_says(owner) is not False

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = f"{socket.gethostname()}:{child.pid}:abcd1234"
    try:
        assert _owner_alive(owner)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _owner_alive(owner):  # killed: a zombie until waited for, below
            assert time.monotonic() < deadline, "a killed child still taken for alive"
            time.sleep(0.01)
        os.kill(child.pid, 0)  # its process id is still there
    finally:
        child.kill()
        child.wait()
    assert not _owner_alive(owner)
