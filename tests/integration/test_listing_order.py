"""Listings and cost entries come in the order of time, whatever the clock's
offset and whatever the database's collation (ADR 0026)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

import flowledger as fl
from flowledger.projections.times import text_time, time_text
from tests import postgres

PARIS = ZoneInfo("Europe/Paris")
# The night clocks go back in Paris: 02:30 summer time comes before 02:10 winter time.
AT = [datetime(2026, 10, 25, 2, 30, tzinfo=PARIS),
      datetime(2026, 10, 25, 2, 10, tzinfo=PARIS, fold=1),
      datetime(2026, 10, 25, 2, 40, 0, 1, tzinfo=PARIS, fold=1),
      datetime(2026, 10, 25, 1, 40, 0, tzinfo=UTC)]  # a whole second, after a fraction


def utc(moment: datetime | None) -> datetime:
    """The instant alone (an aware time in a repeated hour never equals one in
    another zone, whatever the instant)."""
    assert moment is not None
    return moment.astimezone(UTC)


def polling() -> fl.Workflow:
    wf = fl.Workflow("ticks", topics=["tick"])

    @wf.producer(publishes=["tick"])
    def poll(ctx: Any, state: Any) -> None:
        ctx.add_cost("0.01", "poll")

    return wf


def sessions_at(store: str, times: list[datetime]) -> fl.Engine:
    clock = fl.ManualClock(times[0])
    engine = fl.Engine(store, clock=clock)
    engine.register(polling())
    for at in times:
        clock.set(at)
        engine.run_session("ticks", max_iterations=1)
    return engine


def test_sessions_runs_and_costs_are_listed_in_time_order_across_an_offset_change(
        store: str) -> None:
    engine = sessions_at(store, AT)
    try:
        newest_first = sorted(utc(t) for t in AT)[::-1]
        assert [utc(s.opened_at) for s in engine.sessions()] == newest_first
        assert [utc(r.created_at) for r in engine.runs()] == newest_first
        oldest_first = [str(r.run_id) for r in sorted(engine.runs(), key=lambda r: r.created_at)]
        assert [line.key for line in engine.costs(by="run").lines] == oldest_first
    finally:
        engine.close()


@given(st.lists(st.datetimes(min_value=datetime(2, 1, 1), timezones=st.sampled_from(
    [UTC, PARIS, timezone(timedelta(hours=-9, minutes=-30)), timezone(timedelta(hours=14))])),
    min_size=2, max_size=6))
def test_time_text_sorts_as_the_times_do_and_reads_back_the_same_instant(
        times: list[datetime]) -> None:
    texts = [time_text(t) for t in times]
    assert len({len(t) for t in texts}) == 1  # one width: no collation can misplace a part
    assert sorted(texts) == [time_text(t) for t in sorted(times)]
    assert [utc(text_time(t)) for t in texts] == [utc(t) for t in times]


@pytest.fixture
def icu_database() -> Iterator[str]:
    """A database whose default collation is ICU's en-US (as managed servers
    often make them): punctuation sorts otherwise than in C."""
    if postgres.unreachable() is not None and not postgres.REQUIRED:
        pytest.skip(postgres.unreachable() or "")
    server = postgres.URL.rsplit("/", 1)[0]
    name = f"fl_icu_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING \'UTF8\' '
                      "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'")
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_a_whole_second_is_listed_after_the_fractions_before_it_under_icu(
        icu_database: str) -> None:
    second = datetime(2026, 3, 1, 9, 0, 0, tzinfo=UTC)
    times = [second - timedelta(microseconds=1), second, second + timedelta(microseconds=500)]
    engine = sessions_at(icu_database, times)
    try:
        assert [s.opened_at for s in engine.sessions()] == times[::-1]
        assert [r.created_at for r in engine.runs()] == times[::-1]
        oldest_first = [str(r.run_id) for r in engine.runs()][::-1]
        assert [line.key for line in engine.costs(by="run").lines] == oldest_first
    finally:
        engine.close()
