"""One open session per workflow (DESIGN §1.5), between real processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import flowledger as fl
from tests.helpers import release_together

RACER = textwrap.dedent("""
    import sys, time, json
    from pathlib import Path
    import flowledger as fl
    wf = fl.Workflow("race", topics=["t"])

    @wf.consumer(subscribe=["t"])
    class Slow:
        def prepare(self, ctx, state):
            return None

    @wf.producer(publishes=["t"])
    def slow(ctx, state):
        if len(sys.argv) > 2:  # hold the session until the test opens the gate
            gate = Path(sys.argv[2])
            print("holding", flush=True)
            deadline = time.monotonic() + 60
            while not gate.exists() and time.monotonic() < deadline:
                time.sleep(0.02)

    engine = fl.Engine(sys.argv[1])
    engine.register(wf)
    print(json.dumps(engine.run_session("race").status), flush=True)
""")


def test_two_processes_race_for_one_workflow_and_one_gets_busy(tmp_path: Path, store: str):
    script, gate = tmp_path / "racer.py", tmp_path / "gate"
    script.write_text(RACER)
    slow = subprocess.Popen([sys.executable, str(script), store, str(gate)],
                            stdout=subprocess.PIPE, text=True)
    try:
        # Its producer runs inside its session, and holds it until the gate opens.
        assert slow.stdout is not None and slow.stdout.readline().strip() == "holding"
        fast = subprocess.run([sys.executable, str(script), store], capture_output=True,
                              text=True, timeout=60)
    finally:
        gate.touch()
    out, _ = slow.communicate(timeout=60)
    assert fast.stdout.strip() == '"busy"', fast.stderr
    assert out.strip().splitlines()[-1] == '"completed"'


STARTER = textwrap.dedent("""
    import sys, json
    import flowledger as fl
    wf = fl.Workflow("race", topics=["t"])

    @wf.producer(publishes=["t"])
    def quick(ctx, state):
        pass

    engine = fl.Engine(sys.argv[1])
    engine.register(wf)
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sys.stdin.readline()
    print(json.dumps(engine.run_session("race").status), flush=True)
""")


def test_simultaneous_opens_never_give_two_sessions(tmp_path: Path, store: str):
    """Many processes released at once: sessions never overlap in the log."""
    script = tmp_path / "starter.py"
    script.write_text(STARTER)
    procs = [subprocess.Popen([sys.executable, str(script), store], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    release_together(procs)
    statuses = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert set(statuses) <= {'"busy"', '"completed"'} and '"completed"' in statuses
    engine = fl.Engine(store)
    try:
        opened = 0
        for e in engine.events(workflow="race"):
            if e.name == "SessionOpened":
                opened += 1
                assert opened == 1, "a second session opened before the first closed"
            elif e.name == "SessionClosed":
                opened -= 1
    finally:
        engine.close()
