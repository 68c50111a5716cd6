"""flowledger.testing's stores, as users' own test runs meet them: a fresh
SQLite store at each call, and a PostgreSQL test database that two test
processes (pytest-xdist) may find missing at the same instant, or that
answers only once its server has started."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import psycopg
import pytest

import flowledger as fl
import flowledger.testing as flt
from flowledger.testing import stores
from tests import postgres
from tests.integration.test_postgres_failover import Clusters, _free_port, clusters  # noqa: F401


def test_each_fresh_sqlite_store_is_empty_in_one_folder(tmp_path: Path) -> None:
    """It named the same file each time: a property test's second example,
    given the same folder, met the first one's log."""
    with flt.fresh_store("sqlite", tmp_path) as first, fl.Engine(first) as engine:
        engine.register(fl.Workflow("w", topics=["t"]))
    with flt.fresh_store("sqlite", tmp_path) as second:
        assert second != first
        with fl.Engine(second) as engine:
            assert list(engine.events()) == []


@pytest.mark.postgres
def test_test_processes_creating_the_test_database_at_once_all_use_it() -> None:
    """The loser of two CREATE DATABASE at once met a unique violation, taken
    for 'no PostgreSQL server', and every PostgreSQL test of its process failed."""
    if postgres.unreachable() is not None:
        pytest.skip(postgres.unreachable() or "")
    server = postgres.URL.rsplit("/", 1)[0]
    for _ in range(3):
        name = f"fl_kit_{uuid.uuid4().hex[:8]}"
        url = f"{server}/{name}"
        answers: list[str | None] = []
        start = threading.Barrier(6)

        def prepare(answers: list[str | None] = answers, url: str = url,
                    start: threading.Barrier = start) -> None:
            start.wait()
            answers.append(stores._prepare_test_database(url))

        threads = [threading.Thread(target=prepare) for _ in range(6)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert answers == [None] * 6
        finally:
            with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_a_server_that_starts_after_the_first_look_is_used(
        clusters: Clusters, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A failed look was kept for the whole test run: a server still starting
    when the first test asked failed every PostgreSQL test after it."""
    port = clusters.ports["a"] = _free_port()
    url = f"postgresql://postgres@127.0.0.1:{port}/fl_kit_late"
    monkeypatch.setattr(stores, "ASK_AGAIN_AFTER_S", 60.0)
    why = stores.postgres_unreachable(url)
    assert why is not None and why.startswith("no PostgreSQL server at")
    clusters.primary("a")
    assert stores.postgres_unreachable(url) == why  # told again for a while, not asked
    monkeypatch.setattr(stores, "ASK_AGAIN_AFTER_S", 0.0)
    assert stores.postgres_unreachable(url) is None  # then asked again
    with flt.fresh_postgres_schema(url) as store, fl.Engine(store) as engine:
        assert list(engine.events()) == []


@pytest.mark.postgres
def test_fresh_store_goes_to_the_test_database_the_run_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fresh_store(kind, folder)` without a URL, as the README shows it in a
    property test, went to the default server whatever the run was told:
    it takes FLOWLEDGER_TEST_POSTGRES, as the fixtures do."""
    if postgres.unreachable() is not None:
        pytest.skip(postgres.unreachable() or "")
    server = postgres.URL.rsplit("/", 1)[0]
    named = f"{server}/fl_kit_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("FLOWLEDGER_TEST_POSTGRES", named)
    try:
        with flt.fresh_store("postgresql", tmp_path) as url:
            assert url.startswith(named + "?schema=flt_"), url
            with fl.Engine(url) as engine:
                engine.register(fl.Workflow("w", topics=["t"]))
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{named.rsplit("/", 1)[1]}" WITH (FORCE)')


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_the_fresh_store_fixture_gives_a_new_store_of_the_runs_kind_at_each_call(
        kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """`flowledger_fresh_store()`, for a store per hypothesis example, follows
    what the run was told (here FLOWLEDGER_TEST_STORE), as `flowledger_store`."""
    monkeypatch.setenv("FLOWLEDGER_TEST_STORE", kind)
    monkeypatch.setenv("FLOWLEDGER_TEST_POSTGRES", postgres.URL)
    fresh = request.getfixturevalue("flowledger_fresh_store")
    with fresh() as first, fl.Engine(first) as engine:
        engine.register(fl.Workflow("w", topics=["t"]))
    with fresh() as second, fl.Engine(second) as engine:
        assert second != first and list(engine.events()) == []
        assert second.startswith(kind)


HOLDER = """
import sys, time
import flowledger as fl
from flowledger.testing import fresh_postgres_schema
with fresh_postgres_schema(sys.argv[1]) as url, fl.Engine(url):
    print(url.rsplit("schema=", 1)[1], flush=True)
    time.sleep(120)
"""


@pytest.mark.postgres
def test_a_schema_a_killed_test_process_left_is_dropped_by_the_next_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A test process killed outright (SIGKILL, a CI timeout) never drops its
    schema. The next process to make one in that database drops it, and
    leaves alone the schema of a test process still running."""
    import signal
    import subprocess
    import sys

    if postgres.unreachable() is not None:
        pytest.skip(postgres.unreachable() or "")

    def holder() -> tuple[subprocess.Popen[str], str]:
        p = subprocess.Popen([sys.executable, "-c", HOLDER, postgres.URL],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        return p, p.stdout.readline().strip()

    killed, left = holder()
    living, running = holder()
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)

        def schemas() -> set[str]:
            with psycopg.connect(postgres.URL, autocommit=True) as c:
                return {n for (n,) in c.execute("SELECT nspname FROM pg_namespace")}

        assert {left, running} <= schemas()
        monkeypatch.setattr(stores, "_swept", set())  # as in a new test process
        with flt.fresh_postgres_schema(postgres.URL) as url, fl.Engine(url):
            pass
        now = schemas()
        assert left not in now and running in now
    finally:
        living.kill()
        living.wait(30)
        with psycopg.connect(postgres.URL, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{running}" CASCADE')
