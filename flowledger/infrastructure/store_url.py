"""Store URLs → the library's environment (DESIGN §5: sqlite, postgresql, memory)."""

from __future__ import annotations

import difflib
import functools
import os
import re
import shlex
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from flowledger.domain.errors import ConfigurationError

DEFAULT_STORE = "sqlite:///flowledger.db"
STORE_ENV = "FLOWLEDGER_STORE"  # the CLI's store when --store is not given
# The stores this release opens.
ACCEPTED = ("sqlite:///relative/path.db, sqlite:////absolute/path.db, "
            "postgresql://user@host:5432/dbname[?schema=NAME&sslmode=...], or memory://")

# libpq connection parameters that name a secret: never shown (nor is a URL's password).
SECRET_PARAMETERS = {"password", "sslpassword", "oauth_client_secret", "scram_client_key",
                     "scram_server_key"}


def cli_command(store: str, *words: str, writes: bool = True) -> str:
    """The `flowledger` command a message suggests about `store`, each word
    quoted for a shell: with `--store` unless it is the store the command takes
    without one. Copied as printed, it acts on that store, not on
    ./flowledger.db, where a `run` would start everything afresh. `writes`: the
    command writes, so the URL is given without ?mode=ro."""
    default = os.environ.get(STORE_ENV) or DEFAULT_STORE
    url = _suggested_url(store, writes)
    where = [] if url == store == default else ["--store", shlex.quote(url)]
    return " ".join(["flowledger", *where, *map(shlex.quote, words)])


def _suggested_url(url: str, writes: bool) -> str:
    """`url` as a suggested command gives it: without its password and secret
    parameters (libpq then takes them from PGPASSWORD or ~/.pgpass, where a
    shown *** would be sent as the password), and for a command that writes
    without ?mode=ro. What may still be a secret is hidden, as `shown` hides it."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() not in ("sqlite", "memory"):
        password = _password_at(rest)
        if password is not None:
            rest = rest[:password[0]] + rest[password[1]:]
    where, _, query = rest.partition("?")
    kept = [p for p in query.split("&") if p and _hide_secret(p) == p
            and not (writes and p.replace(" ", "").lower() == "mode=ro")]
    return shown(scheme + sep + where + ("?" + "&".join(kept) if kept else ""))


def shown(url: str) -> str:
    """`url` as errors and output may show it: its password (and the value of
    any secret libpq parameter in its query) replaced by ***. Never raises,
    whatever `url` is: it shows URLs that failed to parse, where in doubt it
    hides more, never less."""
    if not isinstance(url, str):
        return f"<a {type(url).__name__}, not a URL>"
    scheme, sep, rest = url.partition("://")
    if url.lower().startswith(("sqlite:", "memory:")):
        return url  # a file's name (sqlite:/x.db too), which holds no credentials
    if not sep or not _SCHEME.fullmatch(scheme):
        # Not a URL: user:password@ may still be in it (a missing /, say).
        scheme, sep, rest = "", "", url
    password = _password_at(rest)
    if password is not None:
        rest = rest[:password[0] + 1] + "***" + rest[password[1]:]
    elif "@" not in rest:
        # No @: a "port" that is not a number may be a password whose host was
        # left out (user:password/db).
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        entries = [e if e.startswith("[") or e.partition(":")[2].isdigit()
                   or ":" not in e else e.partition(":")[0] + ":***"
                   for e in authority.split(",")]
        rest = ",".join(entries) + rest[len(authority):]
    where, q, query = rest.partition("?")
    return scheme + sep + where + q + "&".join(_hide_secret(p) for p in query.split("&"))


def _password_at(rest: str) -> tuple[int, int] | None:
    """Where `user:password@` puts its `:` and its `@` in a URL after `://`, if
    it has a password: user:password@ ends at the URL's last @, wherever an
    unescaped @, /, ? or # in the password put it."""
    at, colon = rest.rfind("@"), rest.find(":")
    if 0 <= colon < at and not any(c in rest[:colon] for c in "/?#@"):
        return colon, at
    return None


# What a URL's scheme can be (RFC 3986); anything else before :// is not one.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def _hide_secret(parameter: str) -> str:
    name, eq, _ = parameter.partition("=")
    if eq and unquote(name).strip().lower() in SECRET_PARAMETERS:
        return name + "=***"
    return parameter


# How every connection notices a server gone without a word (its machine lost,
# the network cut) unless the URL says otherwise: a connection with nothing in
# flight (one waiting for an answer too) probes after 10 s, every 5 s, and
# ends once nothing came back for 30 s; data the server has not acknowledged
# within 30 s ends it too (`tcp_user_timeout`, which on Linux also decides
# when unanswered probes end it). Without them a statement waits as long as
# the system's TCP does: over two hours for an answer, about 15 minutes for a
# send. A server busy with a long statement still answers the probes and
# takes what is sent while its buffers have room (its kernel does).
TCP_DEFAULTS: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 10,
                                "keepalives_interval": 5, "keepalives_count": 3,
                                "tcp_user_timeout": 30_000}


