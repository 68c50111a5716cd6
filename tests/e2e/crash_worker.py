"""A real process that runs (or recovers) a session, for the crash tests.

    python tests/crash_worker.py STORE LEDGER_DB MODE [OUTCOME]

MODE is `session` (run one session; FLOWLEDGER_CRASH_AT makes it die at a
durable point) or `recover` (recover, then run sessions — resolving a blocked
mutation with `skip` when told — until the work is done or blocked). The tool's
first mutator call behaves as OUTCOME says; later calls succeed. It prints one
JSON line describing what it saw.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import flowledger as fl

ITEMS = ["a", "b"]

# OUTCOME → (how the first append call behaves, reconcile answers, tool has reconcile)
OUTCOMES: dict[str, tuple[str, list[str], bool]] = {
    "applied": ("ok", [], True),
    "failed": ("transient", [], True),
    "uncertain_applied": ("uncertain_applied", ["look"], True),
    "uncertain_failed": ("uncertain", ["look"], True),
    "uncertain_retry": ("uncertain", ["retry", "look"], True),
    "no_reconcile": ("uncertain_applied", [], False),
}


class Ledger:
    """The outside world: a SQLite table with a unique key, and a call journal."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY, value TEXT)")
        # Across processes: how many mutator calls were made so far.
        self.db.execute("CREATE TABLE IF NOT EXISTS calls (n INTEGER)")
        # A second write of a key would be a mutation performed twice.
        self.db.execute("CREATE TABLE IF NOT EXISTS duplicates (key TEXT)")

    def next_call(self) -> int:
        self.db.execute("INSERT INTO calls VALUES (1)")
        return int(self.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def write(self, key: str, value: str) -> None:
        if self.find(key) is not None:
            self.db.execute("INSERT INTO duplicates VALUES (?)", (key,))
            raise RuntimeError(f"{key} written twice")
        self.db.execute("INSERT INTO rows VALUES (?, ?)", (key, value))

    def find(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM rows WHERE key=?", (key,)).fetchone()
        return row[0] if row else None


def make_tool(ledger: Ledger, outcome: str) -> fl.Tool:
    first, answers, has_reconcile = OUTCOMES[outcome]
    answers = list(answers)

    def append(key: str, value: str) -> dict[str, str]:
        how = first if ledger.next_call() == 1 else "ok"
        if how == "transient":
            raise fl.TransientError("rate limited")
        if how == "uncertain":
            raise fl.UncertainOutcome("timed out before writing")
        ledger.write(key, value)
        if how == "uncertain_applied":
            raise fl.UncertainOutcome("timed out after writing")
        return {"key": key}

    if has_reconcile:
        class Reconciled(fl.Tool):
            name = "ledger"

            @fl.mutator(reconcile="find_appended")
            def append(self, key: str, value: str) -> dict[str, str]:
                return append(key, value)

            def find_appended(self, key: str, value: str) -> fl.Reconciliation:
                how = answers.pop(0) if answers else "look"
                if how == "retry":
                    return fl.Reconciliation.retry("ledger unreachable")
                found = ledger.find(key)
                return (fl.Reconciliation.applied({"key": key}) if found
                        else fl.Reconciliation.failed("not there"))

        return Reconciled()

    class Blind(fl.Tool):
        name = "ledger"

        @fl.mutator
        def append(self, key: str, value: str) -> dict[str, str]:
            return append(key, value)

    return Blind()


def workflow() -> fl.Workflow:
    wf = fl.Workflow("crashy", topics=["in", "done"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> Any:
        for item in ITEMS:
            ctx.publish("in", message_id=item, payload=item)

    @wf.consumer(subscribe=["in"], publishes=["done"])
    class Append:
        def prepare(self, ctx: Any, state: Any) -> Any:
            pending = ctx.peek("in", limit=1)
            if not pending:
                return None
            return fl.Prepared({"in": [pending[0].message_id]},
                               data={"item": pending[0].payload, "seen": state or []})

        def mutate(self, ctx: Any, prepared: Any) -> None:
            ctx.tools.ledger.append(prepared.data["item"], "v")

        def next(self, ctx: Any, prepared: Any, outcome: Any) -> Any:
            ctx.publish("done", message_id=prepared.data["item"], payload=outcome.status)
            return [*prepared.data["seen"], prepared.data["item"]]

    return wf


POLICY = fl.RetryPolicy(transient_base_delay=0.01, transient_max_delay=0.02,
                        reconcile_base_delay=0.01, reconcile_max_delay=0.02, jitter=0.0)


def main() -> None:
    store, ledger_path, mode = sys.argv[1:4]
    outcome = sys.argv[4] if len(sys.argv) > 4 else "applied"
    ledger = Ledger(ledger_path)
    engine = fl.Engine(store, policy=POLICY)
    engine.register(workflow(), tools=[make_tool(ledger, outcome)])
    seen: list[str] = []
    if mode == "session":
        seen.append(engine.run_session("crashy").status)
    else:
        seen += [r.status for r in engine.recover()]
        for _ in range(40):
            result = engine.run_session("crashy")
            seen.append(result.status)
            if result.status == "completed":
                break
            for blocked in engine.blocked():
                if "skip" in blocked.actions:
                    # A careful person looks at the outside world first.
                    key = blocked.params["args"][0]
                    decision = "skip" if ledger.find(key) else "did_not_happen"
                    engine.resolve(blocked.run_id, decision)
                    seen.append(decision)
            time.sleep(0.03)
    engine.close()
    print(json.dumps({"statuses": seen}))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
