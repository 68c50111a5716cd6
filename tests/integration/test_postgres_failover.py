"""A primary and a standby: liveness across a failover, on a real primary and
a real standby promoted in its place, what the engine says to do with a URL
naming both, and appends a crashed server lost (clusters of these tests' own,
made with the server's binaries).

A failover frees every advisory lock: the new primary never saw them. A holder
still alive (in a long tool call, say) takes its lock again only once it
reaches the new server, which can take its TCP settings' half minute. Until then
a free lock must not prove it gone, or another engine would take its session
over and reconcile a call still under way (ADR 0017, "Liveness after a
failover").
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import flowledger as fl
from flowledger.infrastructure.postgres_recorder import FlowPostgresRecorder
from tests import postgres
from tests.helpers import (
    ExternalLedger,
    ScriptedLedgerTool,
    costly_workflow,
    ledger_workflow,
    mid_call_tool,
    run_createdb_as_said,
)
from tests.integration.test_postgres_connections import end_connections

pytestmark = pytest.mark.postgres


def _bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(out)
    return path if (path / "pg_ctl").exists() and (path / "pg_basebackup").exists() else None


def _free_port() -> int:
    """A port free now, below the range the kernel gives outgoing connections
    (a port from that range may be taken by one before the server binds it)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(100):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


