"""Pre-flight validation (DESIGN §1.6) and limits (§1.7): clear errors, nothing lost."""

from __future__ import annotations

from typing import Any

import pytest

import flowledger as fl
from tests.helpers import ScriptedLedgerTool, ledger_workflow, message_status


def simple(name: str = "wf") -> fl.Workflow:
    wf = fl.Workflow(name, topics=["in"])

    @wf.consumer(subscribe=["in"])
    class Reader:
        def prepare(self, ctx: Any, state: Any) -> None:
            return None

    return wf


def test_undeclared_topics_are_named(make_engine):
    wf = fl.Workflow("wf", topics=["in"])

    @wf.producer(publishes=["nowhere"])
    def p(ctx: Any, state: Any) -> None: ...

    @wf.consumer(subscribe=["in", "ghost"])
    class C:
        def prepare(self, ctx: Any, state: Any) -> None: ...

    with pytest.raises(fl.DefinitionError) as e:
        make_engine().register(wf)
    assert "producer 'p' uses topic 'nowhere'" in str(e.value)
    assert "consumer 'C' uses topic 'ghost'" in str(e.value)


def test_consumer_subscribing_to_nothing_is_refused(make_engine):
    wf = fl.Workflow("wf", topics=["in"])

    @wf.consumer()
    class Lonely:
        def prepare(self, ctx: Any, state: Any) -> None: ...

    with pytest.raises(fl.DefinitionError, match="'Lonely' subscribes to nothing"):
        make_engine().register(wf)


def test_colliding_handler_names_are_refused(make_engine):
    wf = fl.Workflow("wf", topics=["in"])

    @wf.producer(publishes=["in"], name="same")
    def p(ctx: Any, state: Any) -> None: ...

    @wf.consumer(subscribe=["in"], name="same")
    class C:
        def prepare(self, ctx: Any, state: Any) -> None: ...

    with pytest.raises(fl.DefinitionError, match="handler name 'same' is used by a producer"):
        make_engine().register(wf)


def test_tools_referenced_but_not_provided_are_refused(make_engine):
    wf = fl.Workflow("wf", topics=["in"])

    @wf.consumer(subscribe=["in"], tools=["crm"])
    class C:
        def prepare(self, ctx: Any, state: Any) -> None: ...

    with pytest.raises(fl.DefinitionError, match="uses tool 'crm', which was not provided"):
        make_engine().register(wf)


def test_consumer_without_prepare_and_bad_tools_are_refused(make_engine, ledger):
    wf = fl.Workflow("wf", topics=["in"])

    @wf.consumer(subscribe=["in"])
    class NoPrepare:
        pass

    with pytest.raises(fl.DefinitionError, match="has no prepare"):
        make_engine().register(wf)
    with pytest.raises(fl.DefinitionError, match=r"fl\.Tool instances"):
        make_engine().register(simple(), tools=["not a tool"])  # type: ignore[list-item]
    with pytest.raises(fl.DefinitionError, match="two tools are named 'ledger'"):
        make_engine().register(simple(), tools=[ScriptedLedgerTool(ledger),
                                                ScriptedLedgerTool(ledger)])

    class BadReconcile(fl.Tool):
        name = "bad"

        @fl.mutator(reconcile="missing")
        def act(self) -> None: ...

    with pytest.raises(fl.DefinitionError, match="no such method"):
        make_engine().register(simple(), tools=[BadReconcile()])


def test_bad_workflow_declarations_fail_at_once():
    with pytest.raises(fl.DefinitionError):
        fl.Workflow("", topics=["a"])
    with pytest.raises(fl.DefinitionError, match="listed twice"):
        fl.Workflow("wf", topics=["a", "a"])
    wf = fl.Workflow("wf", topics=["a"])
    with pytest.raises(fl.DefinitionError, match="decorates a class"):
        wf.consumer(subscribe=["a"])(lambda ctx, state: None)


def test_incomplete_runs_of_a_removed_handler_block_registration(make_engine, ledger):
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["uncertain"]
    tool.reconcile_script = ["retry"]
    engine.register(ledger_workflow(items=["a"]), tools=[tool])
    assert engine.run_session("wf").status == "suspended"

    renamed = ledger_workflow(items=["a"])
    renamed.consumers[0] = renamed.consumers[0].__class__(
        "Renamed", *[getattr(renamed.consumers[0], f) for f in
                     ("cls", "subscribe", "publishes", "tools")])
    with pytest.raises(fl.DefinitionError,
                       match="handler 'Append' not found; it has 1 incomplete run"):
        make_engine().register(renamed, tools=[ScriptedLedgerTool(ledger)])


