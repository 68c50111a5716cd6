"""Which errors the store raised: told without importing any database driver."""

from __future__ import annotations

from eventsourcing.persistence import PersistenceError


def from_the_store(error: BaseException) -> bool:
    """Whether the store's driver or the persistence library raised `error` (a bug
    of ours, a NameError, stays one); the library's errors our store raises too
    (`LogWentBack`)."""
    return isinstance(error, (OSError, PersistenceError)) or type(error).__module__.split(
        ".")[0] in ("sqlite3", "psycopg", "psycopg_pool", "eventsourcing")
