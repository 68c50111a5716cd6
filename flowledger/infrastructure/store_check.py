"""Whether a SQLite file is a flowledger store, before anything opens it for writing.

An engine opened on a file creates its tables there (and switches the file to
WAL journaling), and reads and writes its tables by name. So a file is opened
only if it is a new store (it does not exist, is empty, or has no tables yet)
or one of ours (its tables that carry our names have our columns); anything
else — a file that is not an SQLite database, another application's database
— is refused with a ConfigurationError that names the file, and nothing is
written to it (ADR 0013). The check reads the schema on a read-only connection.
"""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flowledger.domain.errors import ConfigurationError, NoStoreYet, StoreUnreachable
from flowledger.domain.text import one_line
from flowledger.infrastructure.server_sessions import refuse_sessions_not_kept
from flowledger.infrastructure.store_url import ACCEPTED, StoreConfig

# The columns the log's tables have in a store the library created (its
# SQLite recorders): the recorder inserts rows by position, so they are exact.
EVENT_COLUMNS = ("originator_id", "originator_version", "topic", "state")
OUR_TABLES: dict[str, tuple[str, ...]] = {
    "stored_events": EVENT_COLUMNS,
    "stored_snapshots": EVENT_COLUMNS,
    "tracking": ("application_name", "notification_id"),
}
LOG_TABLE = "stored_events"
OUR_TOPICS = "flowledger."  # every event class of ours lives in the package
WHAT_TO_DO = ("Point the store URL at a flowledger store, or at a file that does not exist "
              "yet for a new one; nothing was written to the file")


def check_sqlite_store(config: StoreConfig, create: bool = True) -> None:
    """Refuse a file that is not a flowledger store (see the module docstring),
    and, unless `create`, one that is not a store yet."""
    path = config.path
    if path is None:
        return
    where = f"cannot open store {config.shown!r}: {str(path.resolve())!r}"
    missing = (f"cannot open store {config.shown!r}: no store at {str(path.resolve())!r}: it "
               "is not a flowledger store yet")
    if not path.exists():
        if not create:
            raise _no_store_yet(missing, "the file's name")
        return  # a new store
    if path.is_dir():
        raise ConfigurationError(
            f"{where} is a folder, not a store file; name a file in it (e.g. "
            f"sqlite:///{(path / 'flow.db').as_posix()}). Use {ACCEPTED}")
    if path.stat().st_size == 0:
        if not create:
            raise _no_store_yet(missing, "the file's name")
        return  # an empty file is an empty SQLite database: a new store
    try:
        tables, first_topics = _schema(path)
    except sqlite3.DatabaseError as e:
        raise ConfigurationError(
            f"{where} is not a flowledger store: it is not an SQLite database, or it is "
            f"damaged ({e}). {WHAT_TO_DO}") from None
    except sqlite3.Error as e:  # cannot be read at all: permissions, locks
        raise ConfigurationError(f"{where} cannot be read ({e}); check that the file is "
                                 "readable and not locked by another program") from None
    _refuse_not_ours(where, tables, OUR_TABLES, WHAT_TO_DO)
    _refuse_foreign_log(where, first_topics.get(LOG_TABLE), WHAT_TO_DO)
    if tables and LOG_TABLE not in tables:
        others = sorted(tables)
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5
                                         else "")
        raise ConfigurationError(
            f"{where} is not a flowledger store: it is the SQLite database of another "
            f"application (its tables: {shown}) and holds no flowledger log; the log keeps "
            f"a file of its own. {WHAT_TO_DO}")
    if not create and LOG_TABLE not in tables:
        raise _no_store_yet(missing, "the file's name")


def _no_store_yet(said: str, check: str) -> NoStoreYet:
    """A store that does not exist, opened by what does not create one."""
    return NoStoreYet(
        f"{said}, and this does not create one: check {check} (a new store is made by "
        "running a workflow, by `flowledger setup`, or by `flowledger copy --to`). Nothing "
        "was created")


