"""Read models as they were when the log ended at a position (DESIGN §2.5, ADR 0009).

The same projection classes fold the log's first `position` events into
tables of a private in-memory database (store.scratch_database): the past is computed by the
code that computes the present, so the two cannot disagree on what a fold
means. Nothing is written to the store.

Each projection is folded the first time a statement names one of its tables
(`FoldedOnDemand`): `at P status` reads pending work alone (the CLI's `at
299000 status` on a store of 300,009 events: 6.5 s with every projection
folded, 5.6 s now; reading and decoding the log is most of what is left).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from flowledger.infrastructure.event_log import EventLog
from flowledger.infrastructure.store import scratch_database, stored_after
from flowledger.projections.base import Cursor, Projection


def fold_into(log: EventLog, c: Cursor, projections: Sequence[Projection], position: int,
              batch: int = 2000) -> None:
    """Fold the log's events up to `position` into these projections' (empty) tables."""
    fold_each(log, c, [(p, position) for p in projections], batch)


def fold_each(log: EventLog, c: Cursor, folds: Sequence[tuple[Projection, int]],
              batch: int = 2000) -> None:
    """Fold the log into each projection's (empty) tables up to its own position,
    reading and decoding the log once for all of them (`verify`: each up to
    where its tracking row says)."""
    last = max((upto for _, upto in folds), default=0)
    with log.reading() as read:  # positions up to `last` are settled: any snapshot
        for rows in stored_after(log.flow_recorder, read, 0, last, batch):
            events = [(log.mapper.to_domain_event(stored), pos) for pos, stored in rows]
            for p, upto in folds:
                if events[0][1] <= upto:
                    p.apply_batch(c, events if events[-1][1] <= upto
                                  else [e for e in events if e[1] <= upto])


class FoldedOnDemand:
    """An in-memory database with these projections' tables, each projection
    folded up to `position` when a statement first names one of its tables."""

    def __init__(self, log: EventLog, projection_types: Sequence[type[Projection]],
                 position: int) -> None:
        self._log, self._position = log, position
        self.db, c = scratch_database()  # its transaction stays open: nobody else sees it
        self._waiting = [cls() for cls in projection_types]
        for p in self._waiting:
            p.create_tables(c)
        self._names = {id(p): re.compile("|".join(rf"\b{t}\b" for t in p.tables))
                       for p in self._waiting}

    def cursor(self) -> _FoldingCursor:
        return _FoldingCursor(self.db.cursor(), self)

    def ready_for(self, sql: str, c: Cursor) -> None:
        """Fold the projections whose tables `sql` names, if not yet."""
        named = [p for p in self._waiting if self._names[id(p)].search(sql)]
        if named:
            self._waiting = [p for p in self._waiting if p not in named]
            fold_into(self._log, c, named, self._position)

    def close(self) -> None:
        self.db.close()


class _FoldingCursor:
    """A cursor of `FoldedOnDemand`'s database that folds before it reads."""

    def __init__(self, cursor: Any, tables: FoldedOnDemand) -> None:
        self._c, self._tables = cursor, tables

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _FoldingCursor:
        self._tables.ready_for(sql, self._c)
        self._c.execute(sql, params)
        return self

    def fetchone(self) -> Any:
        return self._c.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._c.fetchall())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._c)

    def close(self) -> None:
        self._c.close()
