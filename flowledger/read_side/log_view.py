"""The log as people read it: every event, decoded, in the order it was appended."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import resolve_topic

from flowledger.domain.errors import InvalidArgument
from flowledger.domain.ids import workflow_id as workflow_id_of
from flowledger.domain.instants import instant
from flowledger.infrastructure.codec import unpack
from flowledger.infrastructure.event_log import EventLog
from flowledger.projections import log_times

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
             last: int | None = None, workflows: bool = True,
             since: datetime | None = None,
             only: tuple[type, ...] | None = None) -> Iterator[LoggedEvent]:
    """Events after `after` (and up to `upto`), optionally of one workflow or one
    run, or only those at or after time `since`. `last`: only the last N of
    those (read back from the head, where no `upto` or run is given). A run's
    are its stream's: read alone. `workflows=False`: the workflow of a stream
    begun before `after` is not looked up (one read a batch) unless the filter
    needs it. `only`: of the whole log read on, only events of these classes
    are decoded and handed out (their stored type says which they are).
    Arguments are checked at the call (InvalidArgument); the log is read as
    the events are taken."""
    if batch < 1:
        raise InvalidArgument(f"batch must be at least 1, got {batch}")
    if last is not None and last < 0:
        raise InvalidArgument(f"last must be 0 or more, got {last}")
    if only is not None and (run is not None or (last is not None and upto is None)):
        raise InvalidArgument("only= reads the log on from a position: not with run= or "
                              "last= without upto=")
    wanted = workflow_id_of(workflow) if workflow else None
    return _reading(log, wanted, run, after, upto, batch, last, workflows, since, only)


def _reading(log: EventLog, wanted: UUID | None, run: UUID | None, after: int,
             upto: int | None, batch: int, last: int | None, workflows: bool,
             since: datetime | None, only: tuple[type, ...] | None) -> Iterator[LoggedEvent]:
    """`read_log`'s reading, once its arguments were checked."""
    if since is not None and run is None:
        # Nothing at or before this position is at or after `since` (log_times.py).
        with log.reading() as c:
            after = max(after, log_times.position_before(c, since))
    if wanted is not None and run is None:
        # Nothing of a workflow comes before its registration: a quiet workflow
        # near the head is not looked for back through the whole log.
        with log.reading() as c:
            begun = log.flow_recorder.stream_start(c, wanted)
        if begun is None:
            return  # never registered: nothing of it is in the log
        after = max(after, begun - 1)
    if last is not None and upto is None and run is None:
        if wanted is None and since is None:  # the log's last N: read on from before them
            with log.reading() as c:
                start = max(after, log.flow_recorder.position_before_last(c, last))
            yield from _read_on(log, None, start, None, batch, workflows)
        else:
            yield from _read_back(log, wanted, since, after, last, batch)
        return
    if run is not None:
        events = _read_run(log, run, wanted, after, upto)
    else:
        events = _read_on(log, wanted, after, upto, batch, workflows, only)
    timely = (e for e in events if since is None or at_or_after(e.timestamp, since))
    yield from timely if last is None else deque(timely, maxlen=last)


def at_or_after(moment: datetime, since: datetime) -> bool:
    """Whether `moment` is at or after `since` (timezone-aware), as instants."""
    return instant(moment) >= since


def _read_on(log: EventLog, wanted: UUID | None, after: int, upto: int | None, batch: int,
             workflows: bool, only: tuple[type, ...] | None = None) -> Iterator[LoggedEvent]:
    """The log (or one workflow's events) read on from `after`, a batch at a time."""
    kinds = _Kinds(only) if only is not None else None
    owner: dict[UUID, UUID] = {}  # stream → workflow, learnt from each stream's first event
    position = after
    recorder = log.flow_recorder
    # Streams may have begun before: their first event says whose they are.
    begun_before = position > 0 and (workflows or wanted is not None)
    while True:
        with log.reading() as c:
            rows = recorder.select_stored(c, position, batch, upto)
        if not rows:
            return
        position = rows[-1][0]
        yield from _events_of(log, rows, owner, wanted, begun_before, kinds)


def _read_back(log: EventLog, wanted: UUID | None, since: datetime | None, after: int,
               n: int, batch: int) -> Iterator[LoggedEvent]:
    """The last `n` events after `after` of workflow `wanted` (None: of any) at or
    after time `since` (None: any time), read back from the head `batch`
    events at a time until `n` are found: what happened lately is found near
    the head, not by reading the log from its start."""
    recorder = log.flow_recorder
    with log.reading() as c:
        upto = recorder.max_position(c)
    owner: dict[UUID, UUID] = {}
    windows: list[list[LoggedEvent]] = []  # the newest first, each in log order
    found = 0
    while found < n and upto > after:
        with log.reading() as c:
            # By events, not positions: a store's positions can have gaps.
            start = max(after, recorder.position_before_last(c, batch, upto))
            rows = recorder.select_stored(c, start, batch, upto)
        windows.append([e for e in _events_of(log, rows, owner, wanted, look_up=True)
                        if since is None or at_or_after(e.timestamp, since)])
        found += len(windows[-1])
        upto = start
    yield from [e for window in reversed(windows) for e in window][-n:] if n else []


class _Kinds:
    """Whether a stored type names one of some event classes, by type (cached):
    the events of other classes need not be decoded. A type that names no
    class counts as one of them: decoding it says what is wrong, and where."""

    def __init__(self, classes: tuple[type, ...]) -> None:
        self.classes = classes
        self._known: dict[str, bool] = {}

    def __call__(self, topic: str) -> bool:
        found = self._known.get(topic)
        if found is None:
            try:
                found = resolve_topic(topic) in self.classes
            except Exception:
                found = True
            self._known[topic] = found
        return found


def _events_of(log: EventLog, rows: list[tuple[int, StoredEvent]], owner: dict[UUID, UUID],
               wanted: UUID | None, look_up: bool, kinds: _Kinds | None = None
               ) -> Iterator[LoggedEvent]:
    """`rows` as people read them, each with its workflow; only workflow
    `wanted`'s, if given. An event is its stream's workflow's, which the
    stream's first event names: for one workflow, only first events and the
    workflow's own are decoded (most of the log may be other workflows').
    `look_up`: the first events of streams begun before `rows` are read (else
    those streams are taken for no workflow's, as reading from the log's
    start finds none). `kinds`: only events of these classes are decoded and
    handed out. Decoded in order: an event that cannot be read stops the
    reading there."""
    if look_up:
        begun_here = {_stream(s) for _, s in rows if s.originator_version == 1}
        _look_up_owners(log, {_stream(s) for _, s in rows} - begun_here, owner)
    decode = log.mapper.to_domain_event
    for position, stored in rows:
        if kinds is not None and not kinds(stored.topic):
            continue
        stream = _stream(stored)
        event = None
        if wanted is None or (stored.originator_version == 1 and stream not in owner):
            event = decode(stored)
            wf = _workflow_of(event, stream)
            if wf is not None:
                owner.setdefault(stream, wf)
        if wanted is None or owner.get(stream) == wanted:
            yield logged(position, stored, event if event is not None else decode(stored),
                         owner.get(stream))


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