@dataclass(frozen=True)
class StoreConfig:
    url: str
    kind: str  # "sqlite" | "memory" | "postgresql"
    env: dict[str, str]
    path: Path | None = None
    read_only: bool = False  # ?mode=ro: sqlite:///file.db?mode=ro, postgresql://...?mode=ro
    # PostgreSQL: libpq connection parameters from the URL's query (sslmode=...),
    # for every connection the engine opens.
    connect: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # the URL and the environment may hold a password
        return f"StoreConfig({self.shown!r}, kind={self.kind!r})"

    def libpq(self, connect_timeout: int = 10, dbname: str | None = None) -> dict[str, Any]:
        """What every PostgreSQL connection to this store is opened with: the
        URL's parts and its libpq parameters, over `TCP_DEFAULTS`. Without a
        password in the URL, none is passed: libpq takes it, at each
        connection, from PGPASSWORD or the password file (~/.pgpass, PGPASSFILE)."""
        env = self.env
        known = _libpq_parameters() or frozenset()
        settings: dict[str, Any] = {
            **{k: v for k, v in TCP_DEFAULTS.items() if k in known},  # (libpq 12 on: all)
            "dbname": dbname or env["POSTGRES_DBNAME"], "host": env["POSTGRES_HOST"],
            "port": env["POSTGRES_PORT"], "user": env["POSTGRES_USER"],
            "connect_timeout": connect_timeout}
        if env["POSTGRES_PASSWORD"]:
            settings["password"] = env["POSTGRES_PASSWORD"]
        return {**settings, **self.connect}

    @property
    def shown(self) -> str:
        """The URL as messages show it: no password (see `shown`)."""
        return shown(self.url)

    def refuse_writes(self, what: str) -> None:
        """A store opened read-only (`?mode=ro`) is refused, before anything, by every
        call that would write to it; `what` says what the caller writes. The one
        place that decides it and says so: the engine's writing calls and the
        CLI's writing commands (before loading any code) call it."""
        if self.read_only:
            raise ConfigurationError(
                f"store {self.shown!r} is opened read-only (?mode=ro), and {what}; nothing was "
                "written. To let it write, drop ?mode=ro from the store URL"
                + (" and name a role that may write (one granted only reads, as for "
                   "?mode=ro, cannot) and the primary, not a standby"
                   if self.kind == "postgresql" else ""))


# What a sqlite:// URL's query may say (anything else is refused, never taken
# as part of the file's name).
SQLITE_QUERY = ("mode",)


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
    return _read_only(url, given["mode"])


def parse_store_url(url: str) -> StoreConfig:
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(f"store URL {shown(url)!r} is not a URL; use {ACCEPTED}")
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
        env, connect, read_only = _postgres_env(url)
        return StoreConfig(url, "postgresql", env, read_only=read_only, connect=connect)
    named = f" {scheme!r}" if _SCHEME.fullmatch(scheme) else ""
    raise ConfigurationError(f"store URL {shown(url)!r} has an unknown scheme{named}; "
                             f"use {ACCEPTED}")


def _sqlite_env(db_name: str) -> dict[str, str]:
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": db_name,
        # Several processes may share the file: wait for the write lock rather
        # than fail at once (NOTES: "keep the lock timeout generous").
        "SQLITE_LOCK_TIMEOUT": "30",
    }


# Not taken from the query: what the URL's own parts say, and settings the
# engine's connections depend on.
# Given in the query only where the URL leaves its host out, as libpq's own
# examples do for a Unix socket: postgresql:///dbname?host=/var/run/postgresql.
_HOST_IN_QUERY = ("host", "port")
_NOT_IN_QUERY = {
    "host": ("say it in the host of the URL, or leave the URL's host out "
             "(postgresql://user@/dbname?host=...)"),
    "port": ("say it in the port of the URL, or leave the URL's host out "
             "(postgresql://user@/dbname?host=...&port=...)"),
    "dbname": "say it in the path of the URL", "user": "say it in the user part of the URL",
    "password": "give it in the user part (user:password@), PGPASSWORD or ~/.pgpass",
    "service": "name the server in the URL itself (host, port, database and user)",
    "replication": "flowledger's connections run SQL, which a replication connection cannot",
    "client_encoding": "flowledger's connections speak UTF-8",
    "options": "flowledger sets its connections' server settings itself",
}


@functools.cache
def _libpq_parameters() -> frozenset[str] | None:
    """The connection parameters the installed libpq knows (None: no driver,
    which opening the store reports)."""
    try:
        from psycopg import pq
    except ImportError:
        return None
    return frozenset(d.keyword.decode() for d in pq.Conninfo.get_defaults())


