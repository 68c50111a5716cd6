"""Where in the log a time begins: reading "since T" without reading from 0.

An event's time is its engine's clock's, so times do not rise with positions:
another engine's clock may lag, and an event appended later may say an
earlier time. What does rise is the latest time recorded so far. This
projection keeps it every `SPAN` positions: a row (span, upto, latest) says
every event at or before position `upto` was recorded at or before `latest`.
So no event at or before the last row whose `latest` is earlier than T is at
or after T, and a reading of the log since T starts after that row's `upto`,
exactly, whatever the clocks did (ADR 0009).

The rows depend only on the log, not on how its events were batched when
folded in: a rebuild writes what the live fold wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from flowledger.projections.base import Cursor, Projection
from flowledger.projections.times import text_time, time_text

SPAN = 1024  # positions a row speaks for: a log of a million events keeps ~1,000 rows

Marks = dict[int, tuple[int, str]]  # span → (upto, latest)


def utc_text(moment: datetime) -> str:
    """A time as the rows compare it: UTC text of one width (ADR 0026); a clock
    without a zone is taken as UTC, as `since` reads it (log_view.at_or_after).
    A time in a zone within a day of the calendar's ends, which UTC cannot
    hold, is its end: it still sorts before or after every other time."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return time_text(moment)
    except OverflowError:
        end = datetime.max if moment.year > 1 else datetime.min
        return time_text(end.replace(tzinfo=UTC))


def marks(batch: Sequence[tuple[datetime, int]], latest: str | None) -> tuple[Marks, str | None]:
    """The rows folding `batch` ((time, position) in log order) writes, after
    events whose latest time was `latest`: for each span it touches, its last
    position in the batch and the latest time up to it. Pure."""
    ends: dict[int, tuple[int, datetime]] = {}
    top = text_time(latest) if latest is not None else None
    for moment, position in batch:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if top is None or moment > top:
            top = moment
        ends[position // SPAN] = (position, top)
    rows = {span: (upto, utc_text(at)) for span, (upto, at) in ends.items()}
    return rows, utc_text(top) if top is not None else None


def start_before(rows: Marks, since: datetime) -> int:
    """The last position no event at or after `since` can be at or before (0:
    none known): `position_before` on rows in memory. Pure."""
    wanted = utc_text(since)
    return max((upto for upto, latest in rows.values() if latest < wanted), default=0)


class LogTimes(Projection):
    name = "log_times"
    tables = ("fl_log_times",)
    inline = False  # folded with the read side's projections: a session's close, a catch-up

    def __init__(self) -> None:
        super().__init__()
        self._latest: str | None = None  # after the last batch this process folded in
        self._known = False

    def handlers(self) -> dict[type, str]:
        return {}  # apply_batch reads every event's time

    def create_tables(self, c: Cursor) -> None:
        c.execute("""CREATE TABLE IF NOT EXISTS fl_log_times (
            span INTEGER PRIMARY KEY, upto INTEGER NOT NULL, latest TEXT NOT NULL)""")

    def forget(self) -> None:
        self._latest, self._known = None, False

    def clear(self, c: Cursor) -> None:
        super().clear(c)
        self.forget()

    def apply(self, c: Cursor, event: Any, position: int) -> None:
        self.apply_batch(c, [(event, position)])

    def apply_batch(self, c: Cursor, batch: Sequence[tuple[Any, int]]) -> None:
        if not batch:
            return
        if not self._known:  # the rows end where this projection's tracking does
            c.execute("SELECT latest FROM fl_log_times ORDER BY span DESC LIMIT 1")
            row = c.fetchone()
            self._latest = row[0] if row else None
        rows, latest = marks([(event.timestamp, position) for event, position in batch],
                             self._latest)
        c.executemany("INSERT INTO fl_log_times VALUES (?,?,?) ON CONFLICT (span) DO UPDATE "
                      "SET upto=excluded.upto, latest=excluded.latest",
                      [(span, upto, text) for span, (upto, text) in rows.items()])
        self._latest, self._known = latest, True


def position_before(c: Cursor, since: datetime) -> int:
    """The last position no event at or after `since` can be at or before, as
    the rows folded in so far say (0: none): a reading since then starts after it."""
    c.execute("SELECT MAX(upto) FROM fl_log_times WHERE latest < ?", (utc_text(since),))
    row = c.fetchone()
    return int(row[0]) if row and row[0] is not None else 0