class Clusters:
    """PostgreSQL clusters in a temporary directory, run as the `postgres`
    user when this runs as root (the server refuses root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="fl-failover-"))
        self.as_root = os.geteuid() == 0
        if self.as_root:  # the server refuses to run as root
            shutil.chown(self.root, "postgres", "postgres")
        self.ports: dict[str, int] = {}

    def run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{tool} failed: {done.stdout}{done.stderr}"

    def start(self, name: str, settings: str = "") -> None:
        port = self.ports.setdefault(name, _free_port())
        data = self.root / name
        self.run("pg_ctl", "-D", str(data), "-l", str(self.root / f"{name}.log"), "-w",
                 "-o", f"-c port={port} -c listen_addresses=127.0.0.1 "
                 f"-c unix_socket_directories={self.root} -c fsync=off {settings}", "start")

    def primary(self, name: str, settings: str = "") -> None:
        self.run("initdb", "-D", str(self.root / name), "-U", "postgres", "--auth=trust",
                 "--no-sync")
        self.start(name, settings)

    def standby_of(self, name: str, source: str) -> None:
        self.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.ports[source]),
                 "-U", "postgres", "-D", str(self.root / name), "-R", "-X", "stream",
                 "-c", "fast", "--no-sync")
        self.start(name)

    def url(self, *names: str, query: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{self.ports[n]}" for n in names)
        return f"postgresql://postgres@{hosts}/postgres{query}"

    def connect(self, name: str) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(name), autocommit=True)

    def caught_up(self, standby: str, primary: str) -> None:
        with self.connect(primary) as p, self.connect(standby) as s:
            lsn = p.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
            deadline = time.monotonic() + 30
            while not s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn",
                                (lsn,)).fetchone()[0]:  # type: ignore[index]
                assert time.monotonic() < deadline, "the standby did not catch up"
                time.sleep(0.05)

    def lose(self, name: str) -> None:
        """The server stops at once, as a machine that died would."""
        self.run("pg_ctl", "-D", str(self.root / name), "-m", "immediate", "stop")

    def promote(self, name: str) -> None:
        self.run("pg_ctl", "-D", str(self.root / name), "-w", "promote")

    def crash_a_backend(self, name: str) -> None:
        """Kill one of the server's processes: the server ends every
        connection and reinitialises, without restarting (restart_after_crash)."""
        with self.connect(name) as c:
            os.kill(c.info.backend_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with self.connect(name) as c:
                    c.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "the server did not come back"
                time.sleep(0.1)

    def close(self) -> None:
        for name in self.ports:
            if (self.root / name / "postmaster.pid").exists():
                with contextlib.suppress(AssertionError, OSError, subprocess.SubprocessError):
                    self.lose(name)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def clusters() -> Iterator[Clusters]:
    bindir = _bindir()
    if bindir is None:
        why = "PostgreSQL's server binaries (pg_config --bindir) are not installed"
        if postgres.REQUIRED:
            pytest.fail(why)
        pytest.skip(why)
    try:
        made = Clusters(bindir)
    except (KeyError, LookupError, PermissionError) as e:  # root, but no `postgres` user
        if postgres.REQUIRED:
            raise
        pytest.skip(f"cannot make a cluster here: {e}")
    try:
        yield made
    finally:
        made.close()


def _both(clusters: Clusters) -> str:
    """A URL naming both servers and wanting the one that takes writes, as a
    production one would."""
    return clusters.url("a", "b", query="?target_session_attrs=read-write")


def test_a_holder_is_not_proven_gone_by_a_failover(clusters: Clusters) -> None:
    clusters.primary("a")
    clusters.ports["b"] = _free_port()
    holder = fl.Engine(_both(clusters))
    # Another engine, which will look from the new primary before taking its
    # own lock there (its reads move first): the holder's note is still there.
    looker = fl.Engine(_both(clusters))
    rec = looker.log.flow_recorder
    try:
        assert rec.holder_alive(holder.owner) is True

        clusters.standby_of("b", "a")
        clusters.caught_up("b", "a")
        clusters.lose("a")
        clusters.promote("b")

        # The holder's lock is free on b, which never saw it, and its note
        # names the incarnation it took it under: not proof.
        assert rec.holder_alive(holder.owner) is None

        # The holder reaches the new primary (its next write or heartbeat).
        holder.log.flow_recorder.keep_announced()
        assert rec.holder_alive(holder.owner) is True

        # Now its connection is ended: it took its lock on this server, so a
        # free lock proves it gone, and another engine may take over at once.
        end_connections(holder, [holder.log.flow_recorder._liveness.info.backend_pid])
        assert rec.holder_alive(holder.owner, patient=True) is False
    finally:
        looker.close()
        holder.close()


def test_a_holder_is_not_proven_gone_by_a_server_that_reinitialised(
        clusters: Clusters) -> None:
    """One of the server's processes crashes: the server ends every
    connection and reinitialises, its start time unchanged. Until the holder
    takes its lock again, a free lock is not proof."""
    clusters.primary("a")
    holder = fl.Engine(clusters.url("a"))
    looker = fl.Engine(clusters.url("a"))
    rec = looker.log.flow_recorder
    try:
        assert rec.holder_alive(holder.owner) is True
        clusters.crash_a_backend("a")
        assert rec.holder_alive(holder.owner) is None
        holder.log.flow_recorder.keep_announced()
        assert rec.holder_alive(holder.owner) is True
    finally:
        looker.close()
        holder.close()


def test_a_live_holders_session_is_not_taken_over_after_a_failover(
        clusters: Clusters, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole way: a session whose run is in its tool call on the old
    primary, a failover, and another engine's recover() on the new one. The
    holder lives (a thread of this process, named as if on another machine)
    but has not reached the new server: its session is busy, not taken over,
    and the tool is called once (taken over, the call still under way would
    be reconciled as not made, and made again)."""
    # The holder's server is gone for good: its append need not wait for it long.
    monkeypatch.setattr(FlowPostgresRecorder, "RECONNECT_WITHIN_S", 1.0)
    clusters.primary("a")
    clusters.ports["b"] = _free_port()
    ledger = ExternalLedger(tmp_path / "ledger.db")
    calls: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def holders_call(key: str) -> None:
        calls.append(key)
        entered.set()
        release.wait(60)

    # The holder runs on another machine: only the store can tell it gone.
    with pytest.MonkeyPatch.context() as elsewhere:
        elsewhere.setattr(socket, "gethostname", lambda: "another-machine")
        holder = fl.Engine(clusters.url("a"))
    holder.register(costly_workflow(["a"], ["0.5"]), tools=[mid_call_tool(holders_call)(ledger)])
    # It looks from the new primary before taking its own lock there.
    other = fl.Engine(_both(clusters))
    other.register(costly_workflow(["a"], ["0.5"]), tools=[mid_call_tool(calls.append)(ledger)])
    session = threading.Thread(target=lambda: _quietly(holder.run_session, "prop"))
    session.start()
    try:
        assert entered.wait(30), "the holder's run never reached its tool call"
        clusters.standby_of("b", "a")
        clusters.caught_up("b", "a")
        clusters.lose("a")
        clusters.promote("b")

        assert other.status().holders_gone == ()
        results = other.recover()
        assert [r.status for r in results] == ["busy"], results
        assert calls == ["a"]
    finally:
        release.set()
        session.join(60)
        other.close()
        holder.close()
    assert calls == ["a"]


