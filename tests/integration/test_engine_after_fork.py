"""An engine used in a process forked from the one that opened it (a pre-forking
server's workers, multiprocessing's 'fork') is refused there, and its close
there touches nothing of the parent's (closing.Activity.forked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from tests import postgres
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow


def in_child(work: Any, report: Path, timeout: float = 60) -> dict[str, Any]:
    """Fork; run `work()` in the child (its dict written to `report`), then wait."""
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            signal_alarm(timeout)
            report.write_text(json.dumps(work()))
            code = 0
        except BaseException as e:  # said to the parent through the report
            report.write_text(json.dumps({"crashed": repr(e)}))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    said = json.loads(report.read_text()) if report.exists() else {}
    assert os.waitstatus_to_exitcode(status) == 0, said
    return dict(said)


def signal_alarm(seconds: float) -> None:
    import signal
    signal.alarm(int(seconds))  # a hang ends the child (the parent then fails)


def test_a_forked_child_is_refused_the_parents_engine_and_the_parent_goes_on(
        store: str, tmp_path: Path) -> None:
    """Before: on PostgreSQL the child's session broke every later session of the
    parent (its prepared statements on the parent's sockets); on SQLite the child
    ran under the parent's pid, so its session was taken over once the parent
    ended, and its heartbeat thread did not exist."""
    ledger = ExternalLedger(tmp_path / "l.db")
    parent_tool = ScriptedLedgerTool(ledger)
    engine = fl.Engine(store)
    engine.register(ledger_workflow("first", items=["a"]), tools=[parent_tool])
    engine.register(ledger_workflow("second", items=["b"]), tools=[parent_tool])
    assert engine.run_session("first").status == "completed"  # connections, heartbeat

    def child() -> dict[str, Any]:
        said: dict[str, Any] = {}
        try:
            engine.run_session("second")
        except fl.EngineForked as e:
            said["refused"] = str(e)
        try:
            engine.status()
        except fl.EngineForked:
            said["read refused"] = True
        started = time.monotonic()
        engine.close()  # closes nothing of the parent's, waits for nothing
        said["closed in"] = time.monotonic() - started
        own_tool = ScriptedLedgerTool(ledger)
        with fl.Engine(store) as own:  # what the message says to do
            own.register(ledger_workflow("second", items=["b"]), tools=[own_tool])
            said["own"] = own.run_session("second").status
        said["own calls"] = own_tool.calls
        return said

    said = in_child(child, tmp_path / "child.json")

    assert said["refused"].startswith(f"this engine was opened in process {os.getpid()} "
                                      "and is used in process ")
    assert "Open a new fl.Engine in the child, after the fork" in said["refused"]
    assert said["read refused"] and said["closed in"] < 1
    assert said["own"] == "completed" and said["own calls"] == [["b", "v-b"]]
    try:  # the parent's engine works on, on its own connections
        engine.register(ledger_workflow("third", items=["c"]), tools=[parent_tool])
        assert engine.run_session("third").status == "completed"
        assert engine.run_session("second").status == "completed"  # nothing left to do
        assert parent_tool.calls == [("a", "v-a"), ("c", "v-c")]
        assert ledger.keys() == ["a", "b", "c"]
        assert engine.verify().ok
    finally:
        engine.close()


def test_a_child_closes_at_once_what_was_busy_in_the_parent_at_the_fork(
        store: str, tmp_path: Path) -> None:
    """A session under way in another thread of the parent at the fork: closing
    the child's copy waited forever for that thread, which the child does not have."""
    ledger = ExternalLedger(tmp_path / "l.db")
    in_call, go_on = threading.Event(), threading.Event()

    class Slow(ScriptedLedgerTool):
        @fl.mutator(reconcile="find_appended")
        def append(self, key: str, value: str) -> dict[str, Any]:
            in_call.set()
            go_on.wait(30)
            return super().append(key, value)

    tool = Slow(ledger)
    engine = fl.Engine(store)
    engine.register(ledger_workflow(items=["a"]), tools=[tool])
    session = threading.Thread(target=engine.run_session, args=("wf",))
    session.start()
    try:
        assert in_call.wait(30)

        def child() -> dict[str, Any]:
            started = time.monotonic()
            engine.close()
            return {"closed in": time.monotonic() - started}

        said = in_child(child, tmp_path / "child.json", timeout=20)
        assert said["closed in"] < 1
    finally:
        go_on.set()
        session.join(30)
    try:
        assert tool.calls == [("a", "v-a")] and ledger.keys() == ["a"]
        assert engine.run_session("wf").status == "completed"  # the session was closed
        assert tool.calls == [("a", "v-a")] and engine.verify().ok
    finally:
        engine.close()


CHILD_EXITS = '''
import json, os, sys
import psycopg
import flowledger as fl
from tests.helpers import MemoryLedger, ScriptedLedgerTool, ledger_workflow

url, admin, app = sys.argv[1:4]

def backends():
    with psycopg.connect(admin, autocommit=True) as a:
        return sorted(p for (p,) in a.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)))

engine = fl.Engine(url)
engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(MemoryLedger())])
engine.run_session("wf")
follow = engine.follow()
next(follow)  # its listener's connection is open
before = backends()
pid = os.fork()
if pid == 0:  # the child: a generator closed, then the interpreter's own exit
    follow.close()
    sys.exit(0)
os.waitpid(pid, 0)
after = backends()
print(json.dumps({"before": before, "after": after}))
engine.close()
'''


@pytest.mark.postgres
def test_a_child_exiting_ends_none_of_the_parents_connections(tmp_path: Path) -> None:
    """libpq's Terminate, sent on the shared sockets as a child closed a generator
    and exited, ended every connection of the parent, its liveness lock's too."""
    app = f"forktest-{uuid.uuid4().hex[:8]}"
    with postgres.fresh_schema() as url:
        said = subprocess.run(
            [sys.executable, "-c", CHILD_EXITS, f"{url}&application_name={app}",
             postgres.URL, app], capture_output=True, text=True, timeout=120,
            cwd=Path(__file__).parents[2])
    assert said.returncode == 0, said.stderr
    seen = json.loads(said.stdout.strip().splitlines()[-1])
    assert len(seen["before"]) >= 3  # a writer, a reader, the liveness lock's, the listener
    assert seen["after"] == seen["before"]
