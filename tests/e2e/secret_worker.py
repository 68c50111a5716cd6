"""A real process whose tool calls take secrets, for the secrets' crash test.

    python tests/e2e/secret_worker.py STORE CALLS_FILE MODE

MODE is `session` (run one session; FLOWLEDGER_CRASH_AT makes it die at a
durable point) or `recover`. The mutator `payments.charge(item, api_key=...)`
gets `fl.Secret.from_env("PAY_KEY")`, the read `payments.balance(token=...)`
gets `fl.Secret("token")` from the engine's provider (PAY_TOKEN); every call
the tool receives is appended to CALLS_FILE as a JSON line with the values it
was given. The key comes from the environment and the store's cipher key from
FLOWLEDGER_CIPHER_KEY (if set).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import flowledger as fl  # noqa: E402


class Payments(fl.Tool):
    name = "payments"

    def __init__(self, calls: Path) -> None:
        self.calls = calls

    def _note(self, **call: Any) -> None:
        with self.calls.open("a") as f:
            f.write(json.dumps(call) + "\n")

    def _charged(self) -> list[str]:
        if not self.calls.exists():
            return []
        return [json.loads(line)["item"] for line in self.calls.read_text().splitlines()
                if json.loads(line)["call"] == "charge"]

    @fl.read
    def balance(self, token: str) -> int:
        self._note(call="balance", item="", secret=token)
        return 100

    @fl.mutator(reconcile="charged")
    def charge(self, item: str, api_key: str) -> dict[str, str]:
        self._note(call="charge", item=item, secret=api_key)
        return {"charged": item}

    def charged(self, item: str, api_key: str) -> fl.Reconciliation:
        self._note(call="reconcile", item=item, secret=api_key)
        if item in self._charged():
            return fl.Reconciliation.applied({"charged": item})
        return fl.Reconciliation.failed("not charged")


def workflow() -> fl.Workflow:
    wf = fl.Workflow("billing", topics=["orders"])

    @wf.producer(publishes=["orders"])
    def orders(ctx: Any, state: Any) -> None:
        ctx.publish("orders", message_id="o1", payload={"amount": 5})

    @wf.consumer(subscribe=["orders"])
    class Charge:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            pending = ctx.peek("orders", limit=1)
            if not pending:
                return None
            ctx.tools.payments.balance(token=fl.Secret("token"))
            return fl.Prepared({"orders": [pending[0].message_id]}, data=pending[0].message_id)

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.payments.charge(prepared.data, api_key=fl.Secret.from_env("PAY_KEY"))

    return wf


def main() -> None:
    store, calls, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    engine = fl.Engine(store, secrets={"token": os.environ["PAY_TOKEN"]})
    engine.register(workflow(), tools=[Payments(calls)])
    if mode == "recover":
        engine.recover()
        result = engine.run_session("billing")
    else:
        result = engine.run_session("billing")
    print(json.dumps({"status": result.status}))
    engine.close()


if __name__ == "__main__":
    main()
