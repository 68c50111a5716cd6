"""The worker (DESIGN §6) in-process, on a real SQLite store, with the manual clock."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import flowledger as fl
from flowledger.domain.ids import workflow_id
from flowledger.engine.waiting import max_position
from flowledger.engine.worker import Worker
from tests.helpers import (
    MemoryLedger,
    MutationScenario,
    ScriptedLedgerTool,
    ledger_workflow,
    mid_call_tool,
)
from tests.store_contents import position_column, run_sql

START = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)


def ticking_workflow(calls: list[str], name: str = "ticks", **schedule: Any) -> fl.Workflow:
    wf = fl.Workflow(name, topics=["tick", "done"])

    @wf.producer(publishes=["tick"], **schedule)
    def produce(ctx: Any, state: Any) -> Any:
        n = (state or {}).get("n", 0) + 1
        calls.append(f"produce {n}")
        ctx.publish("tick", message_id=f"t{n}", payload={"n": n})
        return {"n": n}

    @wf.consumer(subscribe=["tick"], publishes=["done"], tools=["ledger"])
    class Book:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            pending = ctx.peek("tick", limit=1)
            if not pending:
                return None
            return fl.Prepared(reservations={"tick": [pending[0].message_id]},
                               data=pending[0].message_id)

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.ledger.append(prepared.data, "v")

    return wf


def serve_for(engine: fl.Engine, seconds: float) -> threading.Thread:
    """`engine.serve` in a thread for `seconds`, then stopped: the thread, joined."""
    stop = threading.Event()
    serving = threading.Thread(target=engine.serve, kwargs={"stop": stop, "interval": 0.05})
    serving.start()
    time.sleep(seconds)
    stop.set()
    serving.join(10)
    return serving


def test_every_runs_once_per_tick_coalesces_missed_ticks_and_survives_a_restart(
        make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    clock.set(START)
    calls: list[str] = []
    ledger = MemoryLedger()
    engine = make_engine()
    engine.register(ticking_workflow(calls, every="1m"), tools=[ScriptedLedgerTool(ledger)])
    worker = Worker(engine)
    assert [r.status for r in worker.run_once()] == ["completed"]  # never ran: at once
    assert calls == ["produce 1"] and ledger.calls == 1
    assert worker.run_once() == []
    assert worker.next_due() == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    clock.advance(29)
    assert worker.run_once() == []  # 00:00:59: the tick is at 00:01
    clock.advance(1)
    assert len(worker.run_once()) == 1 and calls[-1] == "produce 2"
    clock.advance(3600)  # an outage of sixty ticks
    restarted = make_engine()
    restarted.register(ticking_workflow(calls, every="1m"), tools=[ScriptedLedgerTool(ledger)])
    again = Worker(restarted)  # what ran comes from the log, not from memory
    assert len(again.run_once()) == 1 and calls[-1] == "produce 3"  # once, not sixty times
    assert again.run_once() == []  # nor repeated
    fresh = Worker(make_engine())
    fresh.engine.register(ticking_workflow(calls, every="1m"),
                          tools=[ScriptedLedgerTool(ledger)])
    assert fresh.run_once() == []  # a third worker, same log: nothing due either
    assert ledger.writes == ["t1", "t2", "t3"]  # each tick's event booked exactly once


def test_cron_schedule(make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    clock.set(START)
    calls: list[str] = []
    engine = make_engine()
    engine.register(ticking_workflow(calls, cron="*/5 * * * *"),
                    tools=[ScriptedLedgerTool(MemoryLedger())])
    worker = Worker(engine)
    worker.run_once()
    assert worker.next_due() == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    clock.set(datetime(2026, 1, 1, 0, 4, 59, tzinfo=UTC))
    assert worker.run_once() == []
    clock.set(datetime(2026, 1, 1, 0, 5, tzinfo=UTC))
    assert len(worker.run_once()) == 1
    assert calls == ["produce 1", "produce 2"]


def test_an_event_from_another_engine_runs_the_consumer_without_the_producer(
        make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    clock.set(START)
    calls: list[str] = []
    ledger = MemoryLedger()
    engine = make_engine()
    engine.register(ticking_workflow(calls, every="1h"), tools=[ScriptedLedgerTool(ledger)])
    worker = Worker(engine)
    worker.run_once()
    other = make_engine()  # another process, as far as the store can tell
    other_calls: list[str] = []
    other.register(ticking_workflow(other_calls), tools=[ScriptedLedgerTool(ledger)])
    other.run_session("ticks", trigger="manual")  # its producer publishes t2... as "t1"
    other_wf = fl.Workflow("feeder", topics=["x"])
    assert other_wf.name == "feeder"
    # publish a fresh message through a manual session of a one-off producer
    extra = ticking_workflow(other_calls, name="ticks")
    extra.producers.clear()

    @extra.producer(publishes=["tick"], name="produce")
    def push(ctx: Any, state: Any) -> Any:
        ctx.publish("tick", message_id="from-elsewhere", payload={})
        return state

    third = make_engine()
    third.register(extra, tools=[ScriptedLedgerTool(MemoryLedger())])
    third.run_session("ticks", trigger="manual", max_iterations=0)  # published, not consumed
    results = worker.run_once()
    assert [(r.status, r.runs[0].kind.value) for r in results] == [("completed", "consumer")]
    assert "from-elsewhere" in ledger.writes
    assert calls == ["produce 1"]  # the hourly producer did not run for it


def test_a_transient_retry_and_a_reconcile_backoff_fire_by_themselves(
        make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    clock.set(START)
    ledger = MemoryLedger()
    tool = ScriptedLedgerTool(ledger, ["transient", MutationScenario("uncertain", ["retry"],
                                                                     True)])
    engine = make_engine(policy=fl.RetryPolicy(jitter=0, transient_base_delay=10,
                                               reconcile_base_delay=20))
    engine.register(ledger_workflow(items=["a"]), tools=[tool])
    assert engine.run_session("wf").status == "suspended"  # transient: retry in 10 s
    worker = Worker(engine)
    assert worker.run_once() == []
    assert worker.next_due() is not None
    clock.advance(10)
    results = worker.run_once()
    assert [r.status for r in results] == ["suspended"]  # uncertain, reconcile said retry
    assert tool.reconcile_calls == [("a", "v-a")]
    assert worker.run_once() == []
    clock.advance(20)
    assert [r.status for r in worker.run_once()] == ["completed"]  # reconciled: not applied,
    assert ledger.writes == ["a"] and len(tool.calls) == 3  # so a fresh run wrote it once


def test_serve_in_a_thread_stops_when_told_and_follow_sees_appends(
        make_engine: Callable[..., fl.Engine]) -> None:
    ledger = MemoryLedger()
    engine = make_engine(clock=fl.SystemClock())
    engine.register(ledger_workflow(items=["a", "b"]), tools=[ScriptedLedgerTool(ledger)])
    stop = threading.Event()
    seen: list[str] = []
    follower = make_engine(clock=fl.SystemClock())

    def follow() -> None:
        for event in follower.follow(after=0, interval=0.05, stop=stop):
            seen.append(f"{event.aggregate}.{event.name}")

    t = threading.Thread(target=follow)
    t.start()
    engine.run_session("wf")  # the producer has no schedule: run by hand
    assert ledger.writes == ["a", "b"]
    server = threading.Thread(target=engine.serve, kwargs={"stop": stop, "interval": 0.05})
    server.start()
    stop.wait(0.3)
    stop.set()
    server.join(5)
    t.join(5)
    assert not server.is_alive() and not t.is_alive()
    assert "Workflow.SessionClosed" in seen and "HandlerRun.MutationApplied" in seen
    assert engine.workflow("wf").open_session is None


def test_a_big_backlog_does_not_starve_another_workflow(
        make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    clock.set(START)
    big, small = MemoryLedger(), MemoryLedger()
    engine = make_engine()
    engine.register(ledger_workflow("big", items=[f"b{i}" for i in range(6)]),
                    tools=[ScriptedLedgerTool(big)])
    engine.register(ledger_workflow("small", items=["s"]), tools=[ScriptedLedgerTool(small)])
    for name in ("big", "small"):
        engine.run_session(name, max_iterations=0)  # published, nothing consumed
    worker = Worker(engine, max_iterations=2)
    first = worker.run_once()
    assert sorted(r.workflow for r in first) == ["big", "small"]  # both served in one pass
    assert small.writes == ["s"] and len(big.writes) == 2
    while worker.run_once():
        pass
    assert len(big.writes) == 6


def test_a_workflow_whose_stream_cannot_be_read_does_not_stop_the_others(
        store: str, make_engine: Callable[..., fl.Engine], clock: fl.ManualClock,
        caplog: pytest.LogCaptureFixture) -> None:
    """One workflow's stream was damaged in the store: the worker says so once
    and goes on serving the other workflows."""
    clock.set(START)
    engine, broken, fine = _broken_and_fine(make_engine)
    worker = Worker(engine)
    _damage_last_event(store, "broken")  # while the worker runs
    with caplog.at_level(logging.ERROR, logger="flowledger.worker"):
        assert [r.workflow for r in worker.run_once()] == ["fine"]
        assert worker.run_once() == []
    assert fine.writes == ["a"] and broken.writes == []
    assert caplog.text.count("could not tell whether broken is due") == 1


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_failure_of_the_store_for_every_workflow_backs_off_and_says_so(
        store: str, make_engine: Callable[..., fl.Engine],
        caplog: pytest.LogCaptureFixture) -> None:
    """A table every decision reads is gone: not one workflow's damage, the
    store's. The worker says so at each look and waits longer each time."""
    engine = make_engine(clock=fl.SystemClock())
    for name in ("a", "b"):
        engine.register(ledger_workflow(name, items=["x"]),
                        tools=[ScriptedLedgerTool(MemoryLedger())])
        engine.run_session(name, max_iterations=0)
    run_sql(store, "ALTER TABLE fl_wakeups RENAME TO fl_wakeups_gone")
    with caplog.at_level(logging.INFO, logger="flowledger.worker"):
        serving = serve_for(engine, 1.0)
    assert not serving.is_alive()
    waits = [float(m.rsplit(" ", 1)[1].rstrip("s")) for m in caplog.messages
             if m.startswith("could not read the store")]
    assert len(waits) >= 3 and waits == sorted(waits) and waits[-1] > waits[0], caplog.messages
    assert not any("could not tell whether" in m for m in caplog.messages)


