"""Replay debugging (DESIGN §2.5): a recorded run, re-executed with today's code
against its recorded reads, state and messages — writing nothing, calling no tool."""

from __future__ import annotations

from typing import Any

import pytest

import flowledger as fl


class Shop(fl.Tool):
    """Orders to book and a book of rows; counts every call that reaches it."""

    name = "shop"

    def __init__(self) -> None:
        self.orders_open = {"A-1": "12.50", "A-2": "7.00"}
        self.rows: dict[str, str] = {}
        self.calls: list[str] = []

    @fl.read
    def orders(self) -> list[list[str]]:
        self.calls.append("orders")
        return sorted([k, v] for k, v in self.orders_open.items())

    @fl.read
    def has(self, order_id: str) -> bool:
        self.calls.append(f"has {order_id}")
        return order_id in self.rows

    @fl.read
    def customer(self, order_id: str) -> str:
        self.calls.append(f"customer {order_id}")
        return "ACME"

    @fl.mutator(reconcile="find")
    def book(self, order_id: str, amount: str) -> int:
        self.calls.append(f"book {order_id}")
        self.rows[order_id] = amount
        return len(self.rows)

    def find(self, order_id: str, amount: str) -> fl.Reconciliation:
        if order_id in self.rows:
            return fl.Reconciliation.applied(list(self.rows).index(order_id) + 1)
        return fl.Reconciliation.failed()


def shop_workflow(version: str = "v1") -> fl.Workflow:
    """Version v1 is the recorded code; the others are edits a developer might try."""
    wf = fl.Workflow("shop", topics=["order", "booked"])

    @wf.producer(publishes=["order"], tools=["shop"])
    def take_orders(ctx: Any, state: Any) -> Any:
        for order_id, amount in ctx.tools.shop.orders():
            payload = {"amount": amount}
            if version == "producer-v2":
                payload["currency"] = "EUR"
            ctx.publish("order", message_id=order_id, payload=payload)
        return (state or 0) + 1

    @wf.consumer(subscribe=["order"], publishes=["booked"], tools=["shop"])
    class Book:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            pending = ctx.peek("order", limit=2 if version == "greedy" else 1)
            if not pending:
                return None
            m = pending[0]
            data = {"id": m.message_id, "amount": m.payload["amount"],
                    "known": ctx.tools.shop.has(m.message_id)}
            if version == "asks-customer":
                data["customer"] = ctx.tools.shop.customer(m.message_id)
            ids = [p.message_id for p in pending]
            return fl.Prepared({"order": ids}, data=data, title=f"book {m.message_id}")

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            amount = prepared.data["amount"]
            if version == "cents":
                amount = str(int(float(amount) * 100))
            if not prepared.data["known"]:
                ctx.tools.shop.book(prepared.data["id"], amount)

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> Any:
            if version == "buggy" and prepared.data["id"] == "A-2":
                raise KeyError("line")
            ctx.publish("booked", message_id=prepared.data["id"],
                        payload={"line": outcome.result})
            return {"last": prepared.data["id"]}

    return wf


@pytest.fixture
def recorded(make_engine) -> tuple[fl.Engine, Shop, dict[str, fl.RunResult]]:
    """One session of v1: the producer and two Book runs, recorded in the log."""
    engine = make_engine()
    shop = Shop()
    engine.register(shop_workflow("v1"), tools=[shop])
    result = engine.run_session("shop")
    assert result.status == "completed", result.error
    runs = {"producer": result.runs[0], "first": result.runs[1], "second": result.runs[2]}
    return engine, shop, runs


def with_code(make_engine, version: str) -> tuple[fl.Engine, Shop]:
    """Another engine on the same store with edited code registered: what a
    developer does before asking for a replay."""
    engine = make_engine()
    shop = Shop()
    engine.register(shop_workflow(version), tools=[shop])
    return engine, shop


def log_size(engine: fl.Engine) -> int:
    return engine.log.flow_recorder.max_notification_id() or 0


