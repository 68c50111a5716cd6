"""Times compared as instants: the one rule for every time the log keeps.

A time a clock without a zone gave is taken as UTC (as `--since` is when it
has none). The log keeps an aware time as an instant in UTC, which exists
only for years 1 to 9999 there: a time within a day of those ends in a zone
has none, and would be written and never read back.
"""

from __future__ import annotations

from datetime import UTC, datetime


def instant(moment: datetime) -> datetime:
    """`moment`, zoneless taken as UTC: compared with any aware time as the instant it is."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def in_utc(moment: datetime) -> datetime | None:
    """`moment` as an instant in UTC; None where UTC cannot hold it."""
    moment = instant(moment)
    if moment.tzinfo is UTC:
        return moment  # as the log's own times are read back: nothing to convert
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return None
