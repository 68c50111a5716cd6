"""Connections the PostgreSQL server ends (a restart, a failover,
`pg_terminate_backend`, a pooler's idle timeout) are replaced before the engine
next uses them: sessions, reads and the worker's wait go on as if nothing had
happened, each mutation is made once, and the engine is again known alive to
other processes (its advisory lock, ADR 0017)."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import flowledger as fl
from flowledger.engine.waiting import LogWaiter
from flowledger.infrastructure.postgres_recorder import _CREATE_LOCK, NotConnected, _usable
from flowledger.infrastructure.store import LogWentBack
from flowledger.infrastructure.store_failures import from_the_store
from flowledger.projections.runner import LogLook
from tests.helpers import (
    Follower,
    MemoryLedger,
    ScriptedLedgerTool,
    costly_workflow,
    ledger_workflow,
    mid_call_tool,
)
from tests.store_contents import run_sql

on_postgresql = pytest.mark.parametrize(
    "store", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)


def _server(engine: fl.Engine) -> psycopg.Connection[Any]:
    return psycopg.connect(**engine.log.flow_recorder.conninfo, autocommit=True)


def backends(engine: fl.Engine) -> list[int]:
    """The server processes of the engine's own connections (its reading
    connections, its writers, its liveness lock's)."""
    rec = engine.log.flow_recorder
    with rec._reading_lock:
        reading = list(rec._reading)
    conns = [*rec._writers.values(), *reading, rec._liveness]
    return [c.info.backend_pid for c in conns if c is not None and not c.closed]


def end_connections(engine: fl.Engine, pids: list[int] | None = None) -> int:
    """End, as the server would, the engine's connections (or those `pids`),
    and wait until they are gone."""
    pids = backends(engine) if pids is None else pids
    with _server(engine) as c:
        for pid in pids:
            c.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while c.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                        (pids,)).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the server did not end the connections"
            time.sleep(0.02)
    return len(pids)


def _alive_to_others(engine: fl.Engine, other: fl.Engine) -> bool | None:
    """As another engine about to take a session over judges: a free lock gets
    a second look, in case its owner takes it again."""
    return other.log.flow_recorder.holder_alive(engine.owner, patient=True)


@on_postgresql
def test_a_session_after_the_server_ended_every_connection_runs_as_usual(make_engine, ledger):
    other = make_engine()  # looks at the engine's liveness from another process's seat
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    engine.register(costly_workflow(["a", "b", "c", "d"], ["0.5"]), tools=[tool])
    first = engine.run_session("prop", max_iterations=2)
    assert first.status == "budget_exhausted", first.error
    assert _alive_to_others(engine, other) is True

    # The two writers, the readers and the advisory lock's connection.
    assert end_connections(engine) >= 4
    assert _alive_to_others(engine, other) is False

    second = engine.run_session("prop")
    assert second.status == "completed", second.error
    assert sorted(key for key, _ in tool.calls) == ["a", "b", "c", "d"]  # each once
    assert ledger.keys() == ["a", "b", "c", "d"]
    assert _alive_to_others(engine, other) is True  # announced again
    status = engine.status()
    assert [w.open_session for w in status.workflows] == [None]
    assert engine.verify().ok


@on_postgresql
def test_connections_ended_during_an_external_call_are_replaced_mid_session(make_engine,
                                                                         ledger):
    """The server ends them while a run waits on its tool: the run's outcome
    and everything after it are written on new connections, in the same
    session."""
    engine = make_engine()
    ended: list[int] = []

    def end_once(key: str) -> None:
        if key == "b":
            ended.append(end_connections(engine))

    tool = mid_call_tool(end_once)(ledger)
    engine.register(costly_workflow(["a", "b", "c"], ["0.5"]), tools=[tool])
    result = engine.run_session("prop")
    assert ended and ended[0] >= 4
    assert result.status == "completed", result.error
    assert sorted(key for key, _ in tool.calls) == ["a", "b", "c"]
    assert ledger.keys() == ["a", "b", "c"]
    assert engine.verify().ok


