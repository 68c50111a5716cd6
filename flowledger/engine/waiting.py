"""Waiting for the log to move: the one seam between the worker and its store.

`wait_for_append(after, timeout)` returns as soon as the log holds an event
past position `after`, or when `timeout` has passed. On SQLite it polls the
log's head no faster than `interval`; on a store that sends notifications
(PostgreSQL's LISTEN/NOTIFY) it is woken by each append's commit instead, and
looks at the head only then or every `NOTIFIED_CHECK` seconds (a lost
connection, a stop asked from another thread) — nothing above this module
knows which.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from uuid import UUID

from flowledger.domain.ids import workflow_id as workflow_id_of
from flowledger.domain.text import one_line
from flowledger.domain.workflow import Workflow
from flowledger.infrastructure.event_log import EventLog
from flowledger.infrastructure.store import LogWentBack
from flowledger.infrastructure.store_failures import from_the_store
from flowledger.read_side.log_view import LoggedEvent, read_log, read_positions

logger = logging.getLogger("flowledger.follow")

# Seconds between two looks at a store that could not be read, at most.
MAX_RETRY_WAIT = 10.0


def retry_wait(interval: float, failures: int) -> float:
    """How long to wait after `failures` failures of the store in a row: from
    `interval`, doubling, at most MAX_RETRY_WAIT (the worker and a follower)."""
    return min(interval * 2 ** min(failures - 1, 16), MAX_RETRY_WAIT)


def max_position(log: EventLog) -> int:
    """The log position of the last event appended (0: empty log)."""
    recorder = log.flow_recorder
    with log.reading(snapshot=False) as c:  # one statement
        return int(recorder.max_position(c) or 0)


class LogWaiter:
    # With notifications: how long a wait lasts at most without looking at the
    # head or at `stop` (a signal's handler sets it between two such slices).
    NOTIFIED_CHECK = 0.5

    def __init__(self, log: EventLog, interval: float = 0.5,
                 stop: threading.Event | None = None, *, notified: bool = True) -> None:
        if interval <= 0:
            raise ValueError("the polling interval must be positive")
        self.log = log
        self.interval = interval
        self.stop = stop or threading.Event()
        # Listening starts before the first look at the head: an append that
        # commits in between wakes the first wait.
        self.wakeups = log.flow_recorder.listen() if notified else None

    def head(self) -> int:
        return max_position(self.log)

    def wait_for_append(self, after: int, timeout: float | None) -> int:
        """The log's head once it is past `after`, or at the timeout (or on stop)."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        step = self.interval if self.wakeups is None else self.NOTIFIED_CHECK
        while True:
            head = self.head()
            if head > after:
                return head
            left = step if deadline is None else min(step, deadline - time.monotonic())
            if left <= 0 or self.stop.is_set():
                return head
            if self.wakeups is not None:
                self.wakeups.wait(left)
            elif self.stop.wait(left):
                return head

    def close(self) -> None:
        if self.wakeups is not None:
            self.wakeups.close()
            self.wakeups = None

    def __enter__(self) -> LogWaiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def follow_log(log: EventLog, after: int | None = 0, *, workflow: str | None = None,
               interval: float = 0.5, stop: threading.Event | None = None
               ) -> Iterator[LoggedEvent]:
    """Every event after `after`, then each new one as any process appends it,
    until `stop` is set. `after=None`: from the end of the log now. `workflow`:
    only the events of that workflow's streams."""
    wanted = workflow_id_of(workflow) if workflow else None
    owners: dict[UUID, UUID | None] = {}  # stream → its workflow, learnt across batches
    with LogWaiter(log, interval, stop) as waiter:
        position = waiter.head() if after is None else after
        failures = 0
        last: LoggedEvent | None = None  # the last event read: still in the log?
        while not waiter.stop.is_set():
            try:
                head = waiter.wait_for_append(position, interval)
                if last is not None and head < last.position:
                    # Behind what was read: a standby replaying behind, waited
                    # for; anywhere else the log went back (a restore, with no
                    # new appends yet), and no longer holds what was read.
                    if not log.flow_recorder.replaying():
                        raise _gone_back(last)
                elif last is not None and (failures or head != position):
                    _still_there(log, last)  # one read a batch: the log did not go back
                failures = 0
                if head <= position:
                    continue
                for event in read_log(log, None, None, position, head):
                    position, last = event.position, event  # never yielded again
                    if wanted is not None and _owner(log, owners, event) != wanted:
                        continue
                    yield event
                position = head
            except Exception as e:
                # A server restarting, a failover, a network down: the log stands,
                # and the follower goes on from where it was once it is back.
                if isinstance(e, LogWentBack) or not from_the_store(e):
                    raise
                failures += 1
                delay = retry_wait(interval, failures)
                if failures == 1:
                    logger.warning("could not read the store (%s: %s); following again "
                                   "once it answers", type(e).__name__, one_line(e))
                waiter.stop.wait(delay)


def _still_there(log: EventLog, last: LoggedEvent) -> None:
    """After the store failed, or when its head is behind what was read: the log
    must still hold the last event read, or it went back (a failover that lost
    appends, a backup restored) and holds other events from there."""
    found = read_positions(log, [last.position])
    if not found or (found[0].stream_id, found[0].version) != (last.stream_id, last.version):
        raise _gone_back(last)


def _gone_back(last: LoggedEvent) -> LogWentBack:
    return LogWentBack(
        f"the log no longer holds the event at position {last.position} that was read "
        f"({last.aggregate}.{last.name} of stream {last.stream_id}): it went back (a "
        "failover that lost appends, or a backup restored) and holds other events from "
        "there. Follow it again to read it as it now is")


def _owner(log: EventLog, owners: dict[UUID, UUID | None], event: LoggedEvent) -> UUID | None:
    if event.workflow_id is not None:
        owners[event.stream_id] = event.workflow_id
    if event.stream_id not in owners:  # a stream begun before this batch
        agg = log.load(event.stream_id)
        owners[event.stream_id] = (agg.id if isinstance(agg, Workflow)
                                   else getattr(agg, "workflow_id", None))
    return owners[event.stream_id]
