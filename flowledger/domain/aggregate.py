"""The base of every aggregate: the library's BaseAggregate with pydantic events.

Time comes in as an argument (`now`), never from a clock: an event's timestamp
is what the caller says it is, so replay and property tests need no clock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Self, cast
from uuid import UUID

from eventsourcing.domain import (
    BaseAggregate,
    CanInitAggregate,
    CanMutateAggregate,
    CanSnapshotAggregate,
    OriginatorIDError,
    OriginatorVersionError,
)
from eventsourcing.utils import get_topic, resolve_topic
from pydantic import BaseModel, ConfigDict


class DomainEvent(BaseModel):
    """A fact, immutable once recorded. Subclasses add only what the fold needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    originator_id: UUID
    originator_version: int
    timestamp: datetime


class EventSourcedAggregate(BaseAggregate[UUID]):
    """An aggregate whose state is the fold of its pydantic events."""

    # Within one append, runs come first and the session and workflow last, so
    # the log reads in the order things happened.
    append_order: ClassVar[int] = 1

    class Event(DomainEvent, CanMutateAggregate[UUID]):
        def mutate(self, aggregate: Any) -> Any:
            """The library's checks and steps, on the aggregate's fields directly
            (its property setters cost more than the fold of most events)."""
            if self.originator_id != aggregate._id:
                raise OriginatorIDError(self.originator_id, aggregate._id)
            if self.originator_version != aggregate._version + 1:
                raise OriginatorVersionError(self.originator_version, aggregate._version + 1)
            self.apply(aggregate)
            aggregate._version = self.originator_version
            aggregate._modified_on = self.timestamp
            return aggregate

    class Created(Event, CanInitAggregate[UUID]):
        originator_topic: str

        def mutate(self, _: BaseAggregate[Any] | None) -> Any:
            """Build the aggregate this event starts: the library's steps, without
            matching event fields to `__init__` parameters (ours take none; their
            state comes from `apply`, on creation and on every replay alike)."""
            cls = resolve_topic(self.originator_topic)
            aggregate = cls.__new__(cls)
            aggregate.__base_init__(self.originator_id, self.originator_version,
                                    self.timestamp)
            aggregate.__init__()
            self.apply(aggregate)
            return aggregate

    class Snapshot(DomainEvent, CanSnapshotAggregate[UUID]):
        topic: str
        state: dict[str, Any]

        def mutate(self, _: None) -> Any:
            # The topic the snapshot names is the class that took it: always one of ours.
            aggregate = cast("EventSourcedAggregate", super().mutate(_))
            for name in aggregate.dropped_fields:
                aggregate.__dict__.pop(name, None)
            for name, value in aggregate.added_fields.items():
                aggregate.__dict__.setdefault(name, value)
            aggregate.restored_from_snapshot()
            return aggregate

    # Fields an earlier release kept and this one does not: a snapshot taken
    # then may hold them; restored, they are left out (and `verify` expects them).
    dropped_fields: ClassVar[tuple[str, ...]] = ()
    # Fields this release added, with the value an aggregate restored from a
    # snapshot an earlier release took (which lacks them) gets; `verify`
    # accepts such a snapshot.
    added_fields: ClassVar[dict[str, Any]] = {}

    def restored_from_snapshot(self) -> None:
        """Give back their types to fields the codec stores plainly (enums)."""

    @classmethod
    def start(cls, event_class: type[EventSourcedAggregate.Created], id: UUID,
              now: datetime, **fields: Any) -> Self:
        """Create the aggregate by recording its first event."""
        event = event_class(originator_id=id, originator_version=cls.INITIAL_VERSION,
                            timestamp=now, originator_topic=get_topic(cls), **fields)
        aggregate: Self = event.mutate(None)
        aggregate._pending_events.append(event)
        return aggregate

    def record(
        self, event_class: type[EventSourcedAggregate.Event], now: datetime, **fields: Any
    ) -> None:
        """Record a new event: the same `apply` runs now and on every replay.

        What the library's `trigger_event` does, without its checks for
        features we do not use (explicit topics), on the hot path.
        """
        event = event_class(originator_id=self._id, originator_version=self._version + 1,
                            timestamp=now, **fields)
        event.mutate(self)
        self._pending_events.append(event)

    @property
    def has_pending_events(self) -> bool:
        return bool(self._pending_events)

    @property
    def pending_count(self) -> int:
        return len(self._pending_events)

    def recorded_since(self, mark: int) -> tuple[EventSourcedAggregate.Event, ...]:
        """The events recorded (not yet appended) after the first `mark` of them."""
        # The library types its list by its base class; ours holds only our Events.
        return cast("tuple[EventSourcedAggregate.Event, ...]", tuple(self._pending_events[mark:]))
