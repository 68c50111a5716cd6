"""A run's commit looks for the stream of every message it publishes and of
every input it registers (new, or a second event in an existing one). It reads
them together (`Streams.preload`), not one read each: on a server each was a
round trip, and a producer publishing a hundred items made two hundred."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

import flowledger as fl
from flowledger.domain.ids import input_id, topic_event_id
from flowledger.infrastructure.codec import unpack
from flowledger.infrastructure.event_log import EventLog
from tests.helpers import count_loads, message_status

ITEMS = [f"item-{k}" for k in range(40)]


def _workflow(plan: dict[str, Any]) -> fl.Workflow:
    """One producer run per session: publishes plan["items"] (round-numbered
    payloads), half with a registered input, half with an implicit one."""
    wf = fl.Workflow("wf", topics=["in"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> int:
        n = (state or 0) + 1
        for k, item in enumerate(plan["items"]):
            registered = (ctx.register_input("inbox", "mail", item) if k % 2 else None)
            ctx.publish("in", message_id=item, payload={"round": n}, input_id=registered)
        return n

    return wf


def _spy(monkeypatch: pytest.MonkeyPatch) -> tuple[list[UUID], list[int]]:
    """Streams loaded one by one, and the size of each load of many."""
    many: list[int] = []
    load_short = EventLog.load_short

    def counting_short(self: EventLog, stream_ids: Any) -> Any:
        many.append(len(stream_ids))
        return load_short(self, stream_ids)

    monkeypatch.setattr(EventLog, "load_short", counting_short)
    return count_loads(monkeypatch), many


def _streams(items: list[str]) -> set[UUID]:
    return ({topic_event_id("wf", "in", item) for item in items}
            | {input_id("wf", "inbox", "mail", item) for item in items[1::2]}
            | {input_id("wf", "produce", "in", item) for item in items[::2]})


def test_a_producer_publishing_many_reads_their_streams_at_once(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine()
    plan = {"items": ITEMS}
    engine.register(_workflow(plan))
    one, many = _spy(monkeypatch)

    first = engine.run_session("wf", trigger="manual", max_iterations=0)

    assert first.status == "completed", first.error
    assert message_status(engine, "wf", "in") == {"pending": len(ITEMS)}
    assert not _streams(ITEMS) & set(one)  # none loaded one by one
    assert many == [len(ITEMS) * 2]  # 40 messages and 40 inputs, in one read


def test_what_was_read_together_goes_on_from_each_streams_version(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second round republishes every item and adds new ones, with a read
    limited to 7 streams a statement: existing streams get their second event
    (a stale version would fail the append), new ones their first."""
    engine = make_engine()
    plan = {"items": ITEMS}
    engine.register(_workflow(plan))
    assert engine.run_session("wf", trigger="manual", max_iterations=0).error is None
    recorder = type(engine.log.flow_recorder)
    monkeypatch.setattr(recorder, "MAX_PARAMETERS", 7)
    statements: list[int] = []
    read_all = recorder.read_all

    def counting(self: Any, sql: str, params: Any) -> Any:
        if " IN (" in sql:
            statements.append(len(params))
        return read_all(self, sql, params)

    monkeypatch.setattr(recorder, "read_all", counting)
    plan["items"] = [*ITEMS, "new-1", "new-2", "new-3"]

    second = engine.run_session("wf", trigger="manual", max_iterations=0)

    assert second.status == "completed", second.error
    assert len(_streams(plan["items"])) == 86  # 43 messages, 43 inputs
    assert statements == [7] * 12 + [2]  # at most 7 a statement
    assert message_status(engine, "wf", "in") == {"pending": len(ITEMS) + 3}
    log = engine.log
    for item in ITEMS:
        event = log.load(topic_event_id("wf", "in", item), short=True)
        assert event.version == 2 and unpack(event.payload) == {"round": 2}
    for item in ("new-1", "new-2", "new-3"):
        assert log.load(topic_event_id("wf", "in", item), short=True).version == 1
    registered = log.load(input_id("wf", "inbox", "mail", ITEMS[1]), short=True)
    assert registered is not None and registered.version == 1  # found, not registered again


