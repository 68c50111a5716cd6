"""`flowledger copy --from URL --to URL` as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from tests.e2e.test_cli import assert_user_error, flowledger
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow, mid_call_tool


def test_copy_moves_a_log_and_refuses_a_store_that_is_not_empty(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'old.db'}"
    with fl.Engine(source) as engine:
        engine.register(ledger_workflow(items=["a", "b"]),
                        tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))])
        engine.run_session("wf")
        count = len(list(engine.events()))
    target = f"sqlite:///{tmp_path / 'new.db'}"
    done = flowledger("copy", "--from", source, "--to", target, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"copied {count} events to {target}" in done.stdout
    assert "━" not in done.stdout + done.stderr  # piped: no progress bar, plain text
    assert "Its chain is its own: anchor its head anew" in done.stdout
    assert "sessions were open" not in done.stderr
    status = flowledger("--store", target, "status", cwd=tmp_path)
    assert status.returncode == 0 and "wf" in status.stdout
    again = flowledger("copy", "--from", source, "--to", target, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{target} holds this copy already, whole: its {count} events (no event was " \
           "written now)" in again.stdout
    other = f"sqlite:///{tmp_path / 'other.db'}"
    fl.Engine(other).close()
    refused = flowledger("copy", "--from", other, "--to", target, cwd=tmp_path)
    assert_user_error(refused, f"already holds {count} events", "Copy into a new, empty store")


def _copied_in_a_process(patch: str, source: str, target: str,
                         tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`flowledger copy` run in a process of its own, with `patch` (Python that
    may wrap `command`, the copy command's module) applied first."""
    script = ("import os, signal, sys\n"
              "import flowledger.cli.copy_command as command\n"
              "from flowledger.cli.application import main\n"
              f"{patch}"
              "sys.argv = ['flowledger', 'copy', '--from', sys.argv[1], '--to', sys.argv[2]]\n"
              "main()\n")
    env = {k: v for k, v in os.environ.items() if k != "FLOWLEDGER_STORE"}
    return subprocess.run([sys.executable, "-c", script, source, target], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


def _ran_once(tmp_path: Path, items: list[str]) -> tuple[str, list[tuple[Any, ...]]]:
    """An SQLite store the ledger workflow ran in once: its URL, and its log."""
    source = f"sqlite:///{tmp_path / 'old.db'}"
    with fl.Engine(source) as engine:
        engine.register(ledger_workflow(items=items),
                        tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))])
        engine.run_session("wf")
        return source, [(e.position, e.stream_id, e.version, e.name)
                        for e in engine.events()]


