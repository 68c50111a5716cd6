"""A tool and a workflow written the way a user with `mypy --strict` writes them.

Not a test module: `test_tool_typing.py` runs `mypy --strict` on this file and
on a wrong call that imports it. The marks `@fl.read` and `@fl.mutator` must
hand the methods back with their signatures, and `fl.HandlerContext` is there
to annotate `ctx`.
"""

from __future__ import annotations

from typing import Any

import flowledger as fl


class Ledger(fl.Tool):
    name = "ledger"

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}

    @fl.read
    def find(self, key: str) -> int | None:
        return self.rows.get(key)

    @fl.mutator(reconcile="find_appended")
    def append(self, key: str, amount: int) -> int:
        self.add_cost("0.01")
        self.rows[key] = amount
        return len(self.rows)

    def find_appended(self, key: str, amount: int) -> fl.Reconciliation:
        found = self.find(key)
        if found is None:
            return fl.Reconciliation.failed("not in the ledger")
        return fl.Reconciliation.applied(found)

    @fl.mutator
    def drop(self, key: str) -> None:
        self.rows.pop(key, None)

    @fl.mutator()
    def clear(self) -> int:
        n = len(self.rows)
        self.rows.clear()
        return n


wf = fl.Workflow("typed-orders", topics=["order.placed"])


@wf.producer(publishes=["order.placed"])
def fetch_orders(ctx: fl.HandlerContext, state: dict[str, int] | None) -> dict[str, int]:
    seen = dict(state or {})
    input_id = ctx.register_input(source="shop", type="order", id=1)
    ctx.publish("order.placed", message_id="1", payload={"amount": 5}, input_id=input_id)
    seen["1"] = 5
    return seen


@wf.consumer(subscribe=["order.placed"], tools=["ledger"])
class BookOrder:
    def prepare(self, ctx: fl.HandlerContext, state: Any) -> fl.Prepared | None:
        pending: list[fl.TopicMessage] = ctx.peek("order.placed", limit=1)
        if not pending:
            return None
        order = pending[0]
        return fl.Prepared(reservations={"order.placed": [order.message_id]},
                           data={"id": order.message_id, "amount": order.payload["amount"]})

    def mutate(self, ctx: fl.HandlerContext, prepared: fl.Prepared) -> None:
        ctx.tools.ledger.append(prepared.data["id"], prepared.data["amount"])

    def next(self, ctx: fl.HandlerContext, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
        ctx.add_cost("0.001", label="booking")


def direct_calls() -> int:
    """Calls a type checker can follow: the tool called directly, as in a unit test."""
    ledger = Ledger()
    row: int = ledger.append("k", 3)
    found: int | None = ledger.find("k")
    ledger.drop("k")
    answer: fl.Reconciliation = ledger.find_appended("k", 3)
    assert answer.status in ("applied", "failed", "retry")
    assert fetch_orders.__name__ == "fetch_orders"
    return row + (found or 0) + ledger.clear()
