"""Pending work kept live by several writers equals its rebuild (ADR 0012, 0017).

Two engines on one store (two writers, each with its projection runner and
what it keeps in memory) run sessions over three workflows in a random order;
some runs call a tool that, during the external call, makes the other engine
run a session of another workflow (its appends come between the run's own),
and some calls fail: a run paused holding its message is continued later,
maybe by the other engine, which changes rows the first one may keep.
Whatever the schedule, every projection rebuilt from position 0 equals the
one the writers kept, the backlog and wake-ups a session loop takes from
memory equal the store's, and no item is mutated twice.

This is what lets a writer keep the rows of the workflow whose session it
holds when another writer moved the projection, and stop holding its folds
while others append (runner._forget_moved, may_hold).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowledger as fl
from flowledger.testing import assert_projections_rebuild_equal
from tests import postgres
from tests.helpers import (
    MemoryLedger,
    MutationScenario,
    checked_pending_hints,
    ledger_workflow,
    mid_call_tool,
)

WORKFLOWS = ["w0", "w1", "w2"]


def items(name: str) -> list[str]:
    """Each workflow's own keys: one ledger takes them all."""
    return [f"{name}-{k}" for k in range(4)]


# How the call goes (ScriptedLedgerTool's script): it works; transient: the run
# pauses holding its message (another session, maybe the other engine's,
# continues it); uncertain: reconciled; auth: the workflow stops until resumed.
FAILURES = ["ok", "ok", "transient", "uncertain", "auth"]


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
    ledger = MemoryLedger()  # takes every write, a second of one key too
    mids: list[Callable[[str], None]] = [lambda key: None, lambda key: None]
    scripts: list[list[str | MutationScenario]] = [[], []]
    clock = fl.ManualClock()
    with fresh_store(kind) as store, checked_pending_hints() as compared:
        engines = [fl.Engine(store, clock=clock), fl.Engine(store, clock=clock)]
        try:
            for who, engine in enumerate(engines):
                tool = mid_call_tool(lambda key, who=who: mids[who](key))(ledger, scripts[who])
                for name in WORKFLOWS:
                    engine.register(ledger_workflow(name, items(name)), tools=[tool])
            for who, wf, iterations, mid, fails, later in steps:
                other = engines[1 - who]

                def meddle(key: str, other: fl.Engine = other, mid: int | None = mid,
                           who: int = who) -> None:
                    mids[who] = lambda key: None  # once per step
                    if mid is not None:
                        other.run_session(WORKFLOWS[mid], max_iterations=2)

                mids[who] = meddle
                scripts[who][:] = [fails]
                if later:  # past any retry time; the other engine resumes a stopped one
                    clock.advance("1h")
                    other.resume(WORKFLOWS[wf])
                engines[who].run_session(WORKFLOWS[wf], max_iterations=iterations)
                mids[who], scripts[who][:] = (lambda key: None), []
            assert len(ledger.writes) == len(set(ledger.writes)), (
                f"an item was mutated twice: {ledger.writes}")
            for engine in engines:
                assert_projections_rebuild_equal(engine)
            assert compared[0] > 0  # the session loops' hints, each equal to the store's
        finally:
            for engine in engines:
                engine.close()