@pytest.mark.parametrize(("stop", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["ctrl-c", "sigterm"])
def test_an_interrupted_copy_says_so_and_the_same_command_finishes_it(
        tmp_path: Path, stop: signal.Signals, code: int) -> None:
    """Ctrl-C (a real SIGINT) midway: one line saying where it stopped and
    what to do, exit 130; the same command then finishes the copy, every
    event at its source's position. SIGTERM killed the copy without a word
    (a service manager stopping it): it now stops as Ctrl-C does, exit 143.
    Stopped again before it copied more, it said "before any event was
    copied" of a target holding 40: it says what is in."""
    source, logged = _ran_once(tmp_path, ["a", "b", "c"])
    target = f"sqlite:///{tmp_path / 'new.db'}"
    stopped = _copied_in_a_process(  # batches of 20 events; the signal once 40 are in
        "import flowledger.infrastructure.copying as copying\n"
        "copying.BATCH = 20\n"
        "real = command.copy_store_report\n"
        "def interrupted(source, target, progress, **keys):\n"
        "    def at(done, total):\n"
        "        progress(done, total)\n"
        "        if done >= 40:\n"
        f"            os.kill(os.getpid(), {int(stop)})\n"
        "    return real(source, target, at, **keys)\n"
        "command.copy_store_report = interrupted\n", source, target, tmp_path)
    said = (f"error: the copy into {target} was interrupted with at least 40 of about "
            f"{len(logged)} events in. Run the same command again: it goes on where this one "
            "stopped, or finds the copy whole")
    assert stopped.returncode == code, stopped.stderr
    assert stopped.stderr.strip().splitlines() == [said], stopped.stderr
    # Stopped again at once: it says what is in, not that nothing was copied.
    again = _copied_in_a_process(
        "real = command.copy_store_report\n"
        "def interrupted(source, target, progress, **keys):\n"
        "    def at(done, total):\n"
        "        progress(done, total)\n"
        f"        os.kill(os.getpid(), {int(stop)})\n"
        "    return real(source, target, at, **keys)\n"
        "command.copy_store_report = interrupted\n", source, target, tmp_path)
    assert again.returncode == code, again.stderr
    assert again.stderr.strip().splitlines() == [said], again.stderr
    done = flowledger("copy", "--from", source, "--to", target, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with fl.Engine(target) as copy:
        assert [(e.position, e.stream_id, e.version, e.name)
                for e in copy.events()] == logged


def test_a_ctrl_c_once_the_copy_is_whole_ends_it_as_done(tmp_path: Path) -> None:
    """The signal comes as the copy reports it is done: it says so and exits 0
    (it was cut short, or the process killed by the signal as it ended)."""
    source, _ = _ran_once(tmp_path, ["a"])
    target = f"sqlite:///{tmp_path / 'new.db'}"
    ended = _copied_in_a_process(
        "real = command.say\n"
        "def say(text):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    real(text)\n"
        "command.say = say\n", source, target, tmp_path)
    assert ended.returncode == 0, ended.stderr
    assert f"events to {target}" in ended.stdout


def test_copy_says_when_sessions_were_open_in_the_source(tmp_path: Path) -> None:
    """A store copied while a process held a session (or after it crashed in
    one): the copy holds the session open too, and the two logs go apart if
    the process runs on; said on stderr, and in --json."""
    source = f"sqlite:///{tmp_path / 'live.db'}"
    with fl.Engine(source) as engine:
        engine.register(ledger_workflow(items=["a", "b"]),
                        tools=[mid_call_tool(lambda key: copies.append(flowledger(
                            "copy", "--from", source, "--to",
                            f"sqlite:///{tmp_path / f'copy-{len(copies)}.db'}",
                            *(["--json"] if copies else []), cwd=tmp_path)))(
                            ExternalLedger(tmp_path / "l.db"))])
        copies: list[Any] = []
        engine.run_session("wf", max_iterations=2)
    text, as_json = copies
    # Its holder (this process) runs: said so, and exit 1 (it said "if", exit 0).
    assert text.returncode == 1, text.stderr
    assert ("note: sessions of wf are held in the source by processes that still run: "
            "their work from now on goes to the source alone") in text.stderr
    assert "sessions were open in the source" not in text.stderr
    assert as_json.returncode == 1, as_json.stderr
    said = json.loads(as_json.stdout)
    assert said["open_sessions"] == ["wf"] and said["still_held"] == ["wf"]


def test_a_copy_of_a_session_whose_holder_crashed_says_the_copy_continues_it(
        tmp_path: Path) -> None:
    """Its holder gone (crashed in this process: judged so, as a dead process
    is), the session is one the copy continues, and the copy is not held."""
    import flowledger.testing as flt
    from flowledger.engine.engine import copy_store_report

    source = f"sqlite:///{tmp_path / 'crashed.db'}"
    engine = fl.Engine(source)
    engine.register(ledger_workflow(items=["a"]),
                    tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))])
    with flt.crash_at(engine, "before_call"):
        engine.run_session("wf")
    report = copy_store_report(source, f"sqlite:///{tmp_path / 'copy.db'}")
    assert report.open_sessions == ("wf",) and report.still_held == ()
