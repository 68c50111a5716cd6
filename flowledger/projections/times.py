"""Times as the projections keep them: text whose order is the times' order.

Listings and cost entries are ordered by these columns in SQL. ISO text as
`datetime.isoformat` writes it does not sort as time does: it keeps the clock's
offset (an injected clock in local time goes back an hour each autumn), and it
leaves out the fraction of a whole second, whose "+" sorts after the "." of the
fractions of that second under ICU's collations (ADR 0026). Here every time is
written in UTC, in one width, so that text order is time order under any
collation.
"""

from __future__ import annotations

from datetime import UTC, datetime


def time_text(moment: datetime) -> str:
    """A clock without a zone is kept as it gave it (and never mixed with one that has)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def text_time(text: str) -> datetime:
    """The time `time_text` wrote (or an older release's ISO text)."""
    return datetime.fromisoformat(text)