@on_postgresql
def test_a_waiter_whose_listening_connection_the_server_ended_is_woken_again(make_engine):
    engine, other = make_engine(), make_engine()
    engine.register(fl.Workflow("first", topics=["t"]))

    def append_soon(name: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: (
            time.sleep(0.3), other.register(fl.Workflow(name, topics=["t"]))))
        thread.start()
        return thread

    with LogWaiter(engine.log) as waiter:
        waiter.NOTIFIED_CHECK = 30  # woken by notifications only, not by looking
        head = waiter.head()
        assert waiter.wakeups is not None
        end_connections(engine, [waiter.wakeups.conn.info.backend_pid])
        # Appended while the waiter waits: the wait finds its connection gone.
        appending = append_soon("second")
        assert waiter.wait_for_append(head, timeout=10) > head
        appending.join()
        # And it listens again: the next append wakes it too.
        head = waiter.head()
        appending = append_soon("third")
        started = time.monotonic()
        assert waiter.wait_for_append(head, timeout=10) > head
        assert time.monotonic() - started < 5, "not woken by the append's notification"
        appending.join()


@on_postgresql
def test_taking_the_liveness_lock_again_never_holds_up_a_write(make_engine, ledger):
    """The liveness lock's connection was ended but its key is still held (say
    by a backend the server has not ended yet): writes go on at once, and the
    lock is taken at the first write after the key is free."""
    other = make_engine()
    engine = make_engine()
    engine.register(costly_workflow(["a", "b"], ["0.5"]), tools=[ScriptedLedgerTool(ledger)])
    rec = engine.log.flow_recorder
    key = rec._liveness_key(engine.owner)
    end_connections(engine, backends(engine))
    with _server(engine) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (_CREATE_LOCK, key))
        started = time.monotonic()
        result = engine.run_session("prop", max_iterations=1)
        assert result.status == "budget_exhausted", result.error
        assert time.monotonic() - started < 5, "a write waited for the liveness lock"
        assert rec._liveness is None  # not taken: someone else holds the key
    # The key is free again (its holder's connection closed): the next write takes it.
    assert engine.run_session("prop").status == "completed"
    assert rec._liveness is not None
    assert _alive_to_others(engine, other) is True
    timeout = rec._liveness.execute("SHOW idle_session_timeout").fetchone()[0]
    assert timeout == "0", "the liveness connection must not be ended for idling"


