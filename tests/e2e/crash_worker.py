"""A real process that runs (or recovers) a session, for the crash tests.

    python tests/e2e/crash_worker.py STORE LEDGER_DB MODE [OUTCOME]

MODE is `session` (run one session; FLOWLEDGER_CRASH_AT makes it die at a
durable point) or `recover` (recover, then run sessions — resolving a blocked
mutation with `skip` when told — until the work is done or blocked). The tool's
first mutator call behaves as OUTCOME says; later calls succeed. It prints one
JSON line describing what it saw.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

# Run by path: the repository's root, so that `tests.helpers` imports.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import flowledger as fl  # noqa: E402
from tests.helpers import (  # noqa: E402
    OUTCOMES,
    ExternalLedger,
    NoReconcileTool,
    ScriptedLedgerTool,
)

ITEMS = ["a", "b"]


class BlindLedger(NoReconcileTool):
    name = "ledger"  # the workflow calls ctx.tools.ledger, with a reconcile method or not


def make_tool(ledger: ExternalLedger, outcome: str) -> ScriptedLedgerTool:
    """The first mutator call on this ledger, whichever process makes it, behaves
    as OUTCOME says; later calls succeed. Each process starts with the full list
    of OUTCOME's reconcile answers."""
    first, answers, has_reconcile = OUTCOMES[outcome]
    tool = ScriptedLedgerTool(ledger) if has_reconcile else BlindLedger(ledger)
    tool.script = [] if ledger.calls_made() else [first]
    tool.reconcile_script = list(answers)
    return tool


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
    ledger = ExternalLedger(Path(ledger_path), count_calls=True)
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
    main()