def _quietly(call: Any, *args: Any) -> None:
    """The holder's session ends in an error once its server is gone."""
    with contextlib.suppress(Exception):  # any end will do: what matters is the other engine
        call(*args)


def test_the_createdb_said_for_several_hosts_reaches_the_one_that_takes_writes(
        clusters: Clusters) -> None:
    """A URL naming a standby first: the command the error gives creates the
    database on the primary (a standby refuses CREATE DATABASE), and the
    store opens there."""
    clusters.primary("a")
    clusters.standby_of("b", "a")
    hosts = ",".join(f"127.0.0.1:{clusters.ports[n]}" for n in ("b", "a"))
    url = f"postgresql://postgres@{hosts}/flows?target_session_attrs=read-write"
    run_createdb_as_said(url)
    fl.Engine(url).close()


def test_appends_a_crashed_server_lost_are_not_built_upon(clusters: Clusters,
                                                          tmp_path: Path) -> None:
    """A consumer run's outcome and commit are committed without waiting for
    the disk (ADR 0011): a crash of the engine's process cannot lose them, but
    a crash of the server can, while the engine lives on. The server here is
    stopped at once right after item a's commit, with its WAL writer slowed
    so that the commit is still in its memory. The engine must not go on as
    if item a were done: its next append (on a new connection) finds its last
    one gone and the session stops; recovery continues from the log, finds a's
    call made (its in_flight record was synced), and every item is appended
    once, with no gap in any stream. Built upon, a's reservation of "in"
    was found consumed in memory and not in the log (the run failed as the
    handler's fault), or a's run was left unfinished under a session stream
    with a hole in its versions."""
    settings = "-c wal_writer_delay=10000 -c bgwriter_lru_maxpages=0"
    clusters.primary("a", settings)
    crashes: list[int] = []

    def crash(item: str) -> None:
        """In the prepare of item b: right after item a's last append, which
        did not wait for the disk."""
        if item == "b" and not crashes:
            crashes.append(1)
            clusters.lose("a")
            clusters.start("a", settings)

    tool = ScriptedLedgerTool(ExternalLedger(tmp_path / "ledger.db"))
    engine = fl.Engine(clusters.url("a"))
    try:
        engine.register(ledger_workflow(items=["a", "b", "c"], on_peek=crash), tools=[tool])
        try:
            stopped = str(engine.run_session("wf"))
        except fl.FlowledgerError as e:
            stopped = str(e)
        assert crashes == [1]
        engine.recover()
        assert engine.run_session("wf").status == "completed"
        assert sorted(key for key, _ in tool.calls) == ["a", "b", "c"]
        events = list(engine.events())
        streams: dict[Any, list[int]] = {}
        for event in events:
            streams.setdefault(event.stream_id, []).append(event.version)
        gaps = {s: v for s, v in streams.items() if v != list(range(1, len(v) + 1))}
        assert gaps == {}
        assert engine.verify().ok
        done = [e.fields["message_id"] for e in events
                if e.name == "Published" and e.fields["topic"] == "done"]
        assert sorted(done) == ["a", "b", "c"]
        assert [w.status for w in engine.status().workflows] == ["active"]
        assert "the server no longer holds this engine's last append" in stopped
        assert engine.log.flow_recorder.lost_appends == 1
    finally:
        engine.close()


