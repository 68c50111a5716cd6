"""PostgreSQL schemas that are not a store of ours, or no store at all.

A real server throughout: another application's tables under the names the
log uses, a misspelt schema given to a command that only reads, a role that
may not create. Each is refused with what was wrong and what to do, and the
schema is left exactly as it was: no table, trigger or function of ours is
added to another application's schema, and a command that reads creates no
store.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from tests import postgres
from tests.e2e.test_cli import assert_user_error, flowledger

pytestmark = pytest.mark.postgres

psycopg = pytest.importorskip("psycopg")


def _server() -> Any:
    return psycopg.connect(postgres.URL, autocommit=True)


def catalog(schema: str) -> list[tuple[str, str]]:
    """Everything the schema holds: relations, functions, triggers, types."""
    with _server() as conn:
        return sorted(conn.execute(
            "SELECT 'relation', relname FROM pg_class WHERE relnamespace = "
            "(SELECT oid FROM pg_namespace WHERE nspname = %(s)s) "
            "UNION ALL SELECT 'function', proname FROM pg_proc WHERE pronamespace = "
            "(SELECT oid FROM pg_namespace WHERE nspname = %(s)s) "
            "UNION ALL SELECT 'trigger', tgname FROM pg_trigger t JOIN pg_class c "
            "ON c.oid = t.tgrelid WHERE c.relnamespace = "
            "(SELECT oid FROM pg_namespace WHERE nspname = %(s)s) "
            "UNION ALL SELECT 'schema', nspname FROM pg_namespace WHERE nspname = %(s)s",
            {"s": schema}).fetchall())


@pytest.fixture
def schema() -> Iterator[str]:
    """A schema name no store uses yet; dropped afterwards, whatever made it."""
    name = f"t_bad_{uuid.uuid4().hex[:10]}"
    yield name
    with _server() as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def at(schema: str) -> str:
    return f"{postgres.URL}?schema={schema}"


FOREIGN = {
    "another shape of stored_events": [
        "CREATE TABLE {s}.stored_events (id serial PRIMARY KEY, body jsonb)",
        "INSERT INTO {s}.stored_events (body) VALUES ('{{}}')"],
    "another application's tracking": [
        "CREATE TABLE {s}.tracking (user_id int, page text, seen_at timestamptz)"],
    "another eventsourcing application's log": [
        "CREATE TABLE {s}.stored_events (originator_id uuid NOT NULL, originator_version "
        "bigint NOT NULL, topic text NOT NULL, state bytea, notification_id bigserial)",
        "INSERT INTO {s}.stored_events (originator_id, originator_version, topic, state) "
        "VALUES (gen_random_uuid(), 1, 'otherapp.domain:Thing.Created', '\\x00')"],
}
SAID = {
    "another shape of stored_events": "its table 'stored_events' has the columns (id, body)",
    "another application's tracking": "its table 'tracking' has the columns (user_id, page, "
                                      "seen_at), where a flowledger store has "
                                      "(application_name, notification_id)",
    "another eventsourcing application's log": "its log holds the events of another "
                                               "application (the first is "
                                               "'otherapp.domain:Thing.Created')",
}


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_another_applications_tables_are_refused_and_left_as_they_were(
        kind: str, schema: str, tmp_path: Path) -> None:
    with _server() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        for statement in FOREIGN[kind]:
            conn.execute(statement.format(s=f'"{schema}"'))
    before = catalog(schema)
    with pytest.raises(fl.ConfigurationError) as refused:
        fl.Engine(at(schema))
    said = str(refused.value)
    assert f"schema {schema!r} of database " in said and "is not a flowledger store" in said
    assert SAID[kind] in said and "nothing was written" in said
    assert catalog(schema) == before
    source = f"sqlite:///{tmp_path / 'source.db'}"
    fl.Engine(source).close()
    assert_user_error(flowledger("copy", "--from", source, "--to", at(schema), cwd=tmp_path),
                      "is not a flowledger store", SAID[kind])
    assert catalog(schema) == before


def test_commands_that_read_and_a_copys_source_create_no_store(schema: str,
                                                               tmp_path: Path) -> None:
    """A misspelt schema is said to hold no store; it used to be created, and
    `status` answered "No workflows" with exit 0."""
    for command in (["status"], ["audit", "input", "x"], ["verify"]):
        assert_user_error(flowledger("--store", at(schema), *command, cwd=tmp_path),
                          f"schema {schema!r} of database", "holds no flowledger store yet",
                          "check the database and ?schema= in the URL", "Nothing was created")
    with pytest.raises(fl.ConfigurationError, match="holds no flowledger store"):
        fl.Engine(at(schema), create=False)
    target = f"sqlite:///{tmp_path / 'target.db'}"
    assert_user_error(flowledger("copy", "--from", at(schema), "--to", target, cwd=tmp_path),
                      "holds no flowledger store")
    assert catalog(schema) == []
    missing = tmp_path / "never-made.db"
    assert_user_error(flowledger("copy", "--from", f"sqlite:///{missing}", "--to", at(schema),
                                 cwd=tmp_path), "not a flowledger store yet")
    assert not missing.exists() and catalog(schema) == []
    # Once it exists, it opens.
    fl.Engine(at(schema)).close()
    fl.Engine(at(schema), create=False).close()


def test_a_role_that_may_not_create_is_told_what_the_store_needs(schema: str) -> None:
    role = f"fl_reader_{uuid.uuid4().hex[:8]}"
    with _server() as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        base, _, rest = postgres.URL.partition("://")
        url = f"{base}://{role}@{rest.partition('@')[2]}?schema={schema}"
        with pytest.raises(fl.ConfigurationError) as refused:
            fl.Engine(url)
        said = str(refused.value)
        assert "permission denied for database" in said
        assert "open it once as a role that may create in its schema" in said
        assert catalog(schema) == []
    finally:
        with _server() as conn:
            conn.execute(f'DROP ROLE "{role}"')


def test_a_schema_named_in_another_case_than_the_stores_is_refused() -> None:
    """`CREATE SCHEMA AppData` makes `appdata`; ?schema=AppData is taken as written:
    it made a second, empty store beside the one meant (or, for a role that may
    not create, said to run setup as the owner)."""
    import psycopg

    with postgres.fresh_schema() as url:
        with fl.Engine(url):
            pass
        base, _, query = url.partition("?schema=")
        other = f"{base}?schema={query.upper()}"
        with pytest.raises(fl.ConfigurationError) as caught:
            fl.Engine(other)
        said = str(caught.value)
        assert f"schema {query.upper()!r} of database" in said
        assert f"but schema {query!r} does" in said and f"(?schema={query})" in said
        with psycopg.connect(postgres.URL) as conn:
            assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                                (query.upper(),)).fetchone() == (0,)
