"""A fresh store per test: a temporary SQLite file, memory://, or a schema of its
own on a PostgreSQL server (dropped afterwards)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, Literal

from flowledger.domain.errors import ConfigurationError
from flowledger.infrastructure.store_url import parse_store_url, shown

StoreKind = Literal["sqlite", "memory", "postgresql"]
STORE_KINDS: tuple[StoreKind, ...] = ("sqlite", "memory", "postgresql")
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/flowledger_tests"


@contextlib.contextmanager
def fresh_store(kind: str, folder: Path, postgres: str = DEFAULT_POSTGRES) -> Iterator[str]:
    """The URL of an empty store of `kind`: an SQLite file in `folder` (which the
    caller cleans up), memory:// (private to one engine: no crash tests), or a new
    schema of the PostgreSQL database `postgres` names (created if missing)."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'flow.db'}"
    elif kind == "memory":
        yield "memory://"
    elif kind == "postgresql":
        with fresh_postgres_schema(postgres) as url:
            yield url
    else:
        raise ConfigurationError(f"store kind {kind!r} is not one of {', '.join(STORE_KINDS)}")


def _connect(url: str, dbname: str | None = None) -> Any:
    """A connection as the engine would open one for `url`, to `dbname`."""
    import psycopg

    return psycopg.connect(**parse_store_url(url).libpq(3, dbname), autocommit=True)


@cache
def postgres_unreachable(url: str) -> str | None:
    """Why the server at `url` cannot hold test schemas, or None (creating its
    database once, if missing)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'flowledger[postgres]')"
    try:
        name = parse_store_url(url).env["POSTGRES_DBNAME"]
        with _connect(url, "postgres") as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname=%s",
                                 (name,)).fetchone()
            if not found:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as e:
        detail = " ".join(str(e).split())[:120]
        return f"no PostgreSQL server at {shown(url)} ({type(e).__name__}: {detail})"
    return None


@contextlib.contextmanager
def fresh_postgres_schema(url: str = DEFAULT_POSTGRES) -> Iterator[str]:
    """A store URL with a schema of its own (`?schema=t_...`), dropped afterwards."""
    why = postgres_unreachable(url)
    if why is not None:
        raise ConfigurationError(f"cannot make a test store on PostgreSQL: {why}")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    base, _, query = url.partition("?")  # not urlsplit: it refuses lists of IPv6 hosts
    kept = [p for p in query.split("&") if p and p.partition("=")[0] != "schema"]
    try:
        yield f"{base}?" + "&".join([*kept, f"schema={schema}"])
    finally:
        with _connect(url) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
