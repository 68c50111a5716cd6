"""A store opened read-only (`?mode=ro`) on both stores: a role granted only
SELECT and a standby on PostgreSQL, SQLite's own read-only mode on a file.

Whoever may only read a store (an operator's read-only credentials, a
dashboard, a standby taking load off the primary) inspects it with the same
engine and commands: answers come from the read side as it stands, which a
session under way elsewhere, or a process that stopped before folding in,
leaves behind the log; how far is said. Nothing is ever written: every store's
rows are compared before and after.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from flowledger.infrastructure.store_format import TABLES_VERSION
from tests import postgres
from tests.e2e.test_cli import TWO_WORKFLOWS, assert_user_error, flowledger
from tests.helpers import (
    ExternalLedger,
    Follower,
    MemoryLedger,
    ScriptedLedgerTool,
    ledger_workflow,
)
from tests.integration.test_postgres_failover import Clusters, clusters  # noqa: F401
from tests.integration.test_postgres_roles import (
    as_owner,
    calls_when_run,
    catalog_digest,
    made_by_owner,
    owner_url,
    role,  # noqa: F401
    role_url,
    schema,  # noqa: F401
)
from tests.integration.test_read_only_and_opening import Died, crash_after, die_mid_session

psycopg = pytest.importorskip("psycopg")


def read_only(url: str) -> str:
    return url + ("&" if "?" in url else "?") + "mode=ro"


def rows(url: str) -> dict[str, Any]:
    """Everything a write could change: the log, the projections' tracking."""
    with fl.Engine(read_only(url)) as engine:
        return {"events": [(e.position, e.name) for e in engine.events()],
                "tracked": engine.projections.positions()}


@pytest.fixture
def lagging(store: str, tmp_path: Path) -> str:
    die_mid_session(store, tmp_path)
    return store


def test_a_read_side_left_behind_is_read_as_it_stands_and_said(lagging: str,
                                                               tmp_path: Path) -> None:
    before = rows(lagging)
    tracked = before["tracked"]
    head = before["events"][-1][0]
    assert min(tracked.values()) < head  # what the writer left to fold in
    with fl.Engine(read_only(lagging)) as engine:
        engine.register(ledger_workflow("wf"))
        behind = engine.read_side_behind()
        assert behind == head - min(tracked.values())
        runs = engine.runs(workflow="wf")  # answered, not refused, and not folded in
        assert engine.read_side_behind() == behind
        assert engine.status().workflows[0].open_session is not None
        assert len(list(engine.events())) == len(before["events"])  # the log: all of it
    shown = flowledger("--store", read_only(lagging), "status", "--json", cwd=tmp_path)
    assert json.loads(shown.stdout)["read_side_behind"] == behind  # for scripts
    done = flowledger("--store", read_only(lagging), "runs", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    note = " ".join(done.stderr.split())
    assert "note: the store is opened read-only (?mode=ro)" in note
    assert f"has not folded in the log's last {behind} events" in note
    assert rows(lagging) == before

    with fl.Engine(lagging):  # an engine that writes folds them in at its opening
        pass
    with fl.Engine(read_only(lagging)) as engine:
        assert engine.read_side_behind() == 0
        assert len(engine.runs(workflow="wf")) >= len(runs)
    done = flowledger("--store", read_only(lagging), "status", cwd=tmp_path)
    assert done.returncode == 0 and "note:" not in done.stderr


def test_a_read_only_engine_reads_while_another_one_writes(store: str, tmp_path: Path
                                                          ) -> None:
    """Queries mid-session, from inside the writer's prepares: they answer as
    the read side stands and write nothing (they used to catch up first,
    which a read-only store refuses)."""
    reader = fl.Engine(read_only_after_first_use(store, tmp_path))
    seen: list[int] = []

    def peek(item: str) -> None:
        seen.append(reader.read_side_behind())
        reader.runs(workflow="wf")
        reader.costs("wf")

    writer = fl.Engine(store)
    try:
        writer.register(ledger_workflow("wf", on_peek=peek),
                        tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))])
        assert writer.run_session("wf").status == "completed"
    finally:
        writer.close()
    assert len(seen) == 3 and max(seen) > 0
    assert reader.read_side_behind() == 0  # the writer folded everything in at its close
    assert len(reader.runs(workflow="wf")) == 1 + 1 + 1 + 3  # both sessions' runs
    reader.close()


