"""The read side from the command line: audit, timeline, events, cost, runs, sessions,
at, replay and projections — real subprocesses, real files (as test_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_cli import assert_user_error, flowledger

SHOP = '''
import os
import flowledger as fl

wf = fl.Workflow("shop", topics=["order", "booked"])


class Book(fl.Tool):
    name = "book"

    @fl.read
    def has(self, order_id):
        return False

    @fl.mutator(reconcile="find")
    def add(self, order_id, amount):
        return 1

    def find(self, order_id, amount):
        return fl.Reconciliation.applied(1)


@wf.producer(publishes=["order"])
def orders(ctx, state):
    for order_id, amount in [("A-1", "12.50"), ("A-2", "7.00")]:
        input_id = ctx.register_input(source="shop", type="order", id=order_id,
                                      title=f"order {order_id}")
        ctx.publish("order", message_id=order_id, payload={"amount": amount},
                    input_id=input_id)
    ctx.add_cost("0.10", "poll")


@wf.consumer(subscribe=["order"], publishes=["booked"], tools=["book"])
class BookOrder:
    def prepare(self, ctx, state):
        pending = ctx.peek("order", limit=1)
        if not pending:
            return None
        m = pending[0]
        ctx.tools.book.has(m.message_id)
        ctx.add_cost("0.05", "model")
        return fl.Prepared({"order": [m.message_id]}, data={"id": m.message_id, **m.payload},
                           title=f"book {m.message_id}")

    def mutate(self, ctx, prepared):
        amount = prepared.data["amount"]
        if os.environ.get("IN_CENTS"):  # the "fix" a developer wants to try
            amount = str(int(float(amount) * 100))
        ctx.tools.book.add(prepared.data["id"], amount)

    def next(self, ctx, prepared, outcome):
        ctx.publish("booked", message_id=prepared.data["id"], payload={"line": outcome.result})


TOOLS = [Book()]
'''


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose store holds one completed session of the shop workflow.

    Shared by the tests below: the commands they run read, or rebuild what
    they read to the same rows, so none disturbs another.
    """
    folder = tmp_path_factory.mktemp("shop")
    (folder / "shop.py").write_text(SHOP)
    result = flowledger("run", "shop.py", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


def as_json(folder: Path, *args: str) -> Any:
    result = flowledger(*args, "--json", cwd=folder)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def book_run(folder: Path, order: str) -> str:
    history = as_json(folder, "events", "shop", "order", order)
    return str(history["reservations"][0]["run_id"])


def test_timeline_of_a_run(shop: Path) -> None:
    run_id = book_run(shop, "A-1")

    shown = flowledger("timeline", run_id, cwd=shop)

    assert shown.returncode == 0, shown.stderr
    assert f"run {run_id[-8:]}  shop / BookOrder (consumer)" in shown.stdout
    assert f"id: {run_id}" in shown.stdout
    for name in ("HandlerRun.Created", "HandlerRun.ReadRecorded", "TopicEvent.Reserved",
                 "HandlerRun.MutationApplied", "TopicEvent.Published", "Session.RunEnded"):
        assert name in shown.stdout
    data = as_json(shop, "timeline", run_id)
    positions = [e["position"] for e in data["entries"]]
    assert positions == sorted(positions) and len(positions) >= 15
    assert data["run"]["status"] == "committed"


def test_events_and_audit_input(shop: Path) -> None:
    shown = flowledger("events", "shop", "order", "A-1", cwd=shop)
    assert shown.returncode == 0, shown.stderr
    assert "shop / order / A-1: consumed" in shown.stdout
    history = as_json(shop, "events", "shop", "order", "A-1")
    assert [r["ended"] for r in history["reservations"]] == ["consumed"]
    input_id = history["caused_by"][0]

    audit = flowledger("audit", "input", input_id, cwd=shop)

    assert audit.returncode == 0, audit.stderr
    assert "shop / order / A-1" in audit.stdout and "title: order A-1" in audit.stdout
    assert "book.add('A-1', '12.50')" in audit.stdout
    assert "applied: 1" in audit.stdout
    data = as_json(shop, "audit", "input", input_id)
    assert [(e["topic"], e["status"]) for e in data["events"]] == [
        ("order", "consumed"), ("booked", "pending")]
    assert [(m["title"], m["params"], m["state"]) for m in data["mutations"]] == [
        ("book A-1", {"args": ["A-1", "12.50"], "kwargs": {}}, "applied")]


def test_cost_by_session_handler_and_day(shop: Path) -> None:
    shown = flowledger("cost", cwd=shop)
    assert shown.returncode == 0, shown.stderr
    assert "Costs by session" in shown.stdout and "0.20" in shown.stdout

    by_handler = as_json(shop, "cost", "--by", "handler")
    assert by_handler["total"] == "0.20"  # exact: a decimal, as text
    assert {line["key"]: line["amount"] for line in by_handler["lines"]} == {
        "BookOrder": "0.10", "orders": "0.10"}
    (day,) = as_json(shop, "cost", "--by", "day", "--workflow", "shop")["lines"]
    assert day["amount"] == "0.20" and len(day["key"]) == 10
    session = as_json(shop, "sessions")[0]
    assert session["cost"] == "0.20" and session["status"] == "completed"


def test_runs_listing(shop: Path) -> None:
    runs = as_json(shop, "runs", "--workflow", "shop")
    assert sorted(r["handler"] for r in runs) == ["BookOrder", "BookOrder", "orders"]
    assert as_json(shop, "runs", "--status", "failed") == []
    assert as_json(shop, "runs", "--since", "2999-01-01") == []
    shown = flowledger("runs", "--limit", "1", cwd=shop)
    assert "Runs (newest first)" in shown.stdout


def test_at_a_position_shows_the_status_then(shop: Path) -> None:
    first = as_json(shop, "timeline", book_run(shop, "A-1"))["entries"][0]["position"]
    before_the_run = first - 1

    shown = flowledger("at", str(before_the_run), "status", cwd=shop)

    assert shown.returncode == 0, shown.stderr
    assert f"As of log position {before_the_run}" in shown.stdout
    assert "Open sessions" in shown.stdout  # the session was still going then
    assert "No open sessions." in flowledger("status", cwd=shop).stdout
    then = as_json(shop, "at", str(before_the_run), "status")
    assert then["position"] == before_the_run and len(then["status"]["open_sessions"]) == 1
    assert "No workflows in this store yet." in flowledger("at", "0", "status", cwd=shop).stdout


def test_replay_with_the_same_and_with_changed_code(shop: Path) -> None:
    run_id = book_run(shop, "A-1")

    same = flowledger("replay", run_id, "shop.py", cwd=shop)
    assert same.returncode == 0, same.stderr
    assert "Same: the current code does what the recorded run did." in same.stdout

    changed = flowledger("replay", run_id, "shop.py", cwd=shop, env={"IN_CENTS": "1"})
    assert changed.returncode == 1, changed.stderr
    assert "Differences" in changed.stdout and "book.add('A-1', '1250')" in changed.stdout
    assert "next was not replayed" in changed.stdout
    data = json.loads(flowledger("replay", run_id, "shop.py", "--json", cwd=shop,
                                 env={"IN_CENTS": "1"}).stdout)
    assert data["same"] is False
    assert [d["what"] for d in data["differences"]] == ["mutation"]
    assert as_json(shop, "sessions")[0]["status"] == "completed"  # nothing was run or written


def test_projections_rebuild_and_status(shop: Path) -> None:
    before = as_json(shop, "cost", "--by", "run")

    shown = flowledger("projections", "rebuild", cwd=shop)

    assert shown.returncode == 0, shown.stderr
    assert "Rebuilt from position 0" in shown.stdout and "events" in shown.stdout
    assert "━" not in shown.stdout + shown.stderr  # piped: no progress bar, plain text
    status = as_json(shop, "projections", "status")
    assert set(status["positions"]) == {"pending_work", "costs", "audit", "log_times",
                                        "settled"}
    assert all(p == status["head"] for p in status["positions"].values())
    rebuilt = as_json(shop, "projections", "rebuild", "--only", "costs")
    assert rebuilt["events"] == status["head"]
    assert as_json(shop, "cost", "--by", "run") == before


@pytest.mark.parametrize(("args", "fragment"), [
    (["timeline", "not-a-run"], "is not a run id"),
    (["timeline", "00000000-0000-0000-0000-000000000000"], "no run"),
    (["events", "shop", "order", "Z-9"], "no message 'Z-9' in topic 'order'"),
    (["audit", "input", "00000000-0000-0000-0000-000000000000"], "no input"),
    (["cost", "--workflow", "nope"], "no workflow named 'nope'"),
    (["runs", "--since", "last tuesday"], "is not a date or time"),
    (["at", "99999", "status"], "beyond the end of the log"),
    (["at", "-1", "status"], "is negative"),
    (["replay", "00000000-0000-0000-0000-000000000000", "shop.py"], "no run"),
    (["projections", "rebuild", "--only", "nope"], "no projection named 'nope'"),
])
def test_read_side_mistakes_exit_2_on_one_line(shop: Path, args: list[str],
                                               fragment: str) -> None:
    assert_user_error(flowledger(*args, cwd=shop), fragment)


def test_costs_by_workflow_name_the_workflow_once(shop: Path) -> None:
    shown = flowledger("cost", "--by", "workflow", cwd=shop)
    assert shown.returncode == 0, shown.stderr
    header = next(line for line in shown.stdout.splitlines() if "amount" in line)
    assert header.split().count("workflow") == 1, header
