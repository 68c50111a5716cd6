"""Issue 13, the rest, as a user sees it: `log --follow` printing the log and then
what another process appends, `recover` counting runs on a terminal (and quiet
when piped or --json), and a CLI that sits above the store's drivers.

Real subprocesses at COLUMNS=80, as test_cli_narrow.py runs them."""

from __future__ import annotations

import ast
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.test_cli import EXAMPLE, flowledger
from tests.e2e.test_cli_narrow import ANSI, narrow

REPO = Path(__file__).resolve().parents[2]

# Each run publishes one new message (named by the time), and one consumer takes it.
TICKS = '''
import time
import flowledger as fl

wf = fl.Workflow("ticks", topics=["tick"])


@wf.producer(publishes=["tick"])
def clock(ctx, state):
    ctx.publish("tick", message_id=str(time.time_ns()), payload={})


@wf.consumer(subscribe=["tick"])
class Count:
    def prepare(self, ctx, state):
        ticks = ctx.peek("tick", limit=1)
        if not ticks:
            return None
        return fl.Prepared(reservations={"tick": [ticks[0].message_id]})
'''

LINE = re.compile(r"^\s*(\d+)  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  (\S+)\s+([0-9a-f]{8})\b")


class Lines:
    """A process's stdout, line by line, read on a thread: waiting for a line has
    a deadline, whatever the process does."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self.queue.put(line.rstrip("\n"))
            self.queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, wanted: re.Pattern[str], seconds: float = 20) -> str:
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = self.queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {wanted.pattern!r} in {seconds} s: "
                                     f"{self.seen}") from None
            if line is None:
                raise AssertionError(f"the output ended before {wanted.pattern!r}: {self.seen}")
            self.seen.append(line)
            if wanted.search(line):
                return line


def start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLOWLEDGER_STORE"}
    env["COLUMNS"] = "80"
    return subprocess.Popen([sys.executable, "-m", "flowledger.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen[str], signum: int = signal.SIGINT) -> str:
    """Ctrl-C, as a user stops it (or `signum`); returns its stderr."""
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return stderr


@pytest.fixture
def ticks(tmp_path: Path) -> Path:
    (tmp_path / "ticks.py").write_text(TICKS)
    assert flowledger("run", "ticks.py", cwd=tmp_path).returncode == 0
    return tmp_path


# ------------------------------------------------------------------ log --follow


@pytest.mark.parametrize("flag", ["--follow", "-f"])
def test_log_follow_prints_the_log_then_what_another_process_appends(ticks: Path,
                                                                     flag: str) -> None:
    history = narrow("log", cwd=ticks).stdout.splitlines()
    closed = re.compile(r"Workflow\.SessionClosed")
    follower = start("log", flag, "--workflow", "ticks", cwd=ticks)
    try:
        out = Lines(follower)
        out.until(closed)  # the log so far, as `log` prints it ...
        assert out.seen == history
        last = int(LINE.match(out.seen[-1]).group(1))  # type: ignore[union-attr]

        again = flowledger("run", "ticks.py", cwd=ticks)  # ... then another process
        assert again.returncode == 0, again.stderr
        out.until(closed)
    finally:
        stderr = stop(follower)
    assert follower.returncode == 0, stderr
    assert "Traceback" not in stderr
    live = out.seen[len(history):]
    rows = [LINE.match(line) for line in live]
    assert all(rows), live  # the lines `log` prints: position, time, event, short id
    positions = [int(r.group(1)) for r in rows if r]
    assert positions[0] == last + 1 and positions == sorted(set(positions))
    assert [r.group(2) for r in rows if r][:2] == ["Session.Opened", "Workflow.SessionOpened"]
    assert live == narrow("log", "--after", str(last), cwd=ticks).stdout.splitlines()[1:]


def test_log_follow_json_goes_on_from_the_last_event_shown(ticks: Path) -> None:
    import json

    follower = start("log", "--follow", "--json", "--limit", "1", cwd=ticks)
    try:
        out = Lines(follower)
        first = json.loads(out.until(re.compile(r"SessionClosed")))
        assert len(out.seen) == 1  # --limit 1: the last event only, then live
        assert flowledger("run", "ticks.py", cwd=ticks).returncode == 0
        out.until(re.compile(r"SessionClosed"))
    finally:
        stop(follower)
    events = [json.loads(line) for line in out.seen]
    assert [e["position"] for e in events] == list(range(first["position"],
                                                         events[-1]["position"] + 1))


def test_follow_prints_the_lines_log_prints_marked_when_they_need_attention(
        ticks: Path) -> None:
    follower = start("follow", "--after", "0", cwd=ticks)
    try:
        out = Lines(follower)
        out.until(re.compile(r"Workflow\.SessionClosed"))
    finally:
        stop(follower)
    history = narrow("log", cwd=ticks).stdout.splitlines()[1:]
    assert [line[3:] for line in out.seen] == history  # one time format, short ids
    assert all(line.startswith("   ") for line in out.seen)  # nothing needs attention


def test_follow_stops_on_sigterm_as_on_ctrl_c(ticks: Path) -> None:
    """A service manager stops it with SIGTERM: the loop ends within its
    interval, with no traceback, and exit status 0."""
    follower = start("follow", "--after", "0", "--interval", "0.05", cwd=ticks)
    try:
        Lines(follower).until(re.compile(r"Workflow\.SessionClosed"))
    finally:
        stderr = stop(follower, signal.SIGTERM)
    assert follower.returncode == 0, stderr
    assert "Traceback" not in stderr


# ------------------------------------------------------------------ recover's progress


def screen(text: str) -> list[str]:
    """What a terminal showed, line by line: colours dropped, each redraw a line."""
    text = re.sub(r"\x1b\[\??[0-9;]*[A-Za-z]", "", ANSI.sub("", text))
    return [line.rstrip() for line in re.split(r"[\r\n]", text) if line.strip()]


def test_recover_counts_runs_on_a_terminal(crashed: Path) -> None:
    shown = narrow("recover", str(EXAMPLE), cwd=crashed, env={"TTY_COMPATIBLE": "1"})
    assert shown.returncode == 0, shown.stderr
    counts = [re.search(r"recovering .*?(\d+) of ~?(\d+) runs?", line)
              for line in screen(shown.stderr)]
    found = [(int(m.group(1)), int(m.group(2))) for m in counts if m]
    assert found, shown.stderr
    assert found[-1] == (5, 5)  # the five runs the recovered session did
    assert all(len(line) <= 80 for line in screen(shown.stderr))
    assert "Recovered sessions" in shown.stdout


@pytest.mark.parametrize("args", [[], ["--json"]], ids=["piped", "json-on-a-terminal"])
def test_recover_shows_no_progress_when_piped_or_json(crashed: Path, args: list[str]) -> None:
    env = {"TTY_COMPATIBLE": "1"} if args else {}
    shown = narrow("recover", str(EXAMPLE), *args, cwd=crashed, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "recovering" not in shown.stderr
    assert shown.stderr.strip() == ""


# ------------------------------------------------------------------ layers


DRIVERS = ("sqlite3", "psycopg", "psycopg_pool", "eventsourcing")


def test_no_cli_module_imports_a_database_driver() -> None:
    """The CLI sits above the store: it opens one through the engine and catches
    only flowledger's errors, never a driver's (sqlite3.DatabaseError, ...)."""
    found = []
    for path in sorted((REPO / "flowledger" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in DRIVERS]
    assert found == []


def test_a_store_that_cannot_be_opened_is_one_line_through_the_engine_alone(
        tmp_path: Path) -> None:
    """What the CLI caught itself before (a folder, a file that is not a database, a
    read-only file that is not a store yet) now comes from the engine as one of
    flowledger's errors: one line, exit 2."""
    (tmp_path / "notes.txt").write_text("not a database " * 100)
    (tmp_path / "folder").mkdir()
    import sqlite3

    with sqlite3.connect(tmp_path / "bare.db") as db:
        db.execute("PRAGMA user_version = 1")
    for url, fragment in [("sqlite:///notes.txt", "is not a flowledger store"),
                          ("sqlite:///folder", "is a folder"),
                          ("sqlite:///bare.db?mode=ro", "not a flowledger store yet")]:
        shown = narrow("--store", url, "status", cwd=tmp_path)
        assert shown.returncode == 2, (url, shown.stderr)
        lines = ANSI.sub("", shown.stderr).strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot open store"), lines
        assert fragment in lines[0]


def test_follow_marks_budget_ends_not_the_stops_someone_asked_for(tmp_path: Path) -> None:
    """`follow` marks `!!` (and `--blocked` keeps) a session that ran out of its
    budget with work left, not one closed because someone stopped it: every
    worker restart or deploy (budget `worker_stop`) and every Ctrl-C of `run`
    (budget `stop`) looked like an alert."""
    import flowledger as fl
    from flowledger.cli.worker_commands import _notable
    from tests.helpers import MemoryLedger, ScriptedLedgerTool, ledger_workflow

    engine = fl.Engine(f"sqlite:///{tmp_path / 'flow.db'}")
    try:
        engine.register(ledger_workflow(items=["a", "b", "c"]),
                        tools=[ScriptedLedgerTool(MemoryLedger())])
        asked = threading.Event()
        asked.set()
        assert engine.run_session("wf", stop=asked).status == "budget_exhausted"
        assert engine.run_session("wf", max_iterations=1).status == "budget_exhausted"
        closed = {e.fields["budget"]: _notable(e) for e in engine.events()
                  if (e.aggregate, e.name) == ("Session", "Closed")}
    finally:
        engine.close()
    assert closed == {"stop": False, "max_iterations": True}
