"""`flowledger worker` as real processes: two workers over a real inbox folder and a
real ledger, one killed with SIGKILL, the other stopped with SIGTERM; on an
SQLite file (workers poll the log) and on PostgreSQL (workers are woken by the
store's notifications)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import flowledger as fl
from flowledger.engine import worker_notes
from tests.helpers import ExternalLedger
from tests.integration.test_postgres_failover import Clusters, _free_port, clusters  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]

WORKFLOW = textwrap.dedent("""
    import os
    from pathlib import Path
    import flowledger as fl
    from tests.helpers import ExternalLedger

    wf = fl.Workflow("inbox", topics=["file.seen"])
    INBOX = Path(os.environ["TEST_INBOX"])

    @wf.producer(publishes=["file.seen"], every="1s")
    def scan(ctx, state):
        for path in sorted(INBOX.glob("*.txt")):
            ctx.publish("file.seen", message_id=path.name, payload={"text": path.read_text()})

    class Ledger(fl.Tool):
        name = "ledger"
        def __init__(self):
            self.ledger = ExternalLedger(Path(os.environ["TEST_LEDGER"]), count_calls=True)
        @fl.mutator(reconcile="find")
        def append(self, key, value):
            self.ledger.note_call()
            return self.ledger.append(key, value)
        def find(self, key, value):
            found = self.ledger.find(key)
            return fl.Reconciliation.failed() if found is None else fl.Reconciliation.applied(0)

    @wf.consumer(subscribe=["file.seen"])
    class Book:
        def prepare(self, ctx, state):
            pending = ctx.peek("file.seen", limit=1)
            if not pending:
                return None
            m = pending[0]
            return fl.Prepared(reservations={"file.seen": [m.message_id]},
                               data=[m.message_id, m.payload["text"]])
        def mutate(self, ctx, prepared):
            ctx.tools.ledger.append(*prepared.data)

    TOOLS = [Ledger()]
