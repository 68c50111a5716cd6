"""Looking at a store from outside flowledger, as an attacker or a disk thief would:
its raw bytes, and SQL run directly on its tables (SQLite file or PostgreSQL schema)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


def position_column(url: str) -> str:
    return "rowid" if url.startswith("sqlite") else "notification_id"


def run_sql(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement on the store's own tables, committed (`?` placeholders)."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
        try:
            rows = conn.execute(sql, params).fetchall()
        finally:
            conn.close()
        return rows
    with pg_connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.replace("?", "%s"), params)
        return list(cur.fetchall()) if cur.description else []


def pg_connect(url: str, autocommit: bool = False) -> Any:
    """A connection of its own to a PostgreSQL store's database, its schema first
    on the search path."""
    import psycopg

    parts = urlsplit(url)
    schema = parse_qs(parts.query).get("schema", ["public"])[0]
    conn = psycopg.connect(host=parts.hostname, port=parts.port or 5432,
                           user=unquote(parts.username or "postgres"),
                           password=unquote(parts.password or ""),
                           dbname=parts.path.lstrip("/"), autocommit=autocommit)
    conn.execute(f'SET search_path TO "{schema}"')
    return conn


def tables(url: str) -> list[str]:
    if url.startswith("sqlite"):
        return [r[0] for r in run_sql(url, "SELECT name FROM sqlite_master WHERE type='table'")]
    return [r[0] for r in run_sql(url, "SELECT tablename FROM pg_tables WHERE "
                                        "schemaname = current_schema()")]


def store_bytes(url: str) -> bytes:
    """Everything the store holds, as bytes: an SQLite file with its WAL and journal
    files; on PostgreSQL every table's rows, each column as text and bytea as raw bytes."""
    if url.startswith("sqlite"):
        path = Path(url[len("sqlite:///"):])
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    out = []
    for table in tables(url):
        columns = run_sql(url, "SELECT column_name, data_type FROM information_schema.columns "
                               "WHERE table_schema = current_schema() AND table_name = ?",
                          (table,))
        for name, kind in columns:
            for (value,) in run_sql(url, f'SELECT "{name}" FROM "{table}"'):
                if value is None:
                    continue
                out.append(bytes(value) if kind == "bytea" else str(value).encode())
    return b"\n".join(out)
