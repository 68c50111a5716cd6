"""A store made by one role, used by another granted only reads and writes.

Production services often connect as a role that may read and write the
tables another role (the one that runs migrations) owns, and may create
nothing. A real server throughout: the role runs sessions, rebuilds and
verifies; a role granted less is told exactly what to grant, and the grants
it is told are enough; a store whose tables an older release made is brought
up to date only by a role that may create, and nothing is changed before.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from flowledger.infrastructure.store_check import grants
from flowledger.infrastructure.store_format import TABLES_VERSION
from tests import postgres
from tests.e2e.test_cli import TWO_WORKFLOWS, assert_user_error, flowledger
from tests.helpers import MemoryLedger, ScriptedLedgerTool, ledger_workflow, mid_call_tool

pytestmark = pytest.mark.postgres

psycopg = pytest.importorskip("psycopg")

# The catalog a new store's schema gets, for each tables version (see
# `catalog_digest`). A change of the tables, indexes, functions or triggers
# must come with a new TABLES_VERSION: a role that may not create can open a
# store only while its recorded version is this release's or newer. (Taken on
# PostgreSQL 15, which CI runs: another major version may print definitions
# differently.)
CATALOGS = {
    1: "89b680559d371de537ff3fac3407e32270411cab670a2df3d35ccaeb28698ff3",
    2: "ba60ae88b9622a9001793d5f906a280fda6c83588c3b1e8ff4c46a97cfb77f87",  # liveness.taken_at
    3: "5c1e7641179d93078fec09a90439eaeff591999d330401265d2d593416b07f33",  # fl_log_times
    4: "e6a14d57a4471bec5438a88a5224890a394e32979948e298a0ef6181c6f826cb",  # fl_settled
    5: "1ebb53bae3ccb43e79b77a51322df216c143da7ad20fd8aafe397edd6fea2139",  # fl_workers
}


def _server() -> Any:
    return psycopg.connect(postgres.URL, autocommit=True)


def catalog(schema: str) -> list[tuple[Any, ...]]:
    """What the schema holds that a store's code relies on: relations (and
    composite types) with their columns, defaults and constraints, indexes,
    sequences, functions whole and triggers (the schema's name replaced, so
    two schemas compare)."""
    with _server() as conn:
        rows = conn.execute(
            "SELECT 'column', c.relname::text, c.relkind::text, a.attname::text, "
            "format_type(a.atttypid, a.atttypmod), a.attnotnull::text || ' ' || "
            "COALESCE(pg_get_expr(d.adbin, d.adrelid), '') "
            "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
            "LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum "
            "WHERE c.relnamespace = %(s)s::regnamespace AND a.attnum > 0 "
            "AND NOT a.attisdropped AND c.relkind IN ('r', 'c') "
            "UNION ALL SELECT 'constraint', conname::text, contype::text, "
            "pg_get_constraintdef(oid), '', '' FROM pg_constraint "
            "WHERE connamespace = %(s)s::regnamespace "
            "UNION ALL SELECT 'index', indexname::text, '', indexdef, '', '' FROM pg_indexes "
            "WHERE schemaname = %(n)s "
            "UNION ALL SELECT 'sequence', sequencename::text, data_type::text, "
            "concat_ws(' ', start_value, min_value, max_value, increment_by, cycle, "
            "cache_size), '', '' FROM pg_sequences WHERE schemaname = %(n)s "
            "UNION ALL SELECT 'function', proname::text, '', pg_get_functiondef(oid), '', '' "
            "FROM pg_proc WHERE pronamespace = %(s)s::regnamespace "
            "UNION ALL SELECT 'trigger', tgname::text, '', pg_get_triggerdef(t.oid), '', '' "
            "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE c.relnamespace = %(s)s::regnamespace AND NOT t.tgisinternal",
            {"s": f'"{schema}"', "n": schema}).fetchall()
    return sorted(tuple(str(v).replace(schema, "SCHEMA") for v in row) for row in rows)


def catalog_digest(schema: str) -> str:
    return hashlib.sha256(repr(catalog(schema)).encode()).hexdigest()


def events_in(schema: str) -> int:
    with _server() as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".stored_events').fetchone()
    return int(row[0])


def as_owner(*statements: str) -> None:
    with _server() as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"t_roles_{uuid.uuid4().hex[:10]}"
    yield name
    as_owner(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def role() -> Iterator[str]:
    """A role that may log in and, until granted more, nothing else."""
    name = f"fl_app_{uuid.uuid4().hex[:8]}"
    as_owner(f'CREATE ROLE "{name}" LOGIN')
    yield name
    as_owner(f'DROP OWNED BY "{name}"', f'DROP ROLE "{name}"')


def owner_url(schema: str) -> str:
    return f"{postgres.URL}?schema={schema}"


def role_url(schema: str, role: str) -> str:
    base, _, rest = postgres.URL.partition("://")
    return f"{base}://{role}@{rest.partition('@')[2]}?schema={schema}"


def made_by_owner(schema: str, items: list[str]) -> None:
    """A store the owner created and ran once."""
    engine = fl.Engine(owner_url(schema))
    try:
        engine.register(ledger_workflow(items=items), tools=[ScriptedLedgerTool(MemoryLedger())])
        engine.run_session("wf")
    finally:
        engine.close()


def calls_when_run(url: str, items: list[str]) -> int:
    """The ledger workflow run once at `url` (its session completes): how many
    times its tool was called."""
    ledger = MemoryLedger()
    with fl.Engine(url) as engine:
        engine.register(ledger_workflow(items=items), tools=[ScriptedLedgerTool(ledger)])
        assert engine.run_session("wf").status == "completed"
    return ledger.calls


def test_a_role_granted_reads_and_writes_runs_sessions_rebuilds_and_verifies(
        schema: str, role: str, tmp_path: Path) -> None:
    made_by_owner(schema, ["a", "b"])
    granted = flowledger("--store", owner_url(schema), "setup", "--grant", role, cwd=tmp_path)
    assert granted.returncode == 0, granted.stderr
    assert f"granted {role!r} the use of it" in granted.stdout
    before = catalog(schema)
    ledger = MemoryLedger()
    tool = ScriptedLedgerTool(ledger)
    engine = fl.Engine(role_url(schema, role))
    try:
        engine.register(ledger_workflow(items=["a", "b", "c", "d"]), tools=[tool])
        result = engine.run_session("wf")
        assert result.status == "completed"
        # Every call of the tool, counted: the two new items, once each.
        assert [key for key, _ in tool.calls] == ["c", "d"]
        assert ledger.calls == 2
        folded = engine.rebuild_projections()
        assert folded == events_in(schema)
        assert engine.verify().ok
        assert engine.status().workflows[0].name == "wf"
    finally:
        engine.close()
    assert catalog(schema) == before  # the role created nothing, changed nothing
    shown = flowledger("--store", role_url(schema, role), "status", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "wf" in shown.stdout


def test_a_role_granted_less_is_told_what_to_grant_and_nothing_changes(
        schema: str, role: str, tmp_path: Path) -> None:
    made_by_owner(schema, ["a"])
    as_owner(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"',
             f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
    before, held = catalog(schema), events_in(schema)
    with pytest.raises(fl.ConfigurationError) as refused:
        fl.Engine(role_url(schema, role))
    said = str(refused.value)
    assert (f"role {role!r} may not use it: it lacks DELETE on fl_audit_causes, INSERT on "
            "fl_audit_causes, UPDATE on fl_audit_causes, DELETE on fl_audit_mentions, INSERT "
            "on fl_audit_mentions, UPDATE on fl_audit_mentions and 53 more. ") in said
    assert "Nothing was read or written" in said
    assert catalog(schema) == before and events_in(schema) == held
    assert_user_error(flowledger("--store", role_url(schema, role), "status", cwd=tmp_path),
                      f"role {role!r} may not use it", "GRANT USAGE ON SCHEMA")
    # What it says to grant is enough, on what the owner creates later too.
    assert f'ALTER DEFAULT PRIVILEGES FOR ROLE "postgres" IN SCHEMA "{schema}"' in said
    as_owner(*re.findall(r"(?:ALTER DEFAULT PRIVILEGES [^;]+|GRANT [^;]+);", said))
    assert calls_when_run(role_url(schema, role), ["a", "b"]) == 1
    as_owner(f'CREATE TABLE "{schema}".fl_an_upgrades_table (x int)')
    assert may(role, f'"{schema}".fl_an_upgrades_table', "INSERT")


def may(role: str, table: str, privilege: str) -> bool:
    with _server() as conn:
        return bool(conn.execute("SELECT has_table_privilege(%s, %s, %s)",
                                 (role, table, privilege)).fetchone()[0])


@pytest.fixture
def owner() -> Iterator[str]:
    """A role that may create schemas in the test database, and nothing else."""
    name = f"fl_own_{uuid.uuid4().hex[:8]}"
    database = postgres.URL.rpartition("/")[2].partition("?")[0]
    as_owner(f'CREATE ROLE "{name}" LOGIN', f'GRANT CREATE ON DATABASE "{database}" TO "{name}"')
    yield name
    as_owner(f'DROP OWNED BY "{name}"', f'DROP ROLE "{name}"')


def test_a_superusers_grant_covers_what_the_owner_creates_later(
        schema: str, role: str, owner: str, tmp_path: Path) -> None:
    """`setup --grant` run by a superuser grants, as the owner's default, what
    the store's owner creates in a later upgrade (a superuser's own default
    covers only what the superuser creates)."""
    assert calls_when_run(role_url(schema, owner), ["a"]) == 1  # the owner makes the store
    granted = flowledger("--store", owner_url(schema), "setup", "--grant", role, cwd=tmp_path)
    assert granted.returncode == 0, granted.stderr
    base, _, rest = postgres.URL.partition("://")
    with psycopg.connect(f"{base}://{owner}@{rest.partition('@')[2]}", autocommit=True) as c:
        c.execute(f'CREATE TABLE "{schema}".fl_an_upgrades_table (x int)')
    assert may(role, f'"{schema}".fl_an_upgrades_table', "INSERT")


def test_a_sequence_not_granted_is_said(schema: str, role: str) -> None:
    made_by_owner(schema, ["a"])
    as_owner(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"',
             f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" '
             f'TO "{role}"')
    with pytest.raises(fl.ConfigurationError) as refused:
        fl.Engine(role_url(schema, role))
    said = str(refused.value)
    assert ("it lacks UPDATE on sequence stored_events_notification_id_seq, USAGE on "
            "sequence stored_events_notification_id_seq.") in said


def test_tables_an_older_release_made_are_brought_up_to_date_by_a_role_that_may_create(
        schema: str, role: str) -> None:
    made_by_owner(schema, ["a"])
    as_owner(*grants(schema, role),
             f"UPDATE \"{schema}\".fl_store_format SET value = '0' WHERE name = 'tables'")
    before, held = catalog(schema), events_in(schema)
    with pytest.raises(fl.ConfigurationError) as refused:
        fl.Engine(role_url(schema, role))
    said = str(refused.value)
    assert "permission denied" in said
    assert "LINE 1" not in said and said.count("permission denied") == 1  # the server's line, once
    assert f"older than this release's (tables version {TABLES_VERSION})" in said
    assert "open it once as a role that may create in its schema" in said
    assert catalog(schema) == before and events_in(schema) == held
    fl.Engine(owner_url(schema)).close()  # the owner brings them up to date
    with _server() as conn:
        row = conn.execute(f"SELECT value FROM \"{schema}\".fl_store_format "
                           "WHERE name = 'tables'").fetchone()
    assert row == (str(TABLES_VERSION),)
    fl.Engine(role_url(schema, role)).close()


def test_a_function_it_may_not_execute_is_said_before_any_call(schema: str, role: str) -> None:
    """The append's guard is a function: a role that may not execute it would
    fail at its first append, after a run's external call."""
    made_by_owner(schema, ["a"])
    as_owner(*grants(schema, role)[:3],
             f'REVOKE EXECUTE ON FUNCTION "{schema}".fl_guard(boolean) FROM PUBLIC')
    with pytest.raises(fl.ConfigurationError) as refused:
        fl.Engine(role_url(schema, role))
    said = str(refused.value)
    assert "it lacks EXECUTE on function fl_guard." in said
    as_owner(*re.findall(r"(?:ALTER DEFAULT PRIVILEGES [^;]+|GRANT [^;]+);", said))
    assert calls_when_run(role_url(schema, role), ["a", "b", "c"]) == 2


