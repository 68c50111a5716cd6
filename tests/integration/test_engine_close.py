"""Closing an engine a service still uses in other threads (engine/closing.py):
sessions under way end their step first, a serve() loop stops, and whatever
comes after says the engine was closed. On both stores."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import flowledger as fl
from tests.helpers import MemoryLedger, ScriptedLedgerTool, ledger_workflow, mid_call_tool


def _in_a_long_call(make_engine: Callable[..., fl.Engine]) -> tuple[
        fl.Engine, MemoryLedger, threading.Event, threading.Event]:
    """An engine whose first tool call waits until released (items a, b)."""
    entered, release = threading.Event(), threading.Event()

    def long_call(key: str) -> None:
        if key == "a":
            entered.set()
            assert release.wait(30)

    ledger = MemoryLedger()
    engine = make_engine()
    engine.register(ledger_workflow(items=["a", "b"]), tools=[mid_call_tool(long_call)(ledger)])
    return engine, ledger, entered, release


def test_close_waits_for_a_call_under_way_then_the_session_closes_with_the_work_left(
        make_engine: Callable[..., fl.Engine]) -> None:
    """A service closing its engine while a request thread is in a tool call:
    close() dropped the connections and the liveness lock under the call, and
    another engine took the session over and, reconciling a call that had not
    returned, made it again. Now close() returns once the call returned and
    the session closed (asked to stop after its step, as on SIGTERM); the call
    was made once, and the next engine goes on from there."""
    engine, ledger, entered, release = _in_a_long_call(make_engine)
    results: list[fl.SessionResult] = []
    session = threading.Thread(target=lambda: results.append(engine.run_session("wf")),
                               daemon=True)
    session.start()
    assert entered.wait(30)
    closer = threading.Thread(target=engine.close, daemon=True)
    closer.start()
    time.sleep(0.5)
    assert closer.is_alive()  # not while the call is under way
    other = make_engine()
    other.register(ledger_workflow(items=["a", "b"]), tools=[ScriptedLedgerTool(ledger)])
    assert other.run_session("wf").status == "busy"  # its holder is alive and holds it
    release.set()
    session.join(30)
    closer.join(30)
    assert not closer.is_alive()
    (result,) = results
    assert result.status == "budget_exhausted" and result.budget == "stop", result
    assert ledger.writes == ["a"]
    assert other.run_session("wf").status == "completed"
    assert ledger.writes == ["a", "b"] and ledger.calls == 2


def test_close_stops_a_serve_loop_of_another_thread(
        make_engine: Callable[..., fl.Engine]) -> None:
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    ended: list[BaseException | None] = []

    def serve() -> None:
        try:
            engine.serve(interval=0.05)
            ended.append(None)
        except BaseException as e:
            ended.append(e)

    serving = threading.Thread(target=serve, daemon=True)  # a loop left going fails, not hangs
    serving.start()
    time.sleep(0.5)
    engine.close()
    serving.join(30)
    assert ended == [None]


@pytest.mark.parametrize("call", [
    lambda e: e.run_session("wf"), lambda e: e.status(), lambda e: e.recover(),
    lambda e: e.serve(interval=0.05), lambda e: list(e.events()),
    lambda e: e.register(ledger_workflow(items=["b"])),
])
def test_an_engine_used_after_close_says_it_was_closed(
        make_engine: Callable[..., fl.Engine], call: Callable[[fl.Engine], Any]) -> None:
    """It went on, opening connections nobody closed."""
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    engine.close()
    with pytest.raises(fl.EngineClosed, match=r"was closed: it does nothing more\. Open a "
                                              r"new fl\.Engine"):
        call(engine)
    engine.close()  # closing again is allowed


def test_close_from_inside_a_session_of_the_engine_is_refused_and_closes_nothing(
        make_engine: Callable[..., fl.Engine]) -> None:
    """A tool (or handler) that closes its own engine: that session cannot be
    waited for, and went on on the store closed under it, reopening
    connections and having dropped its liveness lock mid-call."""
    refused: list[BaseException] = []
    engine: fl.Engine | None = None

    def close_inside(key: str) -> None:
        assert engine is not None
        try:
            engine.close()
        except RuntimeError as e:
            refused.append(e)

    ledger = MemoryLedger()
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[mid_call_tool(close_inside)(ledger)])
    assert engine.run_session("wf").status == "completed"
    (error,) = refused
    assert "inside a session of this engine" in str(error) and "Nothing was closed" in str(error)
    assert ledger.writes == ["a"]
    assert engine.status().workflows  # still open
    engine.close()
    with pytest.raises(fl.EngineClosed):
        engine.status()


def test_close_stops_a_worker_serving_in_another_thread(
        make_engine: Callable[..., fl.Engine]) -> None:
    """A Worker used directly, not through engine.serve(), stops too: it went
    on, failing every pass on the closed engine."""
    from flowledger.engine.worker import Worker

    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    serving = threading.Thread(target=Worker(engine, interval=0.05).serve, daemon=True)
    serving.start()
    time.sleep(0.5)
    engine.close()
    serving.join(10)
    assert not serving.is_alive()


@pytest.mark.parametrize(
    "store", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_close_waits_for_a_read_under_way_and_refuses_one_begun_after(
        make_engine: Callable[..., fl.Engine]) -> None:
    """A request thread reading (`runs()`) while the service closes the engine:
    close() closed the read's connection under it, and the read failed as if
    the store had (`connection socket closed`, told as a `StoreError`: try
    again). Now close() waits for the read, which answers; a call begun once
    close() began says the engine was closed. The read is held by a lock on
    its table, taken from outside, as a long read would be (PostgreSQL: an
    SQLite reader is never blocked)."""
    import psycopg

    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    assert engine.run_session("wf").status == "completed"
    rec = engine.log.flow_recorder
    answers: list[Any] = []
    with psycopg.connect(**rec.conninfo) as holder:
        holder.execute(f'SET search_path TO "{rec.schema}"')
        holder.execute("LOCK TABLE fl_runs IN ACCESS EXCLUSIVE MODE")
        reader = threading.Thread(target=lambda: answers.append(_answer(engine.runs)),
                                  daemon=True)
        reader.start()
        _wait_for_a_lock_wait(holder)
        closer = threading.Thread(target=engine.close, daemon=True)
        closer.start()
        time.sleep(0.5)
        assert closer.is_alive() and not answers  # waiting for the read
        with pytest.raises(fl.EngineClosed):
            engine.status()
        holder.rollback()  # the lock freed: the read answers, then the engine closes
    reader.join(30)
    closer.join(30)
    assert not closer.is_alive()
    (answer,) = answers
    assert sorted(run.handler for run in answer) == ["Append", "produce"], answer
    with pytest.raises(fl.EngineClosed):
        engine.runs()


def _answer(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as e:  # what the read raised, shown by the assertion
        return e


def _wait_for_a_lock_wait(conn: Any) -> None:
    """Until another backend waits for the lock `conn` holds (the read)."""
    deadline = time.monotonic() + 30
    while not conn.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (conn.info.backend_pid,)).fetchone()[0]:
        assert time.monotonic() < deadline, "the read never waited for the lock"
        time.sleep(0.02)


def test_events_read_after_close_raise_engine_closed(make_engine: Callable[..., fl.Engine]
                                                     ) -> None:
    """An `events()` generator taken before close() and read after it went on
    reading the closed store (3,009 events in a check): it raises EngineClosed
    at its next item, and does not end as if the log had."""
    engine = make_engine()
    engine.register(ledger_workflow(items=["a", "b"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    assert engine.run_session("wf").status == "completed"
    events = engine.events()
    assert next(events).position == 1
    engine.close()
    with pytest.raises(fl.EngineClosed, match="was closed: it does nothing more"):
        next(events)


def test_a_view_of_the_past_refuses_to_read_the_log_after_close(
        make_engine: Callable[..., fl.Engine]) -> None:
    """An `at()` view kept past close() read the closed store on (two
    connections left open on PostgreSQL, in a review)."""
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    assert engine.run_session("wf").status == "completed"
    run_id = engine.runs(workflow="wf")[0].run_id
    view = engine.at(list(engine.events())[-1].position)
    assert view.run_timeline(run_id).entries
    engine.close()
    with pytest.raises(fl.EngineClosed, match="was closed: it does nothing more"):
        view.run_timeline(run_id)
    view.close()


def test_a_follower_ends_when_its_engine_is_closed(make_engine: Callable[..., fl.Engine]) -> None:
    """A `follow` another thread reads is not waited for by close(), which used
    to leave it reading the closed store for ever (24 events read after the
    close, in the review): it ends instead, as a serve() loop does, and its
    `stop` is set."""
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    assert engine.run_session("wf").status == "completed"
    stop = threading.Event()
    events = engine.follow(after=0, stop=stop, interval=0.05)
    assert next(events).position == 1
    engine.close()
    assert stop.is_set()
    assert list(events) == []  # ended: nothing read from the closed store
    with pytest.raises(fl.EngineClosed):
        engine.follow(after=0)
