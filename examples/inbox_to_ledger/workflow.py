"""Inbox to ledger: every invoice email in a folder becomes exactly one ledger row.

The example behind `flowledger demo`. It touches three real things outside
flowledger, each through a tool so that the engine can record and reconcile:

* `inbox/`    - a folder of `.eml` files (read by `Inbox`),
* `ledger.db` - a SQLite table with a UNIQUE key per email (`Ledger`),
* `summary.md` - a running summary, rewritten as rows arrive (`SummaryFile`).

Data flow::

    poll_inbox --mail.received--> AddRow --row.added--> Summarize

This file is self-contained (flowledger and the standard library only) so that
`flowledger run path/to/workflow.py` can load it by path.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from email.message import EmailMessage
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path
from typing import Any

import flowledger as fl

WORKFLOW_NAME = "inbox-to-ledger"
BASE_DIR_ENV = "FLOWLEDGER_EXAMPLE_DIR"

workflow = fl.Workflow(WORKFLOW_NAME, topics=["mail.received", "row.added"])


# --------------------------------------------------------------------------- amounts

_CURRENCY_CODES = {"€": "EUR", "EUR": "EUR", "$": "USD", "USD": "USD", "£": "GBP", "GBP": "GBP"}
_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?|\d+(?:\.\d{1,2})?"
_CURRENCY = r"€|EUR|\$|USD|£|GBP"
_MONEY = re.compile(
    rf"(?P<cur_before>{_CURRENCY})\s*(?P<num_before>{_NUMBER})"
    rf"|(?P<num_after>{_NUMBER})\s*(?P<cur_after>{_CURRENCY})\b"
)
# Lines that state what was paid; "Subtotal" and item lines do not match.
_TOTAL_LINE = re.compile(r"^\s*(total( paid)?|amount( due)?|price|grand total)\b", re.I)


def find_amount(text: str) -> tuple[str, str] | None:
    """The first amount with a currency in `text`, as ("1150.00", "EUR")."""
    match = _MONEY.search(text)
    if match is None:
        return None
    number = match.group("num_before") or match.group("num_after")
    currency = match.group("cur_before") or match.group("cur_after")
    return str(Decimal(number.replace(",", "")).quantize(Decimal("0.01"))), _CURRENCY_CODES[
        currency]


def amount_of(subject: str, body: str) -> tuple[str, str] | None:
    """An invoice's amount: from the subject if it names one, else from a total line."""
    found = find_amount(subject)
    if found is not None:
        return found
    for line in body.splitlines():
        if _TOTAL_LINE.match(line):
            found = find_amount(line)
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------- tools


def parse_email_file(path: Path) -> dict[str, Any]:
    """One `.eml` file as a plain dict: what the log records and consumers receive."""
    raw = path.read_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    body_part = message.get_body(preferencelist=("plain", "html"))
    body = body_part.get_content() if body_part is not None else ""
    subject = str(message.get("Subject", "")).strip()
    # Real mail always has a Message-ID; a hand-made file may not, and its
    # content is then the only stable identity it has.
    message_id = str(message.get("Message-ID", "")).strip().strip("<>")
    if not message_id:
        message_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    date_header = message.get("Date")
    date = parsedate_to_datetime(str(date_header)).isoformat() if date_header else None
    found = amount_of(subject, body)
    return {
        "message_id": message_id,
        "from": str(message.get("From", "")),
        "subject": subject,
        "date": date,
        "amount": found[0] if found else None,
        "currency": found[1] if found else None,
        "file": path.name,
    }


class Inbox(fl.Tool):
    """A folder of `.eml` files, read-only."""

    name = "inbox"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @fl.read
    def list_messages(self) -> list[dict[str, Any]]:
        """Every email in the folder, oldest file name first."""
        if not self.folder.is_dir():
            raise fl.TransientError(f"inbox folder {str(self.folder)!r} is not there (yet)")
        return [parse_email_file(p) for p in sorted(self.folder.glob("*.eml"))]


