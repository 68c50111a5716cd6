"""The one append-only log: the library's Application wired to our codec and recorder."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar
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
)
from eventsourcing.sqlite import SQLiteFactory
from eventsourcing.utils import Environment

from flowledger.domain.errors import ConcurrencyError, ConfigurationError
from flowledger.domain.handler_state import HandlerState
from flowledger.domain.session import Session
from flowledger.domain.workflow import Workflow
from flowledger.infrastructure.codec import MsgpackTranscoder, PydanticMapper
from flowledger.infrastructure.sqlite_recorder import (
    AfterInsert,
    Fence,
    FlowSQLiteRecorder,
    FlowSQLiteSnapshotRecorder,
    use_statement_cache,
)
from flowledger.infrastructure.store_url import ACCEPTED, StoreConfig, parse_store_url


def _fold(aggregate: Any, events: Iterable[Any]) -> Any:
    """Replay: each event applies itself (the library's default projector also
    checks every event against a runtime Protocol, which costs more than the fold)."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


class EventLog(Application[UUID]):
    """Appends aggregates' pending events in one transaction, optionally fenced."""

    name = "flowledger"
    # Snapshots are a cache of the replay of the streams that grow with use
    # (a workflow's sessions, a session's runs); deleting them changes
    # nothing but speed.
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {
        Workflow: 100, Session: 200, HandlerState: 20}
    snapshotting_projectors: ClassVar[dict[type[Any], Any]] = dict.fromkeys(
        snapshotting_intervals, _fold)

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        try:
            super().__init__(env=config.env)
        except (PersistenceError, InfrastructureFactoryError, sqlite3.Error, OSError) as e:
            hint = ""
            if config.kind == "postgresql":
                hint = (" PostgreSQL needs the postgres extra (pip install "
                        "'flowledger[postgres]'); see the README.")
            elif config.kind == "sqlite":
                hint = " The URL must name an SQLite database file (or a new one) in a folder."
            raise ConfigurationError(f"cannot open store {config.url!r}: {e}.{hint}") from e

    @classmethod
    def open(cls, url: str) -> EventLog:
        return cls(parse_store_url(url))

    def construct_factory(self, env: Environment) -> InfrastructureFactory[Any]:
        factory = super().construct_factory(env)
        if isinstance(factory, SQLiteFactory):
            use_statement_cache(factory.datastore)
        return factory

    def construct_snapshot_store(self) -> EventStore[UUID]:
        recorder = FlowSQLiteSnapshotRecorder(self.flow_recorder.datastore, self.flow_recorder)
        if isinstance(self.factory, SQLiteFactory) and self.factory.env_create_table():
            recorder.create_table()
        self.flow_recorder.snapshot_table_name = recorder.events_table_name  # appends write it
        return self.factory.event_store(mapper=self.mapper, recorder=recorder)

    def construct_mapper(self) -> Mapper[UUID]:
        return self.factory.mapper(transcoder=MsgpackTranscoder(), mapper_class=PydanticMapper)

    def construct_recorder(self) -> ApplicationRecorder:
        if isinstance(self.factory, SQLiteFactory):
            recorder = FlowSQLiteRecorder(datastore=self.factory.datastore)
            if self.factory.env_create_table():
                recorder.create_table()
            return recorder
        raise ConfigurationError(
            f"store {self.config.url!r}: only SQLite files and memory:// are supported "
            f"in this release (PostgreSQL comes later); use {ACCEPTED}"
        )

    @property
    def flow_mapper(self) -> PydanticMapper:
        assert isinstance(self.mapper, PydanticMapper)
        return self.mapper

    @property
    def flow_recorder(self) -> FlowSQLiteRecorder:
        assert isinstance(self.recorder, FlowSQLiteRecorder)
        return self.recorder

    def set_after_insert(self, hook: AfterInsert | None,
                         on_abort: Callable[[], None] | None = None) -> None:
        """`hook` runs inside each append's transaction; `on_abort` when one rolls back."""
        self.flow_recorder.after_insert = hook
        self.flow_recorder.after_abort = on_abort

    def append(self, *aggregates: Any, fence: Fence | None = None, sync: bool = True,
               hold: bool = False) -> int:
        """One durable point: all pending events of these aggregates, or none.

        `sync=False` skips the fsync: for appends that a later synced one
        covers before anything outside the log depends on them (ADR 0011).
        `hold=True` lets pending work fold these events in with the next
        append instead of in this one (ADR 0012).

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
        try:
            position = self.flow_recorder.append_rows(
                [to_row(e) for e in events], events, fence, sync, snapshots, hold)
        except IntegrityError as e:
            if fence is not None:  # a fenced writer: its session was taken over
                raise ConcurrencyError(
                    f"this session lost its lock: another process took it over ({e}). "
                    "Nothing of this step was stored; the session stops here"
                ) from e
            raise ConcurrencyError(
                f"another process wrote to the same streams first ({e}); this append was "
                "not stored"
            ) from e
        return position

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
            return self.repository.get(aggregate_id, version=version, projector_func=_fold)
        except AggregateNotFoundError:
            return None

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """A read transaction: one consistent snapshot of log and projections."""
        with self.flow_recorder.reading() as c:
            yield c

    def close(self) -> None:
        self.flow_recorder.close_connections()
        super().close()

    @contextmanager
    def writing(self) -> Iterator[Any]:
        """A write transaction on the engine's writer connection."""
        with self.flow_recorder.writing() as c:
            yield c