def test_a_table_dropped_by_hand_is_made_again_and_refused_until_then(
        schema: str, role: str) -> None:
    made_by_owner(schema, ["a"])
    as_owner(*grants(schema, role))
    before = catalog(schema)
    as_owner(f'DROP TABLE "{schema}".fl_audit_causes')
    ledger = MemoryLedger()
    with pytest.raises(fl.ConfigurationError) as refused:  # before any call, not after one
        engine = fl.Engine(role_url(schema, role))
        engine.register(ledger_workflow(items=["a", "b"]), tools=[ScriptedLedgerTool(ledger)])
        engine.run_session("wf")
    assert "open it once as a role that may create in its schema" in str(refused.value)
    assert ledger.calls == 0
    fl.Engine(owner_url(schema)).close()
    as_owner(*grants(schema, role))  # the table made again is the owner's, granted anew
    assert catalog(schema) == before
    assert calls_when_run(role_url(schema, role), ["a", "b"]) == 1


def test_a_table_an_older_release_made_again_gets_this_releases_columns(schema: str,
                                                                       caplog: Any) -> None:
    """A release before `taken_at` makes fl_liveness again, in its shape, once
    it was dropped by hand: the store's record still says this release's
    tables, yet every engine of it failed to note its lock and to look at
    holders. The column is added back at the next open by a role that may."""
    made_by_owner(schema, ["a"])
    before = catalog(schema)
    as_owner(f'DROP TABLE "{schema}".fl_liveness',
             f'CREATE TABLE "{schema}".fl_liveness (owner text PRIMARY KEY, '
             "key integer NOT NULL, incarnation text)")  # as the older release makes it
    with caplog.at_level(logging.WARNING, logger="flowledger"), \
            fl.Engine(owner_url(schema)) as holder, fl.Engine(owner_url(schema)) as looker:
        assert looker.log.flow_recorder.holder_alive(holder.owner) is True
    assert not [r for r in caplog.records if "liveness" in r.getMessage()]
    assert catalog(schema) == before
    assert calls_when_run(owner_url(schema), ["a", "b"]) == 1


