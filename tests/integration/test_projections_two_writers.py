"""Pending work kept live by several writers equals its rebuild (ADR 0012, 0017).

Two engines on one store (two writers, each with its projection runner and
what it keeps in memory) run sessions over three workflows in a random order;
some runs call a tool that, during the external call, makes the other engine
run a session of another workflow (its appends come between the run's own),
and some calls fail: a run paused holding its message is continued later,
maybe by the other engine, which changes rows the first one may keep.
Whatever the schedule, every projection rebuilt from position 0 equals the
one the writers kept, and no item is mutated twice.

This is what lets a writer keep the rows of the workflow whose session it
holds when another writer moved the projection, and stop holding its folds
while others append (runner._forget_moved, may_hold).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowledger as fl
from flowledger.testing import assert_projections_rebuild_equal
from tests import postgres

WORKFLOWS = ["w0", "w1", "w2"]
ITEMS = ["i0", "i1", "i2", "i3"]


class Ledger(fl.Tool):
    """Counts every call; may fail, or let the other engine write, mid-call."""

    name = "ledger"

    def __init__(self, calls: list[str], plan: dict[str, Any]) -> None:
        self.calls, self.plan = calls, plan

    @fl.mutator(reconcile="find")
    def put(self, key: str) -> str:
        action, self.plan["mid"] = self.plan.get("mid"), None
        if action is not None:
            action()
        failure = self.plan.pop("fail", None)
        if failure is not None:
            raise failure
        self.calls.append(key)
        return key

    def find(self, key: str) -> fl.Reconciliation:
        return (fl.Reconciliation.applied(key) if key in self.calls
                else fl.Reconciliation.failed())


def workflow(name: str) -> fl.Workflow:
    wf = fl.Workflow(name, topics=["in"])

    @wf.producer(publishes=["in"])
    def feed(ctx: Any, state: Any) -> None:
        for item in ITEMS:  # again each session: the payload is replaced
            ctx.publish("in", message_id=item, payload=f"{name}/{item}")

    @wf.consumer(subscribe=["in"])
    class Put:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            m = ctx.peek("in", limit=1)
            if not m:
                return None
            return fl.Prepared(reservations={"in": [m[0].message_id]}, data=m[0].payload)

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.ledger.put(prepared.data)

    return wf


FAILURES = [None, None, "transient", "uncertain", "error"]


def failure(kind: str | None) -> Exception | None:
    """None: the call works. Transient: the run pauses holding its message (another
    session, maybe the other engine's, continues it); uncertain: reconciled;
    error: the workflow stops until resumed."""
    return {"transient": fl.TransientError("later"), "uncertain": fl.UncertainOutcome("lost"),
            "error": RuntimeError("the ledger said no"), None: None}[kind]


STEPS = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 2), st.integers(1, 3),
                           st.one_of(st.none(), st.integers(0, 2)), st.sampled_from(FAILURES),
                           st.booleans()),
                 min_size=1, max_size=14)


@contextlib.contextmanager
def fresh_store(kind: str) -> Iterator[str]:
    if kind == "postgresql":
        with postgres.fresh_schema() as url:
            yield url
        return
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{Path(folder) / 'flow.db'}"


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_two_writers_keep_pending_work_equal_to_its_rebuild(
        kind: str, steps: list[tuple[int, int, int, int | None, str | None, bool]]) -> None:
    """On PostgreSQL, each writer appends on its forecast while the other is
    quiet, and falls back when the other moved the log (postgres_forecast.py)."""
    calls: list[str] = []
    plans: list[dict[str, Any]] = [{}, {}]
    clock = fl.ManualClock()
    with fresh_store(kind) as store:
        engines = [fl.Engine(store, clock=clock), fl.Engine(store, clock=clock)]
        try:
            for engine, plan in zip(engines, plans, strict=True):
                for name in WORKFLOWS:
                    engine.register(workflow(name), tools=[Ledger(calls, plan)])
            for who, wf, iterations, mid, fails, later in steps:
                other = engines[1 - who]
                if mid is not None:
                    plans[who]["mid"] = (
                        lambda other=other, mid=mid: other.run_session(WORKFLOWS[mid],
                                                                       max_iterations=2))
                plans[who]["fail"] = failure(fails)
                if later:  # past any retry time; the other engine resumes a stopped one
                    clock.advance("1h")
                    other.resume(WORKFLOWS[wf])
                engines[who].run_session(WORKFLOWS[wf], max_iterations=iterations)
                plans[who].clear()
            assert len(calls) == len(set(calls)), f"an item was mutated twice: {calls}"
            for engine in engines:
                assert_projections_rebuild_equal(engine)
        finally:
            for engine in engines:
                engine.close()