def test_a_consumer_reserving_many_reads_their_streams_at_once(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A peek longer than the read-ahead (RunDriver.READ_AHEAD) reads no
    streams; the reservation of all it found then reads them in one go."""
    wf = _workflow({"items": ITEMS})
    engine = make_engine()

    @wf.consumer(subscribe=["in"])
    class TakeAll:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            found = ctx.peek("in", limit=len(ITEMS))
            return fl.Prepared({"in": [m.message_id for m in found]}) if found else None

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            pass

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            pass

    engine.register(wf)
    produced = engine.run_session("wf", trigger="manual", max_iterations=0)
    assert produced.status == "budget_exhausted", produced.error
    one, many = _spy(monkeypatch)

    result = engine.run_session("wf", trigger="event", max_iterations=1)

    assert result.consumer_runs == 1 and result.runs[0].committed, result.error
    assert message_status(engine, "wf", "in") == {"consumed": len(ITEMS)}
    assert not {topic_event_id("wf", "in", item) for item in ITEMS} & set(one)
    assert many == [len(ITEMS)]


def _reserving(name: str, reservations: Any) -> fl.Workflow:
    """A producer publishes m1 and m2; the consumer reserves `reservations()`."""
    wf = fl.Workflow(name, topics=["in", "other"])

    @wf.producer(publishes=["in"])
    def producer(ctx: Any, state: Any) -> None:
        ctx.publish("in", message_id="m1", payload=1)
        ctx.publish("in", message_id="m2", payload=2)

    @wf.consumer(subscribe=["in"])
    class Reserver:
        def prepare(self, ctx: Any, state: Any) -> Any:
            return fl.Prepared(reservations())

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            pass

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            pass

    return wf


def test_reading_ahead_changes_no_error_and_reads_an_iterator_once(make_engine: Any) -> None:
    """The first topic's unknown message is what the run fails on, as before the
    reservations were read together (replay compares that error); and ids
    given as an iterator are all reserved."""
    engine = make_engine()
    engine.register(_reserving("wf", lambda: {"in": ["nope"], "other": ["m1"]}))
    failed = engine.run_session("wf")
    assert failed.status == "failed"
    assert "in/nope" in (failed.error or "") and "which is unknown" in (failed.error or "")

    engine.register(_reserving("iter", lambda: {"in": (m for m in ["m1", "m2"])}))
    result = engine.run_session("iter")
    assert result.status == "completed", result.error
    assert message_status(engine, "iter", "in") == {"consumed": 2}


def test_messages_whose_ids_the_run_made_are_not_looked_for(
        make_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message published without an id gets a fresh one: neither it nor its
    implicit input can exist, so the commit asks the store for neither; a
    message published by id in the same run is still looked for, and replaced."""
    wf = fl.Workflow("wf", topics=["in", "out"])
    made: list[str] = []

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> int:
        made.extend(ctx.publish("in", payload=k) for k in range(3))
        ctx.publish("in", message_id="by-id", payload=state or 0)
        return (state or 0) + 1

    @wf.consumer(subscribe=["in"], publishes=["out"])
    class Forward:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            found = ctx.peek("in", limit=1)
            if not found:
                return None
            return fl.Prepared({"in": [found[0].message_id]}, data=found[0].message_id)

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            pass

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            made.append(ctx.publish("out", payload=prepared.data))

    engine = make_engine()
    engine.register(wf)
    assert engine.run_session("wf", trigger="manual", max_iterations=0).runs[0].committed
    one, many = _spy(monkeypatch)

    result = engine.run_session("wf", trigger="manual", max_iterations=10)

    assert result.status == "completed", result.error
    assert result.consumer_runs == 7  # 3 made by each producer run, and by-id
    assert len(set(made)) == 13  # 6 by the producer's two runs, 7 forwarded
    fresh = ({topic_event_id("wf", "in", m) for m in made[:6]}
             | {input_id("wf", "produce", "in", m) for m in made[:6]}
             | {topic_event_id("wf", "out", m) for m in made[6:]})
    assert not fresh & set(one)
    assert many == [2]  # by-id and its implicit input, looked for (and found)
    assert message_status(engine, "wf", "out") == {"pending": 7}
    log = engine.log
    assert all(log.load(stream, short=True) is not None for stream in fresh)
    by_id = log.load(topic_event_id("wf", "in", "by-id"), short=True)
    assert unpack(by_id.payload) == 1  # the second run's payload replaced the first's