def test_the_same_code_replays_to_the_same_run(recorded, make_engine) -> None:
    engine, shop, runs = recorded
    calls_before, size_before = list(shop.calls), log_size(engine)
    # Everything is consumed now, but the replay sees the order pending, as it was.
    assert engine.pending_work("shop").topics[0].pending == 0

    report = engine.replay(runs["first"].run_id)

    assert report.same, report.differences
    assert report.differences == () and report.unrecorded_reads == ()
    assert report.replayed == report.recorded
    assert report.recorded.steps == ("prepare", "mutate", "next")
    assert report.recorded.reservations == {"order": ["A-1"]}
    assert report.recorded.mutation == fl.ToolCall("shop", "book",
                                                   {"args": ["A-1", "12.50"], "kwargs": {}})
    assert report.recorded.published == (fl.PublishedMessage("booked", "A-1", {"line": 1}),)
    assert report.recorded.state == {"last": "A-1"}
    assert shop.calls == calls_before  # no tool was called: reads came from the log
    assert log_size(engine) == size_before  # nothing was written

    second = engine.replay(str(runs["second"].run_id))
    assert second.same
    assert second.replayed.reservations == {"order": ["A-2"]}  # A-1 was consumed by then


def test_a_changed_mutation_is_captured_and_reported(recorded, make_engine) -> None:
    _, _, runs = recorded
    new, shop = with_code(make_engine, "cents")

    report = new.replay(runs["first"].run_id)

    assert not report.same
    assert [d.what for d in report.differences] == ["mutation"]
    assert report.differences[0].replayed == fl.ToolCall(
        "shop", "book", {"args": ["A-1", "1250"], "kwargs": {}})
    assert report.replayed.steps == ("prepare", "mutate")  # its outcome cannot be known
    assert any("next was not replayed" in n for n in report.notes)
    assert shop.calls == []  # captured, never performed


def test_a_read_that_was_not_recorded_is_reported_not_performed(recorded,
                                                                make_engine) -> None:
    _, _, runs = recorded
    new, shop = with_code(make_engine, "asks-customer")

    report = new.replay(runs["first"].run_id)

    assert report.unrecorded_reads == (fl.ToolCall("shop", "customer",
                                                   {"args": ["A-1"], "kwargs": {}}),)
    assert shop.calls == []
    assert (report.replayed.error or "").startswith("UnrecordedRead: replay of run")
    # Failing in prepare, it would reserve, book, publish and keep nothing.
    assert [d.what for d in report.differences] == [
        "reservations", "mutation", "published booked/A-1", "state", "error"]
    assert report.unused_reads == ()  # `has` was asked and answered from the log


def test_a_fixed_bug_shows_what_the_run_would_have_done(make_engine) -> None:
    buggy = make_engine()
    buggy.register(shop_workflow("buggy"), tools=[Shop()])
    result = buggy.run_session("shop")
    failed = result.runs[-1]
    assert (failed.handler, failed.status.value) == ("Book", "failed:logic")

    fixed, _ = with_code(make_engine, "v1")
    report = fixed.replay(failed.run_id)

    assert report.recorded.error == "KeyError: 'line'"
    assert report.recorded.published == () and not report.recorded.state_replaced
    assert {d.what: (d.recorded, d.replayed) for d in report.differences} == {
        "published booked/A-2": ("(not published)", {"line": 2}),
        "state": ("(unchanged)", {"last": "A-2"}),
        "error": ("KeyError: 'line'", None),
    }


def test_reservations_are_checked_against_the_messages_of_the_time(recorded,
                                                                   make_engine) -> None:
    _, _, runs = recorded
    new, _ = with_code(make_engine, "greedy")

    first = new.replay(runs["first"].run_id)
    assert [(d.what, d.recorded, d.replayed) for d in first.differences] == [
        ("reservations", {"order": ["A-1"]}, {"order": ["A-1", "A-2"]})]

    second = new.replay(runs["second"].run_id)  # only A-2 was pending then
    assert second.same