def read_only_after_first_use(store: str, tmp_path: Path) -> str:
    """The store made by a first session, opened read-only."""
    with fl.Engine(store) as engine:
        engine.register(ledger_workflow("wf", items=["z"]),
                        tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "first.db"))])
        engine.run_session("wf")
    return read_only(store)


# -------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_a_role_granted_only_select_reads_everything_and_writes_nothing(
        schema: str, role: str, tmp_path: Path) -> None:  # noqa: F811
    made_by_owner(schema, ["a", "b"])
    url = read_only(role_url(schema, role))
    with pytest.raises(fl.ConfigurationError) as refused:
        fl.Engine(url)
    said = str(refused.value)
    assert f"role {role!r} may not read it: it lacks USAGE on schema" in said
    assert "INSERT" not in said and "EXECUTE" not in said
    as_owner(*re.findall(r"(?:ALTER DEFAULT PRIVILEGES [^;]+|GRANT [^;]+);", said))  # enough
    digest = catalog_digest(schema)
    before = rows(owner_url(schema))
    with fl.Engine(owner_url(schema)) as owner, fl.Engine(url) as reader:
        owner.register(ledger_workflow(items=["a", "b"]))
        reader.register(ledger_workflow(items=["a", "b"]))
        assert reader.status() == owner.status()
        assert reader.runs() == owner.runs()
        assert reader.costs("wf") == owner.costs("wf")
        run = reader.runs()[0].run_id
        assert reader.run_timeline(run) == owner.run_timeline(run)
        for call, what in [(lambda: reader.run_session("wf"), "a session appends"),
                           (reader.recover, "recovery continues sessions"),
                           (reader.rebuild_projections, "a rebuild"),
                           (lambda: reader.register(ledger_workflow("new")), "registering")]:
            with pytest.raises(fl.ConfigurationError, match=re.escape(what)):
                call()
    for command in (["status"], ["runs"], ["log", "--limit", "3"], ["verify"]):
        done = flowledger("--store", url, *command, cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
    for command in (["run", TWO_WORKFLOWS], ["worker", TWO_WORKFLOWS], ["setup"]):
        assert_user_error(flowledger("--store", url, *command, cwd=tmp_path),
                          "opened read-only (?mode=ro)", "drop ?mode=ro")
    assert catalog_digest(schema) == digest
    assert rows(owner_url(schema)) == before
    # Without ?mode=ro the same role is told it may only read with it.
    with pytest.raises(fl.ConfigurationError, match=re.escape("add ?mode=ro to the URL")):
        fl.Engine(role_url(schema, role))


@pytest.mark.postgres
def test_mode_takes_only_ro() -> None:
    with pytest.raises(fl.ConfigurationError, match="mode='rw' is not ro"):
        fl.Engine(f"{postgres.URL}?mode=rw")


@pytest.mark.postgres
def test_a_schema_without_a_store_opened_read_only_is_refused_and_nothing_made(
        schema: str) -> None:  # noqa: F811
    with pytest.raises(fl.ConfigurationError, match=re.escape(
            "holds no flowledger store yet, and it is opened read-only (?mode=ro)")):
        fl.Engine(read_only(owner_url(schema)))
    with psycopg.connect(postgres.URL) as conn:
        assert conn.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()[0] is None


@pytest.fixture
def standby(clusters: Clusters, tmp_path: Path) -> Iterator[tuple[str, str]]:  # noqa: F811
    """A store on a primary ("a") with a finished session and a blocked run,
    and its standby ("b"), caught up: (primary URL, standby URL)."""
    clusters.primary("a")
    primary = clusters.url("a")
    tool = ScriptedLedgerTool(ExternalLedger(tmp_path / "ledger.db"))
    tool.script = ["ok", "uncertain"]
    with fl.Engine(primary) as engine:
        engine.register(ledger_workflow("wf", tool_name="blind"), tools=[tool])
        engine.run_session("wf")
    clusters.standby_of("b", "a")
    clusters.caught_up("b", "a")
    yield primary, clusters.url("b")


@pytest.mark.postgres
def test_a_standby_is_read_with_mode_ro_and_refused_without(
        standby: tuple[str, str], tmp_path: Path) -> None:
    primary, replica = standby
    with pytest.raises(fl.ConfigurationError) as refused:
        fl.Engine(replica)
    said = str(refused.value)
    assert "its server is a standby (in recovery), which takes no writes" in said
    assert "Add ?mode=ro to the URL to read it there" in said
    with fl.Engine(primary) as there, fl.Engine(read_only(replica)) as here:
        for engine in (there, here):
            engine.register(ledger_workflow("wf", tool_name="blind"))
        assert here.status() == there.status()
        assert here.blocked() == there.blocked()
        assert [e.position for e in here.events()] == [e.position for e in there.events()]
        # Its advisory locks are not the primary's; it sends no notifications:
        # its waiter polls (and listens again once the standby is promoted).
        assert here.log.flow_recorder.holder_alive(there.owner) is None
        waiter = here.log.flow_recorder.listen()
        assert waiter is not None and waiter.conn is None
        waiter.close()
    for command in (["status"], ["blocked"], ["log", "--limit", "5"]):
        done = flowledger("--store", read_only(replica), *command, cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)


def test_a_store_opened_read_only_is_copied_from_and_never_into(store: str, tmp_path: Path
                                                                ) -> None:
    source = read_only_after_first_use(store, tmp_path)
    before = rows(store)
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    assert fl.copy_store(source, target) == len(before["events"])
    with pytest.raises(fl.ConfigurationError, match=re.escape(
            "is opened read-only (?mode=ro), and a copy writes into it; nothing was written")):
        fl.copy_store(target, source)
    assert rows(store) == before


def test_runs_and_mentions_not_yet_folded_in_are_found_in_the_log(store: str,
                                                                  tmp_path: Path) -> None:
    """In the middle of another engine's session, a read-only engine finds a
    run just committed by its short id, its timeline with what names it, and
    replays it the same: the events the read side has not folded in are
    looked in too (it said "no run" and found false differences)."""
    reader = fl.Engine(read_only_after_first_use(store, tmp_path))
    # Replay calls no tool, yet runs with the tools the code names.
    reader.register(ledger_workflow("wf"), tools=[ScriptedLedgerTool(ExternalLedger(
        tmp_path / "never.db"))])
    seen: dict[str, Any] = {}

    def peek(item: str) -> None:
        if item != "c":
            return
        assert reader.read_side_behind() > 0
        committed = [e.stream_id for e in reader.events(last=100)
                     if e.aggregate == "HandlerRun" and e.name == "Committed"]
        run = committed[-1]  # item b's
        seen.update(run=run, head=max(e.position for e in reader.events(last=1)),
                    found=reader.run(run.hex[-8:]).id,
                    timeline=[e.position for e in reader.run_timeline(run).entries],
                    replay=reader.replay(run).differences)

    writer = fl.Engine(store)
    try:
        writer.register(ledger_workflow("wf", on_peek=peek),
                        tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))])
        assert writer.run_session("wf").status == "completed"
        later = [e.position for e in writer.run_timeline(seen["run"]).entries
                 if e.position <= seen["head"]]
    finally:
        writer.close()
    reader.close()
    assert seen["found"] == seen["run"]
    assert seen["timeline"] == later
    assert seen["replay"] == ()


