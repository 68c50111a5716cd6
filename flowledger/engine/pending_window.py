"""The oldest pending messages of one topic, as a session last read them.

A consumer's prepare peeks a topic and most often takes the first message it
finds; the next run peeks again. While a session holds its workflow, only its
own appends change that workflow's messages, so what a read found stays true
but for what those appends did: a message reserved, consumed or skipped
leaves the window; any other change to the topic's messages (one published,
released, its payload replaced) drops the window, as the order of what is
pending may then differ. A peek the window answers needs no read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from flowledger.domain.topic_event import TopicEvent
from flowledger.projections.pending_work import ReadAhead

# What takes a message out of the pending ones without moving any other.
_TAKEN_OUT = (TopicEvent.Reserved, TopicEvent.Consumed, TopicEvent.Skipped,
              TopicEvent.ReservationMoved)


@dataclass(frozen=True)
class MessageChange:
    """What one append did to one message: its topic, stream and events."""
    topic: str
    stream_id: UUID
    events: tuple[object, ...]


@dataclass(frozen=True)
class PendingWindow:
    topic: str
    found: ReadAhead  # oldest first, with each message's stream events
    complete: bool  # the read found fewer than it asked for: nothing pending beyond

    def answer(self, topic: str, limit: int) -> ReadAhead | None:
        """What a read of `limit` pending messages of `topic` would find, if known."""
        if topic != self.topic or (limit > len(self.found) and not self.complete):
            return None
        return self.found[:limit]

    def after(self, changes: Sequence[MessageChange]) -> PendingWindow | None:
        """The window once these changes are stored (None: no longer known)."""
        gone: set[UUID] = set()
        for change in changes:
            if change.topic != self.topic:
                continue
            if not all(isinstance(e, _TAKEN_OUT) for e in change.events):
                return None
            gone.add(change.stream_id)
        if not gone:
            return self
        return PendingWindow(self.topic, [f for f in self.found if f[1] not in gone],
                             self.complete)
