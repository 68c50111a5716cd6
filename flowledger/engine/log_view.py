"""The log as people read it: every event, decoded, in the order it was appended."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from flowledger.domain.ids import workflow_id as workflow_id_of
from flowledger.infrastructure.codec import unpack
from flowledger.infrastructure.event_log import EventLog

_HIDDEN = {"originator_id", "originator_version", "timestamp", "originator_topic"}


@dataclass(frozen=True)
class LoggedEvent:
    position: int
    stream_id: UUID
    version: int
    aggregate: str  # HandlerRun, TopicEvent, Workflow, ...
    name: str  # the event's class name: Prepared, MutationApplied, ...
    timestamp: datetime
    workflow_id: UUID | None
    fields: dict[str, Any]


def _readable(value: Any) -> Any:
    # Every bytes field of our events holds a value packed by the codec.
    if isinstance(value, bytes):
        try:
            return unpack(value)
        except Exception:
            return value
    return value


def read_log(log: EventLog, workflow: str | None = None, run: UUID | None = None,
             after: int = 0, upto: int | None = None, batch: int = 1000
             ) -> Iterator[LoggedEvent]:
    """Events after `after` (and up to `upto`), optionally of one workflow or one run."""
    wanted = workflow_id_of(workflow) if workflow else None
    owner: dict[UUID, UUID] = {}  # stream → workflow, learnt from each stream's first event
    position = after
    recorder = log.flow_recorder
    while True:
        with log.reading() as c:
            rows = recorder.select_stored(c, position, batch, upto)
        if not rows:
            return
        for pos, stored in rows:
            position = pos
            event = log.mapper.to_domain_event(stored)
            stream = stored.originator_id
            assert isinstance(stream, UUID)
            wf = getattr(event, "workflow_id", None)
            if wf is None and type(event).__qualname__.startswith("Workflow."):
                wf = stream
            if wf is not None:
                owner.setdefault(stream, wf)
            wf = owner.get(stream)
            if wanted is not None and wf != wanted:
                continue
            if run is not None and stream != run:
                continue
            aggregate, _, name = type(event).__qualname__.rpartition(".")
            yield LoggedEvent(
                pos, stream, stored.originator_version, aggregate, name, event.timestamp, wf,
                {k: _readable(v) for k, v in event.__dict__.items() if k not in _HIDDEN},
            )