def test_a_server_restarted_during_a_tool_call_is_waited_for_and_the_outcome_kept(
        clusters: Clusters, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The server restarts while a run is in its tool call and is back a moment
    after the call returned: the outcome the engine holds is written once the
    server answers (nothing of it had been sent), the run commits, and the
    call is neither made again nor reconciled (a tool without a reconcile
    used to be left waiting for a person). What is tried again and again
    meanwhile is said once, not at every try."""
    clusters.primary("a")
    ledger = ExternalLedger(tmp_path / "ledger.db", count_calls=True)

    def restart(key: str) -> None:
        clusters.lose("a")
        threading.Timer(1.0, clusters.start, args=("a",)).start()

    tool = mid_call_tool(restart)(ledger)
    engine = fl.Engine(clusters.url("a"))
    try:
        engine.register(costly_workflow(["a"], ["0.5"]), tools=[tool])
        with caplog.at_level(logging.DEBUG, logger="flowledger"):
            result = engine.run_session("prop")
        assert result.status == "completed", result.error
        assert ledger.calls_made() == 1
        assert tool.reconcile_calls == []
        for said in ("could not connect to append", "could not take this engine's liveness"):
            tries = [r.levelno for r in caplog.records if r.getMessage().startswith(said)]
            assert tries.count(logging.WARNING) <= 1, (said, tries)
        assert any(r.levelno == logging.DEBUG for r in caplog.records
                   if r.getMessage().startswith("could not connect to append"))
        applied = [e for e in engine.events() if e.name == "MutationApplied"]
        assert [e.fields.get("via") for e in applied] == ["call"], applied
    finally:
        engine.close()


def test_a_lease_renewal_that_failed_while_the_server_was_down_costs_the_session_nothing(
        clusters: Clusters, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server is down through most of a long tool call: the heartbeat's
    renewals fail (the append, then the read meant to undo it). The workflow
    in memory stays at its last stored version, so the outcome's append,
    once the server is back, is not refused as if another engine had taken
    the session over (a review: the renewal was kept in memory, one version
    ahead of the log, and the outcome was lost)."""
    monkeypatch.setattr(FlowPostgresRecorder, "RECONNECT_WITHIN_S", 2.0)
    clusters.primary("a")
    ledger = ExternalLedger(tmp_path / "ledger.db", count_calls=True)

    def outage(key: str) -> None:
        clusters.lose("a")
        time.sleep(4.5)  # renewals come and fail (lease 4 s: one every 2 s)
        clusters.start("a")
        time.sleep(1.5)

    engine = fl.Engine(clusters.url("a"), policy=fl.RetryPolicy(lease_seconds=4.0))
    try:
        engine.register(costly_workflow(["a"], ["0.5"]), tools=[mid_call_tool(outage)(ledger)])
        result = engine.run_session("prop")
        assert result.status == "completed", result.error
        assert ledger.calls_made() == 1
        assert [e.name for e in engine.events() if e.name == "MutationApplied"] == [
            "MutationApplied"]
    finally:
        engine.close()


def test_an_engine_takes_over_at_once_a_session_it_could_not_end_itself(
        clusters: Clusters, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server stops while a run is in its tool call: the session stops at
    its next append, and the engine cannot write that it left it (the server
    is down), so the lease stands. The engine knows it runs the session no
    more: once the server is back, its own recover() takes it over at once,
    where it used to wait out the lease, though it was the holder and alive
    (a worker stood idle for the lease's minute after a restart of a few
    seconds). The call is reconciled, not made again."""
    # An append waits this long for a server it cannot reach; this one stays down.
    monkeypatch.setattr(FlowPostgresRecorder, "RECONNECT_WITHIN_S", 1.0)
    clusters.primary("a")
    ledger = ExternalLedger(tmp_path / "ledger.db", count_calls=True)
    engine = fl.Engine(clusters.url("a"))
    try:
        engine.register(costly_workflow(["a"], ["0.5"]),
                        tools=[mid_call_tool(lambda key: clusters.lose("a"))(ledger)])
        with pytest.raises(fl.StoreError):  # the same class on every store
            engine.run_session("prop")
        clusters.start("a")
        results = engine.recover()
        assert [r.status for r in results] == ["completed"], results
        assert ledger.calls_made() == 1
    finally:
        engine.close()


def test_a_server_lost_while_prepare_reads_is_not_the_handlers_failure(
        clusters: Clusters, tmp_path: Path) -> None:
    """The server goes down while a consumer's prepare runs, and the engine's
    own read for it (the peek) fails. That is no bug of the handler: the run
    is not failed (`failed:logic`) nor its workflow put in error, waiting for
    a person to resume it. The session stops with the store's error, as when
    an append fails, and the next one, the server back, prepares the run
    again and books the job once."""
    from flowledger.infrastructure.store_failures import from_the_store

    clusters.primary("a")
    ledger = ExternalLedger(tmp_path / "ledger.db", count_calls=True)
    lost: list[threading.Timer] = []
    wf = fl.Workflow("lossy", topics=["job"])

    @wf.producer(publishes=["job"])
    def jobs(ctx: Any, state: Any) -> Any:
        if state is None:
            ctx.publish("job", message_id="j1", payload=1)
        return {"published": True}

    @wf.consumer(subscribe=["job"], tools=["ledger"])
    class Book:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            if not lost:  # stopped cleanly: no append is lost, the server is just away
                clusters.run("pg_ctl", "-D", str(clusters.root / "a"), "-m", "fast", "-w",
                             "stop")
                lost.append(threading.Timer(2.0, clusters.start, args=("a",)))
                lost[0].start()
            pending = ctx.peek("job", limit=1)
            if not pending:
                return None
            return fl.Prepared(reservations={"job": [pending[0].message_id]},
                               data=pending[0].message_id)

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.ledger.append(prepared.data, "v")

    engine = fl.Engine(clusters.url("a"))
    try:
        engine.register(wf, tools=[ScriptedLedgerTool(ledger)])
        with pytest.raises(fl.StoreError) as failed:
            engine.run_session("lossy")
        assert from_the_store(failed.value.error), repr(failed.value.error)
        lost[0].join()  # the server is back
        assert engine.workflow("lossy").status.value == "active"
        assert engine.runs(status="failed") == []
        result = engine.run_session("lossy")
        assert result.status == "completed", result.error
        assert ledger.calls_made() == 1 and ledger.keys() == ["j1"]
    finally:
        engine.close()


def test_a_full_server_is_waited_for_and_a_refusing_pg_hba_is_said(clusters: Clusters) -> None:
    """A server whose connections left are reserved for superusers: an app
    role's engine finds the store unreachable for now (a worker waits), told
    why. One whose pg_hba.conf rejects the role is a refusal to fix, not an
    outage to wait for (a worker would wait for ever)."""
    clusters.primary("a", "-c max_connections=6 -c superuser_reserved_connections=3")
    with clusters.connect("a") as admin:
        admin.execute("CREATE ROLE app LOGIN")
        admin.execute("GRANT CREATE ON DATABASE postgres TO app")
    app = clusters.url("a").replace("postgres@", "app@") + "?schema=app_store"
    held = [psycopg.connect(app.partition("?")[0]) for _ in range(3)]  # the slots left
    try:
        with pytest.raises(fl.StoreUnreachable) as caught:
            fl.Engine(app)
        said = str(caught.value)
        assert "remaining connection slots are reserved" in said
        assert "has no connection to spare" in said
    finally:
        for conn in held:
            conn.close()
    hba = clusters.root / "a" / "pg_hba.conf"
    hba.write_text("host all app 127.0.0.1/32 reject\n" + hba.read_text())
    clusters.run("pg_ctl", "-D", str(clusters.root / "a"), "reload")
    time.sleep(0.5)  # the postmaster reads it again
    with pytest.raises(fl.ConfigurationError) as caught:
        fl.Engine(app)
    assert not isinstance(caught.value, fl.StoreUnreachable), caught.value
    assert "pg_hba.conf" in str(caught.value) and "have its administrator add an entry" in str(
        caught.value)