def test_a_replays_peek_folds_nothing(recorded, make_engine,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The messages of the time are those pending work's rows say were
    published and the settlings say were not settled then, each read from its
    stream as it was: nothing is folded from position 0 (it was: 42 s for a
    run at position 1.18M)."""
    from flowledger.projections import point_in_time

    _, _, runs = recorded
    new, _ = with_code(make_engine, "greedy")

    def no_fold(*args: Any) -> Any:
        raise AssertionError("the log was folded")

    monkeypatch.setattr(point_in_time, "fold_into", no_fold)
    assert new.replay(runs["second"].run_id).same
    first = new.replay(runs["first"].run_id)
    assert [(d.what, d.recorded, d.replayed) for d in first.differences] == [
        ("reservations", {"order": ["A-1"]}, {"order": ["A-1", "A-2"]})]


def test_a_replay_folds_pending_work_where_the_settlings_are_behind(
        recorded, make_engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store opened read-only whose settlings were not folded up to the run
    (an engine that stopped before folding the read side's projections in):
    the messages of the time come from pending work folded up to there in
    memory, alone (costs and audit, which a peek never reads, are not
    folded)."""
    from flowledger.projections.audit import Audit
    from flowledger.projections.costs import Costs
    from tests.store_contents import run_sql

    engine, _, runs = recorded
    store = engine.log.config.url
    engine.close()
    run_sql(store, "DELETE FROM fl_settled")
    run_sql(store, "UPDATE tracking SET notification_id = 0 "
                   "WHERE application_name = 'settled'")
    folded: list[str] = []
    for kind in (Costs, Audit):
        monkeypatch.setattr(kind, "apply_batch",
                            lambda self, c, events: folded.append(type(self).__name__))
    with fl.Engine(store + ("&" if "?" in store else "?") + "mode=ro") as reader:
        reader.register(shop_workflow("greedy"), tools=[Shop()])
        assert reader.projections.positions()["settled"] == 0
        assert reader.replay(runs["second"].run_id).same
        first = reader.replay(runs["first"].run_id)
    assert [(d.what, d.recorded, d.replayed) for d in first.differences] == [
        ("reservations", {"order": ["A-1"]}, {"order": ["A-1", "A-2"]})]
    assert folded == []


def test_a_producer_replay_compares_publishes_and_state(recorded, make_engine) -> None:
    _, _, runs = recorded
    new, shop = with_code(make_engine, "producer-v2")

    report = new.replay(runs["producer"].run_id)

    assert report.recorded.steps == report.replayed.steps == ("producer",)
    assert {d.what for d in report.differences} == {"published order/A-1",
                                                    "published order/A-2"}
    diff = next(d for d in report.differences if d.what == "published order/A-1")
    assert (diff.recorded, diff.replayed) == ({"amount": "12.50"},
                                             {"amount": "12.50", "currency": "EUR"})
    assert report.replayed.state == report.recorded.state == 1
    assert shop.calls == []


def test_replay_needs_the_current_code(recorded, make_engine) -> None:
    engine, _, runs = recorded
    bare = make_engine()
    with pytest.raises(fl.NotFoundError, match="register its current code"):
        bare.replay(runs["first"].run_id)

    renamed = fl.Workflow("shop", topics=["order", "booked"])

    @renamed.producer(publishes=["order"])
    def take_orders(ctx: Any, state: Any) -> None:
        return None

    other = make_engine()
    other.register(renamed)
    with pytest.raises(fl.NotFoundError, match="does not define"):
        other.replay(runs["first"].run_id)
    with pytest.raises(fl.NotFoundError, match="no run"):
        engine.replay("00000000-0000-0000-0000-000000000000")


def test_a_retry_that_carried_the_outcome_replays_next_only(make_engine) -> None:
    """next failed after the booking was applied: the retry ran next only, and so
    does its replay, with the carried data and outcome."""
    flaky = {"left": 1}
    wf = shop_workflow("v1")
    book = wf.consumers[0].cls
    original_next = book.next

    def next_once_flaky(self: Any, ctx: Any, prepared: Any, outcome: Any) -> Any:
        if flaky["left"]:
            flaky["left"] -= 1
            raise fl.TransientError("notifier down")
        return original_next(self, ctx, prepared, outcome)

    book.next = next_once_flaky
    engine = make_engine()
    engine.register(wf, tools=[Shop()])
    assert engine.run_session("shop").status == "suspended"
    engine.clock.advance(3600)  # type: ignore[attr-defined]
    result = engine.run_session("shop", trigger="event")
    retry = result.runs[0]
    assert engine.run(retry.run_id).retry_of is not None

    report = engine.replay(retry.run_id)

    assert report.replayed.steps == ("next",)
    assert report.same, report.differences
    assert any("carried forward" in n for n in report.notes)
