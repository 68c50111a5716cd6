"""The PostgreSQL server the `postgres`-marked tests run against.

FLOWLEDGER_TEST_POSTGRES names the server and database (default
postgresql://postgres@127.0.0.1:5432/flowledger_tests, created if missing);
each test gets a schema of its own. Unreachable: those tests are skipped with
the reason shown, unless FLOWLEDGER_REQUIRE_POSTGRES=1 (CI), which fails them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from functools import cache
from urllib.parse import urlsplit

import pytest

URL = os.environ.get("FLOWLEDGER_TEST_POSTGRES",
                     "postgresql://postgres@127.0.0.1:5432/flowledger_tests")
REQUIRED = os.environ.get("FLOWLEDGER_REQUIRE_POSTGRES") == "1"


def _connect(dbname: str | None = None):  # type: ignore[no-untyped-def]
    import psycopg

    parts = urlsplit(URL)
    return psycopg.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
                           user=parts.username or "postgres", password=parts.password or "",
                           dbname=dbname or parts.path.lstrip("/"), connect_timeout=3,
                           autocommit=True)


@cache
def unreachable() -> str | None:
    """Why the test server cannot be used, or None (creates the database once)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'flowledger[postgres]')"
    name = urlsplit(URL).path.lstrip("/")
    try:
        with _connect("postgres") as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname=%s",
                                 (name,)).fetchone()
            if not found:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as e:
        detail = " ".join(str(e).split())[:120]
        return f"no PostgreSQL server at {URL} ({type(e).__name__}: {detail})"
    return None


def report() -> str:
    why = unreachable()
    if why is None:
        return f"PostgreSQL tests: running against {URL}"
    if REQUIRED:
        return f"PostgreSQL tests: REQUIRED but {why}"
    return f"PostgreSQL tests: SKIPPED, {why}"


def skip_unless_reachable(items: list[pytest.Item]) -> None:
    """Skip the PostgreSQL tests, saying why, when the server cannot be used
    (unless it is required: then `fresh_schema` fails each of them)."""
    why = unreachable()
    if why is None or REQUIRED:
        return
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=why))


@contextlib.contextmanager
def fresh_schema() -> Iterator[str]:
    if REQUIRED and unreachable() is not None:
        pytest.fail(f"PostgreSQL is required (FLOWLEDGER_REQUIRE_POSTGRES=1) but {unreachable()}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(URL)
    yield f"{parts.scheme}://{parts.netloc}{parts.path}?schema={schema}"
    with _connect() as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
