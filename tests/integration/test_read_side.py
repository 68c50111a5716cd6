"""The query API (DESIGN §2.4): pending work, exact costs, audit trails, listings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import flowledger as fl
from flowledger.domain.ids import workflow_id
from flowledger.engine.faults import SimulatedCrash
from flowledger.projections import log_times
from flowledger.read_side.log_view import read_log
from tests.helpers import (
    ExternalLedger,
    MemoryLedger,
    NoReconcileTool,
    ScriptedLedgerTool,
    costly_workflow,
    ledger_workflow,
)


class Boom(SimulatedCrash):
    """Stands in for a process dying between two appends."""


def two_stage(costs: dict[str, str] | None = None, fail_next_once: bool = False
              ) -> fl.Workflow:
    """mail → (Book: one ledger row per mail) → booked → (Notify: records the row) .

    The producer registers each mail as an input with a title; Book's `next`
    publishes downstream, so the downstream message inherits the mail's input.
    """
    amounts = {"prepare": "0.1", "next": "0.2", "poll": "0.05", **(costs or {})}
    wf = fl.Workflow("mail", topics=["mail", "booked"])
    failures = {"next": 1 if fail_next_once else 0}

    @wf.producer(publishes=["mail"])
    def poll(ctx: Any, state: Any) -> None:
        for n in ("m1", "m2"):
            input_id = ctx.register_input(source="inbox", type="email", id=n,
                                          title=f"Invoice {n}")
            ctx.publish("mail", message_id=n, payload={"n": n}, input_id=input_id)
        ctx.add_cost(amounts["poll"], "poll")

    @wf.consumer(subscribe=["mail"], publishes=["booked"], tools=["ledger"])
    class Book:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            pending = ctx.peek("mail", limit=1)
            if not pending:
                return None
            ctx.add_cost(amounts["prepare"], "model")
            m = pending[0]
            return fl.Prepared({"mail": [m.message_id]}, data=m.payload,
                               title=f"book {m.message_id}")

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.ledger.append(prepared.data["n"], "row-" + prepared.data["n"])

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            if failures["next"]:
                failures["next"] -= 1
                raise fl.TransientError("the notifier is rate limited")
            ctx.add_cost(amounts["next"], "model")
            ctx.publish("booked", message_id=prepared.data["n"], payload=outcome.result)

    @wf.consumer(subscribe=["booked"])
    class Notify:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            pending = ctx.peek("booked", limit=1)
            if not pending:
                return None
            return fl.Prepared({"booked": [pending[0].message_id]}, title="notify")

    return wf


def input_of(engine: fl.Engine, mail: str) -> Any:
    return engine.event_history("mail", "mail", mail).caused_by[0]


# --------------------------------------------------------------------- costs


def test_costs_are_exact_decimals_whatever_the_grouping(make_engine,
                                                        ledger: ExternalLedger) -> None:
    engine = make_engine()
    engine.register(two_stage(), tools=[ScriptedLedgerTool(ledger)])
    result = engine.run_session("mail")
    assert result.status == "completed", result.error

    by_session = engine.costs(by="session")
    # 0.05 + 2 x (0.1 + 0.2): binary floats would give 0.6500000000000001.
    assert by_session.total == Decimal("0.65") == result.cost
    assert [(line.key, line.amount) for line in by_session.lines] == [
        (str(result.session_id), Decimal("0.65"))]
    assert {(line.key, line.amount, line.entries, line.runs)
            for line in engine.costs(by="handler").lines} == {
        ("poll", Decimal("0.05"), 1, 1), ("Book", Decimal("0.6"), 4, 2)}
    by_run = engine.costs(by="run")
    assert len(by_run.lines) == 3
    for line in by_run.lines:
        assert line.amount == engine.run(line.key).cost
    assert [(line.key, line.amount) for line in engine.costs(by="workflow").lines] == [
        ("mail", Decimal("0.65"))]


def test_costs_by_day_and_by_session(make_engine, clock: fl.ManualClock,
                                     ledger: ExternalLedger) -> None:
    engine = make_engine()
    engine.register(two_stage(), tools=[ScriptedLedgerTool(ledger)])
    clock.set(datetime(2026, 3, 1, 23, 0, tzinfo=UTC))
    first = engine.run_session("mail", max_iterations=1)
    clock.set(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    second = engine.run_session("mail", trigger="event")

    assert [(line.key, line.amount) for line in engine.costs(by="day").lines] == [
        ("2026-03-01", Decimal("0.35")), ("2026-03-02", Decimal("0.3"))]
    sessions = {line.key: line.amount for line in engine.costs(by="session").lines}
    assert sessions == {str(first.session_id): first.cost, str(second.session_id): second.cost}
    only_second = engine.costs(session=second.session_id, by="handler")
    assert [(line.key, line.amount) for line in only_second.lines] == [("Book", Decimal("0.3"))]


def test_costs_a_crash_left_uncounted_are_shown_then_counted(make_engine,
                                                             clock: fl.ManualClock,
                                                             ledger: ExternalLedger) -> None:
    """A run cut short has spent money no session counted yet: shown as not counted,
    under its own session, until recovery finishes the run and counts it."""
    def crash_before_commit(point: str) -> None:
        if point == "before_append:commit":
            raise Boom(point)

    engine = make_engine(checkpoint=crash_before_commit)
    engine.register(two_stage(), tools=[ScriptedLedgerTool(ledger)])
    with pytest.raises(Boom):
        engine.run_session("mail")
    session = engine.sessions()[0]
    assert session.status == "open"

    line = engine.costs(by="session").lines[0]
    assert line.key == str(session.session_id)
    assert (line.amount, line.not_counted) == (Decimal("0.15"), Decimal("0.1"))
    assert session.cost == Decimal("0.05")  # only what the session counted so far

    engine.checkpoint = lambda point: None
    clock.advance(3600)  # the lease ran out: the session can be taken over
    recovered = engine.recover()
    assert recovered[0].status == "completed", recovered[0].error
    line = engine.costs(by="session").lines[0]
    assert (line.amount, line.not_counted) == (Decimal("0.65"), Decimal(0))
    assert engine.sessions()[0].cost == Decimal("0.65") == engine.log.load(
        session.session_id).cost


def test_costs_refuse_what_they_cannot_answer(make_engine, ledger: ExternalLedger) -> None:
    engine = make_engine()
    engine.register(two_stage(), tools=[ScriptedLedgerTool(ledger)])
    with pytest.raises(fl.InvalidArgument, match="choose one of run, session"):
        engine.costs(by="month")
    with pytest.raises(fl.NotFoundError, match="no workflow named 'nope'"):
        engine.costs(workflow="nope")
    with pytest.raises(fl.InvalidArgument, match="not a session id"):
        engine.costs(session="yesterday")


# --------------------------------------------------------------------- audit


def test_input_history_follows_an_input_downstream(make_engine,
                                                   ledger: ExternalLedger) -> None:
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["transient"]  # m1's first row attempt fails, a retry books it
    engine.register(two_stage(), tools=[tool])
    first = engine.run_session("mail")
    assert first.status == "suspended"
    engine.clock.advance(3600)  # type: ignore[attr-defined]
    assert engine.run_session("mail").status == "completed"

    history = engine.input_history(input_of(engine, "m1"))

    assert (history.source, history.type, history.external_id, history.title) == (
        "inbox", "email", "m1", "Invoice m1")
    assert [(h.topic, h.message_id, h.status) for h in history.events] == [
        ("mail", "m1", "consumed"), ("booked", "m1", "consumed")]
    assert [(r.handler, r.status) for r in history.runs] == [
        ("Book", "superseded"), ("Book", "committed"), ("Notify", "committed")]
    assert [(m.title, m.tool, m.method, m.params, m.state) for m in history.mutations] == [
        ("book m1", "ledger", "append", {"args": ["m1", "row-m1"], "kwargs": {}}, "failed"),
        ("book m1", "ledger", "append", {"args": ["m1", "row-m1"], "kwargs": {}}, "applied")]
    assert history.mutations[1].result == {"row": 1, "key": "m1"}
    assert "TransientError: rate limited" in (history.mutations[0].reason or "")
    positions = [e.position for e in history.entries]
    assert positions == sorted(set(positions))
    assert (history.entries[0].aggregate, history.entries[0].name) == ("Input", "Registered")
    names = {(e.aggregate, e.name) for e in history.entries}
    assert {("TopicEvent", "Consumed"), ("HandlerRun", "MutationApplied")} <= names
    # Nothing of the other mail.
    assert all(e.fields.get("message_id") != "m2" for e in history.entries)


def test_run_timeline_has_the_run_and_what_it_touched(make_engine,
                                                      ledger: ExternalLedger) -> None:
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
    result = engine.run_session("wf")
    run_id = next(r.run_id for r in result.runs if r.handler == "Append")

    timeline = engine.run_timeline(str(run_id))

    assert timeline.run.handler == "Append" and timeline.run.status == "committed"
    own = [e for e in timeline.entries if e.stream_id == run_id]
    assert own == list(engine.events(run=run_id))
    others = [(e.aggregate, e.name) for e in timeline.entries if e.stream_id != run_id]
    assert others == [("TopicEvent", "Reserved"), ("TopicEvent", "Consumed"),
                      ("TopicEvent", "Published"), ("HandlerState", "Initialised"),
                      ("Session", "RunEnded")]
    positions = [e.position for e in timeline.entries]
    assert positions == sorted(positions)
    assert all(e.timestamp.tzinfo is not None for e in timeline.entries)


def test_event_history_names_every_run_that_held_a_message(make_engine,
                                                           ledger: ExternalLedger) -> None:
    """next fails after the row was applied: a retry takes the reservation over
    (moved), never mutates again, and consumes the message."""
    engine = make_engine()
    engine.register(two_stage(fail_next_once=True), tools=[ScriptedLedgerTool(ledger)])
    assert engine.run_session("mail").status == "suspended"
    engine.clock.advance(3600)  # type: ignore[attr-defined]
    assert engine.run_session("mail").status == "completed"

    history = engine.event_history("mail", "mail", "m1")

    assert history.status == "consumed" and history.payload == {"n": "m1"}
    first, second = history.reservations
    assert (first.handler, first.ended, first.moved_to, first.run_status) == (
        "Book", "moved", second.run_id, "superseded")
    assert (second.ended, second.run_status, second.mutation_state) == (
        "consumed", "committed", None)  # the retry carried the outcome, no mutation of its own
    assert first.mutation_state == "applied"
    assert ledger.keys() == ["m1", "m2"]
    # The second session's producer published m1 again: its payload was replaced.
    assert [e.name for e in history.entries] == ["Published", "Reserved", "ReservationMoved",
                                                 "Consumed", "PayloadReplaced"]
    with pytest.raises(fl.NotFoundError, match="no message 'zz' in topic 'mail'"):
        engine.event_history("mail", "mail", "zz")


# ------------------------------------------------------------------ listings


def test_runs_and_sessions_filter_by_workflow_status_and_time(make_engine,
                                                              clock: fl.ManualClock,
                                                              ledger: ExternalLedger) -> None:
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["ok", "auth"]  # the second row needs a person
    engine.register(ledger_workflow(items=["a", "b"]), tools=[tool])
    engine.register(two_stage(), tools=[tool])
    start = clock.now()
    assert engine.run_session("wf").status == "suspended"
    clock.advance(600)
    assert engine.run_session("mail").status == "completed"

    assert [s.workflow for s in engine.sessions()] == ["mail", "wf"]  # newest first
    assert [s.status for s in engine.sessions(workflow="wf")] == ["suspended"]
    assert [s.workflow for s in engine.sessions(status="completed")] == ["mail"]
    assert engine.sessions(status="open") == []
    later = start + timedelta(seconds=300)
    assert [s.workflow for s in engine.sessions(since=later)] == ["mail"]
    assert [s.workflow for s in engine.sessions(until=later)] == ["wf"]

    paused = engine.runs(status="paused")
    assert [(r.workflow, r.handler, r.status) for r in paused] == [
        ("wf", "Append", "paused:approval")]
    assert engine.runs(status="paused:approval") == paused
    assert {r.handler for r in engine.runs(workflow="mail")} == {"poll", "Book", "Notify"}
    assert len(engine.runs(workflow="mail", limit=2)) == 2
    assert {r.workflow for r in engine.runs(since=later)} == {"mail"}
    session = engine.sessions(workflow="wf")[0].session_id
    assert {r.workflow for r in engine.runs(session=session)} == {"wf"}
    with pytest.raises(fl.InvalidArgument, match="timezone-aware"):
        engine.runs(since=datetime(2026, 1, 1))
    with pytest.raises(fl.NotFoundError):
        engine.runs(workflow="nope")


def test_a_listing_cut_by_time_reads_no_further_than_its_limit(
        make_engine, clock: fl.ManualClock, ledger: ExternalLedger,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs and sessions listed since or until a time are compared as times in
    Python (ADR 0026): the rows were all read first, and a store's whole
    listing held in memory to show the five newest (2.8 s at 69,000 runs)."""
    from flowledger.projections import pending_work

    engine = make_engine()
    engine.register(ledger_workflow(items=[str(i) for i in range(12)]),
                    tools=[ScriptedLedgerTool(ledger)])
    start = clock.now()
    for _ in range(6):
        engine.run_session("wf", max_iterations=2)
        clock.advance(60)
    read: list[str] = []
    made = pending_work._run_row
    monkeypatch.setattr(pending_work, "_run_row",
                        lambda r, seal: read.append(r[0]) or made(r, seal))

    newest = engine.runs(since=start, limit=3)
    assert len(newest) == 3 and len(read) == 3
    assert newest == engine.runs(limit=3)
    after = len(engine.runs(since=start + timedelta(seconds=30), limit=None))
    read.clear()
    assert len(engine.runs(until=start + timedelta(seconds=30), limit=2)) == 2
    assert len(read) == after + 2  # the newer ones passed over, then two


