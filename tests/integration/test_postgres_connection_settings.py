"""PostgreSQL connections as libpq makes them (ADR 0017): the URL's libpq
parameters (sslmode, application_name, ...) reach every connection the engine
opens, a password the URL does not hold comes from libpq's own sources
(PGPASSWORD, ~/.pgpass), the library's connection pool keeps no idle
connections, and no message or output shows a password."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

import flowledger as fl
from tests import postgres
from tests.e2e.test_cli import flowledger
from tests.helpers import MemoryLedger, ScriptedLedgerTool, ledger_workflow
from tests.integration.test_postgres_connections import backends

pytestmark = pytest.mark.postgres

SECRET = "s3cret-Xq9"


def _with_password(url: str, password: str = SECRET) -> str:
    """The test server's URL (trust auth: any password is accepted) with one."""
    scheme, _, rest = url.partition("://")
    user, _, host = rest.partition("@")
    return f"{scheme}://{user}:{password}@{host}"


def _named(name: str) -> set[int]:
    with psycopg.connect(postgres.URL, autocommit=True) as c:
        return {pid for (pid,) in c.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,))}


def _connections_after(name: str, most: int) -> int:
    """How many connections the server has named `name`, once those closed
    have ended (their server processes end a moment after)."""
    deadline = time.monotonic() + 10
    while len(_named(name)) > most and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(_named(name))


def _none_named(name: str) -> bool:
    """Whether the server has no connection named `name` (its processes end
    a moment after their clients close them)."""
    return _connections_after(name, 0) == 0


def _a_reader(engine: fl.Engine) -> Any:
    """One of the engine's reading connections, as a read would be lent it."""
    with engine.log.flow_recorder._lent("single") as conn:
        return conn


def _engine_and_session(url: str) -> fl.Engine:
    engine = fl.Engine(url)
    engine.register(ledger_workflow(), tools=[ScriptedLedgerTool(MemoryLedger())])
    result = engine.run_session("wf")
    assert result.status == "completed", result.error
    return engine


def test_the_urls_libpq_parameters_reach_every_connection_and_no_pool_idles() -> None:
    name = f"fl-{uuid.uuid4().hex[:10]}"
    with postgres.fresh_schema() as url:
        engine = _engine_and_session(f"{url}&application_name={name}&connect_timeout=7")
        try:
            waiter = engine.log.flow_recorder.listen()  # its LISTEN connection
            ours = {*backends(engine), waiter.conn.info.backend_pid}
            # Every connection carries the URL's parameters, and the server has no
            # other connection of this engine (the library's pool opened none).
            assert _named(name) == ours
            assert len(ours) == 6  # two writers, two readers, the liveness lock's, LISTEN
            assert waiter.conn.info.get_parameters()["connect_timeout"] == "7"
            # The library's own pool opened none (it kept five idle for the
            # engine's life, without the URL's parameters).
            pool = engine.log.factory.datastore.pool
            assert pool.get_stats().get("connections_num", 0) == 0
            waiter.close()
        finally:
            engine.close()
        assert _none_named(name)


def _tcp_settings(conn: Any) -> tuple[int, ...]:
    """A connection's keepalive and user-timeout settings, as its socket has them."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                *(sock.getsockopt(socket.IPPROTO_TCP, option) for option in (
                    socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT,
                    socket.TCP_USER_TIMEOUT)))


def _every_connection(engine: fl.Engine) -> list[Any]:
    """The engine's connections after a session and a read (its writers, its
    reading connections, its liveness lock's)."""
    rec = engine.log.flow_recorder
    _a_reader(engine)
    conns = [*rec._writers.values(), *rec._reading, rec._liveness]
    assert len(conns) == 5 and all(c is not None and not c.closed for c in conns)
    return conns


@pytest.mark.parametrize(("query", "expected"), [
    # A server gone without a word (its machine lost, the network cut) is given
    # up on after 30 s without an answer, to probes or to data sent, where the
    # system's TCP defaults wait hours for an answer and about 15 minutes for a send.
    ("", (1, 10, 5, 3, 30_000)),
    # The URL's own settings win, on every connection.
    ("&keepalives_idle=77&keepalives_count=9&tcp_user_timeout=0", (1, 77, 5, 9, 0)),
])
def test_every_connection_gives_up_on_a_silent_server_as_set(query: str,
                                                              expected: tuple[int, ...]) -> None:
    with postgres.fresh_schema() as url:
        engine = _engine_and_session(url + query)
        try:
            waiter = engine.log.flow_recorder.listen()  # its LISTEN connection
            conns = [*_every_connection(engine), waiter.conn]
            assert [_tcp_settings(c) for c in conns] == [expected] * 6
            waiter.close()
        finally:
            engine.close()


