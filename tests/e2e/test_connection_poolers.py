"""A store reached through a connection pooler (ADR 0017, "Connection poolers"),
a real PgBouncer in front of the test server:

* in transaction or statement mode (each transaction handed to whichever
  server session is free) it is refused when the store is opened, by the
  library and by the CLI, saying what to do; nothing is read or written, and
  a log already there stays as it was;
* a pooler that cannot take the connections telling its mode apart is said
  to be the reason, nothing read or written;
* in session mode every feature works: four processes racing sessions
  mutate each item once, and a holder killed with SIGKILL is taken over
  without waiting out its lease (its connection's end frees its lock).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import flowledger as fl
from tests import pgbouncer, postgres
from tests.e2e.test_cli import assert_user_error, flowledger
from tests.e2e.test_processes_share_a_store import (
    kill_holder_and_take_over,
    race_and_count_calls,
)
from tests.helpers import MemoryLedger, ScriptedLedgerTool, ledger_workflow

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module", params=["transaction", "statement"])
def lending_pooler(request: pytest.FixtureRequest) -> Iterator[int]:
    with pgbouncer.pgbouncer(request.param) as port:
        yield port


@pytest.fixture(scope="module")
def session_pooler() -> Iterator[int]:
    with pgbouncer.pgbouncer("session") as port:
        yield port


@pytest.fixture
def direct() -> Iterator[str]:
    with postgres.fresh_schema() as url:
        yield url


def _schema_exists(url: str) -> bool:
    schema = url.rpartition("schema=")[2]
    with psycopg.connect(postgres.URL, autocommit=True) as c:
        return c.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                         (schema,)).fetchone() is not None


def _logged(url: str) -> list[tuple[int, str]]:
    with fl.Engine(url) as engine:
        return [(e.position, e.name) for e in engine.events()]


def test_a_pooler_that_lends_sessions_is_refused_before_a_new_store_is_made(
        lending_pooler: int, direct: str) -> None:
    with pytest.raises(fl.ConfigurationError) as refused:
        fl.Engine(pgbouncer.through(direct, lending_pooler))
    said = str(refused.value)
    assert "do not keep one server session" in said
    assert "Nothing was read or written" in said
    assert "pool_mode = session" in said
    assert not _schema_exists(direct), "the refused opening created the store's schema"


def test_a_pooler_that_lends_sessions_leaves_a_store_as_it_was(
        lending_pooler: int, direct: str) -> None:
    ledger = MemoryLedger()
    with fl.Engine(direct) as engine:
        engine.register(ledger_workflow(), tools=[ScriptedLedgerTool(ledger)])
        assert engine.run_session("wf").status == "completed"
    before = _logged(direct)
    with pytest.raises(fl.ConfigurationError, match="pool_mode = session"):
        fl.Engine(pgbouncer.through(direct, lending_pooler))
    assert _logged(direct) == before
    with fl.Engine(direct) as engine:
        assert engine.verify().ok


def test_the_cli_says_what_to_do_about_such_a_pooler(lending_pooler: int, direct: str,
                                                      tmp_path: Path) -> None:
    with fl.Engine(direct):
        pass  # the store exists: the refusal is not about a missing one
    result = flowledger("--store", pgbouncer.through(direct, lending_pooler), "status",
                        cwd=tmp_path)
    assert_user_error(result, "do not keep one server session", "pool_mode = session")


def test_through_a_session_pooler_racing_processes_mutate_each_item_once(
        session_pooler: int, direct: str, tmp_path: Path) -> None:
    race_and_count_calls(tmp_path, pgbouncer.through(direct, session_pooler))


def test_through_a_session_pooler_a_killed_holder_is_taken_over_at_once(
        session_pooler: int, direct: str, tmp_path: Path) -> None:
    kill_holder_and_take_over(tmp_path, pgbouncer.through(direct, session_pooler))


def test_a_pooler_too_full_to_be_told_apart_is_named_as_the_reason(direct: str) -> None:
    with (pgbouncer.pgbouncer("session", clients=1) as port,
          pytest.raises(fl.ConfigurationError) as refused):
        fl.Engine(pgbouncer.through(direct, port))
    said = str(refused.value)
    assert "a second connection" in said and "max_client_conn" in said, said
    assert "do not keep one server session" not in said  # not what was seen
    assert "Nothing was read or written" in said
    assert not _schema_exists(direct)