def test_a_payload_over_the_limit_is_a_logic_error_and_nothing_is_lost(make_engine):
    wf = fl.Workflow("wf", topics=["in"])
    size = {"n": 10}

    @wf.producer(publishes=["in"])
    def p(ctx: Any, state: Any) -> None:
        ctx.publish("in", message_id=f"m{size['n']}", payload="x" * size["n"])

    engine = make_engine(limits=fl.Limits(payload=100))
    engine.register(wf)
    assert engine.run_session("wf").status == "completed"
    before = [(e.position, e.name) for e in engine.events()]

    size["n"] = 500
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert "payload is 50" in (result.error or "") and "limit of 100 bytes" in (result.error or "")
    after = [(e.position, e.name) for e in engine.events()]
    assert after[: len(before)] == before  # nothing earlier lost or changed
    assert message_status(engine, "wf", "in") == {"pending": 1}  # the big one never landed


@pytest.mark.parametrize("field, returned", [
    ("state", lambda: "y" * 300),
    ("data", None),
])
def test_state_and_data_over_the_limit(make_engine, field, returned):
    wf = fl.Workflow("wf", topics=["in"])

    @wf.producer(publishes=["in"])
    def p(ctx: Any, state: Any) -> Any:
        ctx.publish("in", message_id="m", payload=1)
        return returned() if field == "state" else None

    @wf.consumer(subscribe=["in"])
    class C:
        def prepare(self, ctx: Any, state: Any) -> Any:
            return fl.Prepared({"in": ["m"]}, data="z" * 300)

    engine = make_engine(limits=fl.Limits(state=100, data=100))
    engine.register(wf)
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert f"{field} is 30" in (result.error or "")


def test_unserialisable_values_are_clear_logic_errors(make_engine):
    wf = fl.Workflow("wf", topics=["in"])

    @wf.producer(publishes=["in"])
    def p(ctx: Any, state: Any) -> None:
        ctx.publish("in", message_id="m", payload={"when": object()})

    engine = make_engine()
    engine.register(wf)
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert "cannot be stored in the log" in (result.error or "")
    assert "['when'] is of type object, which the log cannot store" in (result.error or "")


def test_a_mutation_result_over_the_limit_keeps_the_mutation_applied(make_engine, ledger):
    class Big(fl.Tool):
        name = "ledger"

        @fl.mutator
        def append(self, key: str, value: str) -> str:
            ledger.append(key, value)
            return "r" * 1000

    engine = make_engine(limits=fl.Limits(result=100))
    engine.register(ledger_workflow(items=["a"]), tools=[Big()])
    result = engine.run_session("wf")
    assert result.status == "failed"
    run = engine.run(next(r for r in result.runs if r.handler == "Append").run_id)
    assert run.status.value == "failed:internal"
    assert run.mutation is not None and run.mutation.state.value == "applied"
    assert "over the limit" in (run.reason or "")
    assert ledger.keys() == ["a"]
    assert message_status(engine, "wf", "in") == {"reserved": 1}


def test_a_reconciled_result_that_cannot_be_stored_names_the_reconcile(make_engine, ledger):
    """The result a reconcile's `Reconciliation.applied(...)` carries was said
    to be the mutator's, where the mutator's own result never came back."""
    from datetime import date

    class Unsure(fl.Tool):
        name = "ledger"

        @fl.mutator(reconcile="look")
        def append(self, key: str, value: str) -> str:
            ledger.append(key, value)
            raise fl.UncertainOutcome("timed out after writing")

        def look(self, key: str, value: str) -> fl.Reconciliation:
            return fl.Reconciliation.applied({"on": date(2026, 1, 1)})

    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[Unsure()])
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert ("result of ledger.look (the reconcile of ledger.append), in its Reconciliation"
            in (result.error or ""))
    assert ledger.keys() == ["a"]


def test_limits_must_be_positive():
    with pytest.raises(fl.ConfigurationError, match="positive"):
        fl.Limits(payload=0)


def test_bad_store_urls_are_clear(tmp_path):
    for url in ("flow.db", "mysql://x", "sqlite://", f"sqlite:///{tmp_path}/missing/dir/x.db"):
        with pytest.raises(fl.ConfigurationError):
            fl.Engine(url)


@pytest.mark.parametrize("url", ["flow.db", "mysql://x"])
def test_a_bad_store_url_suggests_the_stores_this_release_opens(url):
    with pytest.raises(fl.ConfigurationError) as caught:
        fl.Engine(url)
    message = str(caught.value)
    for store in ("sqlite:///", "postgresql://", "memory://"):
        assert store in message


def test_a_postgresql_server_that_does_not_answer_is_a_clear_error():
    url = "postgresql://postgres@127.0.0.1:1/nowhere"
    with pytest.raises(fl.ConfigurationError) as caught:
        fl.Engine(url)
    message = str(caught.value)
    assert f"cannot open store {url!r}" in message
    assert "\n" not in message
    assert "Connection refused" in message and "server runs at 127.0.0.1:1" in message


