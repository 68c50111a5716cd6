"""The log as people read it: every event, decoded, in the order it was appended."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

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


def logged(position: int, stored: StoredEvent, event: Any,
           workflow_id: UUID | None) -> LoggedEvent:
    """One decoded event as people read it."""
    stream = stored.originator_id
    assert isinstance(stream, UUID)
    aggregate, _, name = type(event).__qualname__.rpartition(".")
    return LoggedEvent(
        position, stream, stored.originator_version, aggregate, name, event.timestamp,
        workflow_id,
        {k: _readable(v) for k, v in event.__dict__.items() if k not in _HIDDEN},
    )


def read_log(log: EventLog, workflow: str | None = None, run: UUID | None = None,
             after: int = 0, upto: int | None = None, batch: int = 1000,
             last: int | None = None, workflows: bool = True) -> Iterator[LoggedEvent]:
    """Events after `after` (and up to `upto`), optionally of one workflow or one
    run. `last`: only the last N are read, of the whole log or of one
    workflow's events (found reading back from the head). A run's are its
    stream's: read alone. `workflows=False`: the workflow of a stream begun
    before `after` is not looked up (one read a batch) unless the filter needs it."""
    wanted = workflow_id_of(workflow) if workflow else None
    if run is not None:
        yield from _read_run(log, run, wanted, after, upto)
        return
    if last is not None and wanted is not None and upto is None:
        yield from _last_of_workflow(log, wanted, after, last, batch)
        return
    owner: dict[UUID, UUID] = {}  # stream → workflow, learnt from each stream's first event
    position = after
    recorder = log.flow_recorder
    if last is not None and workflow is None and upto is None:
        with log.reading() as c:
            position = max(after, recorder.position_before_last(c, last or 0))
    # Streams may have begun before: their first event says whose they are.
    begun_before = position > 0 and (workflows or wanted is not None)
    while True:
        with log.reading() as c:
            rows = recorder.select_stored(c, position, batch, upto)
        if not rows:
            return
        position = rows[-1][0]
        if wanted is not None:
            yield from _of_workflow(log, rows, owner, wanted, begun_before)
            continue
        if begun_before:
            _look_up_owners(log, {_stream(s) for _, s in rows}, owner)
        for pos, stored in rows:
            event = log.mapper.to_domain_event(stored)
            stream = _stream(stored)
            wf = _workflow_of(event, stream)
            if wf is not None:
                owner.setdefault(stream, wf)
            yield logged(pos, stored, event, owner.get(stream))


def _last_of_workflow(log: EventLog, wanted: UUID, after: int, n: int,
                      batch: int) -> Iterator[LoggedEvent]:
    """The last `n` events of workflow `wanted` after `after`, read back from the
    head a window of positions at a time, until `n` are found: a workflow that
    ran lately is found near the head, not by reading the log from its start."""
    recorder = log.flow_recorder
    with log.reading() as c:
        upto = recorder.max_position(c)
    owner: dict[UUID, UUID] = {}
    windows: list[list[LoggedEvent]] = []  # the newest first, each in log order
    found = 0
    while found < n and upto > after:
        start = max(after, upto - batch)
        with log.reading() as c:
            rows = recorder.select_stored(c, start, batch, upto)
        windows.append(_of_workflow(log, rows, owner, wanted, look_up=True))
        found += len(windows[-1])
        upto = start
    yield from [e for window in reversed(windows) for e in window][-n:] if n else []


def _of_workflow(log: EventLog, rows: list[tuple[int, StoredEvent]], owner: dict[UUID, UUID],
                 wanted: UUID, look_up: bool) -> list[LoggedEvent]:
    """The events of workflow `wanted` among `rows`. An event is its stream's
    workflow's, which the stream's first event names: only first events and
    the workflow's own are decoded (most of the log may be other workflows').
    `look_up`: streams begun before `rows` are looked up (else they are not
    the workflow's, as when reading from the log's start)."""
    decoded: dict[int, Any] = {}
    for position, stored in rows:
        stream = _stream(stored)
        if stored.originator_version == 1 and stream not in owner:
            decoded[position] = event = log.mapper.to_domain_event(stored)
            wf = _workflow_of(event, stream)
            if wf is not None:
                owner[stream] = wf
    if look_up:
        _look_up_owners(log, {_stream(stored) for _, stored in rows}, owner)
    return [logged(position, stored, decoded.get(position) or log.mapper.to_domain_event(stored),
                   wanted)
            for position, stored in rows if owner.get(_stream(stored)) == wanted]


def _stream(stored: StoredEvent) -> UUID:
    stream = stored.originator_id
    assert isinstance(stream, UUID)
    return stream


def _look_up_owners(log: EventLog, streams: set[UUID], owner: dict[UUID, UUID]) -> None:
    """Learn the workflow of each of `streams` not in `owner` from its first event."""
    unknown = sorted((s for s in streams if s not in owner), key=str)
    if not unknown:
        return
    with log.reading() as c:
        first = log.flow_recorder.select_first_events(c, unknown)
    for stored in first:
        begun = UUID(str(stored.originator_id))
        wf = _workflow_of(log.mapper.to_domain_event(stored), begun)
        if wf is not None:
            owner[begun] = wf


def _read_run(log: EventLog, run: UUID, wanted: UUID | None, after: int,
              upto: int | None) -> Iterator[LoggedEvent]:
    """A run's events after `after`: its stream, whose first event names its workflow."""
    events = read_stream(log, run, upto)
    wf = next((e.workflow_id for e in events if e.workflow_id is not None), None)
    if wanted is not None and wf != wanted:
        return
    for e in events:
        if e.position > after:
            yield e if e.workflow_id == wf else dataclasses.replace(e, workflow_id=wf)


def _workflow_of(event: Any, stream: UUID) -> UUID | None:
    """The workflow an event names, or is of (a workflow's own stream)."""
    wf = getattr(event, "workflow_id", None)
    if wf is None and type(event).__qualname__.startswith("Workflow."):
        wf = stream
    return wf


def read_stream(log: EventLog, stream_id: UUID, upto: int | None = None,
                workflow_id: UUID | None = None) -> list[LoggedEvent]:
    """One stream's events (up to log position `upto`), with their log positions."""
    with log.reading() as c:
        rows = log.flow_recorder.select_stream(c, stream_id, upto)
    found = []
    for position, version, topic, state in rows:
        stored = StoredEvent(originator_id=stream_id, originator_version=version, topic=topic,
                             state=state)
        event = log.mapper.to_domain_event(stored)
        found.append(logged(position, stored, event,
                            getattr(event, "workflow_id", None) or workflow_id))
    return found


def read_positions(log: EventLog, positions: Iterable[int]) -> list[LoggedEvent]:
    """The events at these log positions, in log order."""
    wanted = sorted(set(positions))
    found: list[LoggedEvent] = []
    recorder = log.flow_recorder
    step = recorder.MAX_PARAMETERS
    for start in range(0, len(wanted), step):
        with log.reading() as c:
            rows = recorder.select_positions(c, wanted[start:start + step])
        for position, stored in rows:
            event = log.mapper.to_domain_event(stored)
            found.append(logged(position, stored, event, getattr(event, "workflow_id", None)))
    return found


def stream_version_at(log: EventLog, stream_id: UUID, position: int) -> int | None:
    """The version a stream had when the log ended at `position` (None: not yet begun)."""
    with log.reading() as c:
        return log.flow_recorder.stream_version_at(c, stream_id, position)
