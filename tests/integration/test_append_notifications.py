"""PostgreSQL wakes waiting workers on each append (DESIGN §6: on PostgreSQL the
worker is woken by the store's notifications instead of polling)."""

from __future__ import annotations

import pytest

from flowledger.engine.waiting import LogWaiter
from tests.helpers import ScriptedLedgerTool, ledger_workflow

on_postgresql = pytest.mark.parametrize(
    "store", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)


@on_postgresql
def test_an_append_by_another_engine_wakes_a_listener(make_engine, ledger):
    waiting = make_engine()
    wakeups = waiting.log.flow_recorder.listen()
    assert wakeups is not None
    try:
        assert wakeups.wait(0.2) is False  # nothing appended: the timeout
        writer = make_engine()
        writer.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
        assert writer.run_session("wf").status == "completed"
        assert wakeups.wait(10) is True  # woken by the other engine's commits
    finally:
        wakeups.close()


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_sqlite_has_no_notifications_and_the_waiter_polls(make_engine):
    engine = make_engine()
    assert engine.log.flow_recorder.listen() is None
    with LogWaiter(engine.log, interval=0.05) as waiter:
        assert waiter.wakeups is None
        head = waiter.head()
        assert waiter.wait_for_append(head, 0.1) == head  # the timeout, polling


@on_postgresql
def test_a_waiter_on_postgresql_returns_the_new_head_when_woken(make_engine, ledger):
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
    with LogWaiter(engine.log, interval=60) as waiter:
        assert waiter.wakeups is not None
        head = waiter.head()
        assert engine.run_session("wf").status == "completed"
        assert waiter.wait_for_append(head, 10) > head


@pytest.mark.postgres
def test_a_schema_named_in_many_bytes_takes_appends_and_wakes_its_listener(ledger):
    """A schema of non-ASCII letters, within PostgreSQL's 63 bytes: the
    notification channel is named after it cut at 63 bytes, not characters
    (cut by characters, every append failed: "channel name too long")."""
    import uuid

    import psycopg

    import flowledger as fl
    from tests import postgres

    schema = "\u00e9" * 25 + "_" + uuid.uuid4().hex[:11]  # 62 bytes
    url = f"{postgres.URL}?schema={schema}"
    try:
        with fl.Engine(url) as engine:
            _a_session_wakes_a_listener(engine, ledger)
    finally:
        with psycopg.connect(postgres.URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@on_postgresql
def test_an_engine_mends_a_notification_that_names_another_channel(make_engine, store, ledger):
    """A store whose trigger function notifies another channel (an older
    release cut a non-ASCII schema's channel past 63 bytes, and every append
    failed) is mended when an engine opens it: appends wake its listeners."""
    import psycopg

    from tests import postgres

    make_engine().close()
    schema = store.rpartition("schema=")[2]
    with psycopg.connect(postgres.URL, autocommit=True) as conn:
        conn.execute(f'CREATE OR REPLACE FUNCTION "{schema}".fl_notify_appended() RETURNS '
                     "trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify('elsewhere', ''); "
                     "RETURN NULL; END $$")
    _a_session_wakes_a_listener(make_engine(), ledger)


def _a_session_wakes_a_listener(engine, ledger):
    wakeups = engine.log.flow_recorder.listen()
    assert wakeups is not None
    try:
        engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
        assert engine.run_session("wf").status == "completed"
        assert wakeups.wait(10) is True
    finally:
        wakeups.close()