def test_a_heartbeat_keeps_a_long_call_from_being_taken_over(
        make_engine: Callable[..., fl.Engine]) -> None:
    """A tool read three times longer than the lease: the session keeps its lock
    (the heartbeat renews it), and another engine's recover() finds it busy."""
    ledger = MemoryLedger()
    in_call = threading.Event()

    class SlowTool(ScriptedLedgerTool):
        @fl.read
        def find(self, key: str) -> str | None:
            in_call.set()
            threading.Event().wait(1.5)
            return None

    wf = ledger_workflow(items=["a"])
    cls: Any = wf.consumers[0].cls
    original = cls.prepare

    def prepare(self: Any, ctx: Any, state: Any) -> Any:
        ctx.tools.ledger.find("a")
        return original(self, ctx, state)

    cls.prepare = prepare
    policy = fl.RetryPolicy(lease_seconds=0.5)
    holder = make_engine(clock=fl.SystemClock(), policy=policy)
    holder.register(wf, tools=[SlowTool(ledger)])
    other = make_engine(clock=fl.SystemClock(), policy=policy)
    other.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(holder.run_session("wf")))
    t.start()
    assert in_call.wait(5)
    statuses = []
    for _ in range(4):  # over 1.2 s, more than twice the lease
        threading.Event().wait(0.3)
        statuses += [r.status for r in other.recover()]
    t.join(10)
    assert statuses == ["busy"] * 4
    assert results[0].status == "completed" and ledger.writes == ["a"]
    renewals = [e for e in other.events(workflow="wf") if e.name == "LeaseRenewed"]
    assert len(renewals) >= 2


def _serve_until(threads: list[threading.Thread], stop: threading.Event,
                 done: Callable[[], bool], seconds: float) -> None:
    """Start the serving threads, wait until `done` (at most `seconds`), stop them."""
    for t in threads:
        t.start()
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(10)


def test_worker_threads_share_workflows_and_book_each_event_once(
        make_engine: Callable[..., fl.Engine], tmp_path: Any) -> None:
    from tests.helpers import ExternalLedger

    ledger = ExternalLedger(tmp_path / "threads-ledger.db", count_calls=True)
    names = [f"w{i}" for i in range(3)]
    setup = make_engine(clock=fl.SystemClock())
    for name in names:
        setup.register(ledger_workflow(name, items=[f"{name}-{j}" for j in range(5)]),
                       tools=[ScriptedLedgerTool(ledger)])
        setup.run_session(name, max_iterations=0)  # published, nothing consumed
    stop = threading.Event()
    threads = []
    for _ in range(3):
        engine = make_engine(clock=fl.SystemClock())
        for name in names:
            engine.register(ledger_workflow(name, items=[]), tools=[ScriptedLedgerTool(ledger)])
        threads.append(threading.Thread(target=engine.serve,
                                        kwargs={"stop": stop, "interval": 0.02,
                                                "max_iterations": 2}))
    _serve_until(threads, stop, lambda: len(ledger.keys()) == 15, 10)
    assert ledger.keys() == sorted(f"{n}-{j}" for n in names for j in range(5))
    assert ledger.calls_made() == 15  # every tool call counted: each event exactly once
    assert all(setup.workflow(n).open_session is None for n in names)