def _connect_parameters(url: str, query: dict[str, list[str]], hostlist: str
                        ) -> dict[str, str]:
    """The URL's libpq parameters (?sslmode=verify-full&application_name=...):
    every one libpq knows but those the URL's parts say; the last value of each.
    host= and port= only where the URL's host is left out (`_hosts` takes them)."""
    for name, values in query.items():
        # libpq would take the last: sslmode=require&sslmode=disable connected in clear.
        if name not in ("schema", "mode") and len(set(values)) > 1:
            said = ("different values" if name.lower() in SECRET_PARAMETERS
                    else ", ".join(repr(v) for v in dict.fromkeys(values)))
            raise ConfigurationError(f"store URL {shown(url)!r}: {name}= is given "
                                     f"{len(values)} times, with {said}; give it once")
    given = {name: values[-1] for name, values in query.items()
             if name not in ("schema", "mode") and (hostlist or name not in _HOST_IN_QUERY)}
    known = _libpq_parameters()
    for name in given:
        if name in _NOT_IN_QUERY:
            raise ConfigurationError(f"store URL {shown(url)!r}: {name}= cannot be given in "
                                     f"the query; {_NOT_IN_QUERY[name]}")
        if known is not None and name not in known:
            close = difflib.get_close_matches(name, ["schema", "mode", *known], n=1)
            raise ConfigurationError(
                f"store URL {shown(url)!r}: unknown parameter {name!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + "; a PostgreSQL store takes ?schema=NAME, ?mode=ro and libpq's connection "
                "parameters (sslmode, sslrootcert, application_name, connect_timeout, ...)")
    return given


