"""Which consumer has work, and what is left when a budget ends (DESIGN §1.5).

Pure: the session loop hands in the topic backlog it read from the pending-work
projection, the consumers' declines in this session, their wake-ups and now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class TopicBacklog:
    pending: int
    newest: int  # log position at which the newest pending message became available


@dataclass(frozen=True)
class Decline:
    """A consumer prepared and reserved nothing: at this log position, at this time."""

    position: int
    at: datetime


@dataclass(frozen=True)
class ConsumerView:
    name: str
    subscribe: tuple[str, ...]


def has_work(consumer: ConsumerView, backlog: dict[str, TopicBacklog],
             decline: Decline | None, wake_at: datetime | None, now: datetime) -> bool:
    """Pending events it has not declined yet, or a wake_at that fell due since."""
    for topic in consumer.subscribe:
        b = backlog.get(topic)
        if b and b.pending > 0 and (decline is None or b.newest > decline.position):
            return True
    if wake_at is not None and wake_at <= now:
        return decline is None or wake_at > decline.at
    return False


def pick_consumer(consumers: list[ConsumerView], backlog: dict[str, TopicBacklog],
                  declines: dict[str, Decline], wakeups: dict[str, datetime],
                  now: datetime) -> str | None:
    """The first consumer, in declaration order, that has work."""
    for c in consumers:
        if has_work(c, backlog, declines.get(c.name), wakeups.get(c.name), now):
            return c.name
    return None


def remaining_work(consumers: list[ConsumerView], backlog: dict[str, TopicBacklog],
                   declines: dict[str, Decline], wakeups: dict[str, datetime],
                   now: datetime) -> dict[str, dict[str, int]]:
    """Per consumer with work: pending events per subscribed topic."""
    remaining: dict[str, dict[str, int]] = {}
    for c in consumers:
        if has_work(c, backlog, declines.get(c.name), wakeups.get(c.name), now):
            remaining[c.name] = {
                t: backlog[t].pending for t in c.subscribe if t in backlog and backlog[t].pending
            }
    return remaining