def test_a_session_whose_lease_ran_out_is_said_by_status(store: str, tmp_path: Path,
                                                         clock: fl.ManualClock) -> None:
    """A holder not known gone (alive here; on a standby, whose advisory
    locks are not the primary's, never known) whose lease ran out: `status`
    says so, as recover would take it over (it said nothing)."""
    crashing = fl.Engine(store, clock=clock, checkpoint=crash_after("after_append:commit", 2))
    try:
        crashing.register(ledger_workflow("wf"),
                          tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "ledger.db"))])
        with pytest.raises(Died):
            crashing.run_session("wf")
        with fl.Engine(read_only(store), clock=clock) as reader:
            before = reader.status()
            assert before.holders_gone == () and before.leases_ended == ()
            clock.advance(3600)
            after = reader.status()
            assert after.holders_gone == () and after.leases_ended == ("wf",)
        done = flowledger("--store", read_only(store), "status", cwd=tmp_path)
        assert done.returncode == 0 and "wf: lease ran out" in " ".join(done.stdout.split())
        shown = flowledger("--store", read_only(store), "status", "--json", cwd=tmp_path)
        assert json.loads(shown.stdout)["leases_ended"] == ["wf"]
    finally:
        crashing.close()


@pytest.mark.postgres
def test_mode_is_given_once_and_a_misspelt_one_is_named() -> None:
    with pytest.raises(fl.ConfigurationError, match="mode= is given 2 times; give it once"):
        fl.Engine(f"{postgres.URL}?mode=ro&mode=ro")
    with pytest.raises(fl.ConfigurationError, match="did you mean 'mode'"):
        fl.Engine(f"{postgres.URL}?modee=ro")