def test_a_role_that_owns_the_schema_but_may_not_create_schemas_makes_the_store(
        schema: str, role: str) -> None:
    """A schema made for the store's owner: the owner needs no CREATE on the database."""
    as_owner(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{role}"')
    assert calls_when_run(role_url(schema, role), ["a"]) == 1


def test_setup_says_what_it_cannot_grant(schema: str, tmp_path: Path) -> None:
    missing = f"fl_nobody_{uuid.uuid4().hex[:8]}"
    assert_user_error(flowledger("--store", owner_url(schema), "setup", "--grant", missing,
                                 cwd=tmp_path),
                      f"cannot grant {missing!r} the use of the store", "does not exist",
                      "Nothing was granted")
    assert_user_error(flowledger("--store", "sqlite:///flow.db", "setup", "--grant", "app",
                                 cwd=tmp_path), "a file has no roles")
    made = flowledger("--store", "sqlite:///flow.db", "setup", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "is ready" in made.stdout and (tmp_path / "flow.db").is_file()


def test_a_newer_releases_tables_version_is_kept(schema: str) -> None:
    made_by_owner(schema, ["a"])
    as_owner(f"UPDATE \"{schema}\".fl_store_format SET value = '{TABLES_VERSION + 1}' "
             "WHERE name = 'tables'")
    fl.Engine(owner_url(schema)).close()
    with _server() as conn:
        row = conn.execute(f"SELECT value FROM \"{schema}\".fl_store_format "
                           "WHERE name = 'tables'").fetchone()
    assert row == (str(TABLES_VERSION + 1),)


def test_the_tables_version_names_this_releases_catalog(schema: str) -> None:
    fl.Engine(owner_url(schema)).close()
    digest = catalog_digest(schema)
    assert CATALOGS.get(TABLES_VERSION) == digest, (
        "the tables, indexes, functions or triggers a new store gets have changed: raise "
        "TABLES_VERSION in flowledger/infrastructure/store_format.py (a store with the "
        f"older ones must be brought up to date by a role that may create) and record "
        f"the new catalog's digest in CATALOGS here: {digest!r}")


def ticking() -> fl.Workflow:
    """A producer due every second: a worker runs it as long as it lives."""
    wf = fl.Workflow("ticks", topics=["t"])

    @wf.producer(publishes=["t"], every="1s")
    def tick(ctx: Any, state: Any) -> int:
        n = (state or 0) + 1
        ctx.publish("t", message_id=str(n), payload=n)
        return n

    return wf


def test_a_store_that_turned_read_only_is_said_in_one_line_and_waited_for(
        schema: str, role: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Writes refused by the server (a database or role set read-only, a
    standby after a failover): `run` says so in one line (exit 2), and a
    worker says it in one line, with what to do, and waits longer at each
    failure, instead of a traceback every half second."""
    with fl.Engine(owner_url(schema)) as owner:
        owner.register(ticking())
    as_owner(*grants(schema, role),
             f'ALTER ROLE "{role}" SET default_transaction_read_only = on')
    (tmp_path / "flows.py").write_text(TWO_WORKFLOWS)
    ran = flowledger("--store", role_url(schema, role), "run", "flows.py", cwd=tmp_path)
    assert ran.returncode == 2 and "Traceback" not in ran.stderr, ran.stderr
    said = ran.stderr.strip().splitlines()[-1]  # after the liveness note's warning
    assert said.startswith("error: the store failed (ReadOnlySqlTransaction: cannot execute")
    assert "what the log holds stands" in said
    engine = fl.Engine(role_url(schema, role))
    stop = threading.Event()
    try:
        engine.register(ticking())  # as the owner registered it: nothing to write
        with caplog.at_level(logging.ERROR, logger="flowledger"):
            serving = threading.Thread(target=engine.serve,
                                       kwargs={"stop": stop, "interval": 0.1})
            serving.start()
            time.sleep(4)
            stop.set()
            serving.join(30)
    finally:
        stop.set()
        engine.close()
    stopped = [r for r in caplog.records if "session of ticks stopped" in r.getMessage()]
    # 0.1 s, then 0.2, 0.4, 0.8, 1.6 (doubling): 5 or 6 in 4 s, not 40.
    assert 2 <= len(stopped) <= 7, [r.getMessage()[:150] for r in stopped]
    # One line each, saying what to do: a store's failure needs no traceback.
    assert not any(r.exc_info for r in stopped)
    assert "read-only transaction" in stopped[-1].getMessage()
    assert "it refuses writes" in stopped[-1].getMessage()


def test_a_grant_that_fails_says_why_it_failed(schema: str, role: str) -> None:
    """Granting a role that does not exist is told to create it; granting as a
    role that does not own the tables is told whose they are."""
    made_by_owner(schema, ["a"])
    missing = f"fl_nobody_{uuid.uuid4().hex[:8]}"
    with fl.Engine(owner_url(schema)) as owner, pytest.raises(fl.ConfigurationError) as e:
        owner.grant(missing)
    assert "create the role first" in str(e.value)
    as_owner(*grants(schema, role))
    with fl.Engine(role_url(schema, role)) as app, pytest.raises(fl.ConfigurationError) as e:
        app.grant(role)
    said = str(e.value)
    assert "grant as the role that owns the store's tables (postgres), or as a superuser" in said
    assert "create the role first" not in said


def test_a_worker_goes_on_once_the_store_takes_writes_again(schema: str, role: str) -> None:
    """A role set read-only, then set back: the connections opened meanwhile
    refuse writes for their life (the setting is read when one opens), so the
    worker opens others, and notes its liveness lock again."""
    with fl.Engine(owner_url(schema)) as owner:
        owner.register(ticking())
    as_owner(*grants(schema, role),
             f'ALTER ROLE "{role}" SET default_transaction_read_only = on')
    engine = fl.Engine(role_url(schema, role))
    stop = threading.Event()
    serving = threading.Thread(target=engine.serve, kwargs={"stop": stop, "interval": 0.1})
    try:
        engine.register(ticking())
        serving.start()
        time.sleep(2)
        assert events_in(schema) == 0 or not any(
            e.name == "Published" for e in engine.events(workflow="ticks"))
        liveness = engine.log.flow_recorder._liveness
        as_owner(f'ALTER ROLE "{role}" RESET default_transaction_read_only')
        deadline = time.monotonic() + 30
        while not any(e.name == "Published" for e in engine.events(workflow="ticks")):
            assert time.monotonic() < deadline, "the worker never wrote again"
            time.sleep(0.2)
        with _server() as conn:
            noted = conn.execute(f'SELECT count(*) FROM "{schema}".fl_liveness WHERE owner = %s',
                                 (engine.owner,)).fetchone()
        assert noted == (1,)
        # Noted without letting the lock go: freed a moment, it could prove this
        # living engine gone to another that had found it free before.
        assert engine.log.flow_recorder._liveness is liveness
    finally:
        stop.set()
        serving.join(30)
        engine.close()


def test_a_worker_whose_listening_connection_is_refused_serves_on(schema: str,
                                                                  role: str) -> None:
    """The role's CONNECTION LIMIT reached by the engine's own connections: the
    worker's sixth, to listen for appends, is refused. It serves on, looking
    at the log every interval, instead of ending."""
    with fl.Engine(owner_url(schema)) as owner:
        owner.register(ticking())
    as_owner(*grants(schema, role))
    engine = fl.Engine(role_url(schema, role))
    stop = threading.Event()
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            engine.serve(stop=stop, interval=0.1)
        except BaseException as e:
            failed.append(e)

    serving = threading.Thread(target=serve)
    try:
        engine.register(ticking())
        engine.run_session("ticks")  # its connections opened
        with _server() as conn:
            held = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                                (role,)).fetchone()
        assert held is not None
        as_owner(f'ALTER ROLE "{role}" CONNECTION LIMIT {held[0]}')
        published = sum(e.name == "Published" for e in engine.events(workflow="ticks"))
        serving.start()
        deadline = time.monotonic() + 20
        while sum(e.name == "Published" for e in engine.events(workflow="ticks")) <= published:
            assert not failed, failed
            assert time.monotonic() < deadline, "the worker served nothing"
            time.sleep(0.2)
        assert serving.is_alive() and not failed
    finally:
        stop.set()
        serving.join(30)
        engine.close()


def test_a_new_store_a_role_may_not_make_is_one_error_without_the_note(
        schema: str, role: str, tmp_path: Path) -> None:
    """`run` says a new store is made only once it is: a role that may not
    create the schema gets the error alone, on one line."""
    (tmp_path / "two.py").write_text(TWO_WORKFLOWS)
    result = flowledger("--store", role_url(schema, role), "run", "two.py", cwd=tmp_path)
    assert_user_error(result, "cannot open store")
    assert "a new one is made" not in result.stderr


def test_a_role_that_may_not_create_in_the_schema_is_told_what_to_grant(
        schema: str, owner: str, tmp_path: Path) -> None:
    """`setup` by a role that may not create in the store's schema is told the
    GRANT that lets it, with its own name filled in, not to run itself again."""
    as_owner(f'CREATE SCHEMA "{schema}"', f'GRANT USAGE ON SCHEMA "{schema}" TO "{owner}"')
    result = flowledger("--store", role_url(schema, owner), "setup", cwd=tmp_path)
    assert_user_error(result, f"permission denied for schema {schema}",
                      f'GRANT CREATE ON SCHEMA "{schema}" TO "{owner}"',
                      f"setup --grant {owner}`, with a URL naming that role")
    as_owner(f'GRANT CREATE ON SCHEMA "{schema}" TO "{owner}"')
    assert flowledger("--store", role_url(schema, owner), "setup", cwd=tmp_path).returncode == 0


def test_an_append_whose_login_is_refused_is_not_waited_for(
        schema: str, role: str) -> None:
    """An append waits for a server that is restarting (ADR 0017), not for one
    that answers and refuses the login: that fails at once, as before."""
    made_by_owner(schema, ["a"])
    as_owner(*grants(schema, role))

    def refuse_login(key: str) -> None:
        as_owner(f'ALTER ROLE "{role}" NOLOGIN',
                 "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                 f"WHERE usename = '{role}'")  # waits for each to end

    engine = fl.Engine(role_url(schema, role))
    try:
        engine.register(ledger_workflow(items=["a", "b"]),
                        tools=[mid_call_tool(refuse_login)(MemoryLedger())])
        started = time.monotonic()
        with pytest.raises(fl.FlowledgerError, match="not permitted to log in"):
            engine.run_session("wf")
        assert time.monotonic() - started < 10  # not the 30 s an unavailable server gets
    finally:
        engine.close()
