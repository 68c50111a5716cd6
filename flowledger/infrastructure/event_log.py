"""The one append-only log: the library's Application wired to our codec and recorder."""

from __future__ import annotations

import contextlib
import hashlib
import shlex
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, NamedTuple, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import (
    ApplicationRecorder,
    EventStore,
    InfrastructureFactory,
    InfrastructureFactoryError,
    IntegrityError,
    Mapper,
    PersistenceError,
    StoredEvent,
)
from eventsourcing.sqlite import SQLiteFactory
from eventsourcing.utils import Environment, EnvType

from flowledger.domain.errors import (
    ConcurrencyError,
    ConfigurationError,
    CorruptEventError,
    FlowledgerError,
    ProjectionConflictError,
)
from flowledger.domain.handler_state import HandlerState
from flowledger.domain.session import Session
from flowledger.domain.text import one_line
from flowledger.domain.workflow import Workflow
from flowledger.infrastructure.codec import MsgpackTranscoder, PydanticMapper
from flowledger.infrastructure.encryption import ColumnCipher, Protection, scrubbed
from flowledger.infrastructure.encryption import protection as asked_protection
from flowledger.infrastructure.hash_chain import CHAIN_TABLE
from flowledger.infrastructure.sqlite_recorder import (
    AfterInsert,
    Fence,
    FlowSQLiteRecorder,
    FlowSQLiteSnapshotRecorder,
    use_statement_cache,
)
from flowledger.infrastructure.store import (
    BeforeFold,
    FormatRecordGone,
    LogStore,
    ProjectionRowTaken,
    ReadAfter,
    ServerTakesNoWrites,
    StreamEvents,
    first_line,
)
from flowledger.infrastructure.store_check import (
    check_postgres_server,
    check_sqlite_store,
    holds_a_log,
    sql_name,
)
from flowledger.infrastructure.store_failures import opening_failed
from flowledger.infrastructure.store_format import (
    TABLES_VERSION,
    format_record_gone,
    make_compressor,
    settle_format,
)
from flowledger.infrastructure.store_url import ACCEPTED, StoreConfig, parse_store_url


def _refused(e: BaseException, fence: Fence | None) -> BaseException:
    """What an append raises for what the store raised: another writer's
    doing said as such."""
    if isinstance(e, ProjectionRowTaken):
        return _conflict(e)
    if not isinstance(e, IntegrityError):
        return e
    detail = one_line(e)  # on one line (PostgreSQL adds a DETAIL line)
    if fence is not None:  # a fenced writer: its session was taken over
        refused = ConcurrencyError(
            f"this session lost its lock: another process took it over ({detail}). "
            "Nothing of this step was stored; the session stops here")
    else:
        refused = ConcurrencyError(
            f"another process wrote to the same streams first ({detail}); this append "
            "was not stored")
    refused.__cause__ = e
    return refused


def _conflict(e: ProjectionRowTaken) -> ProjectionConflictError:
    """What to tell of a row in an append's way, which only a write made
    outside flowledger (or a bug) can have put there."""
    done = "Nothing of this append was stored, and the log is intact"
    if e.table == CHAIN_TABLE:
        return ProjectionConflictError(
            f"the chain table {CHAIN_TABLE} already holds a link at a position this append "
            f"takes ({e.detail}): it was written outside flowledger. {done}, but its chain "
            "is not: `flowledger verify` tells what else was changed, and the store must be "
            "restored from a backup", table=e.table)
    return ProjectionConflictError(
        f"the projection table {e.table} already holds a row this append writes "
        f"({e.detail}): it was written outside flowledger (or by a bug of ours), and the "
        f"projections are out of step with the log. {done}. Rebuild them (`flowledger "
        "projections rebuild`, or engine.rebuild_projections()), then run again",
        table=e.table)