def test_a_store_reached_through_a_unix_socket_named_in_the_query() -> None:
    """postgresql://user@/dbname?host=/socket/directory, as PostgreSQL's own
    documentation writes it: every connection of the engine goes through the
    socket (the server sees no client address), and the store is the one
    reached by TCP."""
    with psycopg.connect(postgres.URL) as c:
        found = c.execute("SELECT current_setting('unix_socket_directories'), "
                          "current_setting('port')").fetchone()
    directories, port = (str(found[0]), str(found[1])) if found else ("", "")
    socket_dir = directories.split(",")[0].strip()
    if not socket_dir.startswith("/") or not (Path(socket_dir) / f".s.PGSQL.{port}").exists():
        pytest.skip(f"the test server's socket is not in {socket_dir!r} on this machine")
    name = f"fl-{uuid.uuid4().hex[:10]}"
    with postgres.fresh_schema() as url:
        server, _, rest = url.partition("@")  # postgresql://user@host:port/db?schema=...
        path_and_query = rest[rest.index("/"):]
        engine = _engine_and_session(
            f"{server}@{path_and_query}&host={socket_dir}&port={port}&application_name={name}")
        try:
            with psycopg.connect(postgres.URL, autocommit=True) as c:
                addresses = c.execute("SELECT client_addr FROM pg_stat_activity "
                                      "WHERE application_name = %s", (name,)).fetchall()
            assert addresses and all(address is None for (address,) in addresses)
        finally:
            engine.close()
        by_tcp = fl.Engine(url)
        try:
            assert len(by_tcp.runs("wf", status="committed")) == 4  # produce, then a, b, c
        finally:
            by_tcp.close()


def test_a_password_not_in_the_url_comes_from_pgpassword(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "from-the-environment")
    with postgres.fresh_schema() as url:
        engine = _engine_and_session(url)
        try:
            rec = engine.log.flow_recorder
            with rec._lent("single") as single:
                used = {c.info.password for c in [*rec._writers.values(), single, rec._liveness]}
            assert used == {"from-the-environment"}
        finally:
            engine.close()
        given = _engine_and_session(_with_password(url, "in-the-url"))
        try:  # a password in the URL wins
            assert _a_reader(given).info.password == "in-the-url"
        finally:
            given.close()


def test_a_password_not_in_the_url_nor_in_pgpassword_comes_from_the_password_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text("*:*:*:*:from-the-file\n")
    passfile.chmod(0o600)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    with postgres.fresh_schema() as url:
        engine = _engine_and_session(url)
        try:
            assert _a_reader(engine).info.password == "from-the-file"
        finally:
            engine.close()


def test_the_testing_kit_connects_as_the_engine_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowledger.testing import stores

    monkeypatch.setenv("PGPASSWORD", "from-the-environment")
    with stores._connect(postgres.URL) as conn:
        assert conn.info.password == "from-the-environment"
    name = f"fl-{uuid.uuid4().hex[:10]}"
    with stores.fresh_postgres_schema(f"{postgres.URL}?application_name={name}") as url:
        assert f"application_name={name}" in url and "schema=flt_" in url
    unreachable = stores.postgres_unreachable(
        f"{_with_password(postgres.URL).rsplit(':', 1)[0]}:1/nowhere")
    assert unreachable is not None and SECRET not in unreachable and ":***@" in unreachable


def test_a_refused_tls_setting_is_said_with_what_to_do_and_no_password() -> None:
    with postgres.fresh_schema() as url:
        with psycopg.connect(postgres.URL) as c:
            ssl = c.execute("SHOW ssl").fetchone()[0]  # type: ignore[index]
        if ssl == "on":
            pytest.skip("this server speaks TLS: sslmode=require would be accepted")
        with pytest.raises(fl.ConfigurationError) as caught:
            fl.Engine(f"{_with_password(url)}&sslmode=require")
    said = str(caught.value)
    assert "SSL was required" in said and "sslmode" in said
    assert SECRET not in said and ":***@" in said


