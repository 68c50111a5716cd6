"""`engine.at(position)`: the store as it was when the log ended at a position.

Read models are the projections folded into memory up to that position
(`projections/point_in_time.py`); aggregates are loaded at the version their
stream had then; streams are read up to it. Everything is read-only, and the
same `ReadSide` code answers as for the present (ADR 0009).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from flowledger.authoring.registration import Registration
from flowledger.domain.errors import InvalidArgument
from flowledger.domain.topic_event import MessageStatus
from flowledger.infrastructure.event_log import EventLog
from flowledger.projections.base import Cursor, Projection
from flowledger.projections.point_in_time import FoldedOnDemand
from flowledger.projections.settled import unsettled_at
from flowledger.read_side.log_view import read_positions, stream_version_at
from flowledger.read_side.queries import ReadSide

_BEFORE_ANYTHING = datetime.min.replace(tzinfo=UTC)


def check_position(log: EventLog, position: int) -> int:
    """A position of this log, or a clear InvalidArgument; returns the log's head."""
    head = log.flow_recorder.max_notification_id() or 0
    if isinstance(position, bool) or not isinstance(position, int):
        raise InvalidArgument(f"a log position is a whole number, got {position!r}")
    if position < 0:
        raise InvalidArgument(f"log position {position} is negative; positions run from 0 "
                              f"(an empty log) to {head} (the last event)")
    if position > head:
        raise InvalidArgument(f"log position {position} is beyond the end of the log: the "
                              f"last event is at {head}")
    return head


def pending_then(log: EventLog, tables: Callable[[], AbstractContextManager[Cursor]],
                 workflow_id: UUID, topic: str, position: int, limit: int | None
                 ) -> list[tuple[str, bytes]]:
    """What `peek(topic, limit)` gave when the log ended at `position`, as
    (message id, payload), without folding the log up to there: the messages
    unsettled then (`settled.unsettled_at`: pending work and the settlings
    folded at least up to `position`), each read from its own stream as it
    was then."""
    with tables() as c:
        candidates = unsettled_at(c, workflow_id, topic, position)
    found: list[tuple[str, bytes]] = []
    page = 100 if limit is None else max(limit, 10)  # streams read together
    for start in range(0, len(candidates), page):
        ids = candidates[start:start + page]
        for message in log.load_at(ids, position):
            if message.status is MessageStatus.PENDING:
                found.append((message.message_id, message.payload))
                if limit is not None and len(found) >= limit:
                    return found
    return found


class EngineAt(ReadSide):
    """Runs, sessions, workflows, pending work and costs exactly as they were when
    the log ended at `position`. Close it (or use `with`) to free its memory."""

    def __init__(self, log: EventLog, position: int,
                 projection_types: Sequence[type[Projection]],
                 registered: Mapping[str, Registration]) -> None:
        check_position(log, position)
        self.position = position
        self._db = FoldedOnDemand(log, projection_types, position)
        at = read_positions(log, [position]) if position else []
        # The log's own clock: the time of the last event then.
        self.time: datetime | None = at[0].timestamp if at else None
        super().__init__(log, self.tables, self._load_then, registered,
                         lambda: self.time or _BEFORE_ANYTHING, upto=position)

    @contextmanager
    def tables(self) -> Iterator[Cursor]:
        """A cursor on the projections' tables as they were (in memory), each
        projection folded when a statement first names one of its tables."""
        cursor = self._db.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def _load_then(self, aggregate_id: UUID, short: bool = False) -> Any | None:
        version = stream_version_at(self.log, aggregate_id, self.position)
        if version is None:
            return None
        return self.log.load(aggregate_id, version=version, short=short)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EngineAt:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
