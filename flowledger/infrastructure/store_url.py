"""Store URLs → the library's environment (DESIGN §5: sqlite, postgresql, memory)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from flowledger.domain.errors import ConfigurationError

DEFAULT_STORE = "sqlite:///flowledger.db"
# The stores this release opens.
ACCEPTED = ("sqlite:///relative/path.db, sqlite:////absolute/path.db, "
            "postgresql://user@host:5432/dbname[?schema=NAME], or memory://")


@dataclass(frozen=True)
class StoreConfig:
    url: str
    kind: str  # "sqlite" | "memory" | "postgresql"
    env: dict[str, str]
    path: Path | None = None
    read_only: bool = False  # sqlite:///file.db?mode=ro

    def refuse_writes(self, what: str) -> None:
        """A store opened read-only (`?mode=ro`) is refused, before anything, by every
        call that would write to it; `what` says what the caller writes. The one
        place that decides it and says so: the engine's writing calls and the
        CLI's writing commands (before loading any code) call it."""
        if self.read_only:
            raise ConfigurationError(
                f"store {self.url!r} is opened read-only (?mode=ro), and {what}; nothing was "
                "written. To let it write, drop ?mode=ro from the store URL")


# What a sqlite:// URL's query may say (anything else is refused, never taken
# as part of the file's name).
SQLITE_QUERY = {"mode": ("ro",)}


def _sqlite_query(url: str, query: str) -> bool:
    """Whether the query of a sqlite:// URL asks for read-only (`?mode=ro`)."""
    if not query:
        return False
    try:
        given = parse_qs(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        given = {}
    unknown = sorted(set(given) - set(SQLITE_QUERY)) or ([] if given else [query])
    if unknown:
        raise ConfigurationError(
            f"store URL {url!r}: unknown query parameter {', '.join(map(repr, unknown))}; "
            "a sqlite:// URL takes only ?mode=ro (open the store read-only)")
    for name, values in given.items():
        if len(values) != 1 or values[0] not in SQLITE_QUERY[name]:
            raise ConfigurationError(
                f"store URL {url!r}: {name}={'&'.join(values)!r} is not one of "
                f"{', '.join(SQLITE_QUERY[name])}")
    return True


def parse_store_url(url: str) -> StoreConfig:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(f"store URL {url!r} is not a URL; use {ACCEPTED}")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        raw = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        raw, _, query = raw.partition("?")
        read_only = _sqlite_query(url, query)
        if not raw:
            raise ConfigurationError(
                f"store URL {url!r} names no file; use sqlite:///flow.db (relative) "
                "or sqlite:////tmp/flow.db (absolute)"
            )
        path = Path(raw)
        if not path.parent.exists():
            raise ConfigurationError(
                f"store URL {url!r}: folder {str(path.parent)!r} does not exist; create it "
                "or point the URL at an existing folder"
            )
        if read_only:
            if not path.is_file() or path.stat().st_size == 0:
                raise ConfigurationError(f"store URL {url!r}: no store at {raw!r} to open "
                                         "read-only")
            # SQLite's own read-only mode: nothing this process does can write to it.
            name = f"file:{quote(str(path.resolve()))}?mode=ro"
            return StoreConfig(url, "sqlite", _sqlite_env(name), path, read_only=True)
        return StoreConfig(url, "sqlite", _sqlite_env(str(path)), path)
    if scheme == "memory":
        name = f"file:flowledger-{uuid.uuid4().hex}?mode=memory&cache=shared"
        return StoreConfig(url, "memory", _sqlite_env(name))
    if scheme in ("postgresql", "postgres"):
        return StoreConfig(url, "postgresql", _postgres_env(url))
    raise ConfigurationError(f"store URL {url!r} has an unknown scheme {scheme!r}; use {ACCEPTED}")


def _sqlite_env(db_name: str) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": db_name,
        # Several processes may share the file: wait for the write lock rather
        # than fail at once (NOTES: "keep the lock timeout generous").
        "SQLITE_LOCK_TIMEOUT": "30",
    }


def _postgres_env(url: str) -> dict[str, str]:
    """postgresql://user[:password]@host[:port]/dbname[?schema=NAME]"""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"schema"})
    if unknown:
        raise ConfigurationError(
            f"store URL {url!r}: unknown parameter {unknown[0]!r}; a PostgreSQL store takes "
            "only ?schema=NAME")
    schema = query.get("schema", [""])[-1]
    if schema and not schema.replace("_", "a").isalnum():
        raise ConfigurationError(
            f"store URL {url!r}: schema {schema!r} must be letters, digits and underscores")
    try:
        port = str(parts.port or 5432)
    except ValueError:
        raise ConfigurationError(f"store URL {url!r}: the port is not a number") from None
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": unquote(parts.path.lstrip("/")) or "postgres",
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": port,
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_SCHEMA": schema or "public",
        # Several processes share the store: wait for the log's write lock.
        "POSTGRES_LOCK_TIMEOUT": "30",
    }
