"""The inbox-to-ledger example, end to end through the Python API, on real files.

Real `.eml` files in a folder, a real SQLite ledger, a real summary file and a
real SQLite store; every engine is a fresh one, as a new process would be.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

import flowledger as fl
from examples.inbox_to_ledger import workflow as example
from flowledger.demo import bundled_example_dir

SAMPLE_AMOUNTS = {
    "2024-03-01-hetzner-invoice.eml": "42.81",
    "2024-03-04-officeworld-receipt.eml": "129.90",
    "2024-03-07-freelancer-invoice.eml": "1150.00",
    "2024-03-12-railway-ticket.eml": "74.90",
    "2024-03-15-saas-renewal.eml": "71.40",
}
SAMPLE_TOTAL = "1,469.01"

NEW_EMAIL = """\
Message-ID: <late-invoice-77@printshop.example>
Date: Mon, 18 Mar 2024 09:30:00 +0100
From: Print Shop <invoices@printshop.example>
To: accounts@acme.example
Subject: Invoice 77 - business cards
Content-Type: text/plain; charset="utf-8"

500 business cards, matte.

Total: EUR 38.50
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A working folder with a copy of the sample inbox."""
    shutil.copytree(bundled_example_dir() / "inbox", tmp_path / "inbox")
    return tmp_path


@pytest.fixture
def store(folder: Path) -> str:
    return f"sqlite:///{folder / 'flow.db'}"


@pytest.fixture
def engine(folder: Path, store: str) -> Iterator[fl.Engine]:
    with fl.Engine(store) as engine:
        example.register(engine, base_dir=folder)
        yield engine


def run_until_done(engine: fl.Engine) -> list[fl.SessionResult]:
    results = []
    for _ in range(10):
        results.append(engine.run_session(example.WORKFLOW_NAME, max_iterations=3))
        if results[-1].status != "budget_exhausted":
            break
    assert results[-1].status == "completed", results[-1].error
    return results


def ledger_rows(folder: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(folder / "ledger.db") as db:
        return db.execute("SELECT key, amount FROM ledger_rows ORDER BY row_id").fetchall()


def message_ids(folder: Path) -> set[str]:
    return {example.parse_email_file(p)["message_id"] for p in (folder / "inbox").glob("*.eml")}


def test_sample_emails_are_parsed_with_their_amounts(folder: Path) -> None:
    mails = example.Inbox(folder / "inbox").list_messages()

    assert {m["file"]: m["amount"] for m in mails} == SAMPLE_AMOUNTS
    assert {m["currency"] for m in mails} == {"EUR"}
    assert all(m["message_id"] and m["subject"] and m["date"] for m in mails)


@pytest.mark.parametrize(("subject", "body", "expected"), [
    ("Receipt - EUR 129.90", "", ("129.90", "EUR")),
    ("Invoice 7", "Subtotal EUR 60.00\nTotal      EUR 71.40", ("71.40", "EUR")),
    ("Invoice", "Amount due: €1,150.00", ("1150.00", "EUR")),
    ("Invoice", "Total: 12 USD", ("12.00", "USD")),
    ("Invoice 2024-007", "Thanks for the call.", None),
])
def test_amounts_come_from_the_subject_or_a_total_line(
        subject: str, body: str, expected: tuple[str, str] | None) -> None:
    assert example.amount_of(subject, body) == expected


def test_every_email_gives_exactly_one_ledger_row(engine: fl.Engine, folder: Path) -> None:
    run_until_done(engine)

    rows = ledger_rows(folder)
    assert sorted(key for key, _ in rows) == sorted(message_ids(folder))
    assert sorted(amount for _, amount in rows) == sorted(SAMPLE_AMOUNTS.values())


def test_running_again_adds_nothing(engine: fl.Engine, folder: Path, store: str) -> None:
    run_until_done(engine)
    before = (ledger_rows(folder), (folder / "summary.md").read_text())

    with fl.Engine(store) as again:  # as a later process would
        example.register(again, base_dir=folder)
        result = again.run_session(example.WORKFLOW_NAME)

    assert result.status == "completed"
    assert [r.handler for r in result.runs] == ["poll_inbox"]
    assert (ledger_rows(folder), (folder / "summary.md").read_text()) == before


def test_summary_holds_the_count_and_the_total(engine: fl.Engine, folder: Path) -> None:
    run_until_done(engine)

    summary = (folder / "summary.md").read_text()
    total = sum((Decimal(a) for a in SAMPLE_AMOUNTS.values()), Decimal(0))
    assert f"{total:,.2f}" == SAMPLE_TOTAL
    assert "Rows: 5\n" in summary
    assert f"Total EUR: {SAMPLE_TOTAL}\n" in summary
    assert example.SummaryFile(folder / "summary.md").written_version() is not None


def test_a_new_email_adds_exactly_one_row(engine: fl.Engine, folder: Path, store: str) -> None:
    run_until_done(engine)
    version = example.SummaryFile(folder / "summary.md").written_version()
    assert version is not None
    (folder / "inbox" / "2024-03-18-printshop.eml").write_text(NEW_EMAIL)

    with fl.Engine(store) as again:
        example.register(again, base_dir=folder)
        run_until_done(again)

    keys = [key for key, _ in ledger_rows(folder)]
    assert len(keys) == 6
    assert keys.count("late-invoice-77@printshop.example") == 1
    summary = (folder / "summary.md").read_text()
    assert "Rows: 6\n" in summary
    assert "Total EUR: 1,507.51\n" in summary  # 1469.01 + 38.50
    assert example.SummaryFile(folder / "summary.md").written_version() == version + 1


def test_a_row_already_in_the_ledger_is_not_added_again(engine: fl.Engine,
                                                          folder: Path) -> None:
    hetzner = example.parse_email_file(folder / "inbox" / "2024-03-01-hetzner-invoice.eml")
    example.Ledger(folder / "ledger.db").append(hetzner["message_id"], hetzner)

    run_until_done(engine)

    keys = [key for key, _ in ledger_rows(folder)]
    assert sorted(keys) == sorted(message_ids(folder))
    assert "Rows: 5\n" in (folder / "summary.md").read_text()


def test_events_trace_back_to_the_emails_they_came_from(engine: fl.Engine,
                                                       folder: Path) -> None:
    run_until_done(engine)
    events = list(engine.events(workflow=example.WORKFLOW_NAME))

    inputs = {e.fields["external_id"]: e.stream_id for e in events
              if e.aggregate == "Input" and e.name == "Registered"}
    assert set(inputs) == message_ids(folder)
    published = [e for e in events if e.aggregate == "TopicEvent" and e.name == "Published"]
    by_topic: dict[str, dict[str, list[object]]] = {"mail.received": {}, "row.added": {}}
    for e in published:
        by_topic[e.fields["topic"]][e.fields["message_id"]] = e.fields["caused_by"]
    # Both the producer's event and the consumer's event of an email point at
    # that email's input, and at nothing else.
    for topic in ("mail.received", "row.added"):
        assert set(by_topic[topic]) == set(inputs)
        for message_id, caused_by in by_topic[topic].items():
            assert caused_by == [inputs[message_id]], (topic, message_id)


def test_the_ledger_reconcile_tells_applied_from_not_applied(folder: Path) -> None:
    ledger = example.Ledger(folder / "ledger.db")
    row = example.parse_email_file(folder / "inbox" / "2024-03-12-railway-ticket.eml")

    assert ledger.find_appended("k", row).status == "failed"
    row_id = ledger.append("k", row)
    assert ledger.find_appended("k", row) == fl.Reconciliation.applied(row_id)
    with pytest.raises(fl.UncertainOutcome):
        ledger.append("k", row)  # the UNIQUE key refuses a second row


def test_the_summary_reconcile_reads_the_version_line(folder: Path) -> None:
    summary = example.SummaryFile(folder / "summary.md")

    assert summary.find_written(1, "x").status == "failed"
    summary.write(1, "x")
    assert summary.find_written(1, "x") == fl.Reconciliation.applied(1)
    assert summary.find_written(2, "y").status == "failed"
    assert summary.find_written(0, "w").status == "retry"


def test_register_without_an_inbox_says_where_it_looked(tmp_path: Path) -> None:
    with fl.Engine(f"sqlite:///{tmp_path / 'flow.db'}") as engine, pytest.raises(
            fl.ConfigurationError, match="no inbox folder"):
        example.register(engine, base_dir=tmp_path)


def test_base_dir_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv(example.BASE_DIR_ENV, str(tmp_path))

    assert example.example_paths() == (tmp_path / "inbox", tmp_path / "ledger.db",
                                       tmp_path / "summary.md")