def _hosts(url: str, hostlist: str, query: dict[str, list[str]]) -> tuple[str, str]:
    """The URL's host[:port] list, as libpq takes it: "h1,h2" and "5432,5433".
    Several hosts (a primary and its standbys, with
    ?target_session_attrs=read-write) are tried in order at each connection.
    A URL that leaves its host out may give it as ?host= (a name, an address,
    or a Unix socket's directory) and ?port=."""
    hosts, ports = [], []
    if not hostlist:  # left out: the query, else libpq's own variables, else this machine
        hosts_given = (query.get("host") or [""])[-1] or _libpq_default("PGHOST", "127.0.0.1")
        port = (query.get("port") or [""])[-1] or _libpq_default("PGPORT", "5432")
        for given in port.split(","):
            _check_port(url, given)
        count = len(hosts_given.split(","))
        return hosts_given, (",".join([port] * count) if "," not in port else port)
    entries = hostlist.split(",")
    for entry in entries:
        if not entry and len(entries) > 1:
            raise ConfigurationError(f"store URL {shown(url)!r}: an empty host in its list "
                                     "of hosts; name each host once, between commas")
        if entry.startswith("["):  # [IPv6 address]:port
            host, _, rest = entry[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = entry.partition(":")
        if port:
            _check_port(url, port)
        host = unquote(host)
        if "," in host:
            raise ConfigurationError(f"store URL {shown(url)!r}: a host name holds a comma "
                                     "(%2C); separate hosts with plain commas")
        hosts.append(host or _libpq_default("PGHOST", "127.0.0.1"))
        ports.append(port or _libpq_default("PGPORT", "5432"))
    return ",".join(hosts), ",".join(ports)


def _check_port(url: str, port: str) -> None:
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigurationError(f"store URL {shown(url)!r}: a port is not a number "
                                 "from 1 to 65535; write host:port with the server's "
                                 "port (5432 when left out)")


def _libpq_default(variable: str, ours: str) -> str:
    """A part the URL leaves out, as libpq's environment variable gives it
    (PGUSER, PGHOST, PGPORT, PGDATABASE), else flowledger's default."""
    return os.environ.get(variable) or ours


def _split(url: str) -> tuple[str | None, str | None, str, str, str]:
    """user, password, host list, path and query of a postgresql:// URL, split
    by hand: the standard library refuses lists of bracketed IPv6 hosts.

    The query begins at the first ? (or # for a fragment); before it, the user
    part ends at the last @ before the first /. An @ elsewhere is read only
    where it cannot be a password's (a parameter's value, after a user part
    and a path, or after plain hosts); a URL that could be read two ways is
    refused with how to write it, and none of it is said back."""
    rest = url.partition("://")[2]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    slash = head.find("/")
    authority, path = (head[:slash], head[slash + 1:]) if slash >= 0 else (head, "")
    userinfo, at, hostlist = authority.rpartition("@")
    query, _, fragment = tail[1:].partition("#") if tail.startswith("?") else ("", "", tail[1:])
    names = [part.partition("=")[0] for part in query.split("&")]
    values_at = "@" in query and not any("@" in name for name in names)
    # An @ in a value is the value's after a user part and a path, or after
    # plain hosts; "u:p@h?k=a@b" is also a password "p@h?k=a" for host b, and
    # "u:p/x?k=a@b" one with a / in it.
    if (any("@" in text for text in [path, fragment, *names])
            or (values_at and ((at and slash < 0) or (not at and not _plain_hosts(hostlist))))):
        raise ConfigurationError(
            f"store URL {shown(url)!r}: an @ where it could be a password's or a value's. "
            "Percent-encode /, ?, # and @ in a password (as %2F, %3F, %23, %40), or give it "
            "in PGPASSWORD or ~/.pgpass; and an @ in a parameter's value, as %40 (or name "
            "the database before the query: host/dbname?...)")
    if not at:
        return None, None, hostlist, path, query
    user, colon, password = userinfo.partition(":")
    return unquote(user), (unquote(password) if colon else None), hostlist, path, query


def _plain_hosts(hostlist: str) -> bool:
    """host[:port] entries only ([IPv6] in brackets): nothing that looks like
    user:password."""
    for entry in hostlist.split(","):
        if entry.startswith("["):
            entry = entry.partition("]")[2]
            if entry and not (entry.startswith(":") and entry[1:].isdigit()):
                return False
        elif ":" in entry and not entry.partition(":")[2].isdigit():
            return False
    return True


# PostgreSQL keeps at most this many bytes of a name (NAMEDATALEN - 1).
MAX_NAME_BYTES = 63


def _schema(url: str, given: list[str]) -> str:
    """The URL's ?schema=: one name PostgreSQL keeps as it is, not its own."""
    if len(set(given)) > 1:
        raise ConfigurationError(f"store URL {shown(url)!r}: schema= is given "
                                 f"{len(given)} times; give it once")
    if not given:
        return ""
    schema = given[-1]
    if not schema:
        raise ConfigurationError(f"store URL {shown(url)!r}: schema= is empty: name a schema, "
                                 "or leave schema= out for the database's public schema")
    why = None
    if not schema.replace("_", "a").isalnum():
        why = "must be letters, digits and underscores"
    elif len(schema.encode()) > MAX_NAME_BYTES:
        why = (f"is {len(schema.encode())} bytes long; PostgreSQL keeps only the first "
               f"{MAX_NAME_BYTES} bytes of a name, so two longer names would be one schema")
    elif schema.startswith("pg_") or schema == "information_schema":
        why = "is reserved for PostgreSQL's own schemas (pg_..., information_schema)"
    if why is not None:
        raise ConfigurationError(f"store URL {shown(url)!r}: schema {schema!r} {why}; "
                                 "choose another name")
    return schema


def _read_only(url: str, given: list[str]) -> bool:
    """The URL's ?mode=: `ro` opens the store read-only (a role granted only
    SELECT, a standby); left out, read-write."""
    if not given:
        return False
    if len(given) > 1:
        raise ConfigurationError(f"store URL {shown(url)!r}: mode= is given {len(given)} "
                                 "times; give it once")
    if set(given) != {"ro"}:
        raise ConfigurationError(f"store URL {shown(url)!r}: mode={'&'.join(given)!r} is not "
                                 "ro; give ?mode=ro to open the store read-only, or leave "
                                 "mode out")
    return True


def _postgres_env(url: str) -> tuple[dict[str, str], dict[str, str], bool]:
    """postgresql://user[:password]@host[:port]/dbname[?schema=NAME&mode=ro&libpq
    parameters]: the library's environment, the libpq parameters for every
    connection, and whether the store is opened read-only."""
    user, password, hostlist, path, raw_query = _split(url)
    query = parse_qs(raw_query, keep_blank_values=True)
    connect = _connect_parameters(url, query, hostlist)
    read_only = _read_only(url, query.get("mode", []))
    schema = _schema(url, query.get("schema", []))
    hosts, ports = _hosts(url, hostlist, query)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": unquote(path.lstrip("/")) or _libpq_default("PGDATABASE",
                                                                       "postgres"),
        "POSTGRES_HOST": hosts,
        "POSTGRES_PORT": ports,
        "POSTGRES_USER": user or _libpq_default("PGUSER", "postgres"),
        "POSTGRES_PASSWORD": password or "",  # "": libpq's own (StoreConfig.libpq)
        "POSTGRES_SCHEMA": schema or "public",
        # Several processes share the store: wait for the log's write lock.
        "POSTGRES_LOCK_TIMEOUT": "30",
        # The library's own pool opens no connection until asked (flowledger
        # opens its own: infrastructure/postgres_recorder.py).
        "POSTGRES_POOL_SIZE": "0",
        "POSTGRES_MAX_OVERFLOW": "1",
    }, connect, read_only
