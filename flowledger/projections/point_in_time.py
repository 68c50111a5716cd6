"""Read models as they were when the log ended at a position (DESIGN §2.5, ADR 0009).

The same projection classes fold the log's first `position` events into
tables of a private in-memory database (store.scratch_database): the past is computed by the
code that computes the present, so the two cannot disagree on what a fold
means. Nothing is written to the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowledger.infrastructure.event_log import EventLog
from flowledger.infrastructure.store import scratch_database, stored_after
from flowledger.projections.base import Projection


def fold_upto(log: EventLog, projection_types: Sequence[type[Projection]], position: int,
              batch: int = 2000) -> Any:
    """A fresh in-memory database holding these projections folded up to `position`."""
    db, c = scratch_database()
    projections = [cls() for cls in projection_types]
    for p in projections:
        p.create_tables(c)
    with log.reading() as read:  # one consistent snapshot of the log
        for rows in stored_after(log.flow_recorder, read, 0, position, batch):
            events = [(log.mapper.to_domain_event(stored), pos) for pos, stored in rows]
            for p in projections:
                p.apply_batch(c, events)
    c.execute("COMMIT")
    return db