def test_pending_work_of_a_workflow(make_engine, ledger: ExternalLedger) -> None:
    engine = make_engine()
    tool = NoReconcileTool(ledger)
    engine.register(ledger_workflow(items=["a", "b", "c"], tool_name="blind"), tools=[tool])
    result = engine.run_session("wf", max_iterations=1)
    assert result.status == "budget_exhausted"

    work = engine.pending_work("wf")
    assert work.status == "active" and work.open_session is None
    assert [(t.topic, t.pending, t.reserved) for t in work.topics] == [
        ("in", 2, 0), ("done", 1, 0)]
    assert work.consumers_with_work == result.remaining == {"Append": {"in": 2}}
    assert work.unfinished_runs == () and work.blocked_mutations == ()

    tool.script = ["uncertain_applied"]  # no reconcile method: the outcome cannot be known
    assert engine.run_session("wf").status == "suspended"
    work = engine.pending_work("wf")
    assert work.status == "paused"
    assert [(t.topic, t.pending, t.reserved) for t in work.topics] == [
        ("in", 1, 1), ("done", 1, 0)]
    assert [(r.handler, r.mutation_state) for r in work.blocked_mutations] == [
        ("Append", "indeterminate")]
    assert work.blocked_mutations[0] in work.unfinished_runs

    other = fl.Engine(engine.store)  # knows the store, not the code
    try:
        assert other.pending_work("wf").consumers_with_work is None
        with pytest.raises(fl.NotFoundError, match="no workflow named 'nope'"):
            other.pending_work("nope")
    finally:
        other.close()


