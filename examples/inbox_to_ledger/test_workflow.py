"""Tests of the inbox-to-ledger example, written only with flowledger.testing
(the fixtures come from the pytest plugin flowledger installs). Copy them as a
start for your own workflow's tests.

    pytest examples/inbox_to_ledger/test_workflow.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import strategies as st

import flowledger as fl
import flowledger.testing as flt

from .workflow import Inbox, Ledger, SummaryFile, workflow

# ------------------------------------------------------------ the outside world


def write_email(inbox: Path, number: int, amount: str = "10.00") -> None:
    """An invoice email in the inbox folder, as a mail client would save it."""
    inbox.mkdir(exist_ok=True)
    (inbox / f"{number:03}.eml").write_text(
        f"Message-ID: <invoice-{number}@shop.example>\n"
        "From: Shop <billing@shop.example>\n"
        f"Subject: Invoice {number}\n\n"
        f"Total: EUR {amount}\n")


def make_tools(world: Path) -> list[fl.Tool]:
    """The example's real tools, each in a recording double, working in `world`."""
    (world / "inbox").mkdir(exist_ok=True)
    return [flt.double(Inbox(world / "inbox")), flt.double(Ledger(world / "ledger.db")),
            flt.double(SummaryFile(world / "summary.md"))]


@pytest.fixture
def world(tmp_path: Path) -> Path:
    folder = tmp_path / "world"
    folder.mkdir()
    for number in (1, 2, 3):
        write_email(folder / "inbox", number)
    return folder


def ledger_keys(world: Path) -> list[str]:
    return [row["key"] for row in Ledger(world / "ledger.db").all_rows()]


# ------------------------------------------------------------------ the tests


def test_every_email_becomes_one_row_and_the_summary_counts_them(
        flowledger_engine: fl.Engine, world: Path) -> None:
    flowledger_engine.register(workflow, tools=make_tools(world))
    assert flowledger_engine.run_session("inbox-to-ledger").status == "completed"
    assert flowledger_engine.run_session("inbox-to-ledger").status == "completed"  # no-op
    assert ledger_keys(world) == [f"invoice-{n}@shop.example" for n in (1, 2, 3)]
    assert "Rows: 3" in (world / "summary.md").read_text()
    flt.assert_projections_rebuild_equal(flowledger_engine)


@pytest.mark.parametrize("point", flt.DURABLE_POINTS)
def test_a_crash_anywhere_leaves_each_email_in_the_ledger_once(
        flowledger_new_engine: flt.EngineFactory, world: Path, point: str) -> None:
    tools = make_tools(world)
    engine = flowledger_new_engine()
    engine.register(workflow, tools=tools)
    with flt.crash_if_reached(engine, point):  # some points need a retry to be passed
        engine.run_session("inbox-to-ledger")

    engine = flowledger_new_engine()  # a new process on the same store
    engine.register(workflow, tools=tools)
    engine.recover()
    assert engine.run_session("inbox-to-ledger").status == "completed"
    ledger = next(t for t in tools if t.tool_name() == "ledger")
    assert isinstance(ledger, flt.ToolDouble)
    assert sorted(c.args[0] for c in ledger.effects("append")) == [
        f"invoice-{n}@shop.example" for n in (1, 2, 3)]
    assert len(ledger_keys(world)) == 3


def test_a_timeout_after_the_insert_is_reconciled_not_repeated(
        flowledger_engine: fl.Engine, world: Path) -> None:
    ledger = flt.double(Ledger(world / "ledger.db"))
    ledger.fail("append", flt.Fault.UNCERTAIN_AFTER_EFFECT, call=2)
    flowledger_engine.register(workflow, tools=[Inbox(world / "inbox"), ledger,
                                                SummaryFile(world / "summary.md")])
    assert flowledger_engine.run_session("inbox-to-ledger").status == "completed"
    assert [c.method for c in ledger.calls if c.kind != "read"] == [
        "append", "append", "find_appended", "append"]
    assert len(ledger_keys(world)) == 3


def test_a_rate_limit_is_retried_once_its_time_comes(
        flowledger_engine: fl.Engine, flowledger_clock: fl.ManualClock, world: Path) -> None:
    ledger = flt.double(Ledger(world / "ledger.db"))
    ledger.fail("append", flt.Fault.TRANSIENT)
    flowledger_engine.register(workflow, tools=[Inbox(world / "inbox"), ledger,
                                                SummaryFile(world / "summary.md")])
    assert flowledger_engine.run_session("inbox-to-ledger").status == "suspended"
    assert flowledger_engine.run_session("inbox-to-ledger").status == "blocked"  # not yet
    flowledger_clock.advance("5m")
    assert flowledger_engine.run_session("inbox-to-ledger").status == "completed"
    assert len(ledger_keys(world)) == 3


def test_each_email_is_booked_exactly_once_whatever_happens() -> None:
    """Random arrivals, sessions, crashes, timeouts and rate limits."""
    flt.check_exactly_once(
        workflow, tools=make_tools,
        inputs=st.builds(lambda n, cents: (n, f"{cents / 100:.2f}"),
                         st.integers(1, 4), st.integers(1, 99_999)),
        deliver=lambda world, invoice: write_email(world / "inbox", *invoice),
        max_examples=30)