def _refuse_not_ours(where: str, tables: dict[str, list[str]],
                     ours: dict[str, tuple[str, ...]], todo: str) -> None:
    """A table under one of our names, with other columns, is another application's."""
    for name, expected in ours.items():
        found = tables.get(name)
        if found is not None and tuple(found) != expected:
            raise ConfigurationError(
                f"{where} is not a flowledger store: its table {name!r} has the columns "
                f"({', '.join(found)}), where a flowledger store has ({', '.join(expected)}); "
                f"it belongs to another application. {todo}")


def _refuse_foreign_log(where: str, first_topic: str | None, todo: str) -> None:
    """A log of our shape whose first event is not ours is another application's."""
    if first_topic is not None and not first_topic.startswith(OUR_TOPICS):
        raise ConfigurationError(
            f"{where} is not a flowledger store: its log holds the events of another "
            f"application (the first is {first_topic!r}). {todo}")


def holds_a_log(config: StoreConfig) -> bool:
    """Whether an SQLite store's file holds a log already (a store an older
    release may have written), read without changing it."""
    path = config.path
    try:
        return path is not None and path.exists() and LOG_TABLE in _schema(path)[0]
    except sqlite3.Error:
        return False


def _schema(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Table name → column names, and the log's first event's topic (if it has
    one and its table has our shape), read without changing the file."""
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        names = [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite%'")]
        tables = {name: [row[1] for row in conn.execute(
            "SELECT * FROM pragma_table_info(?)", (name,))] for name in names}
        topics: dict[str, str] = {}
        if tuple(tables.get(LOG_TABLE, ())) == EVENT_COLUMNS:
            row = conn.execute(f"SELECT topic FROM {LOG_TABLE} ORDER BY rowid LIMIT 1"
                               ).fetchone()
            if row is not None:
                topics[LOG_TABLE] = str(row[0])
        return tables, topics
    finally:
        conn.close()


def check_postgres_server(config: StoreConfig, create: bool = True) -> None:
    """Connect once, briefly, before the library's connection pool would retry for
    half a minute: a server that is down, a database that does not exist or a
    refused login is said at once, in the server's own words, with what to do.
    Then refuse a pooler that does not keep sessions (`server_sessions.py`) and
    look at the schema, without writing to it (`_check_postgres_schema`)."""
    try:
        import psycopg
    except ImportError:
        raise ConfigurationError(
            f"cannot open store {config.shown!r}: PostgreSQL needs the postgres extra "
            "(pip install 'flowledger[postgres]'); see the README") from None
    env, conninfo = config.env, config.libpq()
    try:
        conn = psycopg.connect(**conninfo)
    except psycopg.Error as e:  # OperationalError; a bad parameter value: ProgrammingError
        said = one_line(e)
        where = _where(config)
        refused: type[ConfigurationError] = ConfigurationError
        if "does not exist" in said and "database" in said:
            todo = (f"create it first ({_createdb(env)}), or name one that exists"
                    if not config.read_only else "name the database that holds the store")
        elif _no_spare(said):
            todo = _unreachable(said, where)
            refused = StoreUnreachable  # a worker waits for one
        elif "permission denied for database" in said:
            role, database = env["POSTGRES_USER"], env["POSTGRES_DBNAME"]
            todo = (f"have the database's owner let the role connect: GRANT CONNECT ON "
                    f"DATABASE {sql_name(database)} TO {sql_name(role)};")
        elif "SSL negotiation" in said or "expected authentication request" in said:
            todo = (f"the server at {where} did not answer as PostgreSQL does: check the "
                    "URL's host and port")
        elif "authentication" in said or "password" in said or "role" in said:
            todo = ("check the user and the password (in the URL, in PGPASSWORD or in "
                    "~/.pgpass)")
        elif not isinstance(e, psycopg.OperationalError) or re.search(
                r"invalid \S+ value", said):  # libpq's "connection is bad: invalid ..."
            todo = "check the values of the URL's parameters"
        elif "ssl" in said.lower() or "certificate" in said.lower():
            todo = ("check the URL's ssl parameters (sslmode, sslrootcert, ...) against the "
                    "server's TLS setup")
        elif "pg_hba.conf" in said:
            todo = ("the server's pg_hba.conf does not let this user connect to this database "
                    "from here (or with this TLS setting): have its administrator add an "
                    "entry, or connect as one it lets in")
        elif not cannot_connect_now(str(e), conninfo):  # the server refused
            todo = "check the URL against what the server says"
        else:
            todo = _unreachable(said, where)
            refused = StoreUnreachable  # a worker waits for it
        message = (f"cannot open store {config.shown!r}: {_sentence(said)} Nothing was "
                   f"written; {todo}")
        if refused is StoreUnreachable:  # the driver's error kept, as a StoreError's
            raise StoreUnreachable(message, e) from None
        raise refused(message) from None
    try:
        refuse_sessions_not_kept(config, conn)
        with conn.cursor() as c:
            _check_postgres_schema(config, c, create)
    finally:
        conn.close()


# The library's PostgreSQL tables, as its recorders create them.
OUR_POSTGRES_TABLES: dict[str, tuple[str, ...]] = {
    **OUR_TABLES, "stored_events": (*EVENT_COLUMNS, "notification_id")}
POSTGRES_WHAT_TO_DO = ("Point the store URL at a flowledger store, or at a schema of its own "
                       "(?schema=NAME) for a new one; nothing was written")


def _check_postgres_schema(config: StoreConfig, c: Any, create: bool) -> None:
    """Refuse a schema whose tables under our names are another application's
    (they would get our triggers and rows), and, unless `create`, one that
    holds no flowledger log yet: nothing is created in either case."""
    schema = config.env["POSTGRES_SCHEMA"]
    where = (f"cannot open store {config.shown!r}: schema {schema!r} of database "
             f"{config.env['POSTGRES_DBNAME']!r}")
    # From the catalog, which every role may read (information_schema leaves
    # out the tables a role has no privilege on).
    c.execute("SELECT c.relname, a.attname FROM pg_attribute a "
              "JOIN pg_class c ON c.oid = a.attrelid "
              "JOIN pg_namespace n ON n.oid = c.relnamespace "
              "WHERE n.nspname = %s AND c.relname = ANY(%s) "
              "AND c.relkind IN ('r', 'p', 'v', 'f') AND a.attnum > 0 AND NOT a.attisdropped "
              "ORDER BY c.relname, a.attnum", (schema, list(OUR_POSTGRES_TABLES)))
    tables: dict[str, list[str]] = {}
    for table, column in c.fetchall():
        tables.setdefault(table, []).append(column)
    _refuse_not_ours(where, tables, OUR_POSTGRES_TABLES, POSTGRES_WHAT_TO_DO)
    if LOG_TABLE in tables:
        _refuse_role_that_cannot(config, c, schema)
        c.execute(f'SELECT topic FROM "{schema}".{LOG_TABLE} ORDER BY notification_id LIMIT 1')
        row = c.fetchone()
        _refuse_foreign_log(where, None if row is None else str(row[0]), POSTGRES_WHAT_TO_DO)
        return
    c.execute("SELECT n.nspname FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid "
              "WHERE lower(n.nspname) = lower(%s) AND n.nspname <> %s AND c.relname = %s "
              "ORDER BY 1 LIMIT 1", (schema, schema, LOG_TABLE))
    other = c.fetchone()
    if other is not None:  # CREATE SCHEMA AppData makes appdata
        raise ConfigurationError(
            f"{where} holds no flowledger store, but schema {other[0]!r} does: PostgreSQL "
            "folds a name written without quotes to lower case, while ?schema= is taken as "
            f"written. Name the schema as the server does (?schema={other[0]}). Nothing "
            "was created")
    if config.read_only:
        raise ConfigurationError(
            f"{where} holds no flowledger store yet, and it is opened read-only (?mode=ro): "
            "its tables cannot be created. Check the database and ?schema= in the URL, or "
            "open it once without ?mode=ro. Nothing was created")
    if not create:
        raise _no_store_yet(f"{where} holds no flowledger store yet",
                            "the database and ?schema= in the URL")


# What a role needs on a store's tables and the log's sequence (`setval` and
# `nextval` give positions; the log's lock asks for UPDATE on its table).
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
SEQUENCE_PRIVILEGES = ("USAGE", "UPDATE")


# The role that owns a schema's log table (%s: the schema, the table): the
# store's owner, whose defaults grant what it creates later.
LOG_OWNER_SQL = ("SELECT pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n "
                 "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s")


def needed(read_only: bool) -> dict[str, tuple[str, ...]]:
    """What a role needs on each kind of the store's objects, to use it or
    (a store opened with ?mode=ro) only to read it."""
    if read_only:
        return {"TABLES": ("SELECT",)}
    return {"TABLES": TABLE_PRIVILEGES, "SEQUENCES": SEQUENCE_PRIVILEGES,
            "FUNCTIONS": ("EXECUTE",)}


def grants(schema: str, role: str, later_too: bool = False, read_only: bool = False,
           owner: str | None = None) -> list[str]:
    """The statements that let `role` use the store in `schema` (its owner runs
    them); `later_too`: also on what the owner creates later (an upgrade), the
    owner named when another role (a superuser) may run them; `read_only`:
    only read it (a store opened with ?mode=ro)."""
    s, r = f'"{schema}"', sql_name(role)
    later = f"ALTER DEFAULT PRIVILEGES{f' FOR ROLE {sql_name(owner)}' if owner else ''}"
    what = {kind: ", ".join(privileges) for kind, privileges in needed(read_only).items()}
    return [f"GRANT USAGE ON SCHEMA {s} TO {r};",
            *(f"GRANT {privileges} ON ALL {kind} IN SCHEMA {s} TO {r};"
              for kind, privileges in what.items()),
            *(f"{later} IN SCHEMA {s} GRANT {privileges} ON {kind} TO {r};"
              for kind, privileges in what.items() if later_too)]


def sql_name(name: str) -> str:
    """A role's (or any) name as SQL writes it: quoted, its quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


def _refuse_role_that_cannot(config: StoreConfig, c: Any, schema: str) -> None:
    """A store's tables made by one role can be used by another granted reads
    and writes on them (ADR 0013); one granted less is told what it lacks and
    the statements that grant it, before anything is read or written. The
    append's guard is a function: without EXECUTE on it, an append fails after
    a run's external call. A store opened read-only (?mode=ro) asks only to
    read the tables."""
    need = needed(config.read_only)
    # One statement: the schema, the tables, the log's sequence, the functions.
    c.execute(
        "SELECT 0, '', 'USAGE on schema ' || quote_literal(nspname) FROM pg_namespace "
        "WHERE nspname = %(s)s AND NOT has_schema_privilege(oid, 'USAGE') "
        "UNION ALL SELECT 1, c.relname, p.priv || ' on ' || c.relname "
        "FROM pg_class c CROSS JOIN unnest(%(table)s::text[]) AS p(priv) "
        "WHERE c.relnamespace = to_regnamespace(%(q)s) AND c.relkind = 'r' "
        "AND (c.relname = ANY(%(ours)s) OR c.relname LIKE 'fl\\_%%') "
        "AND NOT has_table_privilege(c.oid, p.priv) "
        "UNION ALL SELECT 2, p.priv, p.priv || ' on sequence ' || c.relname "
        "FROM pg_class c CROSS JOIN unnest(%(sequence)s::text[]) AS p(priv) "
        "WHERE c.relnamespace = to_regnamespace(%(q)s) AND c.relkind = 'S' "
        "AND c.relname LIKE %(log)s AND NOT has_sequence_privilege(c.oid, p.priv) "
        "UNION ALL SELECT 3, proname, 'EXECUTE on function ' || proname FROM pg_proc "
        "WHERE pronamespace = to_regnamespace(%(q)s) AND proname LIKE 'fl\\_%%' "
        "AND 'EXECUTE' = ANY(%(function)s) AND NOT has_function_privilege(oid, 'EXECUTE')",
        {"s": schema, "q": f'"{schema}"', "table": list(need.get("TABLES", ())),
         "sequence": list(need.get("SEQUENCES", ())),
         "function": list(need.get("FUNCTIONS", ())), "ours": list(OUR_POSTGRES_TABLES),
         "log": f"{LOG_TABLE}\\_%"})
    lacks = [str(said) for _, _, said in sorted(c.fetchall())]  # by name, as Python orders
    if not lacks:
        return
    c.execute(f"SELECT current_user, ({LOG_OWNER_SQL})", (schema, LOG_TABLE))
    role, owner = c.fetchone()
    option = "--grant-read" if config.read_only else "--grant"
    said = ", ".join(lacks[:6]) + (f" and {len(lacks) - 6} more" if len(lacks) > 6 else "")
    # A role that may read it all (a viewer's) most likely meant to only read.
    reads = not config.read_only and not any(
        lack.startswith(("SELECT ", "USAGE on schema ")) for lack in lacks)
    raise ConfigurationError(
        f"cannot open store {config.shown!r}: role {role!r} may not "
        f"{'read' if config.read_only else 'use'} it: it lacks {said}. Nothing was read or "
        "written. "
        + ("It may read it: to only read it, add ?mode=ro to the URL. To use it, as "
           if reads else "As ")
        + "the store's owner (the role that created it) or a superuser, grant "
        "them (in psql, for example): " + " ".join(grants(
            schema, role, later_too=True, read_only=config.read_only, owner=owner))
        + f" Or run `flowledger --store OWNER-URL setup {option} {shlex.quote(role)}`"
        " with a URL naming the owner."
        + ("" if config.read_only or reads else " Or, to only read it, add ?mode=ro to the URL."))


# What a server says when it has no connection to spare: for anyone, for the
# role, for the database; for anyone but superusers (PostgreSQL 16 words that
# last one differently, naming a role, after the same beginning).
_NO_SPARE = ("too many clients already", "too many connections for role",
             "too many connections for database", "remaining connection slots are reserved")
# What a server says when it cannot take a connection now but will: starting,
# stopping, recovering, full. libpq gives no SQLSTATE for a failed connection,
# only its words.
_UNAVAILABLE = ("the database system is starting up", "the database system is shutting down",
                "the database system is in recovery mode", "not yet accepting connections",
                "not accepting connections", *_NO_SPARE)


# A server's own answer, in whatever language it speaks: libpq writes the
# answer's severity, a colon and two spaces ("FATAL:  ", "ВАЖНО:  ") before it.
_A_SERVER_ANSWERED = re.compile(r"\S:  ")
# Where that answer came from, in libpq's words (English, as libpq speaks in
# a process that did not set LC_MESSAGES).
_ANSWERED_FROM = re.compile(
    r'connection to server (?:at "(?P<host>[^"]*)"(?: \((?P<addr>[^)]*)\))?, port (?P<port>\d+)'
    r'|on socket "(?P<socket>[^"]*)") failed: [^\s:]+:  ')
# Not for a ping: it asks one server whether it takes connections, as nobody.
_NOT_PINGED = ("password", "passfile", "target_session_attrs", "load_balance_hosts")
PING_TIMEOUT_S = 2


def cannot_connect_now(said: str, conninfo: dict[str, Any]) -> bool:
    """Whether a failed connection found no server to answer (refused, timed
    out, unreachable) or one that cannot take it yet: worth trying again. A
    server that answered otherwise (a login or a database refused) is not.

    `said` is the driver's message as it came: its spacing tells a server's
    answer. The server's words are English only where its lc_messages is, so
    a server that answered in other words is asked again, without words, by
    libpq's ping: it rejects connections while it starts, stops or recovers,
    and takes them (it refused ours) otherwise."""
    if any(words in one_line(said) for words in _UNAVAILABLE):
        return True
    if not _A_SERVER_ANSWERED.search(said):
        return True
    return not _takes_connections(said, conninfo)


def _takes_connections(said: str, conninfo: dict[str, Any]) -> bool:
    """libpq's ping of the server that answered (all of the URL's hosts when
    libpq's words do not say which), as briefly as it can be: the binary
    psycopg holds the interpreter for its length, every thread waits. Without
    a password: a server counts as up once it asks for one, and a login it
    refused is not tried again against it (lockouts count failed logins)."""
    from psycopg import pq
    from psycopg.conninfo import make_conninfo

    ping = {k: v for k, v in conninfo.items() if k not in _NOT_PINGED}
    answered = _ANSWERED_FROM.search(said)
    if answered is not None:  # that host alone
        ping.pop("hostaddr", None)
        if answered["socket"]:
            folder, _, number = answered["socket"].rpartition("/.s.PGSQL.")
            ping.update(host=folder, port=number)
        else:
            ping.update(host=answered["host"], port=answered["port"])
            if answered["addr"]:
                ping["hostaddr"] = answered["addr"]
    # No password file either: a path under the null device cannot exist.
    ping.update(password="", passfile=os.path.join(os.devnull, "none"),
                connect_timeout=PING_TIMEOUT_S)
    return pq.Ping(pq.PGconn.ping(make_conninfo(**ping).encode())) is pq.Ping.OK


def _no_spare(said: str) -> bool:
    return any(words in said for words in _NO_SPARE)


def _unreachable(said: str, where: str | None) -> str:
    """What to do when the server (at `where`, its address, if known) could not
    take a connection, by its words."""
    if _no_spare(said):
        server = f"the server at {where}" if where else "the store's server"
        return (f"{server} has no connection to spare (its max_connections, or a CONNECTION "
                "LIMIT on the role or the database): an engine holds five connections, a "
                "worker six; end others or raise the limit")
    return (f"check that a PostgreSQL server runs at {where} and accepts connections" if where
            else "check that the store's PostgreSQL server runs and accepts connections")


def no_connection_to_spare(said: str) -> str | None:
    """What to do when `said` (a failed connection's words) tells of a server
    with no connection to spare; else None."""
    return _unreachable(said, None) if _no_spare(said) else None


def server_unavailable(config: StoreConfig, error: BaseException) -> StoreUnreachable:
    """Opening a store met a server it could not connect to (down, restarting,
    no connection to spare), after the first connection went through."""
    said = one_line(error)
    return StoreUnreachable(f"cannot open store {config.shown!r}: {_sentence(said)} Nothing "
                            f"was written; {_unreachable(said, _where(config))}", error)


def _sentence(said: str) -> str:
    """The server's words as a sentence of the message (they may end in '?')."""
    return said if said.endswith((".", "?", "!")) else f"{said}."


def _createdb(env: dict[str, str]) -> str:
    """The command that creates the store's database. With several hosts it
    must reach the one that takes writes (a standby refuses CREATE DATABASE),
    which only a connection string can ask of createdb."""
    hosts, ports = env["POSTGRES_HOST"], env["POSTGRES_PORT"]
    if "," not in hosts:
        return f"createdb -h {hosts} -p {ports} -U {env['POSTGRES_USER']} {env['POSTGRES_DBNAME']}"
    return (f"createdb --maintenance-db 'host={hosts} port={ports} user={env['POSTGRES_USER']} "
            f"dbname=postgres target_session_attrs=read-write' {env['POSTGRES_DBNAME']}")


def _where(config: StoreConfig) -> str:
    """The servers libpq tried: `hostaddr` (the URL's query), where given, is
    the address it connects to; the host then only names it (for TLS)."""
    env = config.env
    hosts, ports = env["POSTGRES_HOST"].split(","), env["POSTGRES_PORT"].split(",")
    addresses = config.connect.get("hostaddr", "").split(",")
    if len(addresses) != len(hosts):  # libpq refuses that itself, and says so
        addresses = [""] * len(hosts)
    return ", ".join(
        f"{address}:{port} ({host})" if address and address != host else f"{host}:{port}"
        for host, port, address in zip(hosts, ports, addresses, strict=True))