_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_rows (
    row_id     INTEGER PRIMARY KEY,
    key        TEXT NOT NULL UNIQUE,
    date       TEXT,
    sender     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    amount     TEXT,
    currency   TEXT,
    source     TEXT NOT NULL,
    added_at   TEXT NOT NULL
)"""
LEDGER_COLUMNS = ("row_id", "key", "date", "sender", "subject", "amount", "currency", "source",
                  "added_at")


class Ledger(fl.Tool):
    """The ledger: a SQLite table outside flowledger's store, one row per key."""

    name = "ledger"

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connection() as db:
            db.execute(_LEDGER_SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=30)) as db, db:
            yield db

    def _row(self, key: str) -> dict[str, Any] | None:
        with self._connection() as db:
            found = db.execute(f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger_rows "
                               "WHERE key = ?", (key,)).fetchone()
        return dict(zip(LEDGER_COLUMNS, found, strict=True)) if found else None

    @fl.read
    def find(self, key: str) -> dict[str, Any] | None:
        """The row stored under `key`, if any."""
        return self._row(key)

    @fl.mutator(reconcile="find_appended")
    def append(self, key: str, row: dict[str, Any]) -> int:
        """Insert one row; returns its row id."""
        try:
            with self._connection() as db:
                cursor = db.execute(
                    "INSERT INTO ledger_rows (key, date, sender, subject, amount, currency, "
                    "source, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, row["date"], row["from"], row["subject"], row["amount"],
                     row["currency"], row["file"], datetime.now(UTC).isoformat()))
        except sqlite3.IntegrityError as e:
            # The key is there already: perhaps our own earlier call. Only
            # find_appended can tell, so say so rather than guess.
            raise fl.UncertainOutcome(f"ledger key {key!r} exists already ({e})") from e
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def find_appended(self, key: str, row: dict[str, Any]) -> fl.Reconciliation:
        """Whether an `append(key, row)` whose outcome is unknown took effect."""
        found = self._row(key)
        if found is None:
            return fl.Reconciliation.failed(f"no ledger row with key {key!r}")
        return fl.Reconciliation.applied(found["row_id"])

    def all_rows(self) -> list[dict[str, Any]]:
        """Every row, for people to look at (not a tool read: no run needs it)."""
        with self._connection() as db:
            rows = db.execute(f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger_rows "
                              "ORDER BY row_id").fetchall()
        return [dict(zip(LEDGER_COLUMNS, r, strict=True)) for r in rows]


_VERSION_LINE = re.compile(r"<!-- flowledger summary version (\d+) -->")


class SummaryFile(fl.Tool):
    """A markdown file rewritten whole; its first line records which version it holds."""

    name = "summary"

    def __init__(self, path: Path) -> None:
        self.path = path

    def written_version(self) -> int | None:
        if not self.path.exists():
            return None
        match = _VERSION_LINE.match(self.path.read_text(encoding="utf-8"))
        return int(match.group(1)) if match else None

    @fl.mutator(reconcile="find_written")
    def write(self, version: int, text: str) -> int:
        """Replace the file atomically, so a crash leaves the old version or the new one."""
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(f"<!-- flowledger summary version {version} -->\n{text}",
                           encoding="utf-8")
        os.replace(partial, self.path)
        return version

    def find_written(self, version: int, text: str) -> fl.Reconciliation:
        """Whether `write(version, text)` took effect, judged by the version line."""
        found = self.written_version()
        if found == version:
            return fl.Reconciliation.applied(version)
        if found is None or found < version:
            return fl.Reconciliation.failed(f"the file holds version {found}, not {version}")
        return fl.Reconciliation.retry(
            f"the file holds version {found}, newer than {version}: someone else writes it")


# --------------------------------------------------------------------------- handlers


@workflow.producer(publishes=["mail.received"], tools=["inbox"])
def poll_inbox(ctx: Any, state: dict[str, Any] | None) -> dict[str, Any]:
    """Publish every email not seen before; each becomes an input people can trace."""
    seen = set((state or {}).get("seen", []))
    for mail in ctx.tools.inbox.list_messages():
        if mail["message_id"] in seen:
            continue
        input_id = ctx.register_input(source="inbox", type="email", id=mail["message_id"],
                                      title=mail["subject"])
        ctx.publish("mail.received", message_id=mail["message_id"], payload=mail,
                    input_id=input_id)
        seen.add(mail["message_id"])
    return {"seen": sorted(seen)}