""")


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_workers_book_every_file_once_survive_sigkill_and_stop_on_sigterm(
        tmp_path: Path, store: str) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (tmp_path / "wf.py").write_text(WORKFLOW)
    ledger = ExternalLedger(tmp_path / "ledger.db", count_calls=True)
    env = {**os.environ, "TEST_INBOX": str(inbox), "TEST_LEDGER": str(tmp_path / "ledger.db"),
           "PYTHONPATH": str(ROOT)}
    env.pop("FLOWLEDGER_CRASH_AT", None)

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "flowledger.cli", "--store", store, "worker",
             str(tmp_path / "wf.py"), "--interval", "0.1"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    a, b = start(), start()
    try:
        for i in range(6):
            (inbox / f"{i}.txt").write_text(f"file {i}")
            time.sleep(0.15)
        _wait(lambda: len(ledger.keys()) == 6, 20, "six files booked")
        assert _workers(store, tmp_path) == {a.pid: "running", b.pid: "running"}
        a.send_signal(signal.SIGKILL)
        a.wait(5)
        assert _workers(store, tmp_path) == {a.pid: "gone", b.pid: "running"}
        for i in range(6, 9):
            (inbox / f"{i}.txt").write_text(f"file {i}")
        _wait(lambda: len(ledger.keys()) == 9, 20, "the other worker to book the rest")
        started = time.monotonic()
        b.send_signal(signal.SIGTERM)
        _, err = b.communicate(timeout=10)
        took = time.monotonic() - started
        assert b.returncode == 0, err
        assert took < 5, took
        assert "session" in err  # one line per session on stderr (logging)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    assert ledger.keys() == [f"{i}.txt" for i in range(9)]
    assert ledger.calls_made() == 9  # every tool call counted: each file exactly once
    with fl.Engine(store) as engine:
        assert engine.workflow("inbox").open_session is None  # closed, or finished by takeover
        assert not engine.blocked()
        assert {_pid(w.owner): (w.state, w.how) for w in engine.workers()} == {
            a.pid: ("gone", worker_notes.GONE), b.pid: ("stopped", "stopped")}
    assert _workers(store, tmp_path) == {a.pid: "gone"}  # status: the stopped one left out


def _pid(owner: str) -> int:
    return int(owner.split(":")[-2])  # host:process id:tag


def _workers(store: str, cwd: Path) -> dict[int, str]:
    """The workers `flowledger status` shows, by process id, with their state."""
    shown = subprocess.run([sys.executable, "-m", "flowledger.cli", "--store", store, "status",
                            "--json"], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    return {_pid(w["owner"]): w["state"] for w in json.loads(shown.stdout)["workers"]}


SLOW = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import flowledger as fl
    from tests.helpers import ExternalLedger

    wf = fl.Workflow("slow", topics=["job"])

    @wf.producer(publishes=["job"], every="1h")
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
            print("calling", key, flush=True)
            time.sleep(1.0)   # the worker is told to stop during this call
            return self.ledger.append(key, "v")
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


def test_sigterm_during_a_call_finishes_the_step_closes_the_session_and_exits_0(
        tmp_path: Path, store: str) -> None:
    (tmp_path / "wf.py").write_text(SLOW)
    ledger = ExternalLedger(tmp_path / "ledger.db", count_calls=True)
    env = {**os.environ, "TEST_LEDGER": str(tmp_path / "ledger.db"), "PYTHONPATH": str(ROOT)}
    env.pop("FLOWLEDGER_CRASH_AT", None)
    worker = subprocess.Popen(
        [sys.executable, "-m", "flowledger.cli", "--store", store, "worker",
         str(tmp_path / "wf.py"), "--interval", "0.1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().startswith("calling j0")
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)  # in the middle of the first mutation
        _, err = worker.communicate(timeout=10)
        took = time.monotonic() - started
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    assert took < 3, took  # the call in progress (1 s), the close, one interval
    assert ledger.keys() == ["j0"] and ledger.calls_made() == 1  # finished, nothing more
    with fl.Engine(store) as engine:
        wf = engine.workflow("slow")
        assert wf.open_session is None  # closed, not abandoned
        [last] = engine.sessions(workflow="slow", limit=1)
        assert last.status == "budget_exhausted" and "stopping" in (last.reason or "")
        [job] = engine.pending_work("slow").topics
        assert job.pending == 2  # left for the next worker
    stopped = next(line for line in err.splitlines()
                   if "flowledger.worker" in line and "budget_exhausted" in line)
    assert "work left: " in stopped and "2 in job" in stopped, stopped  # listed, as said


def test_follow_prints_events_appended_by_another_process_as_json(
        tmp_path: Path, store: str) -> None:
    import json

    (tmp_path / "wf.py").write_text(SLOW.replace("time.sleep(1.0)", "pass"))
    env = {**os.environ, "TEST_LEDGER": str(tmp_path / "ledger.db"), "PYTHONPATH": str(ROOT)}
    env.pop("FLOWLEDGER_CRASH_AT", None)
    with fl.Engine(store):
        pass  # the store exists, empty
    follower = subprocess.Popen(
        [sys.executable, "-m", "flowledger.cli", "--store", store, "follow", "--json",
         "--after", "0", "--interval", "0.05"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        subprocess.run([sys.executable, "-m", "flowledger.cli", "--store", store, "run",
                        str(tmp_path / "wf.py")], cwd=tmp_path, env=env, check=True,
                       capture_output=True)
        assert follower.stdout is not None
        seen: list[dict[str, object]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            seen.append(json.loads(follower.stdout.readline()))
            if seen[-1]["aggregate"] == "Workflow" and seen[-1]["name"] == "SessionClosed":
                break
        follower.send_signal(signal.SIGINT)
        follower.communicate(timeout=5)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0
    names = [f"{e['aggregate']}.{e['name']}" for e in seen]
    assert names[0] == "Workflow.Registered" and "HandlerRun.MutationApplied" in names
    assert names[-1] == "Workflow.SessionClosed"
    assert [e["position"] for e in seen] == sorted(e["position"] for e in seen)
    # The object `log --json` gives (its keys were others), every time in ISO
    # 8601 (lease_until had a space), and whether it needs attention.
    logged = flowledger_json_log(store, tmp_path, env)
    assert [{k: v for k, v in e.items() if k != "notable"} for e in seen] == logged[:len(seen)]
    assert all(isinstance(e["notable"], bool) for e in seen)
    leased = next(e for e in seen if e["name"] == "SessionOpened")
    for moment in (leased["timestamp"], leased["fields"]["lease_until"]):  # type: ignore[index]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00",
                            str(moment)), moment


def flowledger_json_log(store: str, cwd: Path, env: dict[str, str]) -> list[object]:
    import json

    done = subprocess.run([sys.executable, "-m", "flowledger.cli", "--store", store, "log",
                           "--json"], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_worker_killed_in_a_call_is_replaced_and_nothing_is_done_twice(
        tmp_path: Path, store: str) -> None:
    (tmp_path / "wf.py").write_text(SLOW.replace("time.sleep(1.0)", "time.sleep(0.5)"))
    ledger = ExternalLedger(tmp_path / "ledger.db", count_calls=True)
    env = {**os.environ, "TEST_LEDGER": str(tmp_path / "ledger.db"), "PYTHONPATH": str(ROOT)}
    env.pop("FLOWLEDGER_CRASH_AT", None)

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "flowledger.cli", "--store", store, "worker",
             str(tmp_path / "wf.py"), "--interval", "0.1"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    a = start()
    b: subprocess.Popen[str] | None = None
    try:
        assert a.stdout is not None
        assert a.stdout.readline().startswith("calling j0")  # in flight, not yet written
        a.send_signal(signal.SIGKILL)
        a.wait(5)
        b = start()  # replaces it: takes the session over, reconciles j0, goes on
        _wait(lambda: len(ledger.keys()) == 3, 20, "the second worker to finish")
        b.send_signal(signal.SIGTERM)
        _, err = b.communicate(timeout=10)
        assert b.returncode == 0, err
        assert "took over session" in err
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
    assert ledger.keys() == ["j0", "j1", "j2"]
    # j0's first call was cut off before it wrote; reconcile proved it, one fresh call
    # wrote it. Four calls, three writes, no key written twice.
    assert ledger.calls_made() == 4
    with ledger._db() as db:
        assert db.execute("SELECT COUNT(*) FROM duplicates").fetchone()[0] == 0


def _worker_on(store: str, folder: Path, inbox: Path) -> subprocess.Popen[str]:
    """`flowledger worker` of WORKFLOW (its ledger: folder/ledger.db) on `store`,
    its stderr piped."""
    (folder / "wf.py").write_text(WORKFLOW)
    env = {**os.environ, "TEST_INBOX": str(inbox), "TEST_LEDGER": str(folder / "ledger.db"),
           "PYTHONPATH": str(ROOT)}
    env.pop("FLOWLEDGER_CRASH_AT", None)
    return subprocess.Popen(
        [sys.executable, "-m", "flowledger.cli", "--store", store, "worker",
         str(folder / "wf.py"), "--interval", "0.1"],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _sigterm(worker: subprocess.Popen[str]) -> str:
    """SIGTERM, then what it said on stderr (killed if it is not gone in 20 s)."""
    try:
        worker.send_signal(signal.SIGTERM)
        return worker.communicate(timeout=20)[1]
    finally:
        if worker.poll() is None:
            worker.kill()


@pytest.mark.postgres
def test_a_worker_started_before_its_server_waits_for_it_then_serves(
        tmp_path: Path, clusters: Clusters) -> None:  # noqa: F811
    """At boot, a worker may start before the database: it ended at once
    (exit 2), and a supervisor's restarts could hit their limit. It waits,
    saying so, and serves once the server is up."""
    port = clusters.ports["a"] = _free_port()
    store = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.txt").write_text("A")
    ledger = ExternalLedger(tmp_path / "ledger.db", count_calls=True)
    worker = _worker_on(store, tmp_path, inbox)
    try:
        time.sleep(2)
        assert worker.poll() is None, worker.communicate()[1]  # still there, waiting
        clusters.primary("a")
        _wait(lambda: ledger.keys() == ["a.txt"], 60, "the worker to serve once the server is up")
    finally:
        err = _sigterm(worker)
    assert worker.returncode == 0, err
    assert "trying again in" in err and "Connection refused" in err
    assert ledger.calls_made() == 1


@pytest.mark.postgres
def test_a_worker_still_waiting_for_its_server_stops_on_sigterm_with_exit_0(
        tmp_path: Path) -> None:
    """`worker --help`: SIGTERM stops a worker, exit 0. One that was still
    waiting for a server that is not up died of the signal (exit 143, no word
    said): the signals were taken over only once it served."""
    store = f"postgresql://postgres@127.0.0.1:{_free_port()}/postgres"  # nothing listens
    worker = _worker_on(store, tmp_path, tmp_path)
    try:
        time.sleep(3)
        assert worker.poll() is None, worker.communicate()[1]  # still there, waiting
    finally:
        err = _sigterm(worker)
    assert worker.returncode == 0, err
    assert "trying again in" in err
    assert "stopped before its store could be opened" in err
    assert " serving " not in err  # it never got as far as serving
