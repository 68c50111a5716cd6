"""Lock takeover and fencing (ADR 0007), with real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import flowledger as fl
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow

STALE_HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[3])
    import flowledger as fl
    from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow

    class SlowTool(ScriptedLedgerTool):
        @fl.read
        def find(self, key):
            print("reading", flush=True)
            time.sleep(float(sys.argv[4]))   # stuck longer than its lease
            return None

    wf = ledger_workflow(items=["a"])
    cls = wf.consumers[0].cls
    original = cls.prepare
    def prepare(self, ctx, state):
        ctx.tools.ledger.find("a")
        return original(self, ctx, state)
    cls.prepare = prepare

    engine = fl.Engine(sys.argv[1], policy=fl.RetryPolicy(lease_seconds=1))
    engine.register(wf, tools=[SlowTool(ExternalLedger(sys.argv[2]))])
    try:
        print(engine.run_session("wf").status, flush=True)
    except fl.ConcurrencyError as e:
        print("fenced:", e, flush=True)
""")


def started_holder(tmp_path: Path, text: str, store: str, seconds: str, said: str
                   ) -> tuple[subprocess.Popen[str], Path]:
    """The holder script `text` running on `store` with a ledger file of its own,
    once it printed `said` (where it is to be stopped); and that ledger's path."""
    ledger_path = tmp_path / "ledger.db"
    ExternalLedger(ledger_path)
    script = tmp_path / "holder.py"
    script.write_text(text)
    root = str(Path(__file__).resolve().parents[2])
    holder = subprocess.Popen([sys.executable, str(script), store, str(ledger_path), root,
                               seconds], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == said
    return holder, ledger_path


def test_a_stale_holder_is_fenced_and_never_mutates_after_a_takeover(tmp_path: Path,
                                                                     store: str):
    stale, ledger_path = started_holder(tmp_path, STALE_HOLDER, store, "4", "reading")
    # Frozen (a stopped process, a paused machine): its heartbeat stops too, so its
    # lease (1 s) runs out while it is stuck in prepare. A live holder in a long
    # call keeps its lease (ADR 0019).
    stale.send_signal(signal.SIGSTOP)
    time.sleep(1.5)

    ledger = ExternalLedger(ledger_path)
    tool = ScriptedLedgerTool(ledger)
    engine = fl.Engine(store)
    engine.register(ledger_workflow(items=["a"]), tools=[tool])
    results = engine.recover()
    assert [r.status for r in results] == ["completed"], results
    assert ledger.keys() == ["a"]

    stale.send_signal(signal.SIGCONT)
    out, err = stale.communicate(timeout=60)
    assert out.startswith("fenced: this session lost its lock"), (out, err)
    assert ledger.keys() == ["a"]  # the stale holder never reached its mutation
    takeovers = [e for e in engine.events(workflow="wf") if e.name == "SessionTakenOver"]
    assert len(takeovers) == 1
    engine.close()


FROZEN_IN_CALL = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[3])
    import flowledger as fl
    from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow

    class SlowTool(ScriptedLedgerTool):
        @fl.mutator(reconcile="find_appended")
        def append(self, key, value):
            print("calling", flush=True)
            time.sleep(float(sys.argv[4]))  # frozen in here: the effect lands later
            return super().append(key, value)

    engine = fl.Engine(sys.argv[1], policy=fl.RetryPolicy(lease_seconds=1))
    engine.register(ledger_workflow(items=["a"]),
                    tools=[SlowTool(ExternalLedger(sys.argv[2], count_calls=True))])
    try:
        print(engine.run_session("wf").status, flush=True)
    except fl.ConcurrencyError as e:
        print("fenced:", e, flush=True)
""")


def test_a_call_frozen_past_its_lease_is_not_made_again_by_the_taker_over(
        tmp_path: Path, store: str) -> None:
    """The holder is stopped inside its tool call, after the call went in
    flight; its lease runs out and another engine takes the session over while
    the holder still lives. Its reconcile finds no effect, yet the frozen call
    lands once the holder goes on: "failed" then proved nothing, and the taker
    made the call a second time (a chaos trial). Now it looks again until the
    effect shows, or the maker is proven gone; the call is made once."""
    holder, ledger_path = started_holder(tmp_path, FROZEN_IN_CALL, store, "2", "calling")
    holder.send_signal(signal.SIGSTOP)
    time.sleep(1.5)  # its lease (1 s) runs out; its heartbeat is stopped with it

    ledger = ExternalLedger(ledger_path, count_calls=True)
    tool = ScriptedLedgerTool(ledger)
    policy = fl.RetryPolicy(reconcile_base_delay=0.2, reconcile_max_delay=0.2, jitter=0)
    engine = fl.Engine(store, policy=policy)
    try:
        engine.register(ledger_workflow(items=["a"]), tools=[tool])
        (taken,) = engine.recover()
        assert taken.status != "completed", taken
        assert tool.calls == [] and ledger.keys() == []
        (append,) = [r for r in engine.runs(limit=None) if r.handler == "Append"]
        run = engine.run(append.run_id)
        assert run.status.value == "paused:reconciliation", run.status
        assert "is not proven gone" in (run.reason or "")

        holder.send_signal(signal.SIGCONT)
        out, err = holder.communicate(timeout=60)
        assert out.startswith("fenced: this session lost its lock"), (out, err)
        assert ledger.keys() == ["a"]  # the frozen call landed

        time.sleep(0.5)  # the reconcile falls due
        assert engine.run_session("wf").status == "completed"
        assert tool.calls == [] and len(tool.reconcile_calls) == 2
        assert ledger.keys() == ["a"] and ledger.calls_made() == 1  # made once, by the holder
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGCONT)
            holder.kill()
        engine.close()


@pytest.mark.postgres
def test_a_frozen_maker_whose_connections_the_server_ended_is_still_waited_for(
        tmp_path: Path) -> None:
    """A paused machine loses its connections (the server's keepalives end them):
    its liveness lock is free, and stays free, since a stopped process cannot
    take it again; the store's look then called the maker gone, and the taker
    made the call again. A process of this host that runs (stopped or not) is
    taken as alive whatever the lock says (ADR 0007)."""
    from tests import postgres
    from tests.store_contents import run_sql

    with postgres.fresh_schema() as store:
        holder, ledger_path = started_holder(
            tmp_path, FROZEN_IN_CALL, f"{store}&application_name=frozen-maker", "2", "calling")
        engine = None
        try:
            holder.send_signal(signal.SIGSTOP)
            run_sql(store, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name = 'frozen-maker'")
            time.sleep(1.5)
            ledger = ExternalLedger(ledger_path, count_calls=True)
            tool = ScriptedLedgerTool(ledger)
            policy = fl.RetryPolicy(reconcile_base_delay=0.2, reconcile_max_delay=0.2,
                                    jitter=0, reconcile_max_attempts=50)
            engine = fl.Engine(store, policy=policy)
            engine.register(ledger_workflow(items=["a"]), tools=[tool])
            engine.recover()
            time.sleep(3.5)  # the lock free for longer than a living engine retakes it
            assert engine.run_session("wf").status != "completed"
            assert tool.calls == []

            holder.send_signal(signal.SIGCONT)
            holder.communicate(timeout=60)
            time.sleep(0.5)
            assert engine.run_session("wf").status == "completed"
            assert tool.calls == [] and ledger.keys() == ["a"] and ledger.calls_made() == 1
        finally:
            if holder.poll() is None:
                holder.send_signal(signal.SIGCONT)
                holder.kill()
            if engine is not None:
                engine.close()
