"""The aggregates one session works on: loaded once, appended together.

While a session holds its workflow's lock, nobody else writes this workflow's
streams, so the aggregates stay valid in memory. Every append is fenced on the
workflow stream's version: if another process took the session over, the
append fails and nothing of it is stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from flowledger.domain.aggregate import EventSourcedAggregate
from flowledger.domain.errors import ConcurrencyError, StoreError
from flowledger.domain.topic_event import TopicEvent
from flowledger.domain.workflow import Workflow
from flowledger.engine.pending_window import MessageChange
from flowledger.engine.publish_guess import Guess, MessageNotNew
from flowledger.infrastructure.event_log import EventLog
from flowledger.infrastructure.sqlite_recorder import Fence
from flowledger.infrastructure.store import ReadAfter, StreamEvents
from flowledger.infrastructure.store_failures import as_store_error

_UNLOADED: Any = object()


class Streams:
    def __init__(self, log: EventLog) -> None:
        self.log = log
        self._cache: dict[UUID, EventSourcedAggregate | None] = {}
        self._touched: dict[UUID, EventSourcedAggregate] = {}
        # Streams' events read ahead by the last peek, folded only if asked for.
        self._ahead: dict[UUID, StreamEvents] = {}
        # Aggregates that live across appends (the session, runs in progress):
        # always looked at for pending events.
        self._pinned: dict[UUID, EventSourcedAggregate] = {}
        self.fenced_on: Workflow | None = None
        self.position = 0  # log position of this session's last append
        self.broken: BaseException | None = None
        # Held by every append of the session and by the heartbeat's lease
        # renewal (engine/heartbeat.py): the two never interleave.
        self.lock = threading.RLock()
        self.lost_lock: ConcurrencyError | None = None  # found by the heartbeat
        # Appends the store lost before this session began are not in its memory.
        self._lost_before = log.flow_recorder.lost_appends
        # Told, after each append, what it did to topic messages (the session's
        # window of pending messages keeps to it: engine/pending_window.py).
        self.on_messages_changed: Callable[[list[MessageChange]], None] | None = None
        # How an append whose answer was read later failed (`_answered`), and
        # what it guessed, if it took messages for new.
        self._failed_later: BaseException | None = None
        self._failed_guess: Guess | None = None
        # Message streams a commit took for new without looking (publish_guess.py):
        # stream id -> the run whose commit guessed.
        self._guessed: dict[UUID, UUID] = {}

    def get(self, aggregate_id: UUID, *, short: bool = False) -> Any | None:
        """`short`: see EventLog.load."""
        agg = self._cache.get(aggregate_id, _UNLOADED)
        if agg is _UNLOADED:
            ahead = self._ahead.pop(aggregate_id, None)
            agg = (self.log.load(aggregate_id, short=short) if ahead is None
                   else self.log.stream_from_events(aggregate_id, ahead))
            # A miss is remembered too: while the session holds the lock, no
            # other writer can create this workflow's streams.
            self._cache[aggregate_id] = agg
        if agg is None:
            return None
        self._touched[aggregate_id] = agg
        return agg

    def preload(self, stream_ids: Iterable[UUID]) -> None:
        """Load the short streams among these that are not loaded yet, in one
        read, so that the `get`s that follow find them (or their absence) in
        memory: a run that publishes or registers many items asks once, not
        once per item."""
        wanted = [i for i in dict.fromkeys(stream_ids)
                  if i not in self._cache and i not in self._ahead]
        if len(wanted) < 2:
            return  # one `get` reads it as cheaply
        found = self.log.load_short(wanted)
        for stream_id in wanted:
            self._cache[stream_id] = found.get(stream_id)

    def absent(self, stream_ids: Iterable[UUID]) -> None:
        """Streams known not to exist (ids made fresh in this session): a `get`
        finds their absence in memory, without asking the store."""
        for stream_id in stream_ids:
            self._cache.setdefault(stream_id, None)

    def guess_absent(self, stream_ids: Iterable[UUID], run_id: UUID) -> None:
        """Streams taken for new without asking the store (messages a consumer's
        commit publishes by id): if one is in the log after all, the append
        that begins it fails whole and raises `MessageNotNew` for `run_id`."""
        for stream_id in stream_ids:
            if stream_id not in self._cache and stream_id not in self._ahead:
                self._cache[stream_id] = None
                self._guessed[stream_id] = run_id

    def read_ahead(self, events: dict[UUID, StreamEvents]) -> None:
        """Short streams' events (version, topic, stored state) read with another
        query, for a `get` that may follow before the run's next step; they
        replace those of the previous read-ahead."""
        self._ahead = events

    def add(self, agg: EventSourcedAggregate) -> None:
        self._cache[agg.id] = agg
        self._touched[agg.id] = agg

    def pin(self, agg: EventSourcedAggregate) -> None:
        self.add(agg)
        self._pinned[agg.id] = agg

    def unpin(self, agg: EventSourcedAggregate) -> None:
        self._pinned.pop(agg.id, None)

    # How many loaded streams a session keeps between runs. Past this, the ones
    # no run holds are dropped (and loaded again if a later run asks): a long
    # session's memory, and the garbage collector's work, stay bounded.
    KEEP = 512

    def trim(self) -> None:
        """Between runs: forget loaded streams nothing holds, if there are many,
        and what was read ahead."""
        self._ahead = {}
        if len(self._cache) > self.KEEP and not self._touched:
            self._cache = dict(self._pinned)

    def fence_on(self, workflow: Workflow) -> None:
        self.pin(workflow)
        self.fenced_on = workflow

    def append(self, sync: bool = True, hold: bool = False,
               read_after: Sequence[ReadAfter] = (), later: bool = False) -> int:
        """Append every pending event of the touched aggregates: one transaction
        (`read_after` read last in it). `later`: the store may read its answer
        when this session next uses it (EventLog.append's `answered`); a
        failure found then stops the session at its next append."""
        with self.lock:
            return self._append(sync, hold, read_after, later)

    def _answered(self, result: int | BaseException, guess: Guess | None = None) -> None:
        """An append sent earlier, answered (possibly from another thread that
        read the store first): only noted here, acted on by `_settled`."""
        if isinstance(result, BaseException):
            self._failed_later, self._failed_guess = result, guess
        elif result > self.position:
            self.position = result

    def _settled(self, here: bool) -> None:
        """The answer of an append sent earlier, read: if it failed, nothing
        more is appended through this session, and (`here`: at the session's
        next append) the failure is raised as the append itself would have."""
        self.log.flow_recorder.settle()
        failed = self._failed_later
        if failed is None:
            return
        if self.broken is None:
            self._break(failed)
        if here:
            guess, self._failed_later, self._failed_guess = self._failed_guess, None, None
            if self._as_it_was():
                _raise_guess_wrong(failed, guess)
            raise failed

    def _as_it_was(self) -> bool:
        """Nothing but this session's own failed append stands between it and
        the log: no lock lost, no appends the store lost (a wrong guess is then
        read back from the log; else the session stops as before)."""
        return self.lost_lock is None and not self._store_lost_appends()

    def _store_lost_appends(self) -> bool:
        """The store lost appends since this session began (its server crashed
        or failed over before they reached its disk)."""
        return self.log.flow_recorder.lost_appends != self._lost_before

    def _break(self, e: BaseException) -> None:
        """An append failed: the in-memory copies are ahead of the log, and this
        session may have lost its lock. Nothing more may be appended through it."""
        self.broken = e
        self._cache.clear()
        self._touched.clear()
        self._pinned.clear()
        self._ahead = {}

    def renew_lease(self, now: datetime, lease_until: datetime, session_id: UUID) -> bool:
        """The heartbeat's append: the workflow's LeaseRenewed alone, fenced. False
        when there is nothing it may do (another append is due anyway)."""
        with self.lock:
            self._settled(here=False)  # its session's next append raises it
            wf = self.fenced_on
            if (self.broken is not None or self.lost_lock is not None or wf is None
                    or self._store_lost_appends()
                    or wf.open_session != session_id or wf.has_pending_events):
                return False
            stored_version = wf.version
            before, pending = dict(wf.__dict__), list(wf._pending_events)
            wf.renew_lease(now, lease_until)
            try:
                self.log.append(wf, fence=Fence(wf.id, wf.version))
            except ConcurrencyError as e:
                self.lost_lock = e  # taken over: the session's next append stops it
                raise
            except BaseException as failed:
                # Not stored (the store was busy, say): the workflow as the log has
                # it, without the renewal, if nobody else wrote it meanwhile. A
                # store that cannot be read either (a server restarting) leaves it
                # as it was before the renewal: the session's next append, fenced
                # on that version, tells whether anyone else wrote it.
                try:
                    fresh = self.log.load(wf.id)
                except BaseException:
                    wf.__dict__.update(before)
                    wf._pending_events[:] = pending
                    raise failed from None
                if fresh is not None and fresh.version == stored_version:
                    wf.__dict__.update(fresh.__dict__)
                else:
                    self.lost_lock = ConcurrencyError(
                        "this session lost its lock: its workflow stream changed while the "
                        "lease was being renewed")
                raise
            return True

    def _append(self, sync: bool, hold: bool, read_after: Sequence[ReadAfter] = (),
                later: bool = False) -> int:
        self._settled(here=True)
        if self.lost_lock is not None:
            raise ConcurrencyError(str(self.lost_lock)) from self.lost_lock
        if self._store_lost_appends() and self.broken is None:
            self.broken = ConcurrencyError(
                "the store lost appends this engine had made (its server crashed or failed "
                "over before they reached its disk): this session's memory may hold what "
                "the log no longer does. It stops here, and recovery continues it from "
                "the log")
            raise self.broken
        if self.broken is not None:
            ours = as_store_error(self.broken, " under an earlier append of this session")
            if isinstance(ours, StoreError):  # said as the store's, not as a lost lock
                raise ours from self.broken
            raise ConcurrencyError(
                f"an earlier append of this session failed ({self.broken}); the session "
                "stops here and recovery continues it from the log"
            )
        seen = {**self._touched, **self._pinned}
        pending = sorted((a for a in seen.values() if a.has_pending_events),
                         key=lambda a: a.append_order)
        if not pending:
            self._touched.clear()
            return self.position
        wf = self.fenced_on
        fence = Fence(wf.id, wf.version) if wf is not None else None
        changes = _message_changes(pending) if self.on_messages_changed is not None else []
        guess = self._guess(pending, wf)
        answered: Callable[[int | BaseException], None] | None = None
        if later:
            answered = (self._answered if guess is None
                        else lambda result: self._answered(result, guess))
        try:
            position = self.log.append(*pending, fence=fence, sync=sync, hold=hold,
                                       read_after=read_after, answered=answered)
        except BaseException as e:
            # The events were taken off the aggregates but not stored.
            self._break(e)
            if self._as_it_was():
                _raise_guess_wrong(e, guess)
            raise
        self._touched.clear()
        if position:
            self.position = position
        if self.on_messages_changed is not None:
            self.on_messages_changed(changes)
        return self.position

    def _guess(self, pending: list[EventSourcedAggregate], wf: Workflow | None
               ) -> Guess | None:
        """What this append guessed (messages taken for new), if anything."""
        if not self._guessed:
            return None
        guessed, self._guessed = self._guessed, {}
        streams = [a.id for a in pending if a.id in guessed]
        if not streams:
            return None
        begun = [a.id for a in pending if a.id not in guessed
                 and a._pending_events[0].originator_version == 1]
        stored = wf.version - len(wf._pending_events) if wf is not None else None
        return Guess(guessed[streams[0]], streams, begun, stored)

    def message_changes(self) -> list[MessageChange]:
        """What the next append would do to topic messages, as things stand."""
        return _message_changes({**self._touched, **self._pinned}.values())


def _raise_guess_wrong(error: BaseException, guess: Guess | None) -> None:
    """An append that guessed its messages new, refused on a unique key (a
    stream's version; said, fenced, as a lost lock or as ids repeated: the
    session reads the log back and finds out which), is `MessageNotNew`."""
    if guess is not None and isinstance(error.__cause__, IntegrityError):
        raise MessageNotNew(guess, error) from error


def _message_changes(aggregates: Iterable[EventSourcedAggregate]) -> list[MessageChange]:
    return [MessageChange(a.topic, a.id, tuple(a._pending_events)) for a in aggregates
            if isinstance(a, TopicEvent) and a.has_pending_events]