@workflow.consumer(subscribe=["mail.received"], publishes=["row.added"], tools=["ledger"])
class AddRow:
    """One email, one ledger row: the row's key is the email's Message-ID."""

    def prepare(self, ctx: Any, state: Any) -> fl.Prepared:
        pending = ctx.peek("mail.received", limit=1)
        if not pending:
            return fl.Prepared()
        mail = pending[0]
        key = mail.message_id
        existing = ctx.tools.ledger.find(key)
        return fl.Prepared(
            reservations={"mail.received": [key]},
            data={"key": key, "mail": mail.payload,
                  "existing_row_id": existing["row_id"] if existing else None},
            title=f"ledger row for {mail.payload['subject']!r}",
        )

    def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
        # A row someone already added (by hand, or before this store existed)
        # is not added twice.
        if prepared.data["existing_row_id"] is None:
            ctx.tools.ledger.append(prepared.data["key"], prepared.data["mail"])

    def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
        if prepared.data is None or outcome.status == "skipped":
            return  # nothing was reserved, or a person chose to skip this email
        row_id = outcome.result if outcome.status == "applied" else (
            prepared.data["existing_row_id"])
        mail = prepared.data["mail"]
        ctx.publish("row.added", message_id=prepared.data["key"], payload={
            "row_id": row_id, "date": mail["date"], "from": mail["from"],
            "subject": mail["subject"], "amount": mail["amount"], "currency": mail["currency"],
        })


_RECENT_ROWS = 5


def render_summary(state: dict[str, Any]) -> str:
    """The summary file's text (without its version line)."""
    lines = ["# Ledger summary", "", f"Rows: {state['rows']}"]
    for currency, total in sorted(state["totals"].items()):
        lines.append(f"Total {currency}: {Decimal(total):,.2f}")
    if state["without_amount"]:
        lines.append(f"Rows without an amount: {state['without_amount']}")
    lines += ["", "## Latest rows", "", "| row | date | from | subject | amount |",
              "|---:|---|---|---|---:|"]
    for row in reversed(state["recent"]):
        amount = f"{row['amount']} {row['currency']}" if row["amount"] else "-"
        date = (row["date"] or "")[:10]
        name, address = parseaddr(row["from"])
        cells = [str(row["row_id"]), date, name or address, row["subject"], amount]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


@workflow.consumer(subscribe=["row.added"], tools=["summary"])
class Summarize:
    """Fold new rows into running totals and rewrite summary.md once per batch."""

    def prepare(self, ctx: Any, state: dict[str, Any] | None) -> fl.Prepared:
        added = ctx.peek("row.added")
        if not added:
            return fl.Prepared()
        old = state or {"version": 0, "rows": 0, "totals": {}, "without_amount": 0,
                        "recent": []}
        totals = {c: Decimal(t) for c, t in old["totals"].items()}
        new = {**old, "version": old["version"] + 1, "rows": old["rows"] + len(added),
               "recent": list(old["recent"])}
        for message in added:
            row = message.payload
            if row["amount"] is None:
                new["without_amount"] += 1
            else:
                totals[row["currency"]] = totals.get(row["currency"], Decimal(0)) + Decimal(
                    row["amount"])
            new["recent"] = [*new["recent"], row][-_RECENT_ROWS:]
        new["totals"] = {c: str(t) for c, t in totals.items()}
        return fl.Prepared(reservations={"row.added": [m.message_id for m in added]},
                           data={"old": old, "new": new},
                           title=f"summary version {new['version']} (+{len(added)} rows)")

    def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
        new = prepared.data["new"]
        ctx.tools.summary.write(new["version"], render_summary(new))

    def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> Any:
        if prepared.data is None:
            return None  # nothing was reserved: the state stays as it was
        # Skipped by a person: the file was not rewritten, so the totals stay.
        return prepared.data["new"] if outcome.status == "applied" else prepared.data["old"]


# --------------------------------------------------------------------------- wiring


def example_paths(base_dir: Path | str | None = None) -> tuple[Path, Path, Path]:
    """(inbox folder, ledger.db, summary.md) under `base_dir`, the env, or the cwd."""
    base = Path(base_dir or os.environ.get(BASE_DIR_ENV) or Path.cwd())
    return base / "inbox", base / "ledger.db", base / "summary.md"


def register(engine: fl.Engine, base_dir: Path | str | None = None) -> None:
    """Register the workflow with tools bound to the folder it works in."""
    inbox, ledger, summary = example_paths(base_dir)
    if not inbox.is_dir():
        raise fl.ConfigurationError(
            f"example {WORKFLOW_NAME!r}: no inbox folder at {str(inbox)!r}; run from a folder "
            f"that has an inbox/ of .eml files, or set {BASE_DIR_ENV} to one "
            "(`flowledger demo` makes one)")
    engine.register(workflow, tools=[Inbox(inbox), Ledger(ledger), SummaryFile(summary)])
