"""Store URLs → the library's environment (DESIGN §5: sqlite, postgresql, memory)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from flowledger.domain.errors import ConfigurationError

DEFAULT_STORE = "sqlite:///flowledger.db"
# What works in this release (postgresql:// is parsed, and refused by the
# engine with its own message, until its recorder lands).
ACCEPTED = "sqlite:///relative/path.db, sqlite:////absolute/path.db, or memory://"


@dataclass(frozen=True)
class StoreConfig:
    url: str
    kind: str  # "sqlite" | "memory" | "postgresql"
    env: dict[str, str]
    path: Path | None = None


def parse_store_url(url: str) -> StoreConfig:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(f"store URL {url!r} is not a URL; use {ACCEPTED}")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        raw = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
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
        return StoreConfig(url, "sqlite", _sqlite_env(str(path)), path)
    if scheme == "memory":
        name = f"file:flowledger-{uuid.uuid4().hex}?mode=memory&cache=shared"
        return StoreConfig(url, "memory", _sqlite_env(name))
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(url)
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": parts.path.lstrip("/") or "postgres",
            "POSTGRES_HOST": parts.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_USER": parts.username or "postgres",
            "POSTGRES_PASSWORD": parts.password or "",
        }
        return StoreConfig(url, "postgresql", env)
    raise ConfigurationError(f"store URL {url!r} has an unknown scheme {scheme!r}; use {ACCEPTED}")


def _sqlite_env(db_name: str) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": db_name,
        # Several processes may share the file: wait for the write lock rather
        # than fail at once (NOTES: "keep the lock timeout generous").
        "SQLITE_LOCK_TIMEOUT": "30",
    }
