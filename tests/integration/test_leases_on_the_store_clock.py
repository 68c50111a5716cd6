"""Leases are measured on the store's clock, not the engine's (DESIGN §7).

Engines on machines whose clocks disagree share one PostgreSQL store: a live
holder's session must not be taken over by an engine whose clock runs ahead,
and a lease that ran out in the store's time must be taken over by an engine
whose clock runs behind. Here the disagreement is an engine clock shifted by
ten minutes; the holder is alive all along (its advisory lock is held), so
only the lease decides.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

import flowledger as fl
from flowledger.domain.session import Trigger
from flowledger.engine.clock import LeaseClock
from flowledger.engine.session_runner import SessionRequest, SessionRunner
from flowledger.engine.streams import Streams
from tests import postgres
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow, mid_call_tool


class ShiftedClock(fl.SystemClock):
    """The system clock of a machine whose time is off by `shift`."""

    def __init__(self, shift: timedelta) -> None:
        self.shift = shift

    def now(self) -> datetime:
        return super().now() + self.shift


def _hold_a_session(engine: fl.Engine) -> None:
    """Open a session and keep it, as a live process in a long call would."""
    reg = engine._registration("wf")
    runner = SessionRunner(reg, engine._scope_factory(reg), engine.store)
    opened = runner.open_new(Streams(engine.log), SessionRequest(Trigger.MANUAL, 10, None),
                             engine.owner, engine.clock.now(),
                             engine.policy.lease_until(engine.lease.now()), engine.ids())
    assert not isinstance(opened, fl.SessionResult)


@pytest.fixture
def pg_store():
    with postgres.fresh_schema() as url:
        yield url


@pytest.fixture
def ledger(tmp_path):
    return ExternalLedger(tmp_path / "ledger.db", count_calls=True)


@pytest.mark.postgres
def test_an_engine_whose_clock_runs_ahead_leaves_a_live_lease_alone(pg_store, ledger):
    holder = fl.Engine(pg_store)
    ahead = fl.Engine(pg_store, clock=ShiftedClock(timedelta(minutes=10)))
    try:
        holder.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
        ahead.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
        _hold_a_session(holder)
        # By its own clock the holder's 60 s lease ended 9 minutes ago.
        assert [r.status for r in ahead.recover()] == ["busy"]
        assert ahead.run_session("wf").status == "busy"
        assert ledger.calls_made() == 0
    finally:
        ahead.close()
        holder.close()


@pytest.mark.postgres
def test_an_engine_whose_clock_runs_behind_takes_over_a_lease_that_ran_out(pg_store, ledger):
    short = fl.RetryPolicy(lease_seconds=0.5)
    holder = fl.Engine(pg_store, policy=short)
    behind = fl.Engine(pg_store, clock=ShiftedClock(timedelta(minutes=-10)), policy=short)
    try:
        holder.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
        behind.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
        _hold_a_session(holder)
        time.sleep(1.0)  # the lease ends, in the store's time
        # By its own clock the lease has 10 minutes to go.
        results = behind.recover()
        assert [r.status for r in results] == ["completed"]
        assert ledger.calls_made() == 1 and ledger.keys() == ["a"]
    finally:
        behind.close()
        holder.close()


@pytest.mark.postgres
def test_a_session_interrupted_by_an_engine_whose_clock_runs_ahead_is_taken_over_at_once(
        pg_store, ledger):
    """An interrupted session's lease ends at once (ADR 0015), in the store's
    time: not ten minutes on, where the interrupted engine's clock stands."""
    def ctrl_c(key: str) -> None:
        raise KeyboardInterrupt  # in the middle of the call

    ahead = fl.Engine(pg_store, clock=ShiftedClock(timedelta(minutes=10)))
    other = fl.Engine(pg_store)
    try:
        ahead.register(ledger_workflow(items=["a"]), tools=[mid_call_tool(ctrl_c)(ledger)])
        other.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
        with pytest.raises(KeyboardInterrupt):
            ahead.run_session("wf")
        # `ahead` is still open (alive): only the lease's end lets `other` in.
        assert [r.status for r in other.recover()] == ["completed"]
        assert ledger.calls_made() == 1 and ledger.keys() == ["a"]
    finally:
        other.close()
        ahead.close()


def test_the_lease_clock_follows_the_store_and_leaves_injected_clocks_alone():
    store = datetime(2030, 1, 1, 12, 0, 0).astimezone()
    aligned = LeaseClock(ShiftedClock(timedelta(hours=-3)), lambda: store)
    aligned.align()
    assert abs(aligned.now() - store) < timedelta(seconds=5)
    assert abs(aligned.to_engine(store) - aligned.clock.now()) < timedelta(seconds=5)

    manual = fl.ManualClock()
    simulated = LeaseClock(manual, lambda: store)
    simulated.align()
    assert simulated.now() == manual.now()

    no_store_clock = LeaseClock(ShiftedClock(timedelta(hours=-3)), lambda: None)
    no_store_clock.align()
    assert no_store_clock.offset == timedelta(0)


@pytest.mark.postgres
def test_a_session_measures_the_store_clock_in_its_first_look(pg_store, ledger, monkeypatch):
    """The engine's clock jumps ten minutes after it opened: the next session's
    lease still ends a lease's length after the store's now, measured in the
    same statement as the session's first look at the log (no query of its own)."""
    from flowledger.domain.ids import workflow_id

    clock = ShiftedClock(timedelta(0))
    engine = fl.Engine(pg_store, clock=clock)
    try:
        written = []

        def lease_mid_call(key: str) -> None:
            written.append(engine.log.load(workflow_id("wf")).lease_until)

        engine.register(ledger_workflow(items=["a"]), tools=[mid_call_tool(lease_mid_call)(ledger)])
        store_time = engine.log.flow_recorder.store_time
        asked: list[int] = []
        monkeypatch.setattr(engine.lease, "_store_time", lambda: asked.append(1) or store_time())
        clock.shift = timedelta(minutes=10)
        assert engine.run_session("wf").status == "completed"
        expected = store_time() + timedelta(seconds=engine.policy.lease_seconds)
        assert asked == []
        assert abs(written[0] - expected) < timedelta(seconds=30)
    finally:
        engine.close()
