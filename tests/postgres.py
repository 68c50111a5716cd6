"""The PostgreSQL server the `postgres`-marked tests run against.

FLOWLEDGER_TEST_POSTGRES names the server and database (default
postgresql://postgres@127.0.0.1:5432/flowledger_tests, created if missing);
each test gets a schema of its own (flowledger.testing.stores makes and drops
it). Unreachable: those tests are skipped with
the reason shown, unless FLOWLEDGER_REQUIRE_POSTGRES=1 (CI), which fails them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from flowledger.testing.stores import DEFAULT_POSTGRES, fresh_postgres_schema, postgres_unreachable

URL = os.environ.get("FLOWLEDGER_TEST_POSTGRES", DEFAULT_POSTGRES)
REQUIRED = os.environ.get("FLOWLEDGER_REQUIRE_POSTGRES") == "1"


def unreachable() -> str | None:
    """Why the test server cannot be used, or None (creates the database once)."""
    return postgres_unreachable(URL)


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
    with fresh_postgres_schema(URL) as url:
        yield url