@pytest.mark.parametrize(("query", "expected"), [
    ("sslmod=require", "unknown parameter 'sslmod' (did you mean 'sslmode'?)"),
    ("host=elsewhere", "host= cannot be given in the query; say it in the host of the URL, "
                       "or leave the URL's host out"),
    ("password=x", "password= cannot be given in the query"),
    ("replication=database", "replication= cannot be given in the query"),
    ("client_encoding=LATIN1", "client_encoding= cannot be given in the query; flowledger's "
                               "connections speak UTF-8"),
    ("options=-c%20default_transaction_read_only=on", "options= cannot be given"),
    ("service=elsewhere", "service= cannot be given in the query; name the server"),
    ("connect_timeout=abc", "bad value for connect_timeout: 'abc'. Nothing was written; "
                            "check the values of the URL's parameters"),
    # libpq says these are bad connections: not a server that is down.
    ("sslmode=bogus", "invalid sslmode value: \"bogus\". Nothing was written; check the "
                      "values of the URL's parameters"),
    ("sslmode=", "invalid sslmode value: \"\". Nothing was written; check the values"),
    ("target_session_attrs=bogus", "invalid target_session_attrs value: \"bogus\". "
                                   "Nothing was written; check the values"),
])
def test_a_parameter_the_store_cannot_take_is_refused_by_name(query: str, expected: str) -> None:
    with pytest.raises(fl.ConfigurationError) as caught:
        fl.Engine(f"{_with_password(postgres.URL)}?{query}")
    assert expected in str(caught.value)
    assert SECRET not in str(caught.value)


def test_no_message_or_output_shows_the_password(tmp_path: Any) -> None:
    """Errors of opening, of copying and of the CLI, and the CLI's output."""
    server = _with_password(postgres.URL.rsplit("/", 1)[0])
    said: list[str] = []
    for url in (f"{server.rsplit(':', 1)[0]}:1/nowhere",  # no server there
                f"{server}/flowledger_no_such_database",
                f"{server.replace('postgres:', 'flowledger_nobody:')}/postgres"):
        with pytest.raises(fl.ConfigurationError) as caught:
            fl.Engine(url)
        said.append(str(caught.value))
    with postgres.fresh_schema() as url:
        target = _with_password(url)
        _engine_and_session(target).close()  # not empty: a copy into it is refused
        source = f"sqlite:///{tmp_path / 'source.db'}"
        _engine_and_session(source).close()
        with pytest.raises(fl.ConfigurationError) as caught:
            fl.copy_store(source, target)
        said.append(str(caught.value))
        with pytest.raises(fl.NotFoundError) as missing:
            fl.Engine(target).run(uuid.uuid4())
        said.append(str(missing.value))
        other_workflow = tmp_path / "other.py"
        other_workflow.write_text("import flowledger as fl\nwf = fl.Workflow('other')\n"
                                  "@wf.producer()\ndef p(ctx, state):\n    return None\n")
        for args in (["copy", "--from", source, "--to", target],
                     ["--store", target, "runs", "--workflow", "no_such_workflow"],
                     ["--store", target, "log", "--workflow", "no_such_workflow"],
                     ["--store", target, "resume", "no_such_workflow"],
                     ["--store", target, "recover", str(other_workflow)],
                     ["--store", f"{server.rsplit(':', 1)[0]}:1/nowhere", "status"]):
            result = flowledger(*args, cwd=tmp_path)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            said.append(result.stdout + result.stderr)
        with postgres.fresh_schema() as empty:
            copied = flowledger("copy", "--from", source, "--to", _with_password(empty),
                                cwd=tmp_path)
            assert copied.returncode == 0, copied.stderr
            said.append(copied.stdout + copied.stderr)
    for text in said:
        assert SECRET not in text, text
    assert all(":***@" in text for text in said), said


def test_closing_the_engine_closes_the_connections_other_threads_read_on() -> None:
    """A service's request threads read (status, runs) and outlive the engine:
    the connections they read on are closed with it, not left to the threads'
    end, even one lent to a read still under way."""
    name = f"fl-{uuid.uuid4().hex[:10]}"
    with postgres.fresh_schema() as url, ThreadPoolExecutor(max_workers=3) as threads:
        engine = _engine_and_session(f"{url}&application_name={name}")
        list(threads.map(lambda _: engine.status(), range(12)))  # every thread reads
        reading, closed = threading.Event(), threading.Event()

        def read_across_the_close() -> None:
            with engine.log.reading() as c:
                c.execute("SELECT 1")
                reading.set()
                closed.wait(10)

        under_way = threads.submit(read_across_the_close)
        assert reading.wait(10)
        assert len(_named(name)) >= 5
        engine.close()
        assert _none_named(name)  # while the pool's threads are still alive
        closed.set()
        under_way.result(10)  # its read ends quietly; its connection stays closed
        assert _none_named(name)