def test_a_server_reached_by_hostaddr_is_named_by_the_address_tried():
    """With `hostaddr`, libpq connects to that address and the host only
    names the server: the message says where it really looked."""
    url = "postgresql://postgres@db.internal:1/nowhere?hostaddr=127.0.0.1"
    with pytest.raises(fl.ConfigurationError) as caught:
        fl.Engine(url)
    message = str(caught.value)
    assert "Connection refused" in message
    assert "server runs at 127.0.0.1:1 (db.internal)" in message
    assert "postgres extra" not in message  # it is installed: that is not what is wrong


@pytest.mark.postgres
def test_a_database_or_user_that_does_not_exist_is_said_at_once_with_what_to_do():
    from tests import postgres

    server = postgres.URL.rsplit("/", 1)[0]  # the test server, without its database
    missing_db = f"{server}/flowledger_no_such_database"
    with pytest.raises(fl.ConfigurationError) as caught:
        fl.Engine(missing_db)
    assert 'database "flowledger_no_such_database" does not exist' in str(caught.value)
    assert "createdb" in str(caught.value)
    nobody = server.replace("postgres@", "flowledger_nobody@") + "/postgres"
    with pytest.raises(fl.ConfigurationError) as caught:
        fl.Engine(nobody)
    assert 'role "flowledger_nobody" does not exist' in str(caught.value)
    assert "check the user and the password" in str(caught.value)


def test_a_server_that_does_not_speak_postgresql_is_said_to_be_the_wrong_host_or_port():
    """A web server on the port (a wrong port, a proxy): libpq's words are
    about TLS or authentication; the advice is about the host and port."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(100)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        for query in ("", "?sslmode=disable"):
            with pytest.raises(fl.ConfigurationError) as caught:
                fl.Engine(f"postgresql://postgres@127.0.0.1:{port}/db{query}")
            said = str(caught.value)
            assert f"the server at 127.0.0.1:{port} did not answer as PostgreSQL" in said
            assert "ssl parameters" not in said and "password" not in said
    finally:
        listener.close()


@pytest.mark.postgres
def test_a_role_without_a_connection_to_spare_or_without_connect_is_told_what_to_do() -> None:
    """A role's CONNECTION LIMIT reached: the store is unreachable for now (a
    worker waits for it), and the message names the limit, wherever in the
    opening the connection was refused. A role the database does not let
    connect is told the GRANT."""
    import uuid

    import psycopg

    from tests import postgres

    name = f"fl_limit_{uuid.uuid4().hex[:8]}"
    server = postgres.URL.rsplit("/", 1)[0].replace("postgres@", f"{name}@")
    with psycopg.connect(postgres.URL, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{name}" LOGIN')
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{name}"')
    url = f"{server}/{name}"
    try:
        with fl.Engine(url):
            pass  # the store made
        with psycopg.connect(postgres.URL, autocommit=True) as admin:
            for limit in (0, 1, 2):  # refused at the first connection, or later on
                admin.execute(f'ALTER ROLE "{name}" CONNECTION LIMIT {limit}')
                with pytest.raises(fl.StoreUnreachable) as caught:
                    fl.Engine(url)
                said = str(caught.value)
                assert f'too many connections for role "{name}"' in said, (limit, said)
                assert "has no connection to spare" in said and "CONNECTION LIMIT" in said
            admin.execute(f'ALTER ROLE "{name}" CONNECTION LIMIT -1')
            admin.execute(f'ALTER DATABASE "{name}" OWNER TO postgres')
            admin.execute(f'REVOKE CONNECT ON DATABASE "{name}" FROM PUBLIC')
        with pytest.raises(fl.ConfigurationError) as caught:
            fl.Engine(url)
        assert not isinstance(caught.value, fl.StoreUnreachable)
        assert f'GRANT CONNECT ON DATABASE "{name}" TO "{name}";' in str(caught.value)
    finally:
        with psycopg.connect(postgres.URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'DROP OWNED BY "{name}"')
            admin.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.mark.postgres
def test_the_createdb_the_message_says_creates_the_database() -> None:
    """The command the message gives, run as written, makes the store
    openable (several hosts, one a standby: tests/integration/test_postgres_failover.py)."""
    import uuid

    import psycopg

    from tests import postgres
    from tests.helpers import run_createdb_as_said

    server = postgres.URL.rsplit("/", 1)[0]
    url = f"{server}/fl_hint_{uuid.uuid4().hex[:8]}"
    try:
        run_createdb_as_said(url)
        fl.Engine(url).close()
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
