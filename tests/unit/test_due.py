"""The worker's "what is due" rules (domain/due.py, domain/schedule.py): pure."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import flowledger as fl
from flowledger.domain.due import Situation, decide_due, serving_order
from flowledger.domain.schedule import Cron, Every, parse_every
from flowledger.domain.scheduling import ConsumerView, TopicBacklog

T0 = datetime(2026, 1, 1, tzinfo=UTC)
times = st.integers(min_value=0, max_value=10**7).map(lambda s: T0 + timedelta(seconds=s))
intervals = st.integers(min_value=1, max_value=86400)


@given(intervals, times, st.integers(min_value=0, max_value=10**6))
def test_a_producer_is_due_exactly_when_a_tick_fell_since_its_last_run(
        seconds: int, last: datetime, later: int) -> None:
    now = last + timedelta(seconds=later)
    s = Situation("wf", schedules={"p": Every(seconds)}, last_runs={"p": last})
    decision = decide_due(s, now)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    ticks_between = (int((now - epoch).total_seconds()) // seconds
                     - int((last - epoch).total_seconds()) // seconds)
    assert (decision.due is not None) == (ticks_between >= 1)
    if decision.due is None:
        assert decision.next_due is not None and last < decision.next_due
        assert decision.next_due > now


@given(intervals, times, st.lists(st.integers(min_value=0, max_value=5000), max_size=30))
def test_a_worker_that_runs_when_due_runs_once_per_tick_never_more(
        seconds: int, start: datetime, gaps: list[int]) -> None:
    """Whatever the times the worker looks (long outages included), it runs at most
    once per tick, and a run follows every tick by the next look."""
    schedule = Every(seconds)
    last: datetime | None = None
    runs: list[datetime] = []
    now = start
    for gap in gaps:
        now += timedelta(seconds=gap)
        d = decide_due(Situation("wf", schedules={"p": schedule}, last_runs={"p": last}), now)
        if d.due is not None:
            assert d.due.trigger == "schedule" and d.due.producers == ("p",)
            runs.append(now)
            last = now
    for a, b in itertools.pairwise(runs):
        assert schedule.next_after(a) <= b  # coalesced: never two runs in one tick
    if last is not None:
        assert decide_due(Situation("wf", schedules={"p": schedule}, last_runs={"p": last}),
                          now).due is None  # looking again at once: nothing


def test_cron_ticks_and_never_run_producers() -> None:
    cron = Cron("*/5 * * * *")
    assert cron.next_after(T0 + timedelta(minutes=2)) == T0 + timedelta(minutes=5)
    s = Situation("wf", schedules={"p": cron}, last_runs={"p": None})
    assert decide_due(s, T0).due is not None  # never ran: at once


def test_events_wakeups_and_locks() -> None:
    consumers = [ConsumerView("c", ("in",))]
    backlog = {"in": TopicBacklog(pending=2, newest=10)}
    s = Situation("wf", consumers=consumers, backlog=backlog)
    due = decide_due(s, T0).due
    assert due is not None and due.trigger == "event" and due.producers == ()
    seen = Situation("wf", consumers=consumers, backlog=backlog, seen_position=10)
    assert decide_due(seen, T0).due is None  # declined already: no busy loop
    wake = Situation("wf", consumers=consumers, wakeups={"c": T0 + timedelta(seconds=5)})
    assert decide_due(wake, T0).next_due == T0 + timedelta(seconds=5)
    assert decide_due(wake, T0 + timedelta(seconds=5)).due is not None
    held = Situation("wf", backlog=backlog, consumers=consumers, session_open=True,
                     lease_until=T0 + timedelta(seconds=30))
    assert decide_due(held, T0).due is None
    assert decide_due(held, T0 + timedelta(seconds=30)).due.trigger == "recover"  # type: ignore[union-attr]
    paused = Situation("wf", status="paused", paused_until=T0 + timedelta(seconds=9))
    assert decide_due(paused, T0).next_due == T0 + timedelta(seconds=9)
    assert decide_due(paused, T0 + timedelta(seconds=9)).due is not None
    assert decide_due(Situation("wf", status="paused"), T0).due is None  # a person decides
    assert decide_due(Situation("wf", status="error", backlog=backlog,
                                consumers=consumers), T0).due is None


@given(st.lists(st.text(min_size=1, max_size=3), unique=True, min_size=1, max_size=8),
       st.integers(min_value=0, max_value=100))
def test_serving_order_serves_every_due_workflow_once_and_rotates(
        names: list[str], turn: int) -> None:
    from flowledger.domain.due import Due

    due = [Due(n, "event") for n in names]
    order = serving_order(due, turn)
    assert sorted(d.workflow for d in order) == sorted(names)
    firsts = {serving_order(due, t)[0].workflow for t in range(len(names))}
    assert firsts == set(names)  # each gets its turn first


def tick(ctx: object, state: object) -> None:
    return None


@pytest.mark.parametrize(("bad", "said"), [
    ("", "is not an interval"), ("5", "is not an interval"), ("5 minutes", "is not an interval"),
    ("0s", "must be at least 1 second"), ("-1m", "is not an interval"),
    (5, "is not an interval"), (timedelta(0), "whole number of seconds, at least 1"),
    (timedelta(seconds=1.5), "whole number of seconds, at least 1")])
def test_bad_intervals_are_definition_errors_naming_the_producer(bad: object, said: str) -> None:
    wf = fl.Workflow("wf", topics=["t"])
    with pytest.raises(fl.DefinitionError, match=f"producer 'tick': every=.*{said}"):
        wf.producer(publishes=["t"], every=bad)(tick)  # type: ignore[arg-type]


@pytest.mark.parametrize(("bad", "said"), [
    ("*/5 * * *", "is not a cron expression of five fields"),
    ("nonsense", "is not a cron expression of five fields"),
    (5, "is not a cron expression of five fields"),
    ("61 * * * *", "has a field croniter cannot read"),  # five fields: one out of range
    ("* * 32 * *", "has a field croniter cannot read")])
def test_bad_cron_expressions_are_definition_errors_naming_the_producer(bad: object,
                                                                         said: str) -> None:
    wf = fl.Workflow("wf", topics=["t"])
    with pytest.raises(fl.DefinitionError, match=f"producer 'tick': cron=.*{said}"):
        wf.producer(publishes=["t"], cron=bad)(tick)  # type: ignore[arg-type]


def test_good_intervals() -> None:
    assert parse_every("30s", "x") == Every(30)
    assert parse_every("5m", "x") == Every(300)
    assert parse_every("1h", "x") == Every(3600)
    assert parse_every(timedelta(minutes=2), "x") == Every(120)
    with pytest.raises(fl.DefinitionError, match="not both"):
        fl.Workflow("wf", topics=["t"]).producer(publishes=["t"], every="1m",
                                                 cron="* * * * *")(tick)


def test_a_session_to_take_over_is_said_why() -> None:
    """A lease that ran out is not a holder proven gone (a chaos trial's worker
    said "holder is gone" of a stopped one, where the engine said "lease ran out")."""
    now = datetime(2026, 12, 7, tzinfo=UTC)
    gone = decide_due(Situation("wf", session_open=True, holder_dead=True), now).due
    lapsed = decide_due(Situation("wf", session_open=True,
                                  lease_until=now - timedelta(seconds=1)), now).due
    assert gone is not None and gone.reason == "a session whose holder is gone"
    assert lapsed is not None and lapsed.reason == "a session whose holder's lease ran out"