def test_the_last_events_of_the_log_are_read_alone(make_engine, ledger: ExternalLedger,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`log --limit N`: the log's last N events, the same as the end of the
    whole log, and no event before them decoded but their streams' first (it
    read and decoded the whole log: 34 s at 127,000 events)."""
    engine = make_engine()
    engine.register(ledger_workflow(items=["a", "b", "c"]), tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("wf")
    whole = list(engine.events())
    decoded: list[Any] = []
    mapper = engine.log.mapper
    decode = mapper.to_domain_event
    monkeypatch.setattr(mapper, "to_domain_event",
                        lambda stored: decoded.append(stored) or decode(stored))
    assert list(engine.events(last=5)) == whole[-5:]  # each with its workflow
    assert len(decoded) <= 10  # the 5, and the first event of each of their streams
    assert list(engine.events(after=whole[-3].position, last=5)) == whole[-2:]
    assert list(engine.events(last=len(whole) + 10)) == whole
    assert list(engine.events(workflow="wf", last=5)) == [
        e for e in whole if e.workflow_id is not None][-5:]


def test_the_last_events_of_a_workflow_or_since_a_time_are_found_reading_back(
        make_engine, ledger: ExternalLedger, clock: fl.ManualClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`log --workflow W --limit N` and `log --since T --limit N`: the last N of
    those events after any position, the same as the end of all of them,
    found reading back from the head a window at a time (they were read from
    the log's start: 8-10 s at 600,000 events, wherever the last ones were).
    Streams begun in an earlier window (a message published before and
    consumed now) are still W's; times need not follow positions (a clock
    set back, or two engines' clocks)."""
    engine = make_engine()
    engine.register(ledger_workflow("wf", items=["a", "b"]), tools=[ScriptedLedgerTool(ledger)])
    engine.register(ledger_workflow("other", items=["x", "y"]),
                    tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("wf", max_iterations=0)  # published, consumed after other's
    clock.advance("1h")
    engine.run_session("other")
    clock.set(clock.now() - timedelta(minutes=30))  # set back: times out of log order
    engine.run_session("wf")
    whole = list(engine.events())
    head = whole[-1].position
    times = sorted({e.timestamp for e in whole})
    assert len(times) == 3
    for name in ("wf", "other", None):
        of = [e for e in whole if name is None or e.workflow_id == workflow_id(name)]
        assert 10 < len(of) <= len(whole)
        for since in (None, *times):
            timely = [e for e in of if since is None or e.timestamp >= since]
            for batch in (1, 4, 1000):
                for after in (0, of[0].position, of[len(of) // 2].position, head - 3, head):
                    later = [e for e in timely if e.position > after]
                    for n in (1, 2, 7, len(of), len(of) + 3):
                        assert list(read_log(engine.log, name, after=after, last=n,
                                             batch=batch, since=since)
                                    ) == later[-n:], (name, since, batch, after, n)
                    assert list(read_log(engine.log, name, after=after, batch=batch,
                                         since=since)) == later
    assert whole[-1].workflow_id == workflow_id("wf")  # wf's session closed last
    decoded: list[Any] = []
    decode = engine.log.mapper.to_domain_event
    monkeypatch.setattr(engine.log.mapper, "to_domain_event",
                        lambda stored: decoded.append(stored) or decode(stored))
    assert list(read_log(engine.log, "wf", last=2, batch=4, since=times[0])) == [
        e for e in whole if e.workflow_id == workflow_id("wf")][-2:]
    assert len(decoded) <= 8  # a window: its streams' first events and wf's last two
    assert list(engine.events(since=times[-1], last=3)) == [
        e for e in whole if e.timestamp >= times[-1]][-3:]
    with pytest.raises(fl.InvalidArgument, match="since must be a timezone-aware"):
        engine.events(since=datetime(2026, 1, 1))



def test_a_reading_since_a_time_starts_where_no_earlier_event_can_be_at_or_after_it(
        make_engine, ledger: ExternalLedger, clock: fl.ManualClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`log --since T` read the whole log from its start (9.3 s at 600,000
    events). It now starts after the last position the log's times rule out
    (projections/log_times.py): exact, with a clock set back between sessions,
    and the same after a rebuild. Rows every 8 positions here (1,024 else)."""
    monkeypatch.setattr(log_times, "SPAN", 8)
    engine = make_engine()
    engine.register(ledger_workflow("wf", items=[f"i{n}" for n in range(8)]),
                    tools=[ScriptedLedgerTool(ledger)])
    for step in (None, "1h", "-30m", "2h", "1m"):
        if step == "-30m":
            clock.set(clock.now() - timedelta(minutes=30))
        elif step is not None:
            clock.advance(step)
        engine.run_session("wf", max_iterations=2)
    whole = list(engine.events())
    assert len(whole) > 100
    starts: list[int] = []
    recorder = engine.log.flow_recorder
    select = recorder.select_stored
    monkeypatch.setattr(recorder, "select_stored", lambda c, after, limit, upto=None: (
        starts.append(after) or select(c, after, limit, upto)))

    def read_since(since: datetime) -> list[Any]:
        starts.clear()
        return list(engine.events(since=since))

    def rows() -> list[Any]:
        with engine.log.reading() as c:
            c.execute("SELECT span, upto, latest FROM fl_log_times ORDER BY span")
            return [tuple(r) for r in c.fetchall()]

    moments = sorted({e.timestamp for e in whole})
    assert len(moments) == 5
    for since in [*moments, moments[0] - timedelta(seconds=1), moments[-1] + timedelta(1)]:
        timely = [e for e in whole if e.timestamp >= since]
        assert read_since(since) == timely, since
        for n in (1, 3, len(whole)):  # read back from the head, down to the start at most
            assert list(engine.events(since=since, last=n)) == timely[-n:]
            assert list(read_log(engine.log, "wf", since=since, last=n, batch=5)) == [
                e for e in timely if e.workflow_id == workflow_id("wf")][-n:]
    assert read_since(moments[-1])[0].position > 8
    assert starts[0] >= whole[-1].position - 2 * 8 - 30  # the last session's, not 0
    set_back = moments[1]  # the session after the clock went back: 30 min before the 2nd
    assert read_since(set_back)[0].timestamp == moments[2]  # the 2nd session's first
    assert 0 < starts[0] < min(e.position for e in whole if e.timestamp >= set_back)
    kept = rows()
    assert len(kept) > len(whole) // 8 - 2
    engine.rebuild_projections()
    assert rows() == kept  # the same rows however the events were batched



def test_a_reading_since_a_time_misses_nothing_when_two_engines_fold_in_turn(
        make_engine, clock: fl.ManualClock) -> None:
    """Engine A folds, B appends and folds events of a later time (its clock
    a second ahead), then A folds its own again: A must not go on from the
    latest time it knew, or its rows say B's events are earlier than they
    are, and a reading since their time skips them (a review found it). The
    rows equal a rebuild's."""
    ahead = fl.ManualClock(clock.now() + timedelta(seconds=1))
    a, b = make_engine(), make_engine(clock=ahead)
    for engine, name in ((a, "a"), (b, "b")):
        wf = fl.Workflow(name, topics=["t"])

        @wf.producer(publishes=["t"])
        def produce(ctx: Any, state: Any) -> Any:
            return state

        engine.register(wf)
    for _ in range(3):
        a.run_session("a", trigger="manual")
        b.run_session("b", trigger="manual")
        clock.advance(0.5)
        ahead.advance(0.5)
    a.run_session("a", trigger="manual")
    whole = list(a.events())
    for since in sorted({e.timestamp for e in whole}):
        assert [e.position for e in a.events(since=since)] == [
            e.position for e in whole if e.timestamp >= since], since

    def rows() -> list[Any]:
        with a.log.reading() as c:
            c.execute("SELECT span, upto, latest FROM fl_log_times ORDER BY span")
            return [tuple(r) for r in c.fetchall()]

    live = rows()
    a.rebuild_projections(["log_times"])
    assert rows() == live



class ParisTime(fl.ManualClock):
    """Moves in UTC, tells Paris's local time: its autumn hour comes twice."""

    def now(self) -> datetime:
        return super().now().astimezone(ZoneInfo("Europe/Paris"))


def test_a_reading_since_a_time_in_a_repeated_hour_misses_nothing(make_engine) -> None:
    """An engine whose clock gives Paris's local time across the autumn
    change: the events of the second 02:00-03:00 compare as the instants
    they are (by wall clock they came before the first's), in the fold from
    memory, and the rows equal a rebuild's (a review found the span kept the
    first hour's latest time, and a reading since 01:00 UTC skipped them)."""
    clock = ParisTime(datetime(2026, 10, 25, 0, 58, tzinfo=UTC))
    engine = make_engine(clock=clock)
    wf = fl.Workflow("wf", topics=["t"])

    @wf.producer(publishes=["t"])
    def produce(ctx: Any, state: Any) -> Any:
        for n in range(6):
            clock.advance(30)
            ctx.publish("t", message_id=str(n), payload=n)
        return state

    engine.register(wf)
    engine.run_session("wf", trigger="manual")
    whole = list(engine.events())
    change = datetime(2026, 10, 25, 1, tzinfo=UTC)  # Paris from 03:00 back to 02:00
    assert whole[0].timestamp < change < whole[-1].timestamp
    for since in sorted({e.timestamp for e in whole}):
        assert [e.position for e in engine.events(since=since)] == [
            e.position for e in whole if e.timestamp >= since], since
    with engine.log.reading() as c:
        c.execute("SELECT span, upto, latest FROM fl_log_times ORDER BY span")
        live = [tuple(r) for r in c.fetchall()]
    engine.rebuild_projections(["log_times"])
    with engine.log.reading() as c:
        c.execute("SELECT span, upto, latest FROM fl_log_times ORDER BY span")
        assert [tuple(r) for r in c.fetchall()] == live


def test_a_reading_since_the_calendars_ends_in_a_zone_is_answered(make_engine) -> None:
    """Times within a day of year 1 or 9999 in a zone, which UTC cannot hold,
    still compare: since the first, everything; since the last, nothing."""
    engine = make_engine()
    engine.register(ledger_workflow("wf", items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
    engine.run_session("wf")
    whole = list(engine.events())
    first = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    last = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))
    assert list(engine.events(since=first)) == whole
    assert list(engine.events(since=last)) == []
    assert list(engine.events(since=first, last=2)) == whole[-2:]


def test_a_workflow_is_not_looked_for_before_its_registration(
        make_engine, ledger: ExternalLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    """`log --workflow W --limit N` for a W with fewer than N events: read back
    to W's registration, not to the log's start (16 s at a million events
    for a quiet workflow near the head). A workflow never registered: nothing
    read."""
    engine = make_engine()
    engine.register(ledger_workflow("busy", items=["a", "b", "c"]),
                    tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("busy")
    engine.register(fl.Workflow("quiet", topics=["t"]))
    whole = list(engine.events())
    quiet = [e for e in whole if e.workflow_id == workflow_id("quiet")]
    begun = quiet[0].position
    assert begun > 20 and 0 < len(quiet) < 10
    recorder = type(engine.log.flow_recorder)
    read_from: list[int] = []
    select_stored = recorder.select_stored

    def counted(self: Any, c: Any, after: int, limit: int, upto: int | None = None) -> Any:
        read_from.append(after)
        return select_stored(self, c, after, limit, upto)

    monkeypatch.setattr(recorder, "select_stored", counted)
    for batch in (2, 1000):
        assert list(read_log(engine.log, "quiet", last=100, batch=batch)) == quiet
        assert list(read_log(engine.log, "quiet", batch=batch)) == quiet
    assert read_from and min(read_from) == begun - 1
    read_from.clear()
    assert list(read_log(engine.log, "never", last=5)) == []
    assert list(read_log(engine.log, "never")) == []
    assert read_from == []


def test_last_n_is_the_last_n_whatever_else_is_asked(make_engine, ledger: ExternalLedger
                                                     ) -> None:
    """`last=N` keeps the last N of what is asked, read back or not: with a
    run, with an end position, and N=0 (nothing)."""
    engine = make_engine()
    engine.register(ledger_workflow("wf", items=["a", "b"]), tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("wf")
    whole = list(engine.events())
    run = engine.runs(workflow="wf")[0].run_id
    of_run = [e for e in whole if e.stream_id == run]
    assert len(of_run) > 2
    assert list(engine.events(run=run, last=2)) == of_run[-2:]
    upto = whole[-5].position
    assert list(engine.events(workflow="wf", upto=upto, last=2)) == [
        e for e in whole if e.position <= upto][-2:]
    assert list(engine.events(since=whole[0].timestamp, upto=upto, last=3)) == [
        e for e in whole if e.position <= upto][-3:]
    assert list(engine.events(workflow="wf", last=0)) == []
    assert list(engine.events(last=0)) == []
    with pytest.raises(ValueError, match="batch must be at least 1"):
        list(read_log(engine.log, "wf", last=2, batch=0))
    for args in ({}, {"run": run}, {"upto": upto}, {"workflow": "wf"}):
        with pytest.raises(fl.InvalidArgument, match="last must be 0 or more, got -1"):
            engine.events(last=-1, **args)


def test_the_logs_last_events_are_handed_out_as_read(make_engine, ledger: ExternalLedger,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole log's last N are read on from the position before them, a
    batch at a time, each event handed out as it is read: not all of them
    gathered first (a review measured 1.6 s and 62 MB before the first of
    60,000), and no event before them decoded but their streams' first."""
    engine = make_engine()
    engine.register(ledger_workflow(items=["a", "b", "c"]), tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("wf")
    whole = list(engine.events())
    decoded: list[Any] = []
    decode = engine.log.mapper.to_domain_event
    monkeypatch.setattr(engine.log.mapper, "to_domain_event",
                        lambda stored: decoded.append(stored) or decode(stored))
    reading = read_log(engine.log, last=len(whole) - 1, batch=2)
    assert next(reading) == whole[1]
    assert len(decoded) <= 2 + 2  # a batch, and its streams' first events
    assert [whole[1], *reading] == whole[1:]
    decoded.clear()
    assert list(read_log(engine.log, last=7, batch=3)) == whole[-7:]
    assert len({(s.originator_id, s.originator_version) for s in decoded}) <= 7 + 7


def test_only_the_events_of_some_classes_are_read_and_decoded(
        make_engine, ledger: ExternalLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    """`only=`: what the worker reads of the new events to learn scheduled
    producers' last runs: their starts and commits, the others not decoded
    (it decoded every event appended since its last look)."""
    from flowledger.domain.handler_run import HandlerRun

    engine = make_engine()
    engine.register(ledger_workflow(items=["a", "b"]), tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("wf")
    whole = list(engine.events())
    wanted = [e for e in whole if e.aggregate == "HandlerRun" and e.name in ("Created",
                                                                               "Committed")]
    assert 4 <= len(wanted) < len(whole) // 3
    decoded: list[Any] = []
    decode = engine.log.mapper.to_domain_event
    monkeypatch.setattr(engine.log.mapper, "to_domain_event",
                        lambda stored: decoded.append(stored) or decode(stored))
    only = (HandlerRun.Created, HandlerRun.Committed)
    for after in (0, whole[len(whole) // 2].position):
        decoded.clear()
        got = list(read_log(engine.log, after=after, upto=whole[-1].position, batch=3,
                            workflows=False, only=only))
        assert [(e.position, e.name, e.fields) for e in got] == [
            (e.position, e.name, e.fields) for e in wanted if e.position > after]
        assert len(decoded) == len(got)
    for args in ({"last": 3}, {"run": wanted[0].stream_id}):  # it would be left unsaid
        with pytest.raises(ValueError, match="only= reads the log on from a position"):
            list(read_log(engine.log, only=only, **args))


def test_times_a_clock_without_a_zone_wrote_are_taken_as_utc(
        store: str, ledger: ExternalLedger) -> None:
    """A store written by a clock without a zone: `since` (and `log --since`,
    whose time is UTC when it names no zone) compares its times as UTC; they
    failed with "can't compare offset-naive and offset-aware datetimes"."""
    from typer.testing import CliRunner

    from flowledger.cli.application import app

    with fl.Engine(store, clock=fl.ManualClock(datetime(2026, 3, 1, 12, 0))) as engine:
        engine.register(ledger_workflow("wf", items=["a"]), tools=[ScriptedLedgerTool(ledger)])
        engine.run_session("wf")
        whole = list(engine.events())
        assert whole[0].timestamp.tzinfo is None
        for since, expected in ((datetime(2026, 3, 1, 12, 0, tzinfo=UTC), whole),
                                (datetime(2026, 3, 1, 12, 1, tzinfo=UTC), [])):
            assert list(engine.events(since=since)) == expected
            assert list(engine.events(since=since, last=2)) == expected[-2:]
            assert list(engine.events(workflow="wf", since=since, last=2)) == expected[-2:]
            assert bool(engine.runs(since=since)) == bool(expected)
    result = CliRunner().invoke(app, ["log", "--store", store, "--since", "2026-03-01 12:00",
                                      "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert "Workflow.SessionClosed" in result.output


@pytest.mark.parametrize("args", [["--since", "2999-01-01"],
                                  ["--since", "2999-01-01", "--limit", "3"],
                                  ["--since", "2026-01-01T00:00:00", "--limit", "3"],
                                  ["--workflow", "other", "--limit", "2"],
                                  ["--limit", "2"]])
def test_log_follow_goes_on_from_the_end_of_the_log_it_read(
        make_engine, ledger: ExternalLedger, clock: fl.ManualClock,
        monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    """`log ... --follow` goes on from where reading ended (the log's end then),
    not from the last event it showed: whatever came after that was read
    already, and reading it again before anything new is shown took seconds."""
    from typer.testing import CliRunner

    from flowledger.cli import read_commands
    from flowledger.cli.application import app

    engine = make_engine()
    for name in ("other", "wf"):
        engine.register(ledger_workflow(name, items=["a"]), tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("other")
    clock.set(datetime(2025, 1, 1, tzinfo=UTC))  # wf's events are older than other's
    engine.run_session("wf")
    head = engine.last_position()
    assert head == list(engine.events())[-1].position
    followed: list[int | None] = []
    monkeypatch.setattr(read_commands, "print_live",
                        lambda engine, after, *rest: followed.append(after))
    result = CliRunner().invoke(app, ["log", "--store", engine.store, *args, "--follow"])
    assert result.exit_code == 0, result.output
    assert followed == [head]


def test_a_workflows_or_a_runs_events_after_any_position_are_all_there(
        make_engine, ledger: ExternalLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    """`log --workflow W --after P` left out the events of streams begun at or
    before P (a message reserved later, a session's close, a run in flight
    at P); and `log --run R` decodes the run's stream alone, not the log."""
    engine = make_engine()
    engine.register(ledger_workflow("wf", items=["a", "b"]), tools=[ScriptedLedgerTool(ledger)])
    engine.register(ledger_workflow("other", items=["x"]), tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("wf", max_iterations=0)  # published, not consumed yet
    engine.run_session("other")
    engine.run_session("wf")
    whole = list(engine.events())
    for name in ("wf", "other"):
        of = [e for e in whole if e.workflow_id == workflow_id(name)]
        assert len(of) > 10
        for position in range(0, whole[-1].position + 1):
            assert list(engine.events(workflow=name, after=position)) == [
                e for e in of if e.position > position], (name, position)
    run = engine.runs(workflow="wf")[0].run_id
    decoded: list[Any] = []
    decode = engine.log.mapper.to_domain_event
    monkeypatch.setattr(engine.log.mapper, "to_domain_event",
                        lambda stored: decoded.append(stored) or decode(stored))
    mine = list(engine.events(run=run))
    assert mine == [e for e in whole if e.stream_id == run]
    assert len(decoded) <= 2 * len(mine) < len(whole)  # loaded, then read: the run alone
    assert list(engine.events(run=run, after=mine[2].position)) == mine[3:]
    assert list(engine.events(run=run, workflow="other")) == []


def test_listings_are_filtered_and_cut_by_the_store(make_engine, ledger: ExternalLedger,
                                                    clock: fl.ManualClock,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`runs` and `sessions` ask the store for the newest rows that match, not
    for every row to filter and cut here (a second and 100 MB at 25,000 runs),
    and sum costs for the sessions listed alone; answers are unchanged."""
    from flowledger.projections import costs, pending_work
    from flowledger.read_side.queries import RUN_STATUSES, SESSION_STATUSES

    engine = make_engine()
    tool = ScriptedLedgerTool(ledger, script=["ok", "transient", "ok", "ok"])
    engine.register(costly_workflow(["a", "b", "c", "d", "e"], ["0.5", "1.25"]), tools=[tool])
    for _ in range(4):
        engine.run_session("prop", max_iterations=2)
        clock.advance(3600)  # past the transient failure's pause
    everything = engine.runs(limit=None)
    sessions = engine.sessions(limit=None)
    assert len(everything) > 6 and len(sessions) == 4
    for limit in (0, 1, 2, 5, None):
        assert engine.runs(limit=limit) == everything[:limit]
        assert engine.sessions(limit=limit) == sessions[:limit]
    for status in RUN_STATUSES:
        assert engine.runs(status=status, limit=2) == [
            r for r in everything if r.status == status
            or r.status.split(":")[0] == status][:2], status
    for status in SESSION_STATUSES:
        assert engine.sessions(status=status) == [s for s in sessions if s.status == status]
    assert sum(s.cost for s in sessions) > 0
    made: list[Any] = []
    monkeypatch.setattr(pending_work, "_run_row",
                        lambda r, seal, made_row=pending_work._run_row: made.append(r)
                        or made_row(r, seal))
    asked: list[Any] = []
    monkeypatch.setattr(costs, "counted_by_sessions",
                        lambda c, ids, sums=costs.counted_by_sessions: asked.append(ids)
                        or sums(c, ids))
    assert engine.runs(limit=2) == everything[:2] and len(made) == 2
    assert engine.sessions(limit=1) == sessions[:1] and asked == [[sessions[0].session_id]]
