"""Where in the log each message was published and where it was settled.

What a topic held as pending when the log ended at a position P is asked by
replay (a handler's `peek` as it was before the run) and is otherwise known
only by folding the log from 0 up to P. A message pending or reserved at P was
published at or before P and not consumed or skipped by then (both are final);
this projection keeps, per message, its first position and the position that
settled it, so those messages are found by one indexed query and each read at
P from its own stream (ADR 0009).

Folded with the read side's projections (not inside every append), and like
every projection rebuilt from the log, which a store written by an older
release gets at its first opening to write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from flowledger.domain.topic_event import TopicEvent
from flowledger.projections.base import Cursor, Projection


class MessageSpans(Projection):
    name = "message_spans"
    tables = ("fl_message_spans",)
    inline = False  # folded with the read side's projections: a session's close, a catch-up

    def handlers(self) -> dict[type, str]:
        return {}  # apply_batch picks the events it folds: publishes and settlings

    def create_tables(self, c: Cursor) -> None:
        c.execute("""CREATE TABLE IF NOT EXISTS fl_message_spans (
            event_id TEXT PRIMARY KEY, workflow_id TEXT NOT NULL, topic TEXT NOT NULL,
            first_position INTEGER NOT NULL, settled_position INTEGER) WITHOUT ROWID""")
        # Messages unsettled at P are those settled after P, or not yet.
        c.execute("""CREATE INDEX IF NOT EXISTS fl_message_spans_settled
            ON fl_message_spans (workflow_id, topic, settled_position)""")

    def apply(self, c: Cursor, event: Any, position: int) -> None:
        self.apply_batch(c, [(event, position)])

    def apply_batch(self, c: Cursor, batch: Sequence[tuple[Any, int]]) -> None:
        # A message is often published and settled within one batch: one row
        # written, not a row and then its update.
        new: dict[str, list[Any]] = {}
        settled: list[tuple[int, str]] = []
        for event, position in batch:
            key = event.originator_id.hex
            if isinstance(event, TopicEvent.Published):
                new[key] = [key, event.workflow_id.hex, event.topic, position, None]
            elif isinstance(event, (TopicEvent.Consumed, TopicEvent.Skipped)):
                if key in new:
                    new[key][4] = position
                else:
                    settled.append((position, key))
        if new:
            c.executemany("INSERT INTO fl_message_spans VALUES (?,?,?,?,?)",
                          [tuple(row) for row in new.values()])
        if settled:
            c.executemany("UPDATE fl_message_spans SET settled_position=? WHERE event_id=?",
                          settled)


def unsettled_at(c: Cursor, workflow_id: UUID, topic: str, position: int) -> list[UUID]:
    """The stream ids of the topic's messages published at or before `position`
    and neither consumed nor skipped by then (pending or reserved at
    `position`), oldest first: the order `peek` gives."""
    c.execute("SELECT event_id FROM fl_message_spans WHERE workflow_id=? AND topic=? "
              "AND first_position<=? AND (settled_position IS NULL OR settled_position>?) "
              "ORDER BY first_position",
              (workflow_id.hex, topic, position, position))
    return [UUID(row[0]) for row in c.fetchall()]
