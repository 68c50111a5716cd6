"""Ctrl-C during `flowledger run` (ADR 0020), as real processes on a real SQLite
store, with every call of the mutator counted in a file (`ExternalLedger`).

The mutator writes the ledger, says so on stdout, then blocks until a gate file
appears: the signal reaches the process while the mutation is in flight, its
effect already made and its answer not yet returned — the moment where exiting
would leave the session open with a mutation between `in_flight` and its outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

import flowledger as fl
from tests.e2e.test_cli import flowledger
from tests.e2e.test_worker_processes import ROOT
from tests.helpers import ExternalLedger

GATED = textwrap.dedent("""
    import os, time
    from pathlib import Path
    import flowledger as fl
    from tests.helpers import ExternalLedger

    wf = fl.Workflow("gated", topics=["job"])
    GATE = Path(os.environ["TEST_GATE"])

    @wf.producer(publishes=["job"])
    def jobs(ctx, state):
        for i in range(3):
            ctx.publish("job", message_id=f"j{i}", payload={})

    class Ledger(fl.Tool):
        name = "ledger"
        def __init__(self):
            self.ledger = ExternalLedger(Path(os.environ["TEST_LEDGER"]), count_calls=True)
        @fl.mutator(reconcile="find")
        def append(self, key):
            self.ledger.note_call()
            row = self.ledger.append(key, "v")
            print("wrote", key, flush=True)
            while not GATE.exists():  # the signal comes now: effect made, no answer yet
                time.sleep(0.02)
            return row
        def find(self, key):
            found = self.ledger.find(key)
            return fl.Reconciliation.failed() if found is None else fl.Reconciliation.applied(0)

    @wf.consumer(subscribe=["job"])
    class Do:
        def prepare(self, ctx, state):
            pending = ctx.peek("job", limit=1)
            if not pending:
                return None
            return fl.Prepared(reservations={"job": [pending[0].message_id]},
                               data=pending[0].message_id)
        def mutate(self, ctx, prepared):
            ctx.tools.ledger.append(prepared.data)

    TOOLS = [Ledger()]
""")

# After the gate opens: the mutator returns, the outcome and the run's commit are
# appended, the session closes and the process exits. Generous: the machine is shared.
STOP_BOUND = 5.0
# A second signal: the interpreter leaves the 20 ms sleep, the lease is ended with one
# append, the process exits.
AT_ONCE_BOUND = 3.0


class Setup:
    def __init__(self, folder: Path) -> None:
        (folder / "wf.py").write_text(GATED)
        self.folder = folder
        self.gate = folder / "gate"
        self.ledger = ExternalLedger(folder / "ledger.db", count_calls=True)
        self.store = f"sqlite:///{folder / 'flow.db'}"
        self.env = {"TEST_GATE": str(self.gate), "TEST_LEDGER": str(folder / "ledger.db"),
                    "PYTHONPATH": str(ROOT), "COLUMNS": "200"}

    @contextmanager
    def run(self, *args: str) -> Iterator[subprocess.Popen[str]]:
        """`flowledger run` in its own process, killed after 60 s at the latest so
        that a broken stop fails the test instead of hanging it."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("FLOWLEDGER_STORE", "FLOWLEDGER_CRASH_AT")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowledger.cli", "--store", self.store, "run", "wf.py",
             *args], cwd=self.folder, env={**env, **self.env}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            # SIGINT as a terminal's shell leaves it, even when pytest itself was
            # started with it ignored (a job started with `&`): an ignored SIGINT
            # is left ignored, as Python and the engine leave it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        watchdog = threading.Timer(60, proc.kill)
        watchdog.start()
        try:
            yield proc
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
            proc.communicate()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return flowledger("--store", self.store, *args, cwd=self.folder, env=self.env)


def wait_for_line(stream: IO[str] | None, fragment: str) -> None:
    """Read the process's output up to the line holding `fragment`."""
    assert stream is not None
    while True:
        line = stream.readline()
        assert line, f"the process ended before printing {fragment!r}"
        if fragment in line:
            return