def _fold(aggregate: Any, events: Iterable[Any]) -> Any:
    """Replay: each event applies itself (the library's default projector also
    checks every event against a runtime Protocol, which costs more than the fold)."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


class CheckedMapper(PydanticMapper):
    """The codec's mapper, saying which stored event it could not read back.

    Any failure to turn a stored event into a domain event (a body that does
    not decode or no longer fits its class, a type that does not exist) is a
    CorruptEventError naming the event's log position, stream, version and
    type. Errors flowledger raises on purpose pass through as they are.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Where a stored event sits: (log position, None) or (None, "snapshot"); set
        # by the EventLog that owns this mapper.
        self.locate: Callable[[StoredEvent], tuple[int | None, str | None]] = (
            lambda stored: (None, None))

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        try:
            return super().to_domain_event(stored_event)
        except FlowledgerError:
            raise
        except Exception as e:
            raise self.corrupt(stored_event, e) from e

    def corrupt(self, stored: StoredEvent, error: BaseException) -> CorruptEventError:
        try:
            position, table = self.locate(stored)
        except Exception:  # the store itself may be failing: say what is known
            position, table = None, None
        stream = stored.originator_id
        stream_id = stream if isinstance(stream, UUID) else UUID(str(stream))
        name = stored.topic.rpartition(":")[2] if stored.topic.startswith("flowledger.") \
            else repr(stored.topic)
        cause = error.__cause__ if isinstance(error.__cause__, Exception) else error
        detail = one_line(cause)
        detail = f"{type(cause).__name__}: {detail[:200]}" if detail else type(cause).__name__
        what = (f"the event at log position {position}" if position is not None else
                "a snapshot" if table == "snapshot" else "a stored event")
        return CorruptEventError(
            f"{what} (stream {stream_id}, version {stored.originator_version}, {name}) cannot "
            f"be read: {detail}. It was changed or damaged outside flowledger; nothing was "
            "skipped or written. Restore the store from a backup taken before the damage",
            position=position, stream_id=stream_id, version=stored.originator_version,
            topic=stored.topic)


class Kept(NamedTuple):
    """An aggregate a reader keeps, and the mark of the stored event it was last
    folded to (`EventLog.refreshed`)."""

    aggregate: Any
    mark: bytes | None


def _mark(event: tuple[int, str, bytes]) -> bytes:
    """What tells a stored event (version, topic, body) from another written at
    its version: its body holds its time and id."""
    version, topic, state = event
    return hashlib.blake2b(b"%d\0%s\0%s" % (version, topic.encode(), state),
                           digest_size=16).digest()


