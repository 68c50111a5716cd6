"""What prepare returned, checked against the rules (DESIGN §1.1, §1.2, §1.7).

One place for these rules, used by live runs and by replay: each hands in how
it finds a message (the live log, or the log as it was).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from flowledger.authoring.definition import ConsumerSpec, Prepared
from flowledger.domain import handler_rules as rules
from flowledger.domain.errors import LogicError
from flowledger.domain.instants import in_utc
from flowledger.domain.text import unencodable
from flowledger.domain.topic_event import TopicEvent
from flowledger.engine.context import HandlerContext

FindMessage = Callable[[str, str], TopicEvent | None]  # (topic, message_id)
Preload = Callable[[list[tuple[str, str]]], None]  # (topic, message_id)s `find` will be asked


@dataclass(frozen=True)
class CheckedPrepared:
    reservations: dict[str, list[str]]
    events: list[TopicEvent]  # the messages to reserve, in order
    data: bytes  # packed: its size is checked against the limits
    title: str | None
    wake_at: datetime | None


def check_prepared(returned: Any, spec: ConsumerSpec, chain_id: UUID, ctx: HandlerContext,
                   find: FindMessage, preload: Preload | None = None) -> CheckedPrepared:
    """Raise a LogicError naming the rule broken, or return what to record.
    `preload`, if given, is told, before the first `find`, the messages `find`
    will be asked for among those reserved as lists (the live log reads them
    together)."""
    where = ctx.where
    if returned is None:
        returned = Prepared()
    if not isinstance(returned, Prepared):
        raise LogicError(f"{where}: prepare must return fl.Prepared(...) (or None when "
                         f"there is nothing to do), got {type(returned).__name__}")
    if not isinstance(returned.reservations, dict):
        raise LogicError(f"{where}: Prepared.reservations must be a dict "
                         "{topic: [message_id, ...]}")
    if preload is not None:
        # What the checks below will look for, from the reservations given as
        # lists (an iterator is read once, below); the checks raise on the rest,
        # in the same order as without this.
        wanted = [(topic, str(m)) for topic, ids in returned.reservations.items()
                  if topic in spec.subscribe and isinstance(ids, list | tuple) for m in ids]
        preload([(topic, m) for topic, m in dict.fromkeys(wanted) if unencodable(m) is None])
    reservations: dict[str, list[str]] = {}
    events: list[TopicEvent] = []
    for topic, ids in returned.reservations.items():
        if topic not in spec.subscribe:
            raise rules.unsubscribed_topic(where, topic, list(spec.subscribe), "reserve from")
        if isinstance(ids, str) or not hasattr(ids, "__iter__"):
            raise LogicError(f"{where}: reservations[{topic!r}] must be a list of "
                             f"message ids, got {ids!r}")
        chosen = [str(m) for m in dict.fromkeys(ids)]
        for message_id in chosen:
            # An id UTF-8 cannot encode was never published.
            event = find(topic, message_id) if unencodable(message_id) is None else None
            if event is None:
                raise rules.unreservable_message(where, topic, message_id, "unknown")
            if not event.may_be_reserved_by(chain_id):
                raise rules.unreservable_message(where, topic, message_id, event.status.value)
            events.append(event)
        if chosen:
            reservations[topic] = chosen
    data = ctx._pack(returned.data, "Prepared.data", "data")
    title = returned.title
    if title is not None:
        if not isinstance(title, str):
            raise LogicError(f"{where}: Prepared.title must be a string, got {title!r}")
        ctx._text(title, "Prepared.title", "title", empty_ok=True)
    wake_at = returned.wake_at
    if wake_at is not None and (not isinstance(wake_at, datetime) or wake_at.tzinfo is None):
        raise LogicError(f"{where}: Prepared.wake_at must be a timezone-aware datetime "
                         f"(e.g. datetime.now(UTC) + timedelta(...)), got {wake_at!r}")
    if wake_at is not None and in_utc(wake_at) is None:
        raise LogicError(f"{where}: Prepared.wake_at {wake_at.isoformat()} falls outside "
                         "years 1 to 9999 in UTC, which the log cannot keep; give a time "
                         "within them")
    return CheckedPrepared(reservations, events, data, title, wake_at)