def test_threads_serving_one_engine_book_each_event_once_without_errors(
        make_engine: Callable[..., fl.Engine], tmp_path: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """README: in threads, `engine.serve()` in each, one engine. On SQLite the
    threads had shared its one writer (and reader) connection: a transaction
    begun inside another thread's failed sessions and left leases held."""
    from tests.helpers import ExternalLedger

    ledger = ExternalLedger(tmp_path / "one-engine-ledger.db", count_calls=True)
    names = [f"w{i}" for i in range(4)]
    items = {name: [f"{name}-{j}" for j in range(12)] for name in names}
    engine = make_engine(clock=fl.SystemClock())
    for name in names:
        engine.register(ledger_workflow(name, items=items[name]),
                        tools=[ScriptedLedgerTool(ledger)])
        engine.run_session(name, max_iterations=0)  # published, nothing consumed
    stop = threading.Event()
    threads = [threading.Thread(target=engine.serve,
                                kwargs={"stop": stop, "interval": 0.01, "max_iterations": 1})
               for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="flowledger"):
        _serve_until(threads, stop, lambda: len(ledger.keys()) == 48, 30)
    assert ledger.keys() == sorted(i for name in names for i in items[name])
    assert ledger.calls_made() == 48  # every tool call counted: each event exactly once
    said = [r.getMessage() for r in caplog.records]
    assert [m for m in said if "so this worker never runs it" not in m] == []  # no failure
    assert all(engine.workflow(n).open_session is None for n in names)


def test_a_long_read_in_one_thread_holds_up_no_session_in_another(
        make_engine: Callable[..., fl.Engine]) -> None:
    """A service thread's long read (a snapshot held while it folds, as `at()`
    does) and a session in another thread of one engine: on SQLite the read
    had taken the writer connection for its length, and every append of the
    session (a lease's renewal too) waited for it to end."""
    ledger = MemoryLedger()
    engine = make_engine()
    engine.register(ledger_workflow(items=["x", "y"]), tools=[ScriptedLedgerTool(ledger)])
    reading, session_done = threading.Event(), threading.Event()
    ended_while_read: list[bool] = []

    def long_read() -> None:
        with engine.log.reading() as c:
            c.execute("SELECT COUNT(*) FROM fl_messages").fetchall()
            reading.set()
            ended_while_read.append(session_done.wait(20))

    reader = threading.Thread(target=long_read)
    reader.start()
    assert reading.wait(10)
    result = engine.run_session("wf")
    session_done.set()
    reader.join(30)
    assert result.status == "completed", result.error
    assert ledger.writes == ["x", "y"]
    assert ended_while_read == [True]


def test_threads_serving_and_reading_one_memory_engine(
        caplog: pytest.LogCaptureFixture) -> None:
    """`memory://` (the testing store): its connections share one cache, where
    a read on a connection of its own met another thread's table lock at once
    ("database table is locked"): sessions failed, leases were left held."""
    ledger = MemoryLedger()
    names = [f"w{i}" for i in range(3)]
    engine = fl.Engine("memory://", clock=fl.SystemClock())
    try:
        for name in names:
            engine.register(ledger_workflow(name, items=[f"{name}-{j}" for j in range(10)]),
                            tools=[ScriptedLedgerTool(ledger)])
            engine.run_session(name, max_iterations=0)  # published, nothing consumed
        stop, failed = threading.Event(), []

        def ask_status() -> None:
            while not stop.is_set():
                try:
                    engine.status()
                except fl.FlowledgerError as e:
                    failed.append(e)

        threads = [threading.Thread(target=engine.serve,
                                    kwargs={"stop": stop, "interval": 0.01, "max_iterations": 2})
                   for _ in range(2)]
        threads.append(threading.Thread(target=ask_status))
        with caplog.at_level(logging.WARNING, logger="flowledger"):
            _serve_until(threads, stop, lambda: len(ledger.keys()) == 30, 30)
        assert sorted(ledger.writes) == sorted(f"{n}-{j}" for n in names for j in range(10))
        said = [r.getMessage() for r in caplog.records]
        assert [m for m in said if "so this worker never runs it" not in m] == []
        assert failed == []
        assert all(engine.workflow(n).open_session is None for n in names)
    finally:
        engine.close()


def test_follow_one_workflow_knows_streams_begun_before_it_started(
        make_engine: Callable[..., fl.Engine]) -> None:
    from flowledger.engine.waiting import max_position

    engine = make_engine()
    for name in ("a", "b"):
        engine.register(ledger_workflow(name, items=["x"]),
                        tools=[ScriptedLedgerTool(MemoryLedger())])
        engine.run_session(name, max_iterations=0)  # x published, not consumed
    start = max_position(engine.log)
    for name in ("a", "b"):
        engine.run_session(name, trigger="event")  # x's stream began before `start`
    stop = threading.Event()
    seen = []
    for event in engine.follow(after=start, workflow="a", interval=0.01, stop=stop):
        seen.append(event)
        if event.aggregate == "Workflow" and event.name == "SessionClosed":
            stop.set()
    assert seen and all(e.position > start for e in seen)
    wf_a = engine.workflow("a").id
    streams = {e.stream_id for e in seen}
    assert wf_a in streams
    assert any(e.aggregate == "TopicEvent" and e.name == "Consumed" for e in seen)
    assert engine.workflow("b").id not in streams


@pytest.mark.parametrize(
    "store", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_pending_events_of_a_session_that_closed_during_the_look_are_served(
        make_engine: Callable[..., fl.Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker reads a workflow's state, then asks whether the holder of its
    open session is alive. A publisher that closed its session and exited in
    between is found gone: the session looks abandoned, and recovery finds
    nothing to take over. What that session published is still served, by the
    next pass (a recover marked it seen, and a worker with a publisher that
    opens an engine per message served half of them a second later or never)."""
    ledger = MemoryLedger()
    worker_engine = make_engine()
    worker_engine.register(ledger_workflow("wf", items=["a"]), tools=[ScriptedLedgerTool(ledger)])
    assert worker_engine.run_session("wf").status == "completed"  # "a" published, consumed
    worker = Worker(worker_engine)
    assert worker.run_once() == []
    at_close = threading.Event()
    go_on = threading.Event()

    def before_close(at: str) -> None:
        if at == "before_append:session_close":
            at_close.set()
            go_on.wait(30)

    publisher = make_engine(checkpoint=before_close)
    publisher.register(ledger_workflow("wf", items=["b"]), tools=[ScriptedLedgerTool(ledger)])
    thread = threading.Thread(
        target=lambda: publisher.run_session("wf", trigger="manual", max_iterations=0))
    thread.start()
    assert at_close.wait(30)  # "b" is published, the publisher's session still open
    gone = worker_engine._holder_gone

    def after_the_publisher_is_gone(session_id: Any, owner: str | None,
                                    patient: bool = False) -> bool:
        if not go_on.is_set():  # the worker's look: the publisher ends meanwhile
            go_on.set()
            thread.join(30)
            publisher.close()  # its process exits: its liveness lock is free
        return gone(session_id, owner, patient)

    monkeypatch.setattr(worker_engine, "_holder_gone", after_the_publisher_is_gone)
    assert worker.run_once() == []  # judged gone; nothing left to take over
    monkeypatch.setattr(worker_engine, "_holder_gone", gone)
    results = worker.run_once()
    assert [(r.status, len(r.runs)) for r in results] == [("completed", 1)]
    assert sorted(ledger.writes) == ["a", "b"]


def test_a_store_that_fails_as_the_worker_starts_is_waited_for(
        store: str, make_engine: Callable[..., fl.Engine],
        caplog: pytest.LogCaptureFixture) -> None:
    """The start's recovery is retried like any pass (a server restarting as
    the worker starts, say): the worker waits, says so, and serves once the
    store answers. It used to end there, its work left undone."""
    engine = make_engine(clock=fl.SystemClock())
    ledger = MemoryLedger()
    engine.register(ledger_workflow(items=["x"]), tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("wf", max_iterations=0)  # the producer's message, not consumed
    run_sql(store, "ALTER TABLE tracking RENAME TO tracking_gone")
    with caplog.at_level(logging.INFO, logger="flowledger.worker"), _serving(engine) as until:
        until(lambda: any(m.startswith("could not read the store") for m in caplog.messages))
        run_sql(store, "ALTER TABLE tracking_gone RENAME TO tracking")
        until(lambda: ledger.writes == ["x"])


def test_a_workflow_whose_stream_cannot_be_read_at_start_does_not_stop_the_others(
        store: str, make_engine: Callable[..., fl.Engine],
        caplog: pytest.LogCaptureFixture) -> None:
    """Damaged before the worker starts: its start's recovery says so and
    leaves that workflow waiting, and the others are served (retrying the
    whole start, the worker served none)."""
    broken, fine = MemoryLedger(), MemoryLedger()
    engine = make_engine(clock=fl.SystemClock())
    engine.register(ledger_workflow("broken", items=["x"]), tools=[ScriptedLedgerTool(broken)])
    engine.register(ledger_workflow("fine", items=["a"]), tools=[ScriptedLedgerTool(fine)])
    for name in ("broken", "fine"):
        engine.run_session(name, max_iterations=0)  # published, nothing consumed
    pos = position_column(store)
    stream = workflow_id("broken")
    (target,) = run_sql(store, f"SELECT MAX({pos}) FROM stored_events "
                               "WHERE originator_id IN (?, ?)", (stream.hex, str(stream)))[0]
    run_sql(store, f"UPDATE stored_events SET state=? WHERE {pos}=?", (b"\xc1", target))
    with caplog.at_level(logging.ERROR, logger="flowledger.worker"), _serving(engine) as until:
        until(lambda: fine.writes == ["a"])
    assert broken.writes == []
    assert caplog.text.count("cannot serve broken, which waits until its stream is mended") == 1


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_session_whose_stream_cannot_be_read_is_said_once_and_the_others_served(
        store: str, caplog: pytest.LogCaptureFixture) -> None:
    """A dead holder's open session whose own stream was damaged: every pass
    finds it due for recovery and cannot read it. The worker says so once (it
    logged a traceback at each pass, twenty a second) and serves the others."""
    import socket

    from flowledger.domain.session import Trigger
    from flowledger.engine.session_runner import SessionRequest, SessionRunner
    from flowledger.engine.streams import Streams

    broken, fine = MemoryLedger(), MemoryLedger()
    holder = fl.Engine(store)
    holder.owner = f"{socket.gethostname()}:999999:deadbeef"  # a process that is gone
    holder.register(ledger_workflow("broken", items=["x"]), tools=[ScriptedLedgerTool(broken)])
    reg = holder._registration("broken")
    now = holder.clock.now()
    opened = SessionRunner(reg, holder._scope_factory(reg), holder.store).open_new(
        Streams(holder.log), SessionRequest(Trigger.MANUAL, 10, None), holder.owner, now,
        holder.policy.lease_until(now), holder.ids())
    assert not isinstance(opened, fl.SessionResult)
    session_id = holder.workflow("broken").open_session
    holder.close()
    engine = fl.Engine(store, clock=fl.SystemClock())
    try:
        engine.register(ledger_workflow("broken", items=["x"]),
                        tools=[ScriptedLedgerTool(broken)])
        engine.register(ledger_workflow("fine", items=["a"]), tools=[ScriptedLedgerTool(fine)])
        engine.run_session("fine", max_iterations=0)
        run_sql(store, "UPDATE stored_events SET state=? WHERE originator_id IN (?, ?)",
                (b"\xc1", session_id.hex, str(session_id)))
        with caplog.at_level(logging.INFO, logger="flowledger.worker"), _serving(engine):
            time.sleep(1.5)
    finally:
        engine.close()
    assert fine.writes == ["a"] and broken.writes == []
    assert caplog.text.count("cannot serve broken, which waits until its stream is mended") == 1
    assert "session of broken stopped" not in caplog.text


@contextlib.contextmanager
def _serving(engine: fl.Engine) -> Iterator[Callable[[Callable[[], bool]], None]]:
    """`engine.serve` in a thread, stopped and joined at the end; what it yields
    waits (10 s at most) until a condition holds, the worker alive meanwhile."""
    stop = threading.Event()
    serving = threading.Thread(target=engine.serve, kwargs={"stop": stop, "interval": 0.05})
    serving.start()
    deadline = time.monotonic() + 10

    def until(condition: Callable[[], bool]) -> None:
        while not condition():
            assert serving.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)

    try:
        yield until
    finally:
        stop.set()
        serving.join(10)
    assert not serving.is_alive()


def test_a_recovery_another_engine_holds_is_not_said_taken_over(
        make_engine: Callable[..., fl.Engine], caplog: pytest.LogCaptureFixture) -> None:
    """Two workers both find a holder gone; the one that loses the race finds
    the session held, and says so, not that it took it over ("busy")."""
    from flowledger.domain.due import Due

    looker = make_engine()
    looker.register(ledger_workflow("wf"), tools=[ScriptedLedgerTool(MemoryLedger())])
    worker = Worker(looker)
    served: list[Any] = []

    def peek(item: str) -> None:  # while the holder's session is open
        if not served:
            served.append(worker._serve(Due("wf", "recover", reason="holder gone"), 0))

    holder = make_engine()
    holder.register(ledger_workflow("wf", on_peek=peek), tools=[ScriptedLedgerTool(MemoryLedger())])
    with caplog.at_level(logging.INFO, logger="flowledger"):
        assert holder.run_session("wf").status == "completed"
    assert served == [None] and worker.sessions == 0
    said = [r.getMessage() for r in caplog.records]
    assert not any("took over" in m for m in said), said
    assert any("is held by another engine" in m for m in said), said


def test_a_worker_asked_to_stop_stops_a_session_it_took_over_before_its_next_run(
        make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    """SIGTERM while a worker continues a session it took over: it ends before
    the next consumer run, as its own sessions do (it ran the whole backlog,
    a minute and more, and a supervisor's stop timeout would kill it mid-call)."""
    from flowledger.domain.due import Due
    from tests.integration.test_read_only_and_opening import Died, crash_after

    ledger = MemoryLedger()
    items = list("abcdefghij")
    crashing = make_engine(checkpoint=crash_after("after_append:commit", 2))
    crashing.register(ledger_workflow("wf", items=items), tools=[ScriptedLedgerTool(ledger)])
    with pytest.raises(Died):
        crashing.run_session("wf")
    clock.advance(3600)  # its lease ran out
    engine = make_engine()
    engine.register(ledger_workflow("wf", items=items), tools=[ScriptedLedgerTool(ledger)])
    worker = Worker(engine)
    worker.stop.set()  # SIGTERM came
    before = ledger.calls
    result = worker._serve(Due("wf", "recover", reason="lease ran out"), 0)
    assert result is not None and result.status == "budget_exhausted"
    assert ledger.calls - before <= 1 and len(result.runs) <= 1
    left = {t.topic: t.pending for t in engine.pending_work("wf").topics}
    assert left["in"] > 5  # for the next worker


def test_a_worker_asked_to_stop_as_it_starts_takes_over_nothing_more(
        make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    """SIGTERM while the worker's start recovers crashed sessions: the ones it
    has not begun are left to the next worker (it took each over, reconciled
    and called again: seconds more per workflow)."""
    from flowledger.engine.waiting import LogWaiter
    from tests.integration.test_read_only_and_opening import Died, crash_after

    ledger = MemoryLedger()
    for name in ("one", "two"):
        crashing = make_engine(checkpoint=crash_after("after_append:commit", 2))
        crashing.register(ledger_workflow(name, items=list("abcd")),
                          tools=[ScriptedLedgerTool(ledger)])
        with pytest.raises(Died):
            crashing.run_session(name)
    clock.advance(3600)  # their leases ran out
    engine = make_engine()
    for name in ("one", "two"):
        engine.register(ledger_workflow(name, items=list("abcd")),
                        tools=[ScriptedLedgerTool(ledger)])
    held = {name: engine.workflow(name).open_session for name in ("one", "two")}
    calls = ledger.calls
    worker = Worker(engine)
    worker.stop.set()
    with LogWaiter(engine.log) as waiter:
        worker._start(waiter)
    assert ledger.calls == calls
    assert {name: engine.workflow(name).open_session for name in held} == held


def test_a_pass_reads_every_workflow_served_together(
        make_engine: Callable[..., fl.Engine], clock: fl.ManualClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Five workflows served. Once the worker has read them, a pass after an
    append loads none of their streams one by one (the session it runs loads
    its own): what was appended to them since is read in one statement. What
    it knows of each is what a fresh worker reads, through publishes, a
    transient failure's pause and its retry."""
    from tests.helpers import count_loads

    clock.set(START)
    engine = make_engine()
    tool = ScriptedLedgerTool(MemoryLedger())
    names = [f"w{i}" for i in range(5)]
    plans: dict[str, list[str]] = {name: [] for name in names}
    for name in names:
        engine.register(_publishing(name, plans[name]), tools=[tool])
    worker = Worker(engine)
    assert worker.run_once() == []  # read once: nothing pending
    ids = {workflow_id(name) for name in names}
    for step, name in enumerate(["w2", "w0", "w2", "w4", "w1"]):
        plans[name].append(f"m{step}")
        engine.run_session(name, trigger="manual", max_iterations=0)  # publishes it
        tool.script = ["transient"] if step == 2 else []
        loads = count_loads(monkeypatch)
        served = worker.run_once()
        assert [r.workflow for r in served] == [name]
        assert [i for i in loads if i in ids] == [workflow_id(name)]  # its session's
        monkeypatch.undo()
        _assert_knows_what_a_fresh_worker_reads(worker, engine)
    clock.advance(3600)  # the paused workflow's retry is due
    assert [r.workflow for r in worker.run_once()] == ["w2"]
    _assert_knows_what_a_fresh_worker_reads(worker, engine)
    assert sorted(tool.writes) == ["m0", "m1", "m2", "m3", "m4"]


def _assert_knows_what_a_fresh_worker_reads(worker: Worker, engine: fl.Engine) -> None:
    from flowledger.engine.waiting import max_position

    fresh = Worker(engine)
    for w in (worker, fresh):
        w._read_new_runs(max_position(engine.log))  # as a pass does first
    for reg in engine._registered.values():
        kept, read = worker._facts(reg), fresh._facts(reg)
        assert kept is not None and read is not None
        assert kept[0].__dict__ == read[0].__dict__ and kept[1:] == read[1:]


def _publishing(name: str, plan: list[str]) -> fl.Workflow:
    """A producer that publishes what `plan` holds; a consumer that books each."""
    wf = fl.Workflow(name, topics=["in"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> Any:
        for item in plan:
            ctx.publish("in", message_id=item, payload=item)
        return None

    @wf.consumer(subscribe=["in"], tools=["ledger"])
    class Book:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            pending = ctx.peek("in", limit=1)
            if not pending:
                return None
            return fl.Prepared({"in": [pending[0].message_id]}, data=pending[0].message_id)

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.ledger.append(prepared.data, "v")

    return wf


def _broken_and_fine(make_engine: Callable[..., fl.Engine]
                     ) -> tuple[fl.Engine, MemoryLedger, MemoryLedger]:
    """Two workflows with a message each published, nothing consumed: "broken"
    (to be damaged) and "fine", and their ledgers."""
    broken, fine = MemoryLedger(), MemoryLedger()
    engine = make_engine()
    engine.register(ledger_workflow("broken", items=["x"]), tools=[ScriptedLedgerTool(broken)])
    engine.register(ledger_workflow("fine", items=["a"]), tools=[ScriptedLedgerTool(fine)])
    for name in ("broken", "fine"):
        engine.run_session(name, max_iterations=0)
    return engine, broken, fine


def _damage_last_event(store: str, name: str) -> tuple[str, int, bytes]:
    """The workflow stream's last event made unreadable: (position column,
    its position, its body as it was)."""
    pos = position_column(store)
    stream = workflow_id(name)
    (target,) = run_sql(store, f"SELECT MAX({pos}) FROM stored_events "
                               "WHERE originator_id IN (?, ?)", (stream.hex, str(stream)))[0]
    (state,) = run_sql(store, f"SELECT state FROM stored_events WHERE {pos}=?", (target,))[0]
    run_sql(store, f"UPDATE stored_events SET state=? WHERE {pos}=?", (b"\xc1", target))
    return pos, target, bytes(state)


def test_a_mended_stream_is_served_at_the_next_pass(
        store: str, make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    """A workflow whose stream cannot be read is looked at again at each pass,
    though nothing is appended: mended outside flowledger, it is served."""
    clock.set(START)
    engine, broken, fine = _broken_and_fine(make_engine)
    worker = Worker(engine)
    pos, target, state = _damage_last_event(store, "broken")
    assert [r.workflow for r in worker.run_once()] == ["fine"]
    assert worker.run_once() == []
    run_sql(store, f"UPDATE stored_events SET state=? WHERE {pos}=?", (state, target))
    assert [r.workflow for r in worker.run_once()] == ["broken"]
    assert broken.writes == ["x"] and fine.writes == ["a"]


def test_a_damaged_stream_looked_at_pass_after_pass_keeps_nothing_of_the_last(
        store: str, make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    """Each look raises a new error: one raised again and again grows its
    traceback, with the frames it holds, at every pass of an idle worker."""
    clock.set(START)
    engine = make_engine()
    engine.register(ledger_workflow("broken", items=["x"]),
                    tools=[ScriptedLedgerTool(MemoryLedger())])
    engine.run_session("broken", max_iterations=0)
    worker = Worker(engine)
    _damage_last_event(store, "broken")
    reg = engine._registration("broken")
    errors = []
    for _ in range(5):
        with pytest.raises(fl.CorruptEventError) as raised:
            worker._facts(reg)
        errors.append(raised.value)
    assert len({id(e) for e in errors}) == 5


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_worker_after_a_restore_knows_what_a_fresh_worker_reads(
        store: str, clock: fl.ManualClock, tmp_path: Any) -> None:
    """The store is restored from a backup taken before the worker last read a
    workflow (paused, needing a person), and other engines write that stream
    anew past the version the worker kept: the event there is another one, so
    the worker reads the workflow afresh (active) and serves it."""
    import sqlite3

    from flowledger.engine.waiting import max_position

    clock.set(START)
    path = store[len("sqlite:///"):]
    plan: list[str] = ["m0"]
    tool = ScriptedLedgerTool(MemoryLedger())

    def engine() -> fl.Engine:
        e = fl.Engine(store, clock=clock)
        e.register(_publishing("wf", plan), tools=[tool])
        return e

    writer = engine()
    writer.run_session("wf", max_iterations=0)  # m0 published
    backup = sqlite3.connect(tmp_path / "backup.db")
    with contextlib.closing(sqlite3.connect(path)) as live:
        live.backup(backup)  # wf active, m0 pending
    tool.script = ["auth"]
    assert writer.run_session("wf", trigger="event").status == "suspended"  # needs a person
    writer.close()
    watcher = engine()
    worker = Worker(watcher)
    try:
        assert worker.run_once() == []
        with contextlib.closing(sqlite3.connect(path)) as live:
            backup.backup(live)  # restored: the pause is gone from the store
        backup.close()
        other = engine()
        tool.script = []
        while max_position(other.log) <= worker._runs.read_upto:
            plan.append(f"m{len(plan)}")
            other.run_session("wf", max_iterations=0)  # another engine writes the stream
        assert other.workflow("wf").status.value == "active"
        other.close()
        assert [r.workflow for r in worker.run_once()] == ["wf"]
        assert "m0" in tool.writes
    finally:
        watcher.close()


def test_a_stream_damaged_before_what_the_worker_kept_is_served_once_mended(
        store: str, make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    """Damage to an event before the version the worker kept of a workflow is
    found by its session, which fails: the others are served in the same
    pass, the workflow is looked at afresh from then on, and once mended its
    message is served (it was not: the failed session had marked it seen)."""
    clock.set(START)
    engine = make_engine()
    ledgers = {name: MemoryLedger() for name in ("w", "o")}
    for name, item in (("w", "x"), ("o", "y")):
        engine.register(ledger_workflow(name, items=[item]),
                        tools=[ScriptedLedgerTool(ledgers[name])])
    engine.run_session("w", max_iterations=0)  # x pending
    engine.run_session("w", max_iterations=0)
    worker = Worker(engine)
    worker._read_new_runs(max_position(engine.log))
    worker._decisions(engine.clock.now())  # w kept
    stream, pos = workflow_id("w"), position_column(store)
    (target, state) = run_sql(store, f"SELECT {pos}, state FROM stored_events WHERE "
                                     "originator_id IN (?, ?) AND originator_version = 2",
                              (stream.hex, str(stream)))[0]
    run_sql(store, f"UPDATE stored_events SET state=? WHERE {pos}=?", (b"\xc1", target))
    engine.run_session("o", max_iterations=0)  # y pending: the log moves
    with pytest.raises(fl.CorruptEventError):
        worker.run_once()
    assert [r.workflow for r in worker.run_once()] == ["o"]
    assert worker.run_once() == []
    run_sql(store, f"UPDATE stored_events SET state=? WHERE {pos}=?", (bytes(state), target))
    assert [r.workflow for r in worker.run_once()] == ["w"]
    assert ledgers["w"].writes == ["x"] and ledgers["o"].writes == ["y"]


def test_a_session_the_store_failed_is_served_again_when_it_is_back(
        store: str, make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    """Another engine publishes; the worker's session fails on the store (its
    appends refused by a trigger); once the store is back, the worker serves
    the message (the failed session had marked it seen, and it never was)."""
    clock.set(START)
    engine, other = make_engine(), make_engine()
    ledger = MemoryLedger()
    engine.register(ledger_workflow("w", items=["x"]), tools=[ScriptedLedgerTool(ledger)])
    other.register(ledger_workflow("w", items=["x"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    worker = Worker(engine)
    assert worker.run_once() == []
    other.run_session("w", trigger="manual", max_iterations=0)  # x published
    _appends_refused(store, True)
    try:
        with pytest.raises(Exception, match=r"store.down"):
            worker.run_once()
    finally:
        _appends_refused(store, False)
    assert [r.workflow for r in worker.run_once()] == ["w"]
    assert ledger.writes == ["x"]


def _appends_refused(store: str, refused: bool) -> None:
    if store.startswith("sqlite"):
        # A function the writer's connection does not have: an error of the store.
        run_sql(store, "CREATE TRIGGER t_down BEFORE INSERT ON stored_events BEGIN "
                       "SELECT store_down(); END" if refused else "DROP TRIGGER t_down")
    elif refused:
        run_sql(store, "CREATE FUNCTION t_down() RETURNS trigger LANGUAGE plpgsql AS "
                       "$$ BEGIN RAISE EXCEPTION 'store down'; END $$")
        run_sql(store, "CREATE TRIGGER t_down BEFORE INSERT ON stored_events "
                       "FOR EACH ROW EXECUTE FUNCTION t_down()")
    else:
        run_sql(store, "DROP TRIGGER t_down ON stored_events")
        run_sql(store, "DROP FUNCTION t_down()")


def test_a_scheduled_workflow_registered_after_the_worker_started_keeps_its_tick(
        make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    """Its producer ran at 00:00:30 by another engine; registered with a
    running worker after its first pass, it is not due ten minutes on (its
    hourly tick is at 01:00:30), as for a worker started after it."""
    clock.set(START)
    calls: list[str] = []
    other = make_engine()
    other.register(ticking_workflow(calls, every="1h"), tools=[ScriptedLedgerTool(MemoryLedger())])
    assert [r.status for r in Worker(other).run_once()] == ["completed"]
    engine = make_engine()
    engine.register(ledger_workflow("plain", items=[]), tools=[ScriptedLedgerTool(MemoryLedger())])
    worker = Worker(engine)
    assert worker.run_once() == []
    engine.register(ticking_workflow(calls, every="1h"), tools=[ScriptedLedgerTool(MemoryLedger())])
    clock.advance(600)
    assert worker.run_once() == [] and calls == ["produce 1"]
    clock.advance(3000)
    assert [r.workflow for r in worker.run_once()] == ["ticks"] and calls[-1] == "produce 2"


def test_a_producer_run_under_way_as_the_worker_starts_counts_as_its_last_once_committed(
        make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    """Another engine's hourly producer begins at 00:00:30; a worker starts
    while it runs, then sees it commit. The run is that producer's last: the
    next tick is at 01:00, not "never ran, at once" (which ran it again). It
    holds as a producer run is one append (ADR 0003): its start comes with
    its end, never before the head a starting worker reads from."""
    clock.set(START)
    calls: list[str] = []
    engine = make_engine()
    engine.register(ticking_workflow(calls, every="1h"), tools=[ScriptedLedgerTool(MemoryLedger())])
    worker = Worker(engine)
    other = make_engine()  # another process, as far as the store can tell
    wf = ticking_workflow(calls, every="1h")
    wf.producers.clear()
    seen: list[list[fl.SessionResult]] = []

    @wf.producer(publishes=["tick"], name="produce", every="1h")
    def produce(ctx: Any, state: Any) -> Any:
        calls.append("other's produce")
        seen.append(worker.run_once())  # the worker starts while this run is under way
        ctx.publish("tick", message_id="t1", payload={"n": 1})
        return {"n": 1}

    other.register(wf, tools=[ScriptedLedgerTool(MemoryLedger())])
    assert other.run_session("ticks", trigger="manual", max_iterations=0).status == \
        "budget_exhausted"
    assert seen == [[]]  # the workflow was held by the other engine's session
    clock.advance(600)
    results = worker.run_once()
    assert [r.runs[0].kind.value for r in results] == ["consumer"]  # t1, not the producer
    assert calls == ["other's produce"]
    assert worker.next_due() == datetime(2026, 1, 1, 1, 0, tzinfo=UTC)  # the first tick after


def test_the_worker_forgets_producer_runs_that_ended_without_a_commit(
        make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    """A long-lived worker keeps a scheduled producer's runs begun until they
    end; one that paused and was run again by a fresh run, or failed, never
    commits, and is not kept for the worker's life."""
    clock.set(START)
    attempts: list[int] = []
    wf = fl.Workflow("flaky", topics=["tick"])

    @wf.producer(publishes=["tick"], every="1h")
    def produce(ctx: Any, state: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise fl.TransientError("the source is busy")
        if len(attempts) == 3:
            raise ValueError("the source said no")
        return state

    engine = make_engine()
    engine.register(wf)
    worker = Worker(engine)
    assert [r.status for r in worker.run_once()] == ["suspended"]
    clock.advance(600)  # the transient retry is due
    assert [r.status for r in worker.run_once()] == ["completed"]
    clock.advance(3600)
    assert [r.status for r in worker.run_once()] == ["failed"]
    worker.next_due()  # reads what the last pass appended
    assert len(attempts) == 3
    assert worker._runs.started == {}


def test_a_worker_serving_in_one_thread_refuses_a_pass_from_another(
        make_engine: Callable[..., fl.Engine]) -> None:
    """A Worker keeps what it read between passes; two threads' passes would
    mix it up, so the second is refused with what to do instead."""
    engine = make_engine()
    engine.register(ledger_workflow("plain", items=[]), tools=[ScriptedLedgerTool(MemoryLedger())])
    worker = Worker(engine, interval=0.01)
    stop = threading.Event()
    serving = threading.Thread(target=worker.serve, kwargs={"stop": stop})
    serving.start()
    try:
        for _ in range(500):
            if worker._in_use.locked():
                break
            time.sleep(0.01)
        with pytest.raises(RuntimeError, match=r"Worker\.run_once: this Worker is already at "
                                               r"work .* Give each thread its own Worker"):
            worker.run_once()
        with pytest.raises(RuntimeError, match=r"Worker\.next_due"):
            worker.next_due()
    finally:
        stop.set()
        serving.join(10)
    assert worker.run_once() == []  # free again once it stopped


def test_a_handler_calling_its_own_worker_fails_its_run_and_says_why(
        make_engine: Callable[..., fl.Engine], clock: fl.ManualClock) -> None:
    clock.set(START)
    wf = fl.Workflow("inner", topics=["tick"])
    workers: list[Worker] = []

    @wf.producer(publishes=["tick"], every="1h")
    def produce(ctx: Any, state: Any) -> Any:
        workers[0].run_once()
        return state

    engine = make_engine()
    engine.register(wf)
    workers.append(Worker(engine))
    [result] = workers[0].run_once()
    assert result.status == "failed"
    assert result.error is not None and "a handler of its own session called it" in result.error


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_worker_says_at_its_start_which_producers_it_never_runs(
        store: str, make_engine: Callable[..., fl.Engine],
        caplog: pytest.LogCaptureFixture) -> None:
    """A producer without every= or cron= is never due: a worker serving its
    workflow says so once, at its start, and names it; a scheduled one is not named."""
    engine = make_engine(clock=fl.SystemClock())
    engine.register(ledger_workflow("manual", items=["x"]),
                    tools=[ScriptedLedgerTool(MemoryLedger())])
    timed = fl.Workflow("timed", topics=["t"])

    @timed.producer(publishes=["t"], every="1h")
    def tick(ctx: Any, state: Any) -> None:
        return None

    engine.register(timed)
    with caplog.at_level(logging.INFO, logger="flowledger.worker"):
        serve_for(engine, 0.5)
    said = [m for m in caplog.messages if "never runs" in m]
    assert len(said) == 1, caplog.messages
    assert said[0].startswith("workflow manual: producer produce has no every= or cron=")


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_worker_says_at_its_start_which_workflows_wait_for_a_person(
        store: str, make_engine: Callable[..., fl.Engine],
        caplog: pytest.LogCaptureFixture) -> None:
    """A worker serving a workflow in error said only that it served it, and
    then nothing: it names the workflow, why, and where to see what to do."""
    broken = fl.Workflow("broken", topics=["in"])

    @broken.producer(publishes=["in"])
    def put(ctx: Any, state: Any) -> None:
        ctx.publish("in", message_id="1", payload=1)

    @broken.consumer(subscribe=["in"])
    class Take:
        def prepare(self, ctx: Any, state: Any) -> Any:
            raise KeyError("customer")

    engine = make_engine(clock=fl.SystemClock())
    engine.register(broken)
    engine.register(ledger_workflow("fine", items=[]), tools=[ScriptedLedgerTool(MemoryLedger())])
    assert engine.run_session("broken").status == "failed"
    with caplog.at_level(logging.INFO, logger="flowledger.worker"):
        serve_for(engine, 0.5)
    said = [m for m in caplog.messages if "once a person acts" in m]
    assert len(said) == 1, caplog.messages
    assert said[0].startswith("workflow broken is error (run ")
    assert "KeyError: 'customer'" in said[0] and said[0].endswith(
        "blocked` lists what waits and the command for each")


def _opens_meanwhile(monkeypatch: pytest.MonkeyPatch, held: threading.Thread,
                     entered: threading.Event) -> None:
    """The next session opening starts `held` (another engine's session) after
    it read the workflow and before it appends, once `entered` says that
    session is under way: two engines opening one workflow at once."""
    from flowledger.engine.session_runner import SessionRunner

    looked = SessionRunner._blocked_reason

    def first_opens_meanwhile(runner: Any, wf: Any, now: Any) -> Any:
        monkeypatch.setattr(SessionRunner, "_blocked_reason", looked)  # once
        held.start()
        assert entered.wait(30)
        return looked(runner, wf, now)

    monkeypatch.setattr(SessionRunner, "_blocked_reason", first_opens_meanwhile)


def test_a_session_opened_elsewhere_meanwhile_is_said_with_its_holder(
        make_engine: Callable[..., fl.Engine], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two engines open a session of one workflow at once (workers at the same
    tick): the one whose append the fence refuses says whose session it is,
    as the log has it now, not only "at the same moment"."""
    entered, release = threading.Event(), threading.Event()

    def long_call(key: str) -> None:
        entered.set()
        release.wait(30)

    first, second = make_engine(), make_engine()
    first.register(ledger_workflow(items=["a"]), tools=[mid_call_tool(long_call)(MemoryLedger())])
    second.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    held = threading.Thread(target=first.run_session, args=("wf",))
    _opens_meanwhile(monkeypatch, held, entered)
    try:
        result = second.run_session("wf")
    finally:
        release.set()
        held.join(30)
    assert result.status == "busy"
    assert f"held by {first.owner}" in (result.error or ""), result.error
    # Alive as far as the store can tell: no advice to wait out a lease.
    assert "still running as far as the store can tell" in (result.error or "")


def test_a_tick_is_said_by_the_worker_whose_session_ran_it(
        make_engine: Callable[..., fl.Engine], clock: fl.ManualClock,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers sharing a store each see every tick and try to open its session
    at once. Only the one whose session ran it says `tick of ...` at INFO; the
    one the fence refused says so at -v only: one line a tick in the logs, not
    one from each worker, and a worker's log tells whether it ran the producer."""

    clock.set(START)
    entered, release = threading.Event(), threading.Event()

    def long_call(key: str) -> None:
        entered.set()
        release.wait(30)

    calls: list[str] = []
    first, second = make_engine(), make_engine()
    first.register(ticking_workflow(calls, every="1m"),
                   tools=[mid_call_tool(long_call)(MemoryLedger())])
    second.register(ticking_workflow(calls, every="1m"), tools=[ScriptedLedgerTool(MemoryLedger())])
    held = threading.Thread(target=Worker(first).run_once)
    _opens_meanwhile(monkeypatch, held, entered)
    worker = Worker(second)
    try:
        with caplog.at_level(logging.INFO, logger="flowledger.worker"):
            assert [r.status for r in worker.run_once()] == ["busy"]
        assert not [m for m in caplog.messages if m.startswith("tick of")], caplog.messages
    finally:
        release.set()
        held.join(30)
    assert calls == ["produce 1"]  # the first worker's session ran the tick
    clock.advance(30)  # 00:01:00, the next tick
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flowledger.worker"):
        assert [r.status for r in worker.run_once()] == ["completed"]
    assert "tick of ticks: produce" in caplog.messages, caplog.messages


def test_a_store_knows_its_workers_running_stopped_and_long_ended(
        make_engine, clock: fl.ManualClock) -> None:
    """`status` lists the workers serving the store, those waiting for work
    too (they hold no session, so nothing else showed them); a worker that
    stopped says so and how, and is left out of `status`. Notes of workers
    that ended a week before are dropped when a worker starts."""
    looker = make_engine()  # another process's engine (a CLI's)
    assert looker.status().workers == () and looker.workers() == []

    def worker() -> fl.Engine:
        engine = make_engine()
        engine.register(ledger_workflow(items=[]), tools=[ScriptedLedgerTool(MemoryLedger())])
        return engine

    first = worker()
    with _serving(first) as until:
        until(lambda: [w.state for w in looker.workers()] == ["running"])
        (shown,) = looker.status().workers
        assert (shown.owner, shown.workflows, shown.started_at, shown.stopped_at) == (
            first.owner, ("wf",), clock.now(), None)
    (stopped,) = looker.workers()
    assert (stopped.state, stopped.how, stopped.stopped_at) == (
        "stopped", "stopped", clock.now())
    assert looker.status().workers == ()

    clock.advance("6d")
    second = worker()
    with _serving(second) as until:
        until(lambda: len(looker.workers()) == 2)
    clock.advance("2d")  # the first ended 8 days ago
    third = worker()
    with _serving(third) as until:
        until(lambda: [w.owner for w in looker.workers()] == [third.owner, second.owner])


def test_a_worker_whose_note_cannot_be_written_serves_all_the_same(
        make_engine, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that refuses the worker's notes (a role without rights on the
    table, say) is said in a warning at start and at stop; the worker serves."""
    engine = make_engine()
    books = MemoryLedger()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(books)])
    engine.run_session("wf", max_iterations=0)  # "a" published: the worker's to book
    recorder = type(engine.log.flow_recorder)

    def refused(self: Any, *args: Any) -> None:
        raise PermissionError("permission denied for table fl_workers")

    monkeypatch.setattr(recorder, "note_worker", refused)
    monkeypatch.setattr(recorder, "note_worker_stopped", refused)
    with caplog.at_level(logging.WARNING, logger="flowledger"), _serving(engine) as until:
        until(lambda: books.keys() == ["a"])
    assert caplog.text.count("could not note in the store that worker") == 2
    assert "permission denied for table fl_workers" in caplog.text


def test_threads_serving_with_one_engine_are_one_worker(make_engine) -> None:
    """Two serve() loops of one engine: the worker is running until the last
    stops (the first to stop noted it stopped while the other served)."""
    from flowledger.engine import worker_notes

    engine = make_engine()
    engine.register(ledger_workflow(items=[]), tools=[ScriptedLedgerTool(MemoryLedger())])
    looker = make_engine()
    with _serving(engine) as until:
        until(lambda: [w.state for w in looker.workers()] == ["running"])
        with _serving(engine) as until_second:  # both loops under way, then this one stops
            until_second(lambda: worker_notes._loops.get(engine.owner) == 2)
        assert [w.state for w in looker.workers()] == ["running"]
    assert [(w.state, w.how) for w in looker.workers()] == [("stopped", "stopped")]


def test_a_worker_stopped_at_once_says_so(make_engine) -> None:
    """A second signal (KeyboardInterrupt) stops a worker in the middle of a
    step: it still says it stopped, so that no store or host has to prove it
    (on another host, whose engine closed and let its lock go, none could)."""
    engine = make_engine()

    class Interrupted(ScriptedLedgerTool):
        @fl.mutator(reconcile="find")
        def append(self, key: str, value: str) -> int:
            raise KeyboardInterrupt

    engine.register(ledger_workflow(items=["a"]), tools=[Interrupted(MemoryLedger())])
    engine.run_session("wf", max_iterations=0)
    with pytest.raises(KeyboardInterrupt):
        engine.serve(interval=0.05)
    assert [(w.state, w.how) for w in make_engine().workers()] == [
        ("stopped", "stopped at once")]


def test_workers_found_gone_or_unknown_are_said_once_and_forgotten(
        make_engine, clock: fl.ManualClock) -> None:
    """A worker whose process is no more is found gone once and noted so (a
    store that needs a second look waits once, not at every `status`); shown
    for a day, forgotten after a week. One on another host that no store lock
    proves running is `unknown`, and forgotten a week after it started."""
    import socket
    import subprocess
    import sys

    from flowledger.engine import worker_notes
    from flowledger.projections.times import time_text

    engine = make_engine()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process id no process has now
    dead = f"{socket.gethostname()}:{child.pid}:deadbeef"
    far = "otherhost.example:42:abcdabcd"
    recorder = engine.log.flow_recorder
    with recorder.writing() as c:
        for owner in (dead, far):
            recorder.note_worker(c, owner, time_text(clock.now()), '["wf"]')

    shown = {w.owner: (w.state, w.how) for w in engine.status().workers}
    assert shown == {dead: ("gone", None), far: ("unknown", None)}
    assert {w.owner: (w.state, w.how, w.stopped_at) for w in engine.workers()} == {
        dead: ("gone", worker_notes.GONE, clock.now()), far: ("unknown", None, None)}
    clock.advance("2d")
    assert [w.owner for w in engine.status().workers] == [far]  # gone a day ago: left out
    clock.advance("6d")
    serving = make_engine()
    serving.register(ledger_workflow(items=[]), tools=[ScriptedLedgerTool(MemoryLedger())])
    with _serving(serving) as until:
        until(lambda: [w.owner for w in engine.workers()] == [serving.owner])
