"""Where a reading "since T" may start (projections/log_times.py): the
projection's own statements, in a private in-memory database (as time travel
folds it), over drawn logs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from flowledger.infrastructure.store import scratch_database
from flowledger.projections.log_times import (
    SPAN,
    LogTimes,
    Marks,
    marks,
    position_before,
    utc_text,
)

T0 = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # Paris repeats 02:00-03:00 from 01:00 UTC
ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7, minutes=-30)),
         ZoneInfo("Europe/Paris"), None]


@st.composite
def logs(draw: st.DrawFn) -> list[tuple[datetime, int]]:
    """Events in log order: positions rising with gaps (a store's positions may
    have them), times from several clocks that drift, jump back and use
    several zones (or none, taken as UTC)."""
    n = draw(st.integers(min_value=0, max_value=60))
    position, events = 0, []
    for _ in range(n):
        position += draw(st.integers(min_value=1, max_value=SPAN // 2 if draw(st.booleans())
                                     else 3))
        moment = T0 + timedelta(seconds=draw(st.integers(min_value=0, max_value=3600)),
                                microseconds=draw(st.integers(min_value=0, max_value=999_999)))
        zone = draw(st.sampled_from(ZONES))
        events.append((moment.astimezone(zone) if zone is not None
                       else moment.replace(tzinfo=None), position))
    return events


@dataclass(frozen=True)
class Stamped:
    """What log times reads of an event: its time."""

    timestamp: datetime


class Folded:
    """Log times' table, filled by the projection's own upsert."""

    def __init__(self) -> None:
        self.db, self.c = scratch_database()
        self.projection = LogTimes()
        self.projection.create_tables(self.c)

    def fold(self, batch: list[tuple[datetime, int]]) -> None:
        self.projection.apply_batch(self.c, [(Stamped(m), p) for m, p in batch])

    def rows(self) -> Marks:
        self.c.execute("SELECT span, upto, latest FROM fl_log_times")
        return {span: (upto, latest) for span, upto, latest in self.c.fetchall()}

    def start_before(self, since: datetime) -> int:
        return position_before(self.c, since)


def fold(events: list[tuple[datetime, int]], cuts: list[int]) -> Folded:
    """Log times after folding `events` in batches cut at `cuts`."""
    folded = Folded()
    bounds = [0, *sorted({c % (len(events) + 1) for c in cuts}), len(events)]
    for start, stop in itertools.pairwise(bounds):
        folded.fold(events[start:stop])
    return folded


def folded(batch: list[tuple[datetime, int]]) -> Folded:
    return fold(batch, [])


def as_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@given(logs(), st.lists(st.integers(min_value=0, max_value=100), max_size=8))
def test_the_rows_do_not_depend_on_how_the_log_was_batched(
        events: list[tuple[datetime, int]], cuts: list[int]) -> None:
    """A rebuild (batches of 2,000) writes what the live fold (a session's
    close, a catch-up) wrote."""
    assert fold(events, cuts).rows() == fold(events, []).rows()


@given(logs(), st.lists(st.integers(min_value=0, max_value=100), max_size=8),
       st.integers(min_value=-60, max_value=3700))
def test_no_event_at_or_after_a_time_is_at_or_before_where_its_reading_starts(
        events: list[tuple[datetime, int]], cuts: list[int], offset: int) -> None:
    """Exact whatever the clocks did: every event recorded at or after T is
    after the position the reading since T starts from, for T any event's
    time or any other."""
    rows = fold(events, cuts)
    for since in [T0 + timedelta(seconds=offset), *(as_utc(m) for m, _ in events)]:
        start = rows.start_before(since)
        assert all(position > start for moment, position in events if as_utc(moment) >= since)


def test_a_reading_since_a_late_time_starts_late() -> None:
    """What makes it worth it: with times rising, a reading since the last
    event's time starts in its span or the one before, not at 0."""
    events = [(T0 + timedelta(seconds=p), p) for p in range(1, 5 * SPAN)]
    rows = fold(events, [SPAN, 3 * SPAN])
    last_time, last_position = events[-1]
    assert rows.start_before(last_time) >= last_position - 2 * SPAN
    assert rows.start_before(T0) == 0


def test_times_compare_as_instants_across_zones() -> None:
    paris = timezone(timedelta(hours=1))
    assert utc_text(datetime(2026, 1, 1, 10, tzinfo=paris)) < utc_text(
        datetime(2026, 1, 1, 9, 30, tzinfo=UTC))
    assert utc_text(datetime(2026, 1, 1, 9)) == utc_text(datetime(2026, 1, 1, 9, tzinfo=UTC))


def test_times_at_the_calendars_ends_in_a_zone_are_its_ends() -> None:
    """UTC cannot hold them: they sort before or after every other time."""
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    late = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))
    assert utc_text(early) <= utc_text(datetime(1, 1, 1, tzinfo=UTC)) < utc_text(T0)
    assert utc_text(T0) < utc_text(late)
    rows = marks([(T0, 1), (late, 2), (early, 3)])
    assert rows == {0: (3, utc_text(late))}
    kept = folded([(T0, 1), (late, 2), (early, 3)])
    assert kept.rows() == rows
    assert kept.start_before(early) == 0 and kept.start_before(late) == 0


def test_times_of_a_repeated_hour_compare_as_instants() -> None:
    """Paris's autumn hour comes twice: its second 02:10 (01:10 UTC) is after
    its first 02:50 (00:50 UTC), though its wall clock is earlier (a review
    found a span recording the 02:50, and a reading since 01:00 UTC skipping
    the 02:10)."""
    paris = ZoneInfo("Europe/Paris")
    first = datetime(2026, 10, 25, 2, 50, tzinfo=paris)
    again = datetime(2026, 10, 25, 2, 10, tzinfo=paris, fold=1)
    rows = marks([(first, 1), (again, 2)])
    assert rows == {0: (2, utc_text(again))}
    assert folded([(first, 1), (again, 2)]).start_before(
        datetime(2026, 10, 25, 1, tzinfo=UTC)) == 0
