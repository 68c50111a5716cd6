"""flowledger.testing's crash injection: every durable point the engine has, in
one process, through the kit's own fixtures (loaded by its pytest11 entry point)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
import flowledger.testing as flt
from flowledger.testing.engines import EngineFactory
from tests.helpers import OrderBook, OrderFolder, orders_workflow, place_order


@pytest.fixture
def world(tmp_path: Path) -> Path:
    folder = tmp_path / "world"
    folder.mkdir()
    for order in ("A-1", "A-2"):
        place_order(folder, order)
    return folder


def engine_with(new_engine: EngineFactory, tools: list[fl.Tool], **options: Any
                ) -> fl.Engine:
    engine = new_engine(policy=fl.RetryPolicy(jitter=0), **options)
    engine.register(orders_workflow(), tools=tools)
    return engine


def test_the_kit_lists_exactly_the_points_the_engine_passes(
        flowledger_new_engine: EngineFactory, flowledger_clock: fl.ManualClock,
        world: Path) -> None:
    """A transient failure, a crash before a call and its recovery (a fresh run
    releases what the unfinished one held) pass every listed point, no other."""
    seen: list[str] = []
    book = flt.double(OrderBook(world))
    tools: list[fl.Tool] = [OrderFolder(world), book]
    book.fail("add", flt.Fault.TRANSIENT)
    engine = engine_with(flowledger_new_engine, tools, checkpoint=seen.append)
    engine.run_session("orders")
    flowledger_clock.advance("1h")  # past its retry time
    with flt.crash_at(engine, "before_call"):
        engine.run_session("orders")
    engine_with(flowledger_new_engine, tools, checkpoint=seen.append).recover()
    assert set(seen) == set(flt.DURABLE_POINTS)
    assert len(flt.DURABLE_POINTS) == len(set(flt.DURABLE_POINTS))


@pytest.mark.parametrize("point", flt.DURABLE_POINTS)
def test_a_crash_at_any_point_is_recovered_by_a_fresh_engine_with_each_order_booked_once(
        flowledger_new_engine: EngineFactory, flowledger_clock: fl.ManualClock, world: Path,
        point: str) -> None:
    book = flt.double(OrderBook(world))
    tools: list[fl.Tool] = [OrderFolder(world), book]
    engine = engine_with(flowledger_new_engine, tools)
    if point.endswith(":failure"):
        book.fail("add", flt.Fault.TRANSIENT)
    if point.endswith(":release"):  # passed when a run cut short is retried afresh
        with flt.crash_at(engine, "before_call"):
            engine.run_session("orders")
        engine = engine_with(flowledger_new_engine, tools)
    with flt.crash_at(engine, point) as crash:
        engine.run_session("orders")
    assert crash.point == point

    survivor = engine_with(flowledger_new_engine, tools)  # no waiting out the lease
    survivor.recover()
    flowledger_clock.advance("1h")  # past a transient failure's retry time
    result = survivor.run_session("orders")

    assert result.status == "completed"
    assert sorted(OrderBook(world).lines()) == ["A-1", "A-2"]
    assert sorted(c.args[0] for c in book.effects("add")) == ["A-1", "A-2"]
    assert survivor.blocked() == []
    flt.assert_projections_rebuild_equal(survivor)


def test_a_crashed_engine_refuses_every_call_and_says_where_it_crashed(
        flowledger_engine: fl.Engine, world: Path) -> None:
    flowledger_engine.register(orders_workflow(), tools=[OrderFolder(world), OrderBook(world)])
    with flt.crash_at(flowledger_engine, "after_call#2"):
        flowledger_engine.run_session("orders")
    for call in (lambda: flowledger_engine.run_session("orders"), flowledger_engine.recover,
                 flowledger_engine.blocked, flowledger_engine.status,
                 lambda: list(flowledger_engine.events())):
        with pytest.raises(flt.EngineCrashed, match=r"crashed at 'after_call#2'"):
            call()
    flowledger_engine.close()  # allowed: a fixture's teardown does it


def test_the_nth_passing_of_a_point_is_where_it_crashes(
        flowledger_new_engine: EngineFactory, world: Path) -> None:
    book = flt.double(OrderBook(world))
    engine = engine_with(flowledger_new_engine, [OrderFolder(world), book])
    with flt.crash_at(engine, "after_call#2"):
        engine.run_session("orders")
    assert [c.args[0] for c in book.calls_of("add")] == ["A-1", "A-2"]
    assert OrderBook(world).lines() == ["A-1", "A-2"]  # A-2 happened, its outcome not stored


def test_a_crash_inside_a_tool_call_is_contained_by_expect_crash(
        flowledger_new_engine: EngineFactory, world: Path) -> None:
    book = flt.double(OrderBook(world))
    book.fail("add", flt.Fault.CRASH_AFTER_EFFECT)
    tools: list[fl.Tool] = [OrderFolder(world), book]
    engine = engine_with(flowledger_new_engine, tools)
    with flt.expect_crash(engine) as crash:
        engine.run_session("orders")
    assert crash.point == "book.add call #1, after its effect"

    engine_with(flowledger_new_engine, tools).recover()
    assert [c.method for c in book.calls if c.kind != "read"] == ["add", "find", "add"]
    assert OrderBook(world).lines() == ["A-1", "A-2"]


def test_crash_at_says_when_its_point_was_never_reached(
        flowledger_engine: fl.Engine, world: Path) -> None:
    flowledger_engine.register(orders_workflow(), tools=[OrderFolder(world), OrderBook(world)])
    with pytest.raises(flt.CrashNotReached, match="before_append:release"), \
            flt.crash_at(flowledger_engine, "before_append:release"):
        flowledger_engine.run_session("orders")
    assert flowledger_engine.run_session("orders").status == "completed"  # still alive


def test_crash_at_refuses_a_point_that_does_not_exist(flowledger_engine: fl.Engine) -> None:
    with pytest.raises(fl.InvalidArgument, match="'after_cal' is not a durable point"), \
            flt.crash_at(flowledger_engine, "after_cal"):
        pass


@pytest.mark.parametrize("contained", [lambda e: flt.crash_at(e, "after_call"),
                                       lambda e: flt.crash_if_reached(e, None),
                                       flt.expect_crash],
                         ids=["crash_at", "crash_if_reached", "expect_crash"])
def test_crashes_refuse_a_memory_store_no_new_engine_could_open(contained: Any) -> None:
    """expect_crash took one: a crash test on memory:// passed without ever
    running recovery (the "new process" opened an empty store of its own)."""
    with fl.Engine("memory://") as engine, pytest.raises(fl.InvalidArgument, match="memory"), \
            contained(engine):
        pass