class EventLog(Application[UUID]):
    """Appends aggregates' pending events in one transaction, optionally fenced."""

    _may_hold: Callable[[], bool] | None = None

    name = "flowledger"
    # Snapshots are a cache of the replay of the streams that grow with use
    # (a workflow's sessions, a session's runs); deleting them changes
    # nothing but speed.
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {
        Workflow: 100, Session: 200, HandlerState: 20}
    snapshotting_projectors: ClassVar[dict[type[Any], Any]] = dict.fromkeys(
        snapshotting_intervals, _fold)

    def __init__(self, config: StoreConfig, protection: Protection | None = None,
                 create: bool = True, copying: bool = False) -> None:
        """`create=False`: a store that does not exist yet is refused, not made.
        A store a copy has not finished filling is refused, unless `copying`."""
        self.config = config
        # Settled before the library reads its environment (construct_env).
        self.protection = protection if protection is not None else asked_protection()
        if config.kind == "sqlite":
            check_sqlite_store(config, create)  # before anything connects to it for writing
        elif config.kind == "postgresql":
            check_postgres_server(config, create)
        try:
            super().__init__(env=config.env)
        except (PersistenceError, InfrastructureFactoryError, sqlite3.Error, OSError) as e:
            if isinstance(e, FormatRecordGone):
                raise format_record_gone(config.shown) from None
            refused = opening_failed(config, e, "set the store up")
            if refused is not None:
                raise refused from e
            hint = ""
            if isinstance(e, ServerTakesNoWrites):
                hint = (" Add ?mode=ro to the URL to read it there, or point the URL at the "
                        "primary (with several hosts, add ?target_session_attrs=read-write).")
            elif config.kind == "postgresql":  # reachable (check_postgres_server), yet failing
                role = shlex.quote(config.env["POSTGRES_USER"])
                schema = config.env["POSTGRES_SCHEMA"]
                hint = (" The store's tables are missing, or older than this release's "
                        f"(tables version {TABLES_VERSION}): open it once as a role that may "
                        "create in its schema, and in the database if the schema does not "
                        "exist yet (the role that created it, for example): `flowledger "
                        f"--store OWNER-URL setup --grant {role}`, with a URL naming that "
                        f"role, brings them up to date and lets {role} use them. If that role "
                        "is creating the store right now, try again when it is done.")
                if f"permission denied for schema {schema}" in str(e):
                    hint += (f" To let {role} create there, as the schema's owner or a "
                             f'superuser: GRANT CREATE ON SCHEMA "{schema}" TO '
                             f"{sql_name(config.env['POSTGRES_USER'])}; or keep the store in "
                             "a schema of its own (?schema=NAME).")
            elif config.read_only and holds_a_log(config):
                hint = (" It is opened read-only (?mode=ro): if an older release wrote it, it "
                        "lacks tables this release reads: open it once without ?mode=ro, as "
                        "a process that may write it, to bring its tables up to date. "
                        "Nothing was changed.")
            elif config.read_only:
                hint = (" It is opened read-only (?mode=ro) and is not a flowledger store yet: "
                        "its tables cannot be created. Open it once without ?mode=ro, or "
                        "point the URL at a flowledger store.")
            elif config.kind == "sqlite":
                hint = " The URL must name an SQLite database file (or a new one) in a folder."
            # The server's first line says it (the rest quotes the statement);
            # the library's wrapper may say the same again.
            said = first_line(e)
            cause = first_line(e.__cause__) if e.__cause__ is not None else ""
            detail = f"{said} ({cause})" if cause and cause not in said else said
            raise ConfigurationError(f"cannot open store {config.shown!r}: {detail}.{hint}"
                                     ) from e
        self.flow_mapper.locate = self._locate
        try:
            self.format = settle_format(self.flow_recorder, self.protection, config.shown,
                                        config.read_only)
        except BaseException as e:
            self.close()
            refused = opening_failed(config, e, "recorded the store's format")
            if refused is not None:
                raise refused from e
            raise
        if self.format.copying_from is not None and not copying:
            self.close()
            raise ConfigurationError(
                f"cannot open store {config.shown!r}: a copy of {self.format.copying_from!r} "
                "into it has not finished (it is under way, or it stopped), and it holds "
                "only part of that log. Let it finish, or run the same `flowledger copy` "
                "again to go on where it stopped; or delete this store")
        # Compression is the store's, recorded when it was created.
        self.flow_mapper.compressor = make_compressor() if self.format.compressed else None
        self.flow_recorder.chain = self.format.chain(self.protection.hmac_key())
        self._column_cipher = (self.protection.column_cipher() if self.format.encrypted
                               else None)

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        """The library's environment, without the body settings it would take from
        the process environment: the cipher and compressor are ours to set
        (encryption.Protection), from arguments or FLOWLEDGER_CIPHER_KEY only.
        Nor may the process environment override what the store URL says (the
        library reads FLOWLEDGER_POSTGRES_DBNAME before POSTGRES_DBNAME): the URL
        alone names the store."""
        base = super().construct_env(name, None)
        settings = scrubbed(base, name)
        ours = dict(env or {})
        prefix = name.upper() + "_"
        for key in [*ours, "PERSISTENCE_MODULE"]:
            settings.pop(prefix + key, None)
        settings.update(ours)
        settings.update(self.protection.library_env())
        return Environment(name, settings)

    def _locate(self, stored: StoredEvent) -> tuple[int | None, str | None]:
        return self.flow_recorder.locate(stored)

    @classmethod
    def open(cls, url: str, protection: Protection | None = None,
             create: bool = True, copying: bool = False) -> EventLog:
        return cls(parse_store_url(url), protection, create, copying)

    @property
    def column_cipher(self) -> ColumnCipher | None:
        """What projections seal their copies of what handlers wrote with (None: the
        store is in clear)."""
        return self._column_cipher

    def construct_factory(self, env: Environment) -> InfrastructureFactory[Any]:
        factory = super().construct_factory(env)
        if isinstance(factory, SQLiteFactory):
            use_statement_cache(factory.datastore)
        return factory

    def construct_snapshot_store(self) -> EventStore[UUID]:
        main = self.recorder
        if not isinstance(main, FlowSQLiteRecorder):
            from flowledger.infrastructure.postgres_recorder import (
                FlowPostgresRecorder,
                FlowPostgresSnapshotRecorder,
            )

            assert isinstance(main, FlowPostgresRecorder)
            return self.factory.event_store(mapper=self.mapper,
                                            recorder=FlowPostgresSnapshotRecorder(main))
        recorder = FlowSQLiteSnapshotRecorder(main.datastore, main)
        if isinstance(self.factory, SQLiteFactory) and self.factory.env_create_table():
            recorder.create_table()
        main.snapshot_table_name = recorder.events_table_name  # appends write it
        return self.factory.event_store(mapper=self.mapper, recorder=recorder)

    def construct_mapper(self) -> Mapper[UUID]:
        return self.factory.mapper(transcoder=MsgpackTranscoder(), mapper_class=CheckedMapper)

    def construct_recorder(self) -> ApplicationRecorder:
        if isinstance(self.factory, SQLiteFactory):
            recorder = FlowSQLiteRecorder(datastore=self.factory.datastore)
            if self.factory.env_create_table():
                recorder.create_table()
            return recorder
        if self.config.kind == "postgresql":
            from flowledger.infrastructure.postgres_recorder import FlowPostgresRecorder

            settings = self.config.libpq()
            datastore = self.factory.datastore  # type: ignore[attr-defined]
            # The library looks up its composite types for its database-functions
            # insert, which flowledger does not use: its pool opens no connection
            # for that (it would keep five idle for the engine's life). If it ever
            # connects, it does so as flowledger's connections do.
            datastore.register_type_adapters = lambda: None
            datastore.pool.kwargs.pop("password", None)
            datastore.pool.kwargs.update(settings)
            pg = FlowPostgresRecorder(datastore, settings, read_only=self.config.read_only)
            pg.create_table()
            return pg
        raise ConfigurationError(f"store {self.config.shown!r} is not one this release opens; "
                                 f"use {ACCEPTED}")

    @property
    def flow_mapper(self) -> CheckedMapper:
        assert isinstance(self.mapper, CheckedMapper)
        return self.mapper

    @property
    def flow_recorder(self) -> LogStore:
        """This store's recorder, through the seam every store implements."""
        return cast(LogStore, self.recorder)

    def set_after_insert(self, hook: AfterInsert | None,
                         on_abort: Callable[[], None] | None = None,
                         may_hold: Callable[[], bool] | None = None,
                         prefetch: BeforeFold | None = None) -> None:
        """`hook` runs inside each append's transaction; `on_abort` when one rolls
        back; `may_hold` says whether the hook may hold an append's fold now;
        `prefetch` asks ahead for what the hook will read, where the store can."""
        self.flow_recorder.after_insert = hook
        self.flow_recorder.after_abort = on_abort
        self.flow_recorder.before_fold = prefetch
        self._may_hold = may_hold

    def append(self, *aggregates: Any, fence: Fence | None = None, sync: bool = True,
               hold: bool = False, read_after: Sequence[ReadAfter] = (),
               answered: Callable[[int | BaseException], None] | None = None) -> int:
        """One durable point: all pending events of these aggregates, or none.

        `sync=False` skips the fsync: for appends that a later synced one
        covers before anything outside the log depends on them (ADR 0011).
        `hold=True` lets pending work fold these events in with the next
        append instead of in this one (ADR 0012). Each of `read_after` is read in
        the same transaction, after its writes (its rows set once it committed).
        `answered`: the store may send the append and read its answer later
        (before its next write, and before this thread's next read); it is
        then told the last position, or what this call would have raised
        (LogStore.append_rows).

        Returns the log position of the last event appended (0 if none). The
        same steps as `Application.save` — record, then snapshot — on the
        engine's own writer connection, without the library's per-object
        protocol checks and connection pool, which cost more than the insert.
        """
        to_row = self.flow_mapper.to_row
        events: list[Any] = []
        snapshots: list[tuple[str, int, str, bytes]] = []
        for agg in aggregates:
            new = agg.collect_events()
            if new:
                events.extend(new)
                if self._snapshot_due(agg, new[0].originator_version, new[-1].originator_version):
                    # Taken from the aggregate in hand, which is exactly the fold of
                    # its stream up to its version, and stored in the same
                    # transaction. A snapshot is a cache: one that cannot be
                    # taken is skipped, never the append.
                    with contextlib.suppress(Exception):
                        snapshots.append(to_row(type(agg).Snapshot.take(agg)))
        if not events:
            return 0
        if hold and self._may_hold is not None:
            hold = self._may_hold()
        told = None
        if answered is not None:
            def told(result: int | BaseException) -> None:
                answered(result if isinstance(result, int) else _refused(result, fence))
        try:
            return self.flow_recorder.append_rows(
                [to_row(e) for e in events], events, fence, sync, snapshots, hold, read_after,
                answered=told)
        except (ProjectionRowTaken, IntegrityError) as e:
            if isinstance(e, IntegrityError) and fence is not None:
                repeated = self._ids_repeated(events, fence)
                if repeated is not None:
                    raise repeated from e
            raise _refused(e, fence) from e

    def _ids_repeated(self, events: Sequence[Any], fence: Fence) -> ConfigurationError | None:
        """Why a fenced append clashed with the log's streams, when nobody took
        its workflow: a stream it begins (a run's or a session's, named by the
        engine's id factory) is in the log already. Read only after a clash; a
        store that cannot be read then leaves the clash said as before."""
        expected = fence.version - sum(1 for e in events if e.originator_id == fence.stream_id)
        begun = [e for e in events if e.originator_version == 1]
        try:
            since = self.flow_recorder.select_from_versions({fence.stream_id: expected})
            if [version for version, _, _ in since.get(fence.stream_id, [])] != [expected]:
                return None  # the workflow moved on: its session was taken over
            taken = self.flow_recorder.select_streams([e.originator_id for e in begun])
        except Exception:
            return None
        first = next((e for e in begun if e.originator_id in taken), None)
        if first is None:
            return None
        kind = type(first).__qualname__.split(".")[0]
        return ConfigurationError(
            f"an append was refused: the {kind} stream {first.originator_id} it begins is in "
            "the log already, though nobody took this session's workflow over. The ids the "
            "engine was given repeat (Engine(ids=...)): give it ids that never repeat on "
            "this store (fl.SeededIds: a seed of its own for each engine, and none reused "
            "on a store that already holds its ids). Nothing of this append was stored")

    def load_at(self, stream_ids: Sequence[UUID], position: int) -> list[Any]:
        """Streams never snapshotted (messages, runs, inputs) as they were when the
        log ended at `position`, read together, in the order given; those not
        begun then are left out."""
        with self.reading() as c:
            found = self.flow_recorder.select_streams_upto(c, stream_ids, position)
        to_domain = self.flow_mapper.to_domain_event
        return [_fold(None, [to_domain(s) for s in found[i]]) for i in stream_ids
                if i in found]

    def _snapshot_due(self, agg: Any, first: int, last: int) -> bool:
        """The long streams are snapshotted each time they pass their interval."""
        interval = self.snapshotting_intervals.get(type(agg))
        return interval is not None and last // interval > (first - 1) // interval

    def load(self, aggregate_id: UUID, version: int | None = None, *,
             short: bool = False) -> Any | None:
        """An aggregate as of `version` (default: now), or None if it has no events.

        `short`: the stream's type is never snapshotted (runs, messages, inputs),
        so the snapshot lookup is skipped.
        """
        if short:
            return _fold(None, self.events.get(aggregate_id, lte=version))
        try:
            if version is None:  # the latest snapshot and what follows it, read together
                snapshot, after = self.flow_recorder.select_latest(aggregate_id)
                to_domain = self.flow_mapper.to_domain_event
                return _fold(None, [to_domain(s) for s in (snapshot, *after) if s is not None])
            return self.repository.get(aggregate_id, version=version, projector_func=_fold)
        except AggregateNotFoundError:
            return None
        except CorruptEventError as e:
            if e.position is not None or e.stream_id != aggregate_id:
                raise
            # An unreadable snapshot (or one that went away meanwhile): snapshots are
            # a cache of the stream's events, which say the same.
            return _fold(None, self.events.get(aggregate_id, lte=version))

    def load_short(self, stream_ids: Sequence[UUID]) -> dict[UUID, Any]:
        """Short streams (see `load`) by id, read together: those with events."""
        found = self.flow_recorder.select_streams(stream_ids)
        return {stream_id: self.stream_from_events(stream_id, events)
                for stream_id, events in found.items()}

    def kept(self, stream_id: UUID) -> Kept | None:
        """A stream's aggregate, to be kept by a reader and brought up to date by
        `refreshed`: loaded, then marked with its last event (one read more)."""
        aggregate = self.load(stream_id)
        for _ in range(2):  # loaded again if the stream changed between the two reads
            if aggregate is None:
                return None
            kept = self.refreshed([Kept(aggregate, None)]).get(stream_id)
            if kept is not None:
                return kept
            aggregate = self.load(stream_id)
        return None if aggregate is None else Kept(aggregate, None)  # its next refresh marks it

    def refreshed(self, known: Sequence[Kept]) -> dict[UUID, Kept]:
        """Aggregates a reader keeps (and never appends through), brought up to
        date in one read: each one's events after its version are folded onto
        it, in place. Left out, to be loaded afresh: one whose stream no
        longer holds the very event it was last folded to (the store was
        restored, or a failover lost appends, and others wrote that version
        anew), and one with an event that cannot be read (the load says which).
        A mark of None takes the event at the aggregate's version as it is
        (`kept`, just after loading it)."""
        found = self.flow_recorder.select_from_versions(
            {k.aggregate.id: k.aggregate.version for k in known})
        out: dict[UUID, Kept] = {}
        for aggregate, mark in known:
            events = found.get(aggregate.id, [])
            if not events or events[0][0] != aggregate.version or (
                    mark is not None and _mark(events[0]) != mark):
                continue
            try:
                new = self._domain_events(aggregate.id, events[1:])
            except CorruptEventError:
                continue
            out[aggregate.id] = Kept(_fold(aggregate, new), _mark(events[-1]))
        return out

    def stream_from_events(self, stream_id: UUID, events: StreamEvents) -> Any | None:
        """A short stream (see `load`) from its events (version, topic, stored
        state) as another query read them."""
        return _fold(None, self._domain_events(stream_id, events))

    def _domain_events(self, stream_id: UUID, events: StreamEvents) -> list[Any]:
        return [self.events.mapper.to_domain_event(
            StoredEvent(originator_id=stream_id, originator_version=version, topic=topic,
                        state=state)) for version, topic, state in events]

    @contextmanager
    def reading(self, snapshot: bool = True, lasting: bool = False) -> Iterator[Any]:
        """A read transaction: one consistent snapshot of log and projections
        (`snapshot=False`: each statement its own, where that costs less;
        `lasting`: see LogStore.reading)."""
        with self.flow_recorder.reading(snapshot, lasting) as c:
            yield c

    def close(self) -> None:
        self.flow_recorder.close_connections()
        super().close()

    @contextmanager
    def writing(self) -> Iterator[Any]:
        """A write transaction on the engine's writer connection."""
        with self.flow_recorder.writing() as c:
            yield c
