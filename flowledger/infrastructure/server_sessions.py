"""Each of a store's connections must keep one server session (ADR 0017,
"Connection poolers").

An engine holds its liveness lock for as long as its connection lives,
prepares its statements once per connection and listens for appends on
one: all of that belongs to the server's session behind the connection. A
pooler in transaction or statement mode (PgBouncer's usual setting) hands
each transaction to whichever server session is free, so another engine's
statements would run in this one's session: the lock would prove a living
engine gone or a dead one alive. Such a pooler is refused when the store
is opened, before anything is read or written, instead of failing later
with the server's words about prepared statements.

A direct connection is told by one number: the process id the server gave
in its greeting is the one running our statements. A pooler gives its own;
then a second connection holds a transaction open while this one asks
again whether its statements still run in the same session (session mode
keeps it; transaction mode lends it away).
"""

from __future__ import annotations

import contextlib
from typing import Any

from flowledger.domain.errors import ConfigurationError
from flowledger.domain.text import one_line
from flowledger.infrastructure.store_url import StoreConfig

# Connections that hold a transaction open while ours asks again: a pooler
# that lends sessions hands one of them ours unless it has spare sessions
# idle, so a few make a pool's spares run out.
PROBES = 3


def refuse_sessions_not_kept(config: StoreConfig, conn: Any) -> None:
    """Raise ConfigurationError if `conn` (psycopg, open to `config`'s server)
    reaches it through a pooler that does not keep one server session per
    connection. Leaves `conn` outside any transaction, as it was."""
    import psycopg

    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        ours = _session(conn)
        if ours == conn.info.backend_pid:
            return  # the server's own greeting: no pooler between us
        moved = _moved(config, conn, ours, psycopg)
    finally:
        conn.autocommit = autocommit
    if moved is None:
        return
    raise ConfigurationError(
        f"cannot open store {config.shown!r}: its connections do not keep one server "
        f"session: {moved}. A connection pooler in transaction or statement mode (PgBouncer's "
        "pool_mode = transaction, say) sits between flowledger and PostgreSQL, and flowledger "
        "keeps a session per connection (the lock that tells other engines this one lives, "
        "prepared statements, notifications). Nothing was read or written. Connect to "
        "PostgreSQL directly, or through the pooler in session mode (pool_mode = session)")


def _session(conn: Any) -> int:
    return int(conn.execute("SELECT pg_backend_pid()").fetchone()[0])


def _moved(config: StoreConfig, conn: Any, ours: int, psycopg: Any) -> str | None:
    """How our statements were seen to leave their session, or None if they kept it."""
    others: list[Any] = []
    try:
        for _ in range(PROBES):
            other = psycopg.connect(**config.libpq(), autocommit=True)
            others.append(other)
            other.execute("BEGIN")
            lent = _session(other)
            if lent == ours:
                return (f"server process {ours}, which ran this connection's statements, was "
                        "handed to another connection")
            again = _session(conn)
            if again != ours:
                return (f"this connection's statements ran in server process {ours}, then in "
                        f"{again}")
    except psycopg.Error as e:
        said = one_line(e)
        if "pooling mode" in said:  # PgBouncer's statement mode refuses transactions
            return f"a transaction on a second connection was refused ({said})"
        raise ConfigurationError(
            f"cannot open store {config.shown!r}: a connection pooler sits between flowledger "
            "and PostgreSQL (the server's process ids are not the ones it gives), and a "
            f"second connection, opened to tell whether it keeps server sessions, failed: "
            f"{said}. Nothing was read or written. Connect to PostgreSQL directly, or through "
            "the pooler in session mode (pool_mode = session) with room for more "
            "connections") from None
    finally:
        for other in others:
            with contextlib.suppress(psycopg.Error):
                other.close()
    return None