@pytest.mark.postgres
def test_a_read_only_role_is_told_the_grants_that_last_and_may_not_grant(
        schema: str, role: str, tmp_path: Path) -> None:  # noqa: F811
    made_by_owner(schema, ["a"])
    with pytest.raises(fl.ConfigurationError) as refused:
        fl.Engine(read_only(role_url(schema, role)))
    said = str(refused.value)
    assert (f'ALTER DEFAULT PRIVILEGES FOR ROLE "postgres" IN SCHEMA "{schema}" GRANT SELECT '
            "ON TABLES") in said
    with pytest.raises(fl.ConfigurationError) as writing:
        fl.Engine(role_url(schema, role))
    assert ";;" not in str(writing.value)
    assert str(writing.value).endswith("Or, to only read it, add ?mode=ro to the URL.")
    with fl.Engine(read_only(owner_url(schema))) as engine, pytest.raises(
            fl.ConfigurationError, match=re.escape("granting a role changes")):
        engine.grant(role)
    missing = flowledger("--store", read_only(f"{postgres.URL}_nowhere"), "status", cwd=tmp_path)
    assert_user_error(missing, "name the database that holds the store")
    assert "createdb" not in missing.stderr


def test_commands_that_answer_from_the_log_say_nothing_of_the_read_side(
        lagging: str, tmp_path: Path) -> None:
    for command in (["log", "--limit", "3"], ["at", "5", "status"], ["projections", "status"]):
        done = flowledger("--store", read_only(lagging), *command, cwd=tmp_path)
        assert done.returncode == 0 and "note:" not in done.stderr, (command, done.stderr)


@pytest.mark.postgres
def test_a_listener_that_reaches_a_standby_polls(standby: tuple[str, str]) -> None:
    """A URL of several hosts can reach a standby once a failover moved the
    primary: LISTEN is refused there ("cannot execute LISTEN during
    recovery"), which ended `log -f`. It polls instead."""
    from flowledger.infrastructure.postgres_recorder import PgAppendWakeups

    _, replica = standby
    with fl.Engine(read_only(replica)) as engine:
        recorder = engine.log.flow_recorder
        wakeups = PgAppendWakeups(recorder.conninfo, recorder.channel)
        try:
            assert wakeups.conn is None and wakeups.wait(0.05) is False
        finally:
            wakeups.close()


