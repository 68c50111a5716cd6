"""Keeps projections in step with the log, exactly once per event.

Each projection's position is a row of the library's tracking table, written
in the same transaction as the projection's rows. Live appends fold their
events in inside the append's own transaction (when the projection is up to
date); otherwise `catch_up` follows the notification log by position — after
a crash, for events written by another process's older code, or on rebuild.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import Mapper, Tracking

from flowledger.infrastructure.sqlite_recorder import FlowSQLiteRecorder
from flowledger.projections.base import Cursor, Projection

Progress = Callable[[int, int], None]  # (done, total)


class ProjectionRunner:
    def __init__(self, recorder: FlowSQLiteRecorder, mapper: Mapper[Any],
                 projections: Sequence[Projection]) -> None:
        self.recorder = recorder
        self.mapper = mapper
        self.projections = list(projections)
        # Where each projection stood after the last batch this process folded
        # in. If the next append starts right after it, no other writer came in
        # between, so the tracking row need not be read again.
        self._known: dict[str, int] = {}
        with recorder.datastore.transaction(commit=True) as c:
            for p in self.projections:
                p.create_tables(c)

    def position(self, c: Cursor, projection: Projection) -> int:
        return self.recorder._max_tracking_id(projection.name, c) or 0

    def _track(self, c: Cursor, projection: Projection, position: int) -> None:
        self.recorder._insert_tracking(c, Tracking(projection.name, position))
        self._known[projection.name] = position

    def apply_inline(self, c: Cursor, events: Sequence[Any], positions: Sequence[int]) -> None:
        """Called inside an append's transaction, after its inserts."""
        first = positions[0]
        for p in self.projections:
            if self._known.get(p.name) != first - 1 and self.position(c, p) != first - 1:
                continue  # behind: catch_up will fold these events in order
            p.apply_batch(c, list(zip(events, positions, strict=True)))
            self._track(c, p, positions[-1])

    def lag(self) -> int:
        """How many events the slowest projection still has to fold in."""
        with self.recorder.datastore.transaction(commit=False) as c:
            head = self.recorder.max_position(c)
            return max((head - self.position(c, p) for p in self.projections), default=0)

    def positions(self) -> dict[str, int]:
        """How far into the log each projection has read."""
        with self.recorder.datastore.transaction(commit=False) as c:
            return {p.name: self.position(c, p) for p in self.projections}

    def catch_up(self, batch: int = 2000, progress: Progress | None = None,
                 upto: int | None = None) -> int:
        """Fold in everything not yet projected (up to position `upto`, if given);
        returns the number of events read."""
        done = 0
        total = self.lag()
        while True:
            with self.recorder.datastore.transaction(commit=True) as c:
                # Write first, so the transaction holds the write lock before it
                # reads (a read-then-write transaction fails if another process
                # committed in between).
                c.execute("UPDATE tracking SET notification_id=notification_id "
                          "WHERE application_name='__catch_up__'")
                starts = {p.name: self.position(c, p) for p in self.projections}
                low = min(starts.values(), default=0)
                rows = self.recorder.select_stored(c, low, batch, upto)
                if not rows:
                    return done
                events = [(pos, self.mapper.to_domain_event(s)) for pos, s in rows]
                for p in self.projections:
                    todo = [(e, pos) for pos, e in events if pos > starts[p.name]]
                    if todo:
                        p.apply_batch(c, todo)
                        self._track(c, p, todo[-1][1])
            done += len(rows)
            if progress is not None:
                progress(done, max(total, done))

    def rebuild(self, names: Sequence[str] | None = None,
                progress: Progress | None = None, batch: int = 2000) -> int:
        """Empty the named projections (all by default) and fold the log in from 0."""
        chosen = [p for p in self.projections if names is None or p.name in names]
        self._known.clear()
        with self.recorder.datastore.transaction(commit=True) as c:
            for p in chosen:
                p.clear(c)
                c.execute("DELETE FROM tracking WHERE application_name=?", (p.name,))
        return self.catch_up(batch=batch, progress=progress)
