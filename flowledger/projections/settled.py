"""Where in the log each message was settled (consumed or skipped).

What a topic held as pending when the log ended at a position P is asked by
replay (a handler's `peek` as it was before the run), and was otherwise known
only by folding the log from 0 up to P. A message pending or reserved at P was
published at or before P (pending work's `first_position`) and not settled by
then: consuming and skipping are final. So this projection keeps one row per
settled message, its settling position; `unsettled_at` names the messages
unsettled at P, and each is read from its own stream as it was then (ADR 0009).

Folded with the read side's projections (a session's close, a catch-up), not
inside every append, and from the log: a store an older release wrote gets it
whole at its first opening to write, messages an older release's engine
settled since included, and older engines writing beside it change nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from flowledger.domain.topic_event import TopicEvent
from flowledger.projections.base import Cursor, Projection


class Settled(Projection):
    name = "settled"
    tables = ("fl_settled",)
    inline = False  # folded with the read side's projections: a session's close, a catch-up

    def handlers(self) -> dict[type, str]:
        return {}  # apply_batch picks the settlings

    def create_tables(self, c: Cursor) -> None:
        c.execute("""CREATE TABLE IF NOT EXISTS fl_settled (
            event_id TEXT PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID""")

    def apply(self, c: Cursor, event: Any, position: int) -> None:
        self.apply_batch(c, [(event, position)])

    def apply_batch(self, c: Cursor, batch: Sequence[tuple[Any, int]]) -> None:
        rows = [(event.originator_id.hex, position) for event, position in batch
                if isinstance(event, (TopicEvent.Consumed, TopicEvent.Skipped))]
        if rows:  # a message is settled once: nothing to ignore but a fold's own repeat
            c.executemany("INSERT OR IGNORE INTO fl_settled VALUES (?,?)", rows)


def unsettled_at(c: Cursor, workflow_id: UUID, topic: str, position: int) -> list[UUID]:
    """The stream ids of the topic's messages published at or before `position`
    and neither consumed nor skipped by then (pending or reserved then), oldest
    first: the order `peek` gives. Pending work and this projection must both
    have folded the log up to `position`. A scan of the topic's message rows,
    for replay: an index would be written at every settling."""
    c.execute("SELECT m.event_id FROM fl_messages AS m LEFT JOIN fl_settled AS s "
              "ON s.event_id = m.event_id WHERE m.workflow_id=? AND m.topic=? "
              "AND m.first_position<=? AND (s.position IS NULL OR s.position>?) "
              "ORDER BY m.first_position", (workflow_id.hex, topic, position, position))
    return [UUID(row[0]) for row in c.fetchall()]