def queue_workflow(queue: list[str]) -> fl.Workflow:
    """A producer that publishes what is in `queue` (taken out as published),
    a consumer that writes each message to the ledger tool."""
    wf = fl.Workflow("queued", topics=["in"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> None:
        while queue:
            item = queue.pop(0)
            ctx.publish("in", message_id=item, payload=item)

    @wf.consumer(subscribe=["in"], tools=["ledger"])
    class Write:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            pending = ctx.peek("in", limit=1)
            if not pending:
                return None
            return fl.Prepared({"in": [pending[0].message_id]}, data=pending[0].payload)

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.ledger.append(prepared.data, "v")

    return wf


def _until(done: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _fed(feeder: fl.Engine) -> None:
    """The feeder's producer run, once the workflow's session is free: the
    worker may hold it (serving, or back from the outage with its session
    still open), and the feeder's session is then busy, as it should be."""
    _until(lambda: feeder.run_session("queued", max_iterations=0).status
           == "budget_exhausted", 30, "the feeder never found the session free")


@on_postgresql
def test_a_worker_rides_out_a_server_it_cannot_reach(store, make_engine, caplog):
    """Its role refused logins and its connections ended, for a while: the
    worker logs, waits and looks again (never ends), then serves what was
    published once the server lets it in again, each message once."""
    role = f"fl_outage_{uuid.uuid4().hex[:8]}"

    def admin() -> psycopg.Connection[Any]:
        return psycopg.connect(store.partition("?")[0], autocommit=True)

    queue: list[str] = []
    tool = ScriptedLedgerTool(MemoryLedger())
    stop = threading.Event()
    worker: fl.Engine | None = None
    serving: threading.Thread | None = None
    caplog.set_level(logging.ERROR, logger="flowledger.worker")
    try:
        with admin() as c:
            c.execute(f'CREATE ROLE "{role}" LOGIN')
            c.execute(f'GRANT CREATE ON DATABASE "{c.info.dbname}" TO "{role}"')
        # The role's engine makes the store: its schema and tables are the role's.
        worker = fl.Engine(store.replace("postgres@", f"{role}@", 1), clock=fl.SystemClock())
        worker.register(queue_workflow([]), tools=[tool])
        feeder = make_engine(clock=fl.SystemClock())
        feeder.register(queue_workflow(queue), tools=[ScriptedLedgerTool(MemoryLedger())])
        serving = threading.Thread(target=worker.serve, kwargs={"stop": stop, "interval": 0.05})
        serving.start()

        queue += ["a", "b"]
        _fed(feeder)
        _until(lambda: len(tool.calls) == 2, 20, "the worker did not serve a and b")

        with admin() as c:
            c.execute(f'ALTER ROLE "{role}" NOLOGIN')
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE usename = %s", (role,))
        time.sleep(1.5)  # the worker finds the store gone, and cannot log in
        assert serving.is_alive()
        assert "could not read the store" in caplog.text
        with admin() as c:
            c.execute(f'ALTER ROLE "{role}" LOGIN')

        queue += ["c", "d"]
        _fed(feeder)
        _until(lambda: len(tool.calls) == 4, 30, "the worker did not serve c and d")
        stop.set()
        serving.join(10)
        assert not serving.is_alive()
        assert sorted(key for key, _ in tool.calls) == ["a", "b", "c", "d"]
    finally:
        stop.set()
        if serving is not None:
            serving.join(10)
        if worker is not None:
            worker.close()
        with admin() as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE usename = %s", (role,))
            if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                c.execute(f'DROP OWNED BY "{role}" CASCADE')
                c.execute(f'DROP ROLE "{role}"')


@on_postgresql
def test_a_holder_gone_stays_provably_gone_when_other_engines_open(make_engine):
    """Each engine clears, as it takes its lock, the notes of locks taken
    before a failover or a restart; not those of owners that died since,
    which are their proof: a session of theirs is still taken over at once
    however many engines opened in between (a CLI command opens one)."""
    holder, looker = make_engine(), make_engine()
    end_connections(holder)  # as if its process had died
    assert looker.log.flow_recorder.holder_alive(holder.owner, patient=True) is False
    make_engine()
    make_engine()
    assert looker.log.flow_recorder.holder_alive(holder.owner) is False  # proven already


@on_postgresql
def test_looking_at_a_holder_opens_no_connection_and_holds_nothing(make_engine, monkeypatch):
    """The worker looks at each open session's holder at every pass: each look
    is one statement on a connection the engine has, and leaves no lock held
    (a dead holder's key stays free for the next look, anyone's)."""
    engine, other, dead = make_engine(), make_engine(), make_engine()
    rec = other.log.flow_recorder
    end_connections(dead)  # as if its process had died
    gone = dead.owner
    assert rec.holder_alive(engine.owner) is True
    assert rec.holder_alive(gone, patient=True) is False
    # An owner that never took its lock on this server is not proven gone.
    assert rec.holder_alive("elsewhere:1:deadbeef") is None
    opened: list[int] = []
    connect = psycopg.connect
    monkeypatch.setattr(psycopg, "connect", lambda *a, **k: opened.append(1) or connect(*a, **k))
    for _ in range(10):
        assert rec.holder_alive(engine.owner) is True
        assert rec.holder_alive(gone) is False
    assert opened == []
    monkeypatch.undo()
    with _server(engine) as c:
        free = c.execute("SELECT pg_try_advisory_lock(%s, %s)",
                         (_CREATE_LOCK, rec._liveness_key(gone))).fetchone()[0]  # type: ignore[index]
    assert free, "a look left the key held"


@on_postgresql
def test_a_lost_append_is_looked_for_again_when_the_look_itself_fails(make_engine, monkeypatch):
    """The engine's writer connections are ended, and the last append is not in
    the log (standing in for one a crashed server lost). The reconnected
    writer's look for it fails once (the server going down again): the look
    is not forgotten, and the next append looks again and refuses to build on
    what was lost (a review found the look dropped with its first failure, and
    the next session built on top of the loss)."""
    from flowledger.engine.streams import Streams

    engine = make_engine()
    engine.register(costly_workflow(["a"], ["0.5"]),
                    tools=[ScriptedLedgerTool(MemoryLedger())])
    assert engine.run_session("prop").status == "completed"
    rec = engine.log.flow_recorder
    position, stream, version = rec._last_appended
    rec._last_appended = (position + 1000, stream, version + 1000)  # never stored
    writers = list(rec._writers.values())
    end_connections(engine, [c.info.backend_pid for c in writers])
    # Gone from the server's list before this end of the socket sees it closed:
    # else the session's first write, not the look, meets the ended connection.
    deadline = time.monotonic() + 10
    while any(_usable(c) for c in writers) and time.monotonic() < deadline:
        time.sleep(0.02)
    execute, failed = psycopg.Connection.execute, []

    def the_look_fails_once(self, query, *args, **kwargs):
        if not failed and str(query).startswith("SELECT 1 FROM stored_events"):
            failed.append(query)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", the_look_fails_once)
    session = Streams(engine.log)
    with pytest.raises(fl.StoreError, match="server closed the connection unexpectedly"):
        engine.run_session("prop", trigger="manual")
    assert failed
    with pytest.raises(fl.StoreError, match="the server no longer holds this engine's "
                                        "last append"):
        engine.run_session("prop", trigger="manual")
    assert rec.lost_appends == 1
    assert session._lost_before == 0  # a session begun before the loss stops:
    with pytest.raises(fl.ConcurrencyError, match="the store lost appends"):
        session.append()


@on_postgresql
def test_a_holder_whose_lock_connection_alone_was_ended_is_not_taken_over_mid_call(
        make_engine, ledger):
    """The server ends the liveness lock's connection of an engine whose run
    waits on its tool (an idle-connection reaper, `pg_terminate_backend`): the
    holder lives on and takes its lock again within its heartbeat, so another
    engine looking then does not take the session over; the call is made
    once. A first look at a free lock used to prove the holder gone at once."""
    in_call, release = threading.Event(), threading.Event()

    def wait_in_call(key: str) -> None:
        in_call.set()
        assert release.wait(30)

    holder, other = make_engine(), make_engine()
    tool = mid_call_tool(wait_in_call)(ledger)
    holder.register(costly_workflow(["a"], ["0.5"]), tools=[tool])
    other_tool = ScriptedLedgerTool(ledger)
    other.register(costly_workflow(["a"], ["0.5"]), tools=[other_tool])
    results: list[fl.SessionResult] = []
    running = threading.Thread(target=lambda: results.append(holder.run_session("prop")))
    running.start()
    try:
        assert in_call.wait(30)
        end_connections(holder, [holder.log.flow_recorder._liveness.info.backend_pid])
        assert other.log.flow_recorder.holder_alive(holder.owner) is None  # not proof yet
        taken = other.recover()
        assert [r.status for r in taken] == ["busy"], taken
        assert other.status().holders_gone == ()
    finally:
        release.set()
        running.join(30)
    assert results and results[0].status == "completed", results
    assert [key for key, _ in tool.calls] == ["a"] and other_tool.calls == []
    assert ledger.keys() == ["a"]


def _sequence(engine: fl.Engine) -> str:
    return engine.log.flow_recorder._sequence


def _positions(engine: fl.Engine) -> list[int]:
    return [row[0] for row in engine.log.flow_recorder.read_all(
        "SELECT notification_id FROM stored_events ORDER BY notification_id", ())]


@on_postgresql
@pytest.mark.parametrize("restart_at", ["1", "the_gap"])
def test_a_position_sequence_set_back_by_hand_never_puts_events_below_the_head(
        make_engine, ledger, restart_at, caplog):
    """`ALTER SEQUENCE ... RESTART` (or a restore that does not carry the
    sequence): the next append made the ordinary way would take positions
    the log holds (the insert failed, said as a session opened elsewhere), or
    fill a gap below the head, where no reader looks again and the chain
    breaks. It is set past the head, and the append goes on there."""
    one, two = make_engine(), make_engine()
    tool = ScriptedLedgerTool(ledger)
    one.register(costly_workflow(["a", "b"], ["0.5"]), tools=[tool])
    two.register(ledger_workflow("other", ["x"]), tools=[ScriptedLedgerTool(ledger)])
    assert one.run_session("prop").status == "completed"
    with _server(one) as c:
        gap = c.execute("SELECT nextval(%s)", (_sequence(one),)).fetchone()[0]  # type: ignore[index]
        c.execute("SELECT nextval(%s)", (_sequence(one),))
    assert two.run_session("other").status == "completed"  # one's forecast is stale now
    before = set(_positions(one))
    head = max(before)
    assert gap not in before
    with _server(one) as c:
        start = 1 if restart_at == "1" else gap
        c.execute(f"ALTER SEQUENCE {_sequence(one)} RESTART WITH {start}")
    with caplog.at_level(logging.WARNING, logger="flowledger.store"):
        assert one.run_session("prop").status == "completed"
    added = set(_positions(one)) - before
    assert added and min(added) > head
    assert "was behind the log's head" in caplog.text
    assert [key for key, _ in tool.calls] == ["a", "b"]
    assert one.verify().ok and one.status().workflows[0].open_session is None


@on_postgresql
def test_an_engine_opening_a_store_sets_a_sequence_set_back_past_the_head(make_engine, ledger):
    engine = make_engine()
    engine.register(costly_workflow(["a"], ["0.5"]), tools=[ScriptedLedgerTool(ledger)])
    assert engine.run_session("prop").status == "completed"
    head = max(_positions(engine))
    with _server(engine) as c:
        c.execute(f"ALTER SEQUENCE {_sequence(engine)} RESTART")
    make_engine().close()
    with _server(engine) as c:
        value = c.execute("SELECT pg_sequence_last_value(%s::regclass)",
                          (_sequence(engine),)).fetchone()[0]  # type: ignore[index]
    assert value == head


PG_BIN = "/usr/lib/postgresql/15/bin"


def backup(engine: fl.Engine, store: str, tmp_path: Any) -> Callable[[], None]:
    """`pg_dump` of the store's schema now; returns what restores it over the
    store (`pg_restore --clean --single-transaction`)."""
    if not os.path.exists(f"{PG_BIN}/pg_dump"):
        pytest.skip("pg_dump is not installed here")
    info = engine.log.flow_recorder.conninfo
    schema = store.rpartition("schema=")[2]
    where = ["-h", str(info["host"]), "-p", str(info["port"]), "-U", str(info["user"])]
    dump = tmp_path / "store.dump"
    subprocess.run([f"{PG_BIN}/pg_dump", *where, "-n", schema, "-Fc", "-f", str(dump),
                    str(info["dbname"])], check=True, capture_output=True, timeout=120)

    def restore() -> None:
        subprocess.run([f"{PG_BIN}/pg_restore", *where, "--clean", "--single-transaction",
                        "-d", str(info["dbname"]), str(dump)], check=True,
                       capture_output=True, timeout=120)
    return restore


class Serving:
    """`engine.serve` in a thread, for `with`: `ended` holds the store error
    that ended it, if one did (stopped and joined at exit)."""

    def __init__(self, engine: fl.Engine) -> None:
        self.stop, self.ended = threading.Event(), []  # type: ignore[var-annotated]
        self.engine = engine
        self.thread = threading.Thread(target=self._serve)

    def _serve(self) -> None:
        try:
            self.engine.serve(self.stop, interval=0.05)
        except fl.StoreError as e:  # the same class on every store
            self.ended.append(e)

    def __enter__(self) -> Serving:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(20)


@on_postgresql
@pytest.mark.parametrize("connections", ["kept", "ended"])
def test_an_older_backup_restored_under_an_engine_stops_its_session_before_any_call(
        make_engine, store, ledger, tmp_path, connections):
    """`pg_dump`, more runs, then the dump restored over the store while the
    engine lives on: its next append finds the log's head before its own last
    append, and the session stops there, before calling anything, saying why
    (it used to go on and call again what the lost part of the log had done)."""
    engine = make_engine()
    items = ["a", "b"]
    tool = ScriptedLedgerTool(ledger)
    engine.register(ledger_workflow(items=items, name="wf"), tools=[tool])
    assert engine.run_session("wf").status == "completed"
    # Another workflow with work waiting in the backup, for the worker below.
    engine.register(ledger_workflow(items=["x"], name="other"), tools=[tool])
    engine.run_session("other", max_iterations=0)
    restore = backup(engine, store, tmp_path)
    items += ["c"]  # published and called after the backup
    engine.register(ledger_workflow(items=items, name="wf"), tools=[tool])
    assert engine.run_session("wf").status == "completed"
    if connections == "ended":  # as a restore that restarts the server does: then it is
        end_connections(engine)  # the writer's look on reconnecting that finds it
    restore()
    # The restored log knows nothing of "c": a session would call it again.
    # This engine knows, and appends nothing more for the rest of its life.
    for _ in range(2):
        with pytest.raises(fl.StoreError, match="restored from an older backup") as gone:
            engine.run_session("wf")
        assert isinstance(gone.value.error, LogWentBack)  # the store's own, kept
    assert [key for key, _ in tool.calls] == ["a", "b", "c"]
    # Its worker stops, saying why, rather than try again for ever holding its
    # liveness lock: only a new engine may go on from the log as it now is.
    with Serving(engine) as worker:
        worker.thread.join(20)
    assert worker.ended and "restored from an older backup" in str(worker.ended[0])
    assert from_the_store(worker.ended[0])  # `flowledger worker` says it in one line, exit 2
    assert [key for key, _ in tool.calls] == ["a", "b", "c"]


@on_postgresql
def test_a_worker_whose_log_is_cut_back_under_it_stops_at_its_next_pass(
        make_engine, store, ledger):
    """The log's last events deleted by hand (or a data-only restore) while the
    worker's connections stay open: its own session looked held by itself, and
    it asked for it again and again, 2,000 log lines a second, until the
    lease ran out. Its next pass finds the head below its last append."""
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    engine.register(ledger_workflow(items=["a", "b"], name="wf"), tools=[tool])
    assert engine.run_session("wf").status == "completed"
    with Serving(engine) as worker:
        time.sleep(0.5)  # serving: nothing due
        head = max(e.position for e in engine.events(last=1))
        run_sql(store, "DELETE FROM fl_chain WHERE position > ?", (head - 10,))
        run_sql(store, "DELETE FROM stored_events WHERE notification_id > ?", (head - 10,))
        worker.thread.join(10)
    assert worker.ended and "no longer holds this engine's append" in str(worker.ended[0])
    assert [key for key, _ in tool.calls] == ["a", "b"]


@on_postgresql
def test_an_append_of_another_thread_after_the_workers_look_at_the_head_is_no_cut(
        make_engine, monkeypatch):
    """A service serving in a thread and running sessions in others: an append
    that waited for the disk, made by another thread just after the worker
    read the log's head, is past that head. It was taken for a log cut back
    under the engine, which then refused every append for its life."""
    from flowledger.domain.workflow import Workflow

    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    read = LogWaiter.head
    looks: list[int] = []
    appended: list[int] = []

    def head_then_another_threads_append(waiter: LogWaiter) -> int:
        head = read(waiter)
        looks.append(head)
        if len(looks) in (2, 3):  # the worker's first passes (the first look is its start's)
            appended.append(engine.log.append(Workflow.register(  # synced, as an in_flight is
                now=engine.clock.now(), name=f"elsewhere-{len(looks)}", fingerprint="f",
                topics=["t"], handlers=[])))
        return head

    monkeypatch.setattr(LogWaiter, "head", head_then_another_threads_append)
    with Serving(engine) as worker:
        deadline = time.monotonic() + 10
        while not (len(appended) == 2 and engine.run_session("wf").status == "completed"):
            assert not worker.ended, worker.ended[0]
            assert time.monotonic() < deadline
    assert worker.ended == [], worker.ended
    assert engine.run_session("wf").status == "completed"  # it may still append


@on_postgresql
def test_a_worker_whose_sessions_are_refused_as_busy_does_not_spin(
        store, monkeypatch, caplog, request):
    """The same cut, by a store that could not tell (both looks monkeypatched
    away): each pass found the workflow due by its read side and its session
    held by its log, and asked again at once. A pass that did nothing waits."""
    from tests.integration.test_postgres_roles import ticking

    engine = fl.Engine(store)  # the system clock: the producer ticks every second
    request.addfinalizer(engine.close)
    engine.register(ticking())
    assert engine.run_session("ticks").status == "completed"
    monkeypatch.setattr(type(engine.log.flow_recorder), "check_head",
                        lambda self, read_head: read_head())
    monkeypatch.setattr(type(engine.projections), "ahead_of_log",
                        lambda self, clock=False: LogLook(None, None))
    caplog.set_level(logging.DEBUG, logger="flowledger.worker")  # each pass's "busy" too
    with Serving(engine) as worker:
        time.sleep(1.5)  # ticks are served
        closed = max(e.position for e in engine.events() if e.name == "SessionClosed")
        run_sql(store, "DELETE FROM fl_chain WHERE position >= ?", (closed,))
        run_sql(store, "DELETE FROM stored_events WHERE notification_id >= ?", (closed,))
        caplog.clear()
        time.sleep(2)
        busy = [r for r in caplog.records
                if "held by" in r.getMessage() or "busy" in r.getMessage()]
        assert worker.thread.is_alive() and not worker.ended  # serving all along
    assert len(busy) <= 2 / 0.05 + 5, len(busy)


@on_postgresql
@pytest.mark.parametrize("then", ["others appended", "nothing appended"])
def test_a_follower_of_a_log_that_went_back_says_so_instead_of_skipping(
        make_engine, store, ledger, tmp_path, then):
    """An older backup restored under `log -f` (a failover that lost appends
    looks the same), then other events appended at the positions it had
    read: the follower skipped them without a word. With nothing appended
    yet, it waited without a word for the head to pass what it had read. It
    stops, saying why."""
    writer, reader = make_engine(), make_engine()
    tool = ScriptedLedgerTool(ledger)
    writer.register(ledger_workflow(items=["a"], name="wf"), tools=[tool])
    writer.run_session("wf")
    with Follower(reader) as follower:
        assert follower.reaches(max(e.position for e in writer.events(last=1)))
        restore = backup(writer, store, tmp_path)
        writer.register(ledger_workflow(items=["a", "b"], name="wf"), tools=[tool])
        writer.run_session("wf")
        read = max(e.position for e in writer.events(last=1))
        assert follower.reaches(read)
        restore()
        if then == "others appended":  # the restored log's new events, at the positions read
            other = make_engine()
            other.register(ledger_workflow(items=["a", "c", "d", "e"], name="wf"), tools=[tool])
            other.run_session("wf")
            assert max(e.position for e in other.events(last=1)) > read
        follower.thread.join(20)
    assert follower.failed and "no longer holds the event at position" in str(
        follower.failed[0]), follower.failed
    assert follower.seen == sorted(set(follower.seen))


# What the release before `taken_at` (f04dc69) asks of a holder's note: a free
# lock whose note matches this is, to it, a holder gone.
OLDER_RELEASES_LOOK = (
    "SELECT pg_try_advisory_xact_lock(%s, %s), COALESCE((SELECT incarnation = "
    "(CASE WHEN pg_is_in_recovery() THEN NULL ELSE "
    "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) || ' ' || "
    "extract(epoch FROM pg_postmaster_start_time())::text || ' ' || "
    "COALESCE(extract(epoch FROM (SELECT stats_reset FROM pg_stat_bgwriter))::text, "
    "'') END) FROM {schema}.fl_liveness WHERE owner = %s), false)")


@on_postgresql
def test_an_older_release_never_takes_a_free_lock_of_this_ones_for_a_death(make_engine):
    """During a rolling upgrade, an engine of the release before `taken_at`
    took a free lock noted under the present incarnation as proof: when a
    reaper ended a living engine's lock connection mid-call, it took the
    session over and called again (a review saw it twice in two tries).
    This release's notes are marked, so an older engine goes by the lease."""
    holder, looker = make_engine(), make_engine()
    recorder = holder.log.flow_recorder
    key = recorder._liveness_key(holder.owner)
    end_connections(holder, [recorder._liveness.info.backend_pid])
    with _server(holder) as c:
        free, here = c.execute(OLDER_RELEASES_LOOK.format(schema=f'"{recorder.schema}"'),
                               (0x666C6F77, key, holder.owner)).fetchone()
    assert free is True  # what the older release sees: a free lock ...
    assert here is False  # ... not noted under the incarnation it knows: not proof
    # This release still knows its own: a free lock, not taken again, proves.
    assert looker.log.flow_recorder.holder_alive(holder.owner, patient=True) is False


@on_postgresql
def test_a_free_lock_noted_by_an_older_release_proves_nothing(make_engine):
    """An engine of the release before `taken_at` notes its lock without it: a
    free lock of its cannot be told from one taken again since, so its
    sessions go by their lease."""
    holder, looker = make_engine(), make_engine()
    schema = holder.log.flow_recorder.schema
    with _server(holder) as c:
        c.execute(f'UPDATE "{schema}".fl_liveness SET taken_at = NULL WHERE owner = %s',
                  (holder.owner,))
    end_connections(holder, [holder.log.flow_recorder._liveness.info.backend_pid])
    assert looker.log.flow_recorder.holder_alive(holder.owner, patient=True) is None


@on_postgresql
def test_an_append_waiting_for_the_server_stores_nothing_once_appends_were_found_lost(
        make_engine, ledger, monkeypatch):
    """While an append waits for a restarting server (ADR 0017), another thread
    of the engine reconnects first and finds that the restart lost appends
    this engine had made. The waiting append, whose session's memory may hold
    what the log lost, then stores nothing (a review: it committed a run on top
    of the run's lost outcome). The other thread is stood in for here: the
    first connection this append asks for is refused, and the loss is found
    meanwhile."""
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
    rec = engine.log.flow_recorder
    real_writer, refused = rec._writer, []

    def writer(sync: bool) -> Any:
        if not refused:
            refused.append(sync)
            rec.lost_appends += 1  # found by another thread while this one waits
            raise NotConnected("connection refused (in this test)")
        return real_writer(sync)

    before = len(list(engine.events()))
    monkeypatch.setattr(rec, "_writer", writer)
    with pytest.raises(fl.StoreError, match="lost appends"):
        engine.run_session("wf")
    monkeypatch.undo()
    assert refused and len(list(engine.events())) == before  # nothing of it stored
