"""Keeps projections in step with the log, exactly once per event.

Each projection's position is a row of the library's tracking table, written
in the same transaction as the projection's rows. Inline projections (pending
work) fold each append's events in inside that append's transaction, or a
held append's with the next append of its run (ADR 0012), following the log
over anything another writer put between. The read-side ones (costs, audit)
fold the events this process appended in batches, from memory, inside an
append: every FOLD_EVERY events and a session's close (ADR 0010, 0017).
Whatever was not folded that way — a crash, another process's appends, a
rebuild — `catch_up` follows from the log by position.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from eventsourcing.persistence import Mapper

from flowledger.domain.session import Session
from flowledger.infrastructure.store import Fence, LogStore, stored_after
from flowledger.infrastructure.store_format import (
    CUT_BACK,
    clear_cut_back,
    cut_back_of,
    note_cut_back,
)
from flowledger.projections.base import Cursor, Projection
from flowledger.projections.pending_work import PendingHints, PendingWork, backlog_and_wakeups
from flowledger.projections.sealing import NO_SEAL, Seal

logger = logging.getLogger("flowledger.projections")

Progress = Callable[[int, int], None]  # (done, total)


class LogLook(NamedTuple):
    cut_back: tuple[int, int] | None  # (furthest folded, head) when the log went back
    store_time: datetime | None  # when asked, where the store keeps a clock


class ProjectionRunner:
    def __init__(self, recorder: LogStore, mapper: Mapper[Any],
                 projections: Sequence[Projection], seal: Seal = NO_SEAL) -> None:
        self.recorder = recorder
        self.mapper = mapper
        self.projections = list(projections)
        self.seal = seal  # copies of handlers' values are sealed (ADR 0022)
        for p in self.projections:
            p.seal = self.seal
        self.inline = [p for p in self.projections if p.inline]
        self._pending = next((p for p in self.inline if isinstance(p, PendingWork)), None)
        self.deferred = [p for p in self.projections if not p.inline]
        # Events this process appended and the read-side projections have not
        # folded in yet, contiguous in position: folded in from memory (no
        # re-reading, no decoding) when there are FOLD_EVERY of them, inside
        # that append's transaction, or by the next `catch_up`.
        self._unfolded: list[tuple[Any, int]] = []
        # Events of held appends (`apply_inline`) that pending work has not
        # folded in yet, contiguous in position.
        self._held: list[tuple[Any, int]] = []
        # Where each projection stood after the last batch this process folded
        # in. If its tracking row still says so, no other process folded or
        # rebuilt it since, so what the projection kept in memory still holds.
        self._known: dict[str, int] = {}
        # Appends in a row that followed this process's previous one with no
        # other writer's append between. Holding pays only while nobody else
        # appends: another writer's append folds the held events in from the
        # log, and this process must then read back the rows it kept.
        self._quiet_appends = self.QUIET_BEFORE_HOLDING
        self._last_appended: int | None = None
        # The fenced stream and its version after this process's last append,
        # and whether every append since the last fold continued the one
        # before it on the same workflow stream (`_forget_moved`).
        self._last_fence: tuple[Any, int] | None = None
        self._continuous = False
        # Whether all the inline projections asked ahead was asked in the append
        # being folded: read in its transaction, under the log's lock or the
        # forecast's guard, it holds although someone moved the projections
        # since this process's last fold (`_fold_inline`).
        self._asked_now = False
        if not recorder.tables_current:  # the store's are this release's: nothing to create
            with recorder.writing() as c:
                gone = self._lacking_a_table(c)
                for p in self.projections:
                    p.create_tables(c)
                for p in gone:  # folded in again from the log, by the catch-up that follows
                    p.clear(c)
                    recorder.untrack(c, p.name)
                recorder.tables_created(c)

    def _lacking_a_table(self, c: Cursor) -> list[Projection]:
        """Projections that had folded events in but lack a table now (dropped
        outside flowledger): made again empty, it would answer as if nothing
        had happened (no runs, say), with nothing to tell."""
        held = self.recorder.existing_tables(c, [t for p in self.projections for t in p.tables])
        gone = [p for p in self.projections
                if not held.issuperset(p.tables) and self.position(c, p) > 0]
        for p in gone:
            logger.warning("the store lacks the table(s) %s of projection %s, which had "
                           "folded the log in up to position %s (dropped outside "
                           "flowledger?): made again, and folded in again from the log",
                           ", ".join(sorted(set(p.tables) - held)), p.name, self.position(c, p))
        return gone

    def position(self, c: Cursor, projection: Projection) -> int:
        return self.recorder.tracked(c, projection.name)

    def _track(self, c: Cursor, projection: Projection, position: int) -> None:
        self.recorder.track(c, projection.name, position)
        self._known[projection.name] = position

    # After another writer's append came between two of this process's, how
    # many appends in a row must follow on directly before appends are held
    # again (ADR 0012, 0017).
    QUIET_BEFORE_HOLDING = 50

    def may_hold(self) -> bool:
        """Whether an append may be held now: not while other writers append."""
        return self._quiet_appends >= self.QUIET_BEFORE_HOLDING

    def apply_inline(self, c: Cursor, events: Sequence[Any], positions: Sequence[int],
                     hold: bool = False, fence: Fence | None = None) -> None:
        """Called inside an append's transaction, after its inserts.

        `hold`: this append is followed by another of the same run before
        anything reads pending work, so its events are kept and folded in with
        that one's (ADR 0012); an append that does not continue the kept ones
        folds them at once. `fence`: the append's, if a session appends.
        """
        new = list(zip(events, positions, strict=True))
        self._note_fence(events, fence)
        follows = self._last_appended is None or positions[0] == self._last_appended + 1
        self._quiet_appends = self._quiet_appends + 1 if follows else 0
        self._last_appended = positions[-1]
        if self.inline:
            if hold and (not self._held or self._held[-1][1] == positions[0] - 1):
                self._held.extend(new)
            else:
                held, self._held = self._held, []
                self._fold_inline(c, held + new, fence)
        if not self.deferred:
            return
        if self._unfolded and self._unfolded[-1][1] != positions[0] - 1:
            self._unfolded = []  # another writer came in between: catch_up reads the log
        self._unfolded.extend(new)
        if len(self._unfolded) >= self.FOLD_EVERY or any(
                isinstance(e, Session.Closed) for e in events):
            # A session's close folds what it appended here: the catch-up after
            # it would take a write transaction of its own (ADR 0017).
            self._fold_unfolded(c)

    def pending_hints(self, workflow_id: UUID, fresh: bool = False,
                      found: PendingHints | None = None) -> PendingHints:
        """The backlog and wake-ups of the workflow whose session runs here: read
        from the store when `fresh` (a session's first look: whatever changed
        them between sessions, a rebuild included, is seen), then kept up to
        date by this process's folds (the session loop asks before each
        consumer run, and only that session changes them). A fold that rolled
        back, or another writer's that moved pending work past this session's
        fence, drops them (`forget`, `_forget_moved`). `found`: read in the
        transaction of this process's last append, kept as if read now."""
        pending = self._pending
        key = workflow_id.hex
        kept = (pending.hints(key) if pending is not None and not self._held and not fresh
                and found is None else None)
        if kept is not None:
            return kept
        if found is None:
            with self.recorder.reading(snapshot=False) as c:
                found = backlog_and_wakeups(c, workflow_id)
        if pending is not None and not self._held:
            pending.keep_hints(key, *found)
        return found

    def prefetch(self, c: Cursor, events: Sequence[Any], hold: bool = False) -> None:
        """Called inside an append's transaction before its positions are known:
        the inline projections ask ahead for what folding its events will read.
        A held append asks too, for the fold of a later append: until then only
        its own run's appends, which fold nothing, come between (an append of
        another writer that folds moves the projection, and what was asked is
        then dropped with the rest of what the projection kept)."""
        if not self.inline:
            return
        self._asked_now = not self._held
        mine = [e for e, _ in self._held] + list(events)
        for p in self.inline:
            if self._asked_now:
                p.drop_asked()  # left by an earlier append: it may be stale
            p.prefetch(c, mine)

    def _note_fence(self, events: Sequence[Any], fence: Fence | None) -> None:
        """Whether this append continues this process's last one on the same
        workflow stream: nobody else wrote that stream in between."""
        if fence is None:
            self._continuous, self._last_fence = False, None
            return
        own = sum(1 for e in events if e.originator_id == fence.stream_id)
        self._continuous = (self._continuous
                            and self._last_fence == (fence.stream_id, fence.version - own))
        self._last_fence = (fence.stream_id, fence.version)

    def _fold_inline(self, c: Cursor, mine: Sequence[tuple[Any, int]],
                     fence: Fence | None = None) -> None:
        """Bring each inline projection up to the last of `mine`, which this
        process appended: from memory, and from the log for whatever lies
        between (another writer's appends, or events someone else rebuilt away)."""
        for p in self.inline:
            # Read, not remembered: another process may have folded or rebuilt it.
            at = self.position(c, p)
            known = self._known.get(p.name)
            if at != known:
                keep = fence.stream_id.hex if fence is not None and self._continuous else None
                self._forget_moved(p, at, known, mine, keep)
                if not self._asked_now:  # asked for by a held append, before the move
                    p.drop_asked()
            batch = self._continuing(c, at, mine)
            if batch:
                p.apply_batch(c, batch)
                self._track(c, p, batch[-1][1])
        self._continuous = True  # from this append on
        self._asked_now = False

    @staticmethod
    def _forget_moved(p: Projection, at: int, known: int | None,
                      mine: Sequence[tuple[Any, int]], keep: str | None) -> None:
        """Projection `p` was moved by someone else since this process last
        folded it (from `known` to `at`): drop what it kept that may be stale.

        Only other writers' events lie between, when the move went forward and
        none of `mine` is in it. Those leave the rows of workflow `keep` as they
        were: a run's row and a message's status change only through appends of
        its workflow's session, and `keep` is the workflow whose session
        appends now, whose stream nobody else wrote since this process's last
        fold (each append since was fenced on the version the one before left).
        Everything else is dropped: the rows of other workflows (another
        process may have run their sessions since), and all of it after a
        rebuild or a fold of this process's own events by someone else.
        """
        if keep is None or known is None or at < known or (mine and mine[0][1] <= at):
            p.forget()
        else:
            p.forget_except(keep)

    def _continuing(self, c: Cursor, at: int, mine: Sequence[tuple[Any, int]]
                    ) -> list[tuple[Any, int]]:
        """The events after position `at` up to the last of `mine`, in order."""
        out: list[tuple[Any, int]] = []
        expected = at + 1
        for event, position in mine:
            if position < expected:
                continue  # already folded, by another process's catch-up
            if position > expected:
                out.extend(self._read(c, expected - 1, position - 1))
            out.append((event, position))
            expected = position + 1
        return out

    def _read(self, c: Cursor, after: int, upto: int) -> list[tuple[Any, int]]:
        """Decoded events in (after, upto], read with the caller's cursor."""
        out: list[tuple[Any, int]] = []
        for rows in stored_after(self.recorder, c, after, upto):
            out.extend((self.mapper.to_domain_event(s), pos) for pos, s in rows)
        return out

    FOLD_EVERY = 2000

    def _fold_unfolded(self, c: Cursor) -> None:
        """Fold the kept events into each read-side projection that they continue."""
        unfolded, self._unfolded = self._unfolded, []
        if not unfolded:
            return
        first, last = unfolded[0][1], unfolded[-1][1]
        for p in self.deferred:
            at = self.position(c, p)  # another process may have caught it up meanwhile
            if first - 1 <= at < last:
                self._forget_if_moved(p, at)
                p.apply_batch(c, unfolded[at - first + 1:])
                self._track(c, p, last)

    @contextlib.contextmanager
    def _writing(self, sync: bool = True, tracking: bool = False) -> Iterator[Cursor]:
        """A write transaction that drops what the projections kept if it fails,
        before another thread may write (the writer lock held throughout)."""
        with self.recorder.writer_lock:
            try:
                with self.recorder.writing(sync=sync, tracking=tracking) as c:
                    yield c
            except BaseException:
                self.forget()
                raise

    def forget(self) -> None:
        """An append's transaction rolled back: nothing folded in it happened."""
        self._known.clear()
        self._last_fence, self._continuous = None, False
        self._unfolded = []
        self._held = []
        self._asked_now = False
        for p in self.projections:
            p.forget()
            p.drop_asked()

    def settled(self) -> bool:
        """Whether this process's last append left every projection at its last
        event, so that a catch-up right after it would find nothing to fold (a
        session's close folds its own events in; what others append after it
        is theirs to fold, or the next reader's)."""
        last = self._last_appended
        return (last is not None and not self._held and not self._unfolded
                and all(self._known.get(p.name) == last for p in self.projections))

    def lag(self) -> int:
        """How many events the slowest projection still has to fold in (one
        statement: a read before every query and after every session asks)."""
        with self.recorder.reading(snapshot=False) as c:
            head, tracked = self.recorder.heads(c)
        return max((head - tracked.get(p.name, 0) for p in self.projections), default=0)

    def ahead_of_log(self, clock: bool = False) -> LogLook:
        """`cut_back`: (the furthest position a projection folded, the log's
        head) when a projection has folded events the log no longer holds: they
        were removed outside flowledger (both are written in one transaction, so
        nothing else leaves the projections ahead). Noted in the store when
        found, as the next append would hide it; None when neither the log nor
        a note says so (a rebuild clears the note). `clock`: the store's time
        is read in the same statement (`store_time`)."""
        with self.recorder.reading(snapshot=False) as c:
            head, tracked, said, store_time = self.recorder.heads_and_note(c, CUT_BACK, clock)
        noted = cut_back_of(said)
        furthest = max((tracked.get(p.name, 0) for p in self.projections), default=0)
        if furthest > head:
            if noted is None:
                with self.recorder.writing() as c:
                    note_cut_back(c, furthest, head)
            return LogLook((furthest, head), store_time)
        return LogLook(noted, store_time)

    def positions(self) -> dict[str, int]:
        """How far into the log each projection has read."""
        with self.recorder.reading(snapshot=False) as c:
            tracked = self.recorder.heads(c)[1]
        return {p.name: tracked.get(p.name, 0) for p in self.projections}

    def catch_up(self, batch: int = 2000, progress: Progress | None = None,
                 upto: int | None = None) -> int:
        """Fold in everything not yet projected (up to position `upto`, if given);
        returns the number of events read."""
        done = 0
        with self.recorder.writer_lock:
            self._held = []  # committed: folded in from the log below
            if self._unfolded and upto is None:
                with self._writing(sync=False, tracking=True) as c:
                    self._fold_unfolded(c)
        total = self.lag()
        if not total:
            return 0  # nothing to fold: no write transaction, no wait for the write lock
        while True:
            with self._writing(sync=False, tracking=True) as c:
                read = self._fold_next(c, batch, upto)
            done += read
            if progress is not None and read:
                progress(done, max(total, done))
            if read < batch:  # it reached the head: every projection is there
                return done

    def _forget_if_moved(self, p: Projection, at: int) -> None:
        """Projection `p` stands at `at`: if that is not where this process left
        it, another process folded (or rebuilt) it since, and what `p` kept, or
        asked ahead in a held append before the move, is behind."""
        if self._known.get(p.name) != at:
            p.forget()
            p.drop_asked()

    def _fold_next(self, c: Cursor, batch: int, upto: int | None) -> int:
        """Fold the next `batch` events (up to `upto`) into every projection that
        has not folded them in yet, with the caller's cursor; returns how many
        events were read (0: every projection is up to date)."""
        starts = {p.name: self.position(c, p) for p in self.projections}
        for p in self.projections:
            self._forget_if_moved(p, starts[p.name])
        low = min(starts.values(), default=0)
        rows = self.recorder.select_stored(c, low, batch, upto)
        if not rows:
            return 0
        events = [(pos, self.mapper.to_domain_event(s)) for pos, s in rows]
        for p in self.projections:
            todo = [(e, pos) for pos, e in events if pos > starts[p.name]]
            if todo:
                p.apply_batch(c, todo)
                self._track(c, p, todo[-1][1])
        return len(rows)

    def catch_up_unless_busy(self) -> None:
        """Catch up now, or leave it to the next reader if another process holds
        the write lock past the lock timeout."""
        try:
            self.catch_up()
        except Exception as e:
            if not self.recorder.is_busy(e):
                raise

    def rebuild(self, names: Sequence[str] | None = None,
                progress: Progress | None = None, batch: int = 2000) -> int:
        """Empty the named projections (all by default) and fold the log in from 0.

        All in one transaction: a rebuild that fails (an event that cannot be
        read, a crash, Ctrl-C) leaves every projection exactly as it was, but
        for a failure that says the transaction was committed (on PostgreSQL,
        waiting for the disk after it: ADR 0017). Other writers wait for the
        write lock meanwhile (ADR 0013).
        """
        chosen = [p for p in self.projections if names is None or p.name in names]
        done = 0
        with self._writing() as c:
            self.forget()
            clear_cut_back(c)  # what a rebuild leaves ahead of the log, if any, is found again
            for p in chosen:
                p.clear(c)
                self.recorder.untrack(c, p.name)
            total = self.recorder.max_position(c) - min(
                (self.position(c, p) for p in self.projections), default=0)
            while read := self._fold_next(c, batch, None):
                done += read
                if progress is not None:
                    progress(done, max(total, done))
        return done