@pytest.mark.postgres
def test_a_listener_on_a_standby_listens_again_once_it_is_promoted(
        standby: tuple[str, str], clusters: Clusters, monkeypatch: pytest.MonkeyPatch  # noqa: F811
        ) -> None:
    """It polled for the rest of its life: after a failover promoted its
    server, a follower woke only every half second, never on an append."""
    from flowledger.infrastructure.postgres_recorder import PgAppendWakeups

    monkeypatch.setattr(PgAppendWakeups, "LISTEN_AGAIN_S", 0.2, raising=False)
    _, replica = standby
    with fl.Engine(read_only(replica)) as engine:  # what a follower there waits with
        wakeups = engine.log.flow_recorder.listen()  # (it had none: it polled for ever)
    assert wakeups is not None
    try:
        assert wakeups.conn is None and wakeups.wait(0.5) is False
        clusters.lose("a")
        clusters.promote("b")
        deadline = time.monotonic() + 20
        while wakeups.conn is None:
            assert time.monotonic() < deadline, "LISTEN was not taken again"
            wakeups.wait(0.1)
        assert wakeups.wait(0.05) is False  # listening, nothing appended
        with fl.Engine(replica) as writer:
            writer.register(ledger_workflow("wf2", items=["z"]))
            assert wakeups.wait(10) is True  # woken by the append's notification
    finally:
        wakeups.close()


@pytest.mark.postgres
def test_following_the_log_goes_on_across_a_server_restart(
        clusters: Clusters, tmp_path: Path) -> None:  # noqa: F811
    """`log -f` ended with "the store failed" when the server restarted; it
    waits and goes on from where it was, each event once."""
    clusters.primary("a")
    url = clusters.url("a")
    tool = ScriptedLedgerTool(ExternalLedger(tmp_path / "ledger.db"))
    with fl.Engine(url) as writer, fl.Engine(url) as reader:
        writer.register(ledger_workflow("wf", items=["a"]), tools=[tool])
        writer.run_session("wf")
        with Follower(reader) as follower:
            assert follower.reaches(max(e.position for e in writer.events(last=1)))
            clusters.lose("a")
            time.sleep(1.0)  # the follower finds it down, and waits
            clusters.start("a")
            writer.register(ledger_workflow("wf", items=["a", "b"]), tools=[tool])
            writer.run_session("wf")
            head = max(e.position for e in writer.events(last=1))
            follower.reaches(head, within=40)
    assert not follower.failed, follower.failed
    assert follower.seen == sorted(set(follower.seen)) and follower.seen[-1] == head


