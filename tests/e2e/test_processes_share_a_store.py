"""Processes sharing one store (DESIGN §7), on SQLite and on PostgreSQL.

* Four processes race sessions over three workflows: every call of the tool
  is counted (in a file each call appends to, not rows under a unique key),
  each item is mutated exactly once, and no workflow ever has two sessions
  open at once in the log.
* A holder stopped with SIGSTOP past its lease is taken over; resumed, its
  next append is refused and it never mutates.
* A holder killed with SIGKILL is taken over at once, without waiting out its
  lease (PostgreSQL: its advisory lock went with its connection; SQLite: its
  process id is gone).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import flowledger as fl
from tests.helpers import release_together

ROOT = str(Path(__file__).resolve().parents[2])

WORKFLOWS = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[3])
    import flowledger as fl

    CALLS = sys.argv[2]  # one line per call of the mutator, by any process

    class Ledger(fl.Tool):
        name = "ledger"

        @fl.mutator(reconcile="find")
        def append(self, key):
            with open(CALLS, "a") as f:
                f.write(key + "\\n")
                f.flush()
                os.fsync(f.fileno())
            return key

        def find(self, key):
            with open(CALLS) as f:
                done = key in f.read().split()
            return fl.Reconciliation.applied(key) if done else fl.Reconciliation.failed()

    def workflow(name, items, pause):
        wf = fl.Workflow(name, topics=["in"])

        @wf.producer(publishes=["in"])
        def feed(ctx, state):
            for item in items:
                ctx.publish("in", message_id=item, payload=item)

        @wf.consumer(subscribe=["in"])
        class Append:
            def prepare(self, ctx, state):
                m = ctx.peek("in", limit=1)
                if not m:
                    return None
                if pause:
                    print("preparing", flush=True)  # no transaction of ours is open now
                time.sleep(pause)
                return fl.Prepared(reservations={"in": [m[0].message_id]}, data=m[0].payload)

            def mutate(self, ctx, prepared):
                ctx.tools.ledger.append(f"{name}/{prepared.data}")

        return wf
""")

RACER = WORKFLOWS + textwrap.dedent("""
    engine = fl.Engine(sys.argv[1], policy=fl.RetryPolicy(lease_seconds=30))
    names = ["w1", "w2", "w3"]
    for n in names:
        engine.register(workflow(n, [f"i{k}" for k in range(6)], 0.0), tools=[Ledger()])
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sys.stdin.readline()
    for _ in range(6):
        for n in names:
            engine.run_session(n, max_iterations=2)
    print("done", flush=True)
""")

HOLDER = WORKFLOWS + textwrap.dedent("""
    engine = fl.Engine(sys.argv[1], policy=fl.RetryPolicy(lease_seconds=float(sys.argv[4])))
    engine.register(workflow("wf", ["a"], float(sys.argv[5])), tools=[Ledger()])
    print("started", flush=True)
    try:
        print(engine.run_session("wf").status, flush=True)
    except fl.ConcurrencyError as e:
        print("fenced:", e, flush=True)
""")


def in_process(log: Path) -> tuple[Any, Any]:
    """The scripts' workflow builder and tool, in this process, counting into `log`."""
    namespace: dict[str, Any] = {}
    source = WORKFLOWS.replace("sys.argv[2]", repr(str(log))).replace(
        "sys.path.insert(0, sys.argv[3])", "")
    exec(compile(source, "workflows", "exec"), namespace)
    return namespace["workflow"], namespace["Ledger"]


def calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def open_session_of(store: str, name: str) -> object:
    with fl.Engine(store) as engine:
        return next((w.open_session for w in engine.status().workflows if w.name == name),
                    None)


def wait_for_open_session(store: str, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if open_session_of(store, name) is not None:
                return
        except fl.FlowledgerError:
            pass
        time.sleep(0.05)
    raise AssertionError("the holder never opened its session")


def test_racing_processes_mutate_each_item_exactly_once(tmp_path: Path, store: str) -> None:
    race_and_count_calls(tmp_path, store)


def race_and_count_calls(tmp_path: Path, store: str) -> None:
    """Four processes race sessions of three workflows on `store`: each item
    mutated once, never two sessions of a workflow open at once."""
    script, log = tmp_path / "racer.py", tmp_path / "calls.txt"
    script.write_text(RACER)
    procs = [subprocess.Popen([sys.executable, str(script), store, str(log), ROOT],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    release_together(procs)
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all("done" in out for out in outs), outs
    # What the racers left (their sessions found the others' held often enough,
    # on a loaded machine, to leave an item or two) is finished here, by the
    # same workflows counting into the same log: a fifth process, as a worker.
    workflow, ledger = in_process(log)
    with fl.Engine(store) as engine:
        for name in ("w1", "w2", "w3"):
            engine.register(workflow(name, [f"i{k}" for k in range(6)], 0.0),
                            tools=[ledger()])
        engine.recover()
        leftover = [engine.run_session(n).status for n in ("w1", "w2", "w3")]
        assert set(leftover) <= {"completed"}, leftover
        made = calls(log)
        wanted = sorted(f"{n}/i{k}" for n in ("w1", "w2", "w3") for k in range(6))
        assert sorted(made) == wanted, "an item was mutated twice, or not at all"
        for name in ("w1", "w2", "w3"):
            opened = 0
            for e in engine.events(workflow=name):
                if e.name == "SessionOpened":
                    opened += 1
                    assert opened == 1, f"{name}: two sessions open at once"
                elif e.name == "SessionClosed":
                    opened -= 1


def test_a_holder_stopped_past_its_lease_is_fenced_when_it_resumes(tmp_path: Path,
                                                                   store: str) -> None:
    script, log = tmp_path / "holder.py", tmp_path / "calls.txt"
    script.write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), store, str(log), ROOT, "2", "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "started"
    # Frozen inside prepare, before its mutation, holding no write lock (a process
    # frozen inside a write transaction would hold the store's lock with it).
    assert holder.stdout.readline().strip() == "preparing"
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        time.sleep(2.5)  # its 2 s lease runs out while it is stopped
        workflow, ledger = in_process(log)
        with fl.Engine(store) as engine:
            engine.register(workflow("wf", ["a"], 0.0), tools=[ledger()])
            assert [r.status for r in engine.recover()] == ["completed"]
            assert calls(log) == ["wf/a"]
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    out, err = holder.communicate(timeout=60)
    assert out.startswith("fenced:") and "this session lost its lock" in out, (out, err)
    assert calls(log) == ["wf/a"]  # the resumed holder never mutated


def test_a_killed_holder_is_taken_over_at_once(tmp_path: Path, store: str) -> None:
    kill_holder_and_take_over(tmp_path, store)


def kill_holder_and_take_over(tmp_path: Path, store: str) -> None:
    """A holder with an hour's lease, killed mid-session, is taken over within
    20 s and its item mutated once."""
    script, log = tmp_path / "holder.py", tmp_path / "calls.txt"
    script.write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), store, str(log), ROOT, "3600",
                               "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "started"
    wait_for_open_session(store, "wf")
    holder.kill()
    holder.wait(timeout=30)
    workflow, ledger = in_process(log)
    deadline = time.monotonic() + 20
    with fl.Engine(store) as engine:
        engine.register(workflow("wf", ["a"], 0.0), tools=[ledger()])
        while True:  # the server may take a moment to notice the dropped connection
            results = engine.recover()
            if results and results[0].status != "busy":
                break
            assert time.monotonic() < deadline, "not taken over within 20 s (lease: 1 h)"
            time.sleep(0.2)
        assert results[0].status == "completed", results
        assert calls(log) == ["wf/a"]
