"""A fresh store per test: a temporary SQLite file, memory://, or a schema of its
own on a PostgreSQL server (dropped afterwards)."""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from flowledger.domain.errors import ConfigurationError
from flowledger.domain.text import one_line
from flowledger.infrastructure.store_url import parse_store_url, shown

StoreKind = Literal["sqlite", "memory", "postgresql"]
STORE_KINDS: tuple[StoreKind, ...] = ("sqlite", "memory", "postgresql")
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/flowledger_tests"


def postgres_for_tests() -> str:
    """The PostgreSQL database test schemas go in when no URL is given:
    FLOWLEDGER_TEST_POSTGRES, else DEFAULT_POSTGRES."""
    return os.environ.get("FLOWLEDGER_TEST_POSTGRES") or DEFAULT_POSTGRES


@contextlib.contextmanager
def fresh_store(kind: str, folder: Path, postgres: str | None = None) -> Iterator[str]:
    """The URL of an empty store of `kind`: a new SQLite file in `folder` (which
    the caller cleans up; each call names another, so one folder serves every
    example of a property test), memory:// (private to one engine: no crash
    tests), or a new schema of the PostgreSQL database `postgres` names
    (default: `postgres_for_tests()`; created if missing)."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'flow-{uuid.uuid4().hex[:12]}.db'}"
    elif kind == "memory":
        yield "memory://"
    elif kind == "postgresql":
        with fresh_postgres_schema(postgres or postgres_for_tests()) as url:
            yield url
    else:
        raise ConfigurationError(f"store kind {kind!r} is not one of {', '.join(STORE_KINDS)}")


def _connect(url: str, dbname: str | None = None) -> Any:
    """A connection as the engine would open one for `url`, to `dbname`."""
    import psycopg

    return psycopg.connect(**parse_store_url(url).libpq(3, dbname), autocommit=True)


_REACHABLE: set[str] = set()  # servers whose test database exists: asked once
_FAILED: dict[str, tuple[float, str]] = {}  # why not, and when: asked again after a while
ASK_AGAIN_AFTER_S = 10.0  # a server that was starting up may answer now


def postgres_unreachable(url: str) -> str | None:
    """Why the server at `url` cannot hold test schemas, or None (creating its
    database once, if missing). A failure is told again for a few seconds (each
    test of a run without a server does not wait for it), then asked again."""
    if url in _REACHABLE:
        return None
    failed = _FAILED.get(url)
    if failed is not None and time.monotonic() - failed[0] < ASK_AGAIN_AFTER_S:
        return failed[1]
    why = _prepare_test_database(url)
    if why is None:
        _REACHABLE.add(url)
        _FAILED.pop(url, None)
    else:
        _FAILED[url] = (time.monotonic(), why)
    return why


def _prepare_test_database(url: str) -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'flowledger[postgres]')"
    try:
        name = parse_store_url(url).env["POSTGRES_DBNAME"]
        conn = _connect(url, "postgres")
    except Exception as e:
        detail = one_line(e)[:120]
        return f"no PostgreSQL server at {shown(url)} ({type(e).__name__}: {detail})"
    try:
        with conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname=%s",
                                 (name,)).fetchone()
            if not found:
                # Two test processes creating it at once: the loser's CREATE meets
                # the winner's row (a unique violation, or "already exists").
                with contextlib.suppress(psycopg.errors.DuplicateDatabase,
                                         psycopg.errors.UniqueViolation):
                    conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as e:
        detail = one_line(e)[:160]
        return (f"the PostgreSQL server at {shown(url)} answers, but its test database "
                f"{name!r} cannot be made ({type(e).__name__}: {detail}); create it, or "
                "name one this role may use")
    return None


# A test schema's name, and the advisory lock (this class, the name's first
# 32 bits) that the process using it holds on a connection of its own for as
# long as it does: such a schema whose lock is free was left by a process
# killed outright (SIGKILL, a CI timeout), which never dropped it. (Older
# releases named theirs t_...: they took no lock, and may still be in use.)
TEST_SCHEMA = re.compile(r"flt_[0-9a-f]{12}")
_SCHEMA_LOCKS = 0x666C7473  # "flts"
_swept: set[str] = set()  # test databases swept of such schemas by this process


def _lock_key(schema: str) -> tuple[int, int]:
    digits = schema.rpartition("_")[2]
    return _SCHEMA_LOCKS, int(digits[:8], 16) - 2**31


@contextlib.contextmanager
def fresh_postgres_schema(url: str = DEFAULT_POSTGRES) -> Iterator[str]:
    """A store URL with a schema of its own (`?schema=flt_...`), dropped
    afterwards; the first one a process makes in a database also drops the
    test schemas that killed processes left there."""
    why = postgres_unreachable(url)
    if why is not None:
        raise ConfigurationError(f"cannot make a test store on PostgreSQL: {why}")
    schema = f"flt_{uuid.uuid4().hex[:12]}"
    base, _, query = url.partition("?")  # not urlsplit: it refuses lists of IPv6 hosts
    kept = [p for p in query.split("&") if p and p.partition("=")[0] != "schema"]
    with _connect(url) as keeper:  # holds the schema's lock until it is dropped
        keeper.execute("SELECT pg_advisory_lock(%s, %s)", _lock_key(schema))
        if url not in _swept:
            _swept.add(url)
            drop_left_test_schemas(keeper, but=schema)
        try:
            yield f"{base}?" + "&".join([*kept, f"schema={schema}"])
        finally:
            keeper.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def drop_left_test_schemas(conn: Any, but: str | None = None) -> list[str]:
    """Drop the test schemas (`flt_` and 12 hex digits) of the database `conn`
    is on that no living process holds: what test processes killed outright
    left (`but`: one `conn` holds itself; its lock, taken again on the same
    connection, would be granted). Returns their names."""
    dropped = []
    for (name,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname ~ %s",
                                (f"^{TEST_SCHEMA.pattern}$",)).fetchall():
        if name == but:
            continue
        (free,) = conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                               _lock_key(name)).fetchone()
        if free:
            try:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
                dropped.append(name)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", _lock_key(name))
    return dropped