@pytest.mark.postgres
def test_the_grants_a_superuser_runs_for_a_reader_last_through_an_upgrade(
        schema: str, role: str) -> None:  # noqa: F811
    """The store's owner is a role of its own; a superuser runs the GRANTs the
    reader is told: a table the owner creates later (an upgrade) is readable
    too (without FOR ROLE the owner, the default covered only the
    superuser's own tables, and the reader was refused again)."""
    as_owner(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{role}"')
    made_by_owner_url = role_url(schema, role)
    with fl.Engine(made_by_owner_url) as engine:
        engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
        engine.run_session("wf")
    reader = f"fl_reader_{role[-8:]}"
    as_owner(f'CREATE ROLE "{reader}" LOGIN')
    try:
        with pytest.raises(fl.ConfigurationError) as refused:
            fl.Engine(read_only(role_url(schema, reader)))
        as_owner(*re.findall(r"(?:ALTER DEFAULT PRIVILEGES [^;]+|GRANT [^;]+);",
                             str(refused.value)))
        fl.Engine(read_only(role_url(schema, reader))).close()
        with psycopg.connect(made_by_owner_url.partition("?")[0], autocommit=True) as conn:
            conn.execute(f'CREATE TABLE "{schema}".fl_later_release (x integer)')
        with fl.Engine(read_only(role_url(schema, reader))) as engine:
            assert engine.runs()
    finally:
        as_owner(f'DROP OWNED BY "{reader}"', f'DROP ROLE "{reader}"')


def test_an_input_history_not_yet_folded_in_names_each_message_once(store: str,
                                                                    tmp_path: Path) -> None:
    """A message published and then replaced for the same input, both events
    still unfolded: a read-only engine listed the message twice."""
    wf = fl.Workflow("twice", topics=["in"])
    for name in ("first", "again"):
        @wf.producer(name=name, publishes=["in"])
        def produce(ctx: Any, state: Any) -> None:
            order = ctx.register_input("shop", "order", "o-1")
            ctx.publish("in", message_id="m1", payload={"from": ctx.handler}, input_id=order)

    crashing = fl.Engine(store, checkpoint=crash_after("after_append:producer_commit", 2))
    crashing.register(wf)
    with pytest.raises(Died):
        crashing.run_session("twice")
    crashing.close()
    with fl.Engine(read_only(store)) as engine:
        engine.register(wf)
        assert engine.read_side_behind() > 0
        order = next(e.stream_id for e in engine.events() if e.aggregate == "Input")
        history = engine.input_history(order)
    assert [m.message_id for m in history.events] == ["m1"]


@pytest.mark.postgres
def test_a_follower_that_reaches_a_standby_behind_waits_for_it(
        clusters: Clusters, tmp_path: Path) -> None:  # noqa: F811
    """`log -f` on a URL of a primary and its standby, the primary gone: the
    standby, replaying a few seconds behind, does not hold yet the last event
    read. That is not a log gone back: the follower waits and goes on (it
    stopped with "no longer holds the event")."""
    clusters.primary("a")
    tool = ScriptedLedgerTool(ExternalLedger(tmp_path / "ledger.db"))
    with fl.Engine(clusters.url("a")) as writer:
        writer.register(ledger_workflow("wf", items=["a"]), tools=[tool])
        writer.run_session("wf")
        clusters.standby_of("b", "a")
        clusters.caught_up("b", "a")
        with clusters.connect("b") as conn:
            conn.execute("ALTER SYSTEM SET recovery_min_apply_delay = '3s'")
            conn.execute("SELECT pg_reload_conf()")
        with fl.Engine(read_only(clusters.url("a", "b"))) as reader, \
                Follower(reader) as follower:
            writer.register(ledger_workflow("wf", items=["a", "b"]), tools=[tool])
            writer.run_session("wf")
            assert follower.reaches(max(e.position for e in writer.events(last=1)))
            clusters.lose("a")  # the follower goes on from b, 3 s behind
            time.sleep(8)
            assert not follower.failed, follower.failed
            assert follower.thread.is_alive()
    assert not follower.failed, follower.failed
    assert follower.seen == sorted(set(follower.seen))


def test_setup_grant_read_lets_a_role_read_through_an_upgrade_and_nothing_more(
        schema: str, role: str, tmp_path: Path) -> None:  # noqa: F811
    """The reader is told the command; the owner runs it; the reader reads
    with ?mode=ro, also a table a later release creates, and may not write."""
    made_by_owner(schema, ["a"])
    with pytest.raises(fl.ConfigurationError) as refused:
        fl.Engine(read_only(role_url(schema, role)))
    assert f"setup --grant-read {role}`" in str(refused.value)
    done = flowledger("--store", owner_url(schema), "setup", "--grant-read", role, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"granted {role!r} reading it (open it with ?mode=ro):" in done.stdout
    assert "INSERT" not in done.stdout and "ALTER DEFAULT PRIVILEGES" in done.stdout
    before = rows(owner_url(schema))
    as_owner(f'CREATE TABLE "{schema}".fl_later_release (x integer)')
    with fl.Engine(read_only(role_url(schema, role))) as reader:
        assert [r.status for r in reader.runs()] == ["committed"] * 2
    status = flowledger("--store", read_only(role_url(schema, role)), "status", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    with pytest.raises(fl.ConfigurationError, match=re.escape("may not use it: it lacks")
                       ) as writing:
        fl.Engine(role_url(schema, role))  # reads only: writing is refused before anything
    # What it most likely meant comes first, not after seven GRANTs.
    assert ("Nothing was read or written. It may read it: to only read it, add ?mode=ro to "
            "the URL. To use it, as the store's owner") in str(writing.value)
    with psycopg.connect(role_url(schema, role).partition("?")[0]) as conn, pytest.raises(
            psycopg.errors.InsufficientPrivilege):
        conn.execute(f'DELETE FROM "{schema}".stored_events')
    assert rows(owner_url(schema)) == before
    done = flowledger("--store", owner_url(schema), "setup", "--grant", role, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"granted {role!r} the use of it:" in done.stdout
    assert calls_when_run(role_url(schema, role), ["a", "b"]) == 1


def _refused_as_an_older_release_left_it(store: str, tables: list[str], projection: str,
                                          version: int) -> str:
    """The store as the release of tables version `version` left it (without
    `tables`, and `projection` never folded): opened read-only, refused with
    what to do. Returns the refusal, on one line."""
    from tests.store_contents import run_sql

    for table in tables:
        run_sql(store, f"DROP TABLE {table}")
    run_sql(store, f"DELETE FROM tracking WHERE application_name = '{projection}'")
    if store.startswith("postgresql"):
        run_sql(store, f"UPDATE fl_store_format SET value = '{version}' WHERE name = 'tables'")
    with pytest.raises(fl.ConfigurationError) as refused:
        fl.Engine(read_only(store))
    said = " ".join(str(refused.value).split())
    assert ("if an older release wrote it, it lacks tables this release reads: open it once "
            "without ?mode=ro" in said.lower() if store.startswith("sqlite") else
            f"older than this release's (tables version {TABLES_VERSION})" in said), said
    return said


def test_a_store_an_older_release_wrote_is_read_only_once_a_writer_opened_it(
        store: str, tmp_path: Path) -> None:
    """The release before had no `fl_log_times`: opened read-only, which may
    create nothing, it is refused with what to do, and nothing changes; once
    opened to write, the new table is made and folded in from the log, and
    read-only readings since a time start where it says."""
    from tests.store_contents import run_sql

    engine = fl.Engine(store)
    engine.register(ledger_workflow("wf", items=["a", "b"]),
                    tools=[ScriptedLedgerTool(MemoryLedger())])
    engine.run_session("wf")
    whole = list(engine.events())
    engine.close()
    said = _refused_as_an_older_release_left_it(store, ["fl_log_times"], "log_times", 2)
    assert "open it once as a role that may create" in said or store.startswith("sqlite")
    assert run_sql(store, "SELECT COUNT(*) FROM tracking WHERE application_name = "
                          "'log_times'") == [(0,)]
    fl.Engine(store).close()  # the upgrade: the table made, the log folded in
    with fl.Engine(read_only(store)) as reader:
        assert reader.read_side_behind() == 0
        assert list(reader.events(since=whole[-1].timestamp)) == [
            e for e in whole if e.timestamp >= whole[-1].timestamp]
        assert [e.position for e in reader.events()] == [e.position for e in whole]


def test_a_store_without_the_settlings_gets_them_folded_from_the_log(store: str) -> None:
    """The release before kept no settlings (`fl_settled`: where each message
    was consumed or skipped; replay's peek at a position reads them) and no
    workers' notes (`fl_workers`). Opened
    read-only, the store is refused with what to do; opened to write, the
    table is made and folded in from the log: the rows a store made by this
    release holds, and pending work is not folded again."""
    from tests.store_contents import run_sql

    engine = fl.Engine(store)
    engine.register(ledger_workflow("wf", items=["a", "b", "c"]),
                    tools=[ScriptedLedgerTool(MemoryLedger())])
    engine.run_session("wf", max_iterations=2)
    engine.close()
    made = run_sql(store, "SELECT * FROM fl_settled ORDER BY event_id")
    assert len(made) == 2
    # The release before had neither table.
    _refused_as_an_older_release_left_it(store, ["fl_settled", "fl_workers"], "settled", 3)
    pending = run_sql(store, "SELECT * FROM fl_messages ORDER BY event_id")

    fl.Engine(store).close()  # the upgrade: the table made, the log folded in

    assert run_sql(store, "SELECT * FROM fl_settled ORDER BY event_id") == made
    assert run_sql(store, "SELECT * FROM fl_messages ORDER BY event_id") == pending
    with fl.Engine(read_only(store)) as reader:
        assert reader.read_side_behind() == 0
