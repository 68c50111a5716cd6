"""flowledger.testing's tool doubles, manual clock and fixtures, on a real store."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
import flowledger.testing as flt
from flowledger.engine.worker import Worker
from tests.helpers import OrderBook, OrderFolder, orders_workflow, place_order


@pytest.fixture
def world(tmp_path: Path) -> Path:
    folder = tmp_path / "world"
    folder.mkdir()
    place_order(folder, "A-1")
    return folder


def registered(engine: fl.Engine, world: Path, book: fl.Tool) -> fl.Engine:
    engine.register(orders_workflow(), tools=[OrderFolder(world), book])
    return engine


def test_a_double_records_reads_mutators_and_reconciles_with_their_outcome(
        flowledger_engine: fl.Engine, world: Path) -> None:
    book = flt.double(OrderBook(world))
    book.fail("add", flt.Fault.UNCERTAIN_AFTER_EFFECT)
    result = registered(flowledger_engine, world, book).run_session("orders")
    assert result.status == "completed"
    add, find = book.calls
    assert (add.method, add.kind, add.args, add.effect) == ("add", "mutator", ("A-1",),
                                                              "happened")
    assert isinstance(add.error, fl.UncertainOutcome)
    assert add.fault is flt.Fault.UNCERTAIN_AFTER_EFFECT
    assert (find.kind, find.result) == ("reconcile", fl.Reconciliation.applied(1))
    assert book.effects("add") == [add]
    assert book.lines() == ["A-1"]  # the wrapped tool's own methods, through the double
    assert "raised UncertainOutcome" in add.describe()


@pytest.mark.parametrize(("fault", "status", "effect"), [
    (flt.Fault.TRANSIENT, "paused:transient", "did_not_happen"),
    (flt.Fault.AUTH, "paused:approval", "did_not_happen"),
    (flt.Fault.UNCERTAIN, "paused:transient", "did_not_happen"),  # reconciled: failed
])
def test_each_fault_reaches_the_engine_as_the_error_it_names(
        flowledger_engine: fl.Engine, world: Path, fault: flt.Fault, status: str,
        effect: str) -> None:
    book = flt.double(OrderBook(world))
    book.fail("add", fault)
    result = registered(flowledger_engine, world, book).run_session("orders")
    assert result.runs[1].status.value == status
    assert book.calls_of("add")[0].effect == effect


def test_a_fault_can_aim_at_the_nth_call_and_reconcile_can_be_told_to_say_retry(
        flowledger_engine: fl.Engine, flowledger_clock: fl.ManualClock, world: Path) -> None:
    place_order(world, "A-2")
    book = flt.double(OrderBook(world))
    book.fail("add", flt.Fault.UNCERTAIN, call=2)
    book.fail("find", flt.Fault.RECONCILE_RETRY)
    engine = registered(flowledger_engine, world, book)
    assert engine.run_session("orders").status == "suspended"  # reconciliation backs off
    assert [r.mutation_state for r in engine.pending_work("orders").blocked_mutations] == [
        "needs_reconcile"]
    flowledger_clock.advance(timedelta(hours=1))
    assert engine.run_session("orders").status == "completed"
    assert [(c.method, c.number, c.fault) for c in book.calls if c.kind != "read"] == [
        ("add", 1, None), ("add", 2, flt.Fault.UNCERTAIN),
        ("find", 1, flt.Fault.RECONCILE_RETRY), ("find", 2, None), ("add", 3, None)]
    assert book.lines() == ["A-1", "A-2"]


def test_a_fake_written_as_a_double_is_recorded_too(flowledger_engine: fl.Engine,
                                                    world: Path) -> None:
    class FakeBook(flt.ToolDouble):
        name = "book"

        def __init__(self) -> None:
            self.rows: list[str] = []

        @fl.mutator(reconcile="look")
        def add(self, order: str) -> int:
            self.rows.append(order)
            return len(self.rows)

        def look(self, order: str) -> fl.Reconciliation:
            return fl.Reconciliation.applied() if order in self.rows else (
                fl.Reconciliation.failed())

    fake = FakeBook()
    fake.fail("add", flt.Fault.UNCERTAIN_AFTER_EFFECT)
    registered(flowledger_engine, world, fake).run_session("orders")
    assert [(c.method, c.effect) for c in fake.calls] == [("add", "happened"), ("look", None)]
    assert fake.rows == ["A-1"]


def test_a_double_refuses_a_fault_its_method_cannot_have(world: Path) -> None:
    book = flt.double(OrderBook(world))
    with pytest.raises(fl.InvalidArgument, match=r"book\.has is a read"):
        book.fail("has", flt.Fault.UNCERTAIN)
    with pytest.raises(fl.InvalidArgument, match="no read, mutator or reconcile named 'nope'"):
        book.fail("nope", flt.Fault.TRANSIENT)


def test_the_manual_clock_moves_by_text_timedelta_or_seconds() -> None:
    clock = fl.ManualClock()
    start = clock.now()
    clock.advance("5m")
    clock.advance(timedelta(hours=1))
    assert clock.advance(30) - start == timedelta(minutes=65, seconds=30)
    with pytest.raises(fl.InvalidArgument, match="'5 minutes'"):
        clock.advance("5 minutes")
    with pytest.raises(fl.InvalidArgument, match="forward"):
        clock.advance(-1)


def test_a_schedule_fires_when_the_test_moves_the_clock(
        flowledger_engine: fl.Engine, flowledger_clock: fl.ManualClock,
        flowledger_worker: Worker) -> None:
    wf = fl.Workflow("ticks", topics=["tick"])

    @wf.producer(publishes=["tick"], every="5m")
    def tick(ctx: Any, state: Any) -> int:
        return (state or 0) + 1

    flowledger_engine.register(wf)
    flowledger_worker.run_once()  # the first tick is due at once
    assert flowledger_worker.run_once() == []
    flowledger_clock.advance("5m")
    assert [r.status for r in flowledger_worker.run_once()] == ["completed"]


def test_the_fixtures_come_from_the_installed_plugin(request: pytest.FixtureRequest) -> None:
    plugin = request.config.pluginmanager.get_plugin("flowledger")
    assert plugin is sys.modules["flowledger.testing.plugin"]


def test_importing_the_kit_imports_neither_pytest_nor_hypothesis() -> None:
    import subprocess

    code = ("import sys, flowledger.testing; "
            "print(sorted(m for m in ('pytest', 'hypothesis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