def test_a_read_left_open_keeps_its_connection_and_its_snapshot() -> None:
    """A generator reading across a `yield` (a streaming response, say),
    resumed and closed by other threads: meanwhile its thread's other reads
    get connections of their own, so nothing ends its snapshot, and its
    connection goes back once, when it is closed."""
    with postgres.fresh_schema() as url:
        engine = _engine_and_session(url)
        rec = engine.log.flow_recorder
        try:
            def streamed() -> Iterator[tuple[Any, int]]:
                with engine.log.reading() as c:
                    for _ in range(2):
                        yield c._c.connection, c.execute(
                            "SELECT COUNT(*) FROM stored_events").fetchone()[0]

            opened = streamed()
            held, before = next(opened)
            assert engine.run_session("wf").status == "completed"  # appends meanwhile
            with engine.log.reading() as c:  # this thread, while the generator waits
                mine = c._c.connection
                now = c.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0]
            assert mine is not held and now > before
            resumed: list[tuple[Any, int]] = []
            elsewhere = threading.Thread(target=lambda: resumed.append(next(opened)))
            elsewhere.start()
            elsewhere.join()
            assert resumed == [(held, before)]  # the same snapshot, untouched
            closer = threading.Thread(target=opened.close)
            closer.start()
            closer.join()
            assert rec._idle["reader"].count(held) == 1  # given back, once
        finally:
            engine.close()


def test_a_connection_opened_while_the_engine_closes_is_not_kept() -> None:
    """A read that opens a connection while close() runs gets it, and it is
    closed when given back, not kept idle past the close."""
    with postgres.fresh_schema() as url:
        engine = _engine_and_session(url)
        rec = engine.log.flow_recorder
        connect, opened = rec._connect, []

        def connect_across_a_close() -> Any:
            conn = connect()
            engine.close()  # runs while this read's connection is being opened
            opened.append(conn)
            return conn

        rec._connect = connect_across_a_close  # type: ignore[method-assign]
        try:
            with rec._reading_lock:  # none idle: the read opens one (close() closes these)
                rec._idle = {"reader": [], "single": []}
            with engine.log.reading() as c:
                c.execute("SELECT 1")
        finally:
            rec._connect = connect  # type: ignore[method-assign]
        assert opened and opened[0].closed
        assert rec._idle == {"reader": [], "single": []}


def test_a_thread_per_request_does_not_leave_its_connections_open() -> None:
    """A server that starts a thread per request (the standard library's
    ThreadingHTTPServer): each request thread reads and ends; its reads are
    lent the engine's idle connections, so the engine holds its own five, not
    two more per request."""
    name = f"fl-{uuid.uuid4().hex[:10]}"
    with postgres.fresh_schema() as url:
        engine = _engine_and_session(f"{url}&application_name={name}")
        try:
            engine.status()  # the engine's own five: two writers, two readers, liveness
            for _ in range(20):
                request = threading.Thread(target=engine.status)
                request.start()
                request.join()
            assert _connections_after(name, 5) == 5
        finally:
            engine.close()
        assert _none_named(name)


def test_a_pool_of_live_threads_holds_what_reads_at_once_not_two_per_thread() -> None:
    """A service's pool of request threads, all alive: reads one after another
    share the engine's readers (before: two connections per thread, for the
    engine's life: 35 here); reads all at once open more, and of those at most
    IDLE_READERS of each kind stay open once they are done."""
    name = f"fl-{uuid.uuid4().hex[:10]}"
    with postgres.fresh_schema() as url, ThreadPoolExecutor(max_workers=16) as threads:
        engine = _engine_and_session(f"{url}&application_name={name}")
        rec = engine.log.flow_recorder
        try:
            one_at_a_time = threading.Lock()
            started = threading.Barrier(16)

            def read_in_turn(_: int) -> None:
                started.wait(10)  # every thread of the pool is alive and used
                with one_at_a_time:
                    engine.status()

            list(threads.map(read_in_turn, range(16)))
            assert _connections_after(name, 5) == 5

            def read_at_once(_: int) -> None:
                started.wait(10)
                engine.status()

            list(threads.map(read_at_once, range(16)))
            assert _connections_after(name, 3 + 2 * rec.IDLE_READERS) <= 3 + 2 * rec.IDLE_READERS
        finally:
            engine.close()
        assert _none_named(name)


def test_a_url_naming_several_hosts_connects_to_the_one_that_answers() -> None:
    """postgresql://user@primary,standby/db?target_session_attrs=read-write: libpq
    tries the hosts in order at each connection (here the first refuses), so an
    engine that replaces its connections follows a failover."""
    with postgres.fresh_schema() as url:
        user, _, where = url.partition("://")[2].partition("@")
        several = f"postgresql://{user}@127.0.0.1:1,{where}&target_session_attrs=read-write"
        engine = _engine_and_session(several)
        try:
            assert _a_reader(engine).info.port != 1
            assert engine.status().workflows[0].name == "wf"
        finally:
            engine.close()
        nowhere = f"postgresql://{user}@127.0.0.1:1,127.0.0.1:2/x"
        with pytest.raises(fl.ConfigurationError) as caught:
            fl.Engine(nowhere)
        assert "127.0.0.1:1, 127.0.0.1:2" in str(caught.value)
