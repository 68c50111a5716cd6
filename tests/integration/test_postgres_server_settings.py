"""Settings a DBA gives a database's sessions (ALTER DATABASE ... SET) that the
engine's connections cannot work under are set back on each of them
(postgres_recorder.SESSION_SETTINGS, ADR 0017 "Server settings"); a bug hunt
found each of these failing before."""

from __future__ import annotations

import subprocess
import sys
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
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow

pytestmark = pytest.mark.postgres


@pytest.fixture
def database() -> Iterator[str]:
    """A database of its own (settings are the database's), dropped afterwards."""
    name = f"fl_settings_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(postgres.URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def url_of(database: str) -> str:
    return postgres.URL.partition("?")[0].rsplit("/", 1)[0] + "/" + database


def set_on(database: str, setting: str, value: str) -> None:
    """For the sessions that begin from now on, as a DBA would."""
    with psycopg.connect(postgres.URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" SET {setting} = \'{value}\'')


def test_times_are_read_whatever_the_date_style(database: str, tmp_path: Path) -> None:
    """psycopg reads times only in ISO: under 'SQL, DMY' every engine failed to
    open with a raw NotImplementedError."""
    set_on(database, "DateStyle", "SQL, DMY")
    set_on(database, "TimeZone", "Asia/Kolkata")
    before = time.time()
    with fl.Engine(url_of(database)) as engine:
        tool = ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))
        engine.register(ledger_workflow(items=["a"]), tools=[tool])
        assert engine.run_session("wf").status == "completed"
        (session,) = engine.sessions()
        assert session.opened_at.utcoffset() is not None
        assert abs(session.opened_at.timestamp() - before) < 60
        assert tool.calls == [("a", "v-a")]


def test_a_statement_timeout_does_not_lose_a_calls_outcome(database: str,
                                                            tmp_path: Path) -> None:
    """The outcome's append waits for the log's lock, held by another transaction
    for a second: a 200 ms statement_timeout cancelled the wait, the session
    stopped, and the call's outcome was left to reconcile (or to a person)."""
    set_on(database, "statement_timeout", "200ms")
    url = url_of(database)
    holder = psycopg.connect(url, autocommit=False, options="-c statement_timeout=0")

    class Locking(ScriptedLedgerTool):
        @fl.mutator(reconcile="find_appended")
        def append(self, key: str, value: str) -> dict[str, Any]:
            done = super().append(key, value)
            holder.execute("LOCK TABLE stored_events IN EXCLUSIVE MODE")
            threading.Timer(1.0, holder.commit).start()
            return done

    try:
        with fl.Engine(url) as engine:
            tool = Locking(ExternalLedger(tmp_path / "l.db"))
            engine.register(ledger_workflow(items=["a"]), tools=[tool])
            result = engine.run_session("wf")
            assert result.status == "completed", result.error
            assert tool.calls == [("a", "v-a")] and tool.reconcile_calls == []
    finally:
        time.sleep(1.2)
        holder.close()


def test_connections_idle_past_the_servers_idle_session_timeout_go_on(
        database: str, tmp_path: Path) -> None:
    set_on(database, "idle_session_timeout", "300ms")
    with fl.Engine(url_of(database)) as engine:
        tool = ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))
        engine.register(ledger_workflow("one", items=["a"]), tools=[tool])
        engine.register(ledger_workflow("two", items=["b"]), tools=[tool])
        assert engine.run_session("one").status == "completed"
        time.sleep(1.0)  # every connection the engine keeps sits idle
        result = engine.run_session("two")
        assert result.status == "completed", result.error
        assert tool.calls == [("a", "v-a"), ("b", "v-b")]


def test_processes_creating_a_store_at_once_under_serializable(database: str) -> None:
    """Under a default of REPEATABLE READ or SERIALIZABLE, a creator's check for the
    trigger read a snapshot taken before the creation lock was granted: about one
    start in five of six at once failed with DuplicateObject."""
    set_on(database, "default_transaction_isolation", "serializable")
    url = url_of(database)
    def start(store: str) -> str:
        with fl.Engine(store):
            return "ok"

    for round_ in range(3):
        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(start, [f"{url}?schema=race{round_}"] * 6)) == ["ok"] * 6


def test_verify_outlasts_the_servers_idle_in_transaction_timeout(database: str,
                                                                 tmp_path: Path) -> None:
    """verify holds one snapshot while it folds the log again (ADR 0033): a
    150 ms idle_in_transaction_session_timeout ended it on a store of a few
    thousand events, with advice to try again that could not help."""
    url = url_of(database)
    with fl.Engine(url) as engine:
        tool = ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))
        engine.register(ledger_workflow(items=[str(i) for i in range(400)]), tools=[tool])
        assert engine.run_session("wf", max_iterations=10**6).status == "completed"
    set_on(database, "idle_in_transaction_session_timeout", "150ms")
    said = subprocess.run([sys.executable, "-m", "flowledger.cli", "--store", url, "verify"],
                          capture_output=True, text=True, timeout=300)
    assert said.returncode == 0, said.stdout + said.stderr
    assert "its projections are what it makes" in said.stdout


def test_a_database_that_refuses_writes_is_said_so_by_every_command(
        database: str, tmp_path: Path) -> None:
    """`setup` and a first `run` failed where no engine call wraps the store's
    error (creating the tables, registering from the CLI), and said to run the
    command again, which cannot help."""
    url = url_of(database)
    set_on(database, "default_transaction_read_only", "on")
    said = subprocess.run([sys.executable, "-m", "flowledger.cli", "--store", url, "setup"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert said.returncode == 2
    assert "it refuses writes (a read-only role or database" in said.stderr
    assert "run the command again" not in said.stderr
