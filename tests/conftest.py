"""Shared fixtures: engines on real SQLite files, a scriptable external ledger."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl


class ExternalLedger:
    """A real SQLite table standing in for the outside world a mutator changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY, value TEXT)")

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None)

    def append(self, key: str, value: str) -> int:
        with self._db() as db:
            cur = db.execute("INSERT INTO rows VALUES (?, ?)", (key, value))
            return int(cur.lastrowid or 0)

    def find(self, key: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT value FROM rows WHERE key=?", (key,)).fetchone()
            return row[0] if row else None

    def keys(self) -> list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute("SELECT key FROM rows ORDER BY key")]


class ScriptedLedgerTool(fl.Tool):
    """A ledger tool whose next calls can be told to fail in chosen ways.

    `script` holds, per call of `append`, one of: "ok", "transient", "auth",
    "uncertain_applied" (writes, then raises UncertainOutcome), "uncertain"
    (does not write, raises UncertainOutcome), "boom_applied" (writes, then
    raises a plain exception). `reconcile_script` holds answers of the
    reconcile: "look" (look the row up), "retry", "raise".
    """

    name = "ledger"

    def __init__(self, ledger: ExternalLedger) -> None:
        self.ledger = ledger
        self.script: list[str] = []
        self.reconcile_script: list[str] = []
        self.calls: list[tuple[str, str]] = []
        self.reconcile_calls: list[tuple[str, str]] = []

    @fl.read
    def find(self, key: str) -> str | None:
        return self.ledger.find(key)

    @fl.mutator(reconcile="find_appended")
    def append(self, key: str, value: str) -> dict[str, Any]:
        self.calls.append((key, value))
        how = self.script.pop(0) if self.script else "ok"
        if how == "transient":
            raise fl.TransientError("rate limited")
        if how == "auth":
            raise fl.AuthError("token expired")
        if how == "uncertain":
            raise fl.UncertainOutcome("timeout before the write")
        row = self.ledger.append(key, value)
        if how == "uncertain_applied":
            raise fl.UncertainOutcome("timeout after the write")
        if how == "boom_applied":
            raise RuntimeError("connection reset")
        return {"row": row, "key": key}

    def find_appended(self, key: str, value: str) -> fl.Reconciliation:
        self.reconcile_calls.append((key, value))
        how = self.reconcile_script.pop(0) if self.reconcile_script else "look"
        if how == "retry":
            return fl.Reconciliation.retry("ledger not reachable")
        if how == "raise":
            raise RuntimeError("reconcile crashed")
        found = self.ledger.find(key)
        if found is None:
            return fl.Reconciliation.failed("no such row")
        return fl.Reconciliation.applied({"row": None, "key": key, "found": found})


class NoReconcileTool(fl.Tool):
    name = "blind"

    def __init__(self, ledger: ExternalLedger) -> None:
        self.ledger = ledger
        self.fail_with: str | None = None

    @fl.mutator
    def append(self, key: str, value: str) -> str:
        self.ledger.append(key, value)
        if self.fail_with == "uncertain":
            raise fl.UncertainOutcome("no answer")
        return key


@pytest.fixture
def clock() -> fl.ManualClock:
    return fl.ManualClock()


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'flow.db'}"


@pytest.fixture
def ledger(tmp_path: Path) -> ExternalLedger:
    return ExternalLedger(tmp_path / "ledger.db")


@pytest.fixture
def make_engine(store: str, clock: fl.ManualClock) -> Iterator[Callable[..., fl.Engine]]:
    engines: list[fl.Engine] = []

    def make(**kwargs: Any) -> fl.Engine:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("ids", fl.SeededIds(len(engines)))
        engine = fl.Engine(kwargs.pop("store", store), **kwargs)
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        e.close()


def ledger_workflow(name: str = "wf", items: list[str] | None = None,
                    tool_name: str = "ledger") -> fl.Workflow:
    """A producer that publishes `items`, a consumer that appends each to the ledger."""
    wf = fl.Workflow(name, topics=["in", "done"])
    feed = list(items if items is not None else ["a", "b", "c"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> Any:
        for item in feed:
            ctx.publish("in", message_id=item, payload={"item": item})
        return None

    @wf.consumer(subscribe=["in"], publishes=["done"])
    class Append:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            pending = ctx.peek("in", limit=1)
            if not pending:
                return None
            m = pending[0]
            return fl.Prepared(reservations={"in": [m.message_id]}, data=m.payload,
                               title=f"append {m.message_id}")

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            tool = getattr(ctx.tools, tool_name)
            tool.append(prepared.data["item"], "v-" + prepared.data["item"])

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> Any:
            ctx.publish("done", message_id=prepared.data["item"],
                        payload={"outcome": outcome.status, "result": outcome.result})
            return {"last": prepared.data["item"]}

    return wf


def message_status(engine: fl.Engine, workflow: str, topic: str) -> dict[str, int]:
    from flowledger.domain.ids import workflow_id
    from flowledger.projections import pending_work

    with engine.log.reading() as c:
        return pending_work.message_status(c, workflow_id(workflow), topic)