def test_ctrl_c_during_a_mutation_finishes_it_closes_the_session_and_exits_130(
        tmp_path: Path) -> None:
    s = Setup(tmp_path)
    with s.run() as proc:
        wait_for_line(proc.stdout, "wrote j0")  # the mutation is in flight
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None, "exited with the mutation in flight"
        s.gate.touch()
        started = time.monotonic()
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    assert proc.returncode == 130, (out, err)
    assert took < STOP_BOUND, took
    assert "SIGINT: finishing the step in progress" in err and "Traceback" not in err
    assert "budget_exhausted" in out and "stopped by SIGINT" in out and "Do: job=2" in out
    assert s.ledger.keys() == ["j0"] and s.ledger.calls_made() == 1
    status = json.loads(s.cli("status", "--json").stdout)
    assert status["open_sessions"] == []  # closed, not abandoned
    with fl.Engine(s.store) as engine:
        [last] = engine.sessions(workflow="gated", limit=1)
        assert last.status == "budget_exhausted" and "stop" in (last.reason or "")
        [job] = engine.pending_work("gated").topics
        assert job.pending == 2  # j1 and j2 left for the next run
        [run] = [r for r in engine.runs(workflow="gated") if r.handler == "Do"]
        assert run.status == "committed"
        names = [e.name for e in engine.run_timeline(run.run_id).entries
                 if e.stream_id == run.run_id]
        assert names.count("MutationInFlight") == 1 and names.count("MutationApplied") == 1

    again = s.cli("run", "wf.py")  # the gate is open: the rest goes through
    assert again.returncode == 0, again.stderr
    assert s.ledger.keys() == ["j0", "j1", "j2"] and s.ledger.calls_made() == 3


@pytest.mark.parametrize("then", ["recover", "run"])
def test_a_second_ctrl_c_stops_at_once_and_the_next_command_calls_nothing_twice(
        tmp_path: Path, then: str) -> None:
    s = Setup(tmp_path)
    with s.run() as proc:
        wait_for_line(proc.stdout, "wrote j0")
        proc.send_signal(signal.SIGINT)
        wait_for_line(proc.stderr, "finishing the step in progress")  # the first was seen
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    assert proc.returncode == 130, (out, err)
    assert took < AT_ONCE_BOUND, took
    assert "Stopped at once" in err and "Traceback" not in err
    assert s.ledger.keys() == ["j0"] and s.ledger.calls_made() == 1
    with fl.Engine(s.store) as engine:
        wf = engine.workflow("gated")
        assert wf.open_session is not None  # left as a crash leaves it, lease ended
        assert wf.lease_expired(engine.clock.now())

    s.gate.touch()
    after = s.cli(then, "wf.py")
    assert after.returncode == 0, (after.stdout, after.stderr)
    assert "it had happened" in after.stdout  # j0 reconciled, not called again
    assert s.ledger.keys() == ["j0", "j1", "j2"]
    assert s.ledger.calls_made() == 3  # one call per job, j0's included
    with s.ledger._db() as db:
        assert db.execute("SELECT COUNT(*) FROM duplicates").fetchone()[0] == 0
    status = json.loads(s.cli("status", "--json").stdout)
    assert status["open_sessions"] == [] and status["blocked"] == []


def test_sigterm_with_json_prints_the_closed_session_and_exits_143(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    with s.run("--json") as proc:
        wait_for_line(proc.stdout, "wrote j0")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        s.gate.touch()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, (out, err)
    [result] = json.loads(out)  # stdout is the JSON alone
    assert result["status"] == "budget_exhausted" and result["budget"] == "stop"
    assert result["remaining"] == {"Do": {"job": 2}} and result["consumer_runs"] == 1
    assert s.ledger.calls_made() == 1


def test_run_session_with_a_stop_event_ends_before_the_next_consumer_run(
        tmp_path: Path) -> None:
    """The engine's side, for an application that embeds it: `stop=`."""
    stop = threading.Event()
    calls: list[str] = []
    wf = fl.Workflow("stoppable", topics=["job"])

    @wf.producer(publishes=["job"])
    def jobs(ctx: fl.HandlerContext, state: object) -> None:
        for i in range(3):
            ctx.publish("job", message_id=f"j{i}", payload={})

    class Ledger(fl.Tool):
        name = "ledger"

        @fl.mutator()
        def append(self, key: str) -> None:
            calls.append(key)
            stop.set()  # as a signal handler would, during the call

    @wf.consumer(subscribe=["job"])
    class Do:
        def prepare(self, ctx: fl.HandlerContext, state: object) -> fl.Prepared | None:
            pending = ctx.peek("job", limit=1)
            if not pending:
                return None
            return fl.Prepared(reservations={"job": [pending[0].message_id]},
                               data=pending[0].message_id)

        def mutate(self, ctx: fl.HandlerContext, prepared: fl.Prepared) -> None:
            ctx.tools.ledger.append(prepared.data)

    with fl.Engine(f"sqlite:///{tmp_path / 'flow.db'}") as engine:
        engine.register(wf, tools=[Ledger()])
        result = engine.run_session("stoppable", stop=stop)
        assert (result.status, result.budget) == ("budget_exhausted", "stop")
        assert result.remaining == {"Do": {"job": 2}} and calls == ["j0"]
        assert engine.workflow("stoppable").open_session is None
        stop.clear()
        assert engine.run_session("stoppable", stop=stop).status == "budget_exhausted"
        assert calls == ["j0", "j1"]
        assert engine.run_session("stoppable").status == "completed"  # no stop: as before
        assert calls == ["j0", "j1", "j2"]
