"""Where in the log a time begins: reading "since T" without reading from 0.

An event's time is its engine's clock's, so times do not rise with positions:
another engine's clock may lag, and an event appended later may say an
earlier time. This projection keeps, for every `SPAN` positions, the latest
time recorded there and the last position folded there: a row (span, upto,
latest). Every event of the spans before the first span holding a time at or
after T was recorded before T, so a reading of the log since T starts after
the last position folded in those spans, exactly, whatever the clocks did
(ADR 0009).

A row depends only on its span's events, not on what was folded before or on
how the events were batched: a rebuild writes what the live fold wrote, and
a fold reads nothing first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from flowledger.domain.instants import in_utc
from flowledger.projections.base import Cursor, Projection
from flowledger.projections.times import time_text

SPAN = 1024  # positions a row speaks for: a log of a million events keeps ~1,000 rows

Marks = dict[int, tuple[int, str]]  # span → (upto, latest)


def _utc(moment: datetime) -> datetime:
    """`moment` as an instant in UTC; one that UTC cannot hold (within a day of
    the calendar's ends, in a zone) is that end: it still sorts before or after
    every other time."""
    at = in_utc(moment)
    return at if at is not None else (
        datetime.max if moment.year > 1 else datetime.min).replace(tzinfo=UTC)


def utc_text(moment: datetime) -> str:
    """A time as the rows compare it: UTC text of one width (ADR 0026)."""
    return time_text(_utc(moment))


def marks(batch: Sequence[tuple[datetime, int]]) -> Marks:
    """The rows folding `batch` ((time, position) in log order) writes: for each
    span it touches, its last position there and the latest time there (as
    instants: two times of one zone in its repeated autumn hour would compare
    by wall clock). The store's upsert keeps the greater of each. Pure."""
    rows: dict[int, tuple[int, datetime]] = {}
    for moment, position in batch:
        at = _utc(moment)
        span = position // SPAN
        kept = rows.get(span)
        rows[span] = (position, at if kept is None or at > kept[1] else kept[1])
    return {span: (upto, time_text(latest)) for span, (upto, latest) in rows.items()}


class LogTimes(Projection):
    name = "log_times"
    tables = ("fl_log_times",)
    inline = False  # folded with the read side's projections: a session's close, a catch-up

    def handlers(self) -> dict[type, str]:
        return {}  # apply_batch reads every event's time

    def create_tables(self, c: Cursor) -> None:
        c.execute("""CREATE TABLE IF NOT EXISTS fl_log_times (
            span INTEGER PRIMARY KEY, upto INTEGER NOT NULL, latest TEXT NOT NULL)""")

    def apply(self, c: Cursor, event: Any, position: int) -> None:
        self.apply_batch(c, [(event, position)])

    def apply_batch(self, c: Cursor, batch: Sequence[tuple[Any, int]]) -> None:
        rows = marks([(event.timestamp, position) for event, position in batch])
        if rows:
            c.executemany("INSERT INTO fl_log_times VALUES (?,?,?) ON CONFLICT (span) DO "
                          "UPDATE SET upto=MAX(fl_log_times.upto, excluded.upto), "
                          "latest=MAX(fl_log_times.latest, excluded.latest)",
                          [(span, upto, latest) for span, (upto, latest) in rows.items()])


def position_before(c: Cursor, since: datetime) -> int:
    """The last position no event at or after `since` can be at or before, as
    the rows folded in so far say (0: none): a reading since then starts after it."""
    c.execute("SELECT MAX(upto) FROM fl_log_times WHERE span < COALESCE((SELECT MIN(span) "
              "FROM fl_log_times WHERE latest >= ?), span + 1)", (utc_text(since),))
    row = c.fetchone()
    return int(row[0]) if row and row[0] is not None else 0
