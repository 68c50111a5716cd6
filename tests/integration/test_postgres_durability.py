"""Which PostgreSQL appends are on disk when they return (ADR 0011; ADR 0017,
"The disk waited for after the lock").

A synced append (a mutation's `in_flight`, a session's close) commits without
waiting for the disk, so that the log's lock is free while the disk flushes,
and waits for the disk in a second transaction of the same message. These
tests read the server's own WAL (`pg_walinspect`): the commit record of the
transaction that stored the event must be flushed when the external call
starts, and when the session returns. A role that may not run the second
transaction's function waits for the disk within the commit, as before; one
that loses it while an engine runs is told, and nothing is called twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import flowledger as fl
from tests import postgres
from tests.helpers import MemoryLedger, ledger_workflow, mid_call_tool

pytestmark = pytest.mark.postgres

psycopg = pytest.importorskip("psycopg")



def _admin(dbname: str | None = None) -> Any:
    """A superuser's connection to the test server's database, or to `dbname`."""
    server = postgres.URL.rpartition("/")[0]
    return psycopg.connect(postgres.URL if dbname is None else f"{server}/{dbname}",
                           autocommit=True)


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    """A database of its own (its grants on the server's functions are changed
    here) owned by a role of its own: (name, the role's URL). Its WAL is read
    from where it was at the start (`on_disk`), kept by a temporary replication
    slot while the test runs (checkpoints would remove it)."""
    name = f"fl_durable_{uuid.uuid4().hex[:8]}"
    with _admin() as conn:
        if conn.info.server_version < 150000:
            pytest.skip("pg_walinspect needs PostgreSQL 15 or newer")
        conn.execute(f'CREATE ROLE "{name}" LOGIN')
        conn.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
    scheme, _, rest = postgres.URL.partition("://")
    server = rest.partition("@")[2].rpartition("/")[0]
    try:
        with _admin(name) as conn:
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true, true)", (name,))
            conn.execute("CREATE EXTENSION pg_walinspect")
            conn.execute("CREATE TABLE wal_start AS SELECT restart_lsn AS lsn "
                         "FROM pg_replication_slots WHERE slot_name = %s", (name,))
            yield name, f"{scheme}://{name}@{server}/{name}"
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def on_disk(dbname: str, topic: str) -> list[bool]:
    """For each event of `topic` in the log, oldest first: whether the commit
    record of the transaction that stored it is flushed (pg_walinspect reads
    only flushed WAL)."""
    with _admin(dbname) as conn:
        xids = [str(x) for (x,) in conn.execute(
            "SELECT xmin::text FROM stored_events WHERE topic LIKE %s ORDER BY notification_id",
            (f"%{topic}",))]
        if not conn.execute("SELECT pg_current_wal_flush_lsn() > lsn FROM wal_start"
                            ).fetchone()[0]:
            return [False] * len(xids)  # nothing flushed since the start
        flushed = {str(x) for (x,) in conn.execute(
            "SELECT xid::text FROM wal_start, pg_get_wal_records_info(wal_start.lsn, "
            "pg_current_wal_flush_lsn()) WHERE resource_manager = 'Transaction' "
            "AND record_type = 'COMMIT' AND xid::text = ANY(%s)", (xids,))}
    return [x in flushed for x in xids]


def test_a_mutations_in_flight_is_on_disk_before_the_call_and_a_close_when_it_returns(
        database: tuple[str, str]) -> None:
    dbname, url = database
    at_call: list[list[bool]] = []
    ledger = MemoryLedger()
    tool = mid_call_tool(lambda key: at_call.append(on_disk(dbname, "MutationInFlight")))
    with fl.Engine(url) as engine:
        engine.register(ledger_workflow(items=["a", "b", "c"]), tools=[tool(ledger)])
        assert engine.run_session("wf").status == "completed"
        closed = on_disk(dbname, "Session.Closed")
    assert at_call == [[True], [True, True], [True, True, True]]
    assert closed == [True]
    assert ledger.calls == 3


def revoke_emit(dbname: str) -> None:
    """Every pg_logical_emit_message (PostgreSQL 17 added an argument) refused."""
    with _admin(dbname) as conn:
        for (function,) in conn.execute("SELECT oid::regprocedure::text FROM pg_proc "
                                        "WHERE proname = 'pg_logical_emit_message'"):
            conn.execute(f"REVOKE EXECUTE ON FUNCTION {function} FROM PUBLIC")


def test_a_role_that_may_not_wait_apart_waits_within_the_commit(
        database: tuple[str, str]) -> None:
    dbname, url = database
    revoke_emit(dbname)
    at_call: list[list[bool]] = []
    ledger = MemoryLedger()
    tool = mid_call_tool(lambda key: at_call.append(on_disk(dbname, "MutationInFlight")))
    with fl.Engine(url) as engine:
        engine.register(ledger_workflow(items=["a", "b"]), tools=[tool(ledger)])
        assert engine.run_session("wf").status == "completed"
        closed = on_disk(dbname, "Session.Closed")
    assert at_call == [[True], [True, True]]
    assert closed == [True]


def test_losing_the_function_while_running_is_told_and_nothing_is_called_twice(
        database: tuple[str, str], caplog: pytest.LogCaptureFixture) -> None:
    """The grant taken away between two synced appends: the second commits,
    its wait for the disk fails; the session stops saying so, before the call.
    The engine then waits within the commit, and the next session goes on."""
    dbname, url = database
    ledger = MemoryLedger()
    tool = mid_call_tool(lambda key: revoke_emit(dbname) if key == "a" else None)
    with fl.Engine(url) as engine:
        engine.register(ledger_workflow(items=["a", "b", "c"]), tools=[tool(ledger)])
        with pytest.raises(fl.StoreError) as failed:
            engine.run_session("wf")
        said = str(failed.value)
        assert "was committed" in said and "not known whether it reached the disk" in said
        assert "pg_logical_emit_message" in said  # the server's words name it
        assert ledger.calls == 1  # "b"'s in_flight is in the log; "b" was not called
        engine.recover()
        assert engine.run_session("wf").status == "completed"
        assert on_disk(dbname, "Session.Closed")[-1] is True
    assert sorted(ledger.keys()) == ["a", "b", "c"]
    assert ledger.calls == 3
