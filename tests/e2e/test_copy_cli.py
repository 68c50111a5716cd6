"""`flowledger copy --from URL --to URL` as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def test_an_interrupted_copy_says_so_and_the_same_command_finishes_it(tmp_path: Path) -> None:
    """Ctrl-C (a real SIGINT) midway: one line saying where it stopped and
    what to do, exit 130; the same command then finishes the copy."""
    import os
    import subprocess
    import sys

    source = f"sqlite:///{tmp_path / 'old.db'}"
    with fl.Engine(source) as engine:
        engine.register(ledger_workflow(items=["a", "b", "c"]),
                        tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))])
        engine.run_session("wf")
        logged = [(e.stream_id, e.version, e.name) for e in engine.events()]
    target = f"sqlite:///{tmp_path / 'new.db'}"
    script = (  # batches of 20 events; Ctrl-C once 40 are in
        "import os, signal, sys\n"
        "import flowledger.infrastructure.copying as copying\n"
        "import flowledger.cli.copy_command as command\n"
        "from flowledger.cli.application import main\n"
        "copying.BATCH = 20\n"
        "real = command.copy_store_report\n"
        "def interrupted(source, target, progress, **keys):\n"
        "    def at(done, total):\n"
        "        progress(done, total)\n"
        "        if done >= 40:\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(source, target, at, **keys)\n"
        "command.copy_store_report = interrupted\n"
        "sys.argv = ['flowledger', 'copy', '--from', sys.argv[1], '--to', sys.argv[2]]\n"
        "main()\n")
    env = {k: v for k, v in os.environ.items() if k != "FLOWLEDGER_STORE"}
    stopped = subprocess.run([sys.executable, "-c", script, source, target], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.strip().splitlines() == [
        f"error: the copy into {target} was interrupted after 40 of about {len(logged)} "
        "events. Run the same command again: it goes on where this one stopped, or finds "
        "the copy whole"], stopped.stderr
    done = flowledger("copy", "--from", source, "--to", target, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with fl.Engine(target) as copy:
        assert [(e.stream_id, e.version, e.name) for e in copy.events()] == logged


def test_a_ctrl_c_once_the_copy_is_whole_ends_it_as_done(tmp_path: Path) -> None:
    """The signal comes as the copy reports it is done: it says so and exits 0
    (it was cut short, or the process killed by the signal as it ended)."""
    import os
    import subprocess
    import sys

    source = f"sqlite:///{tmp_path / 'old.db'}"
    with fl.Engine(source) as engine:
        engine.register(ledger_workflow(items=["a"]),
                        tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))])
        engine.run_session("wf")
    target = f"sqlite:///{tmp_path / 'new.db'}"
    script = (
        "import os, signal, sys\n"
        "import flowledger.cli.copy_command as command\n"
        "from flowledger.cli.application import main\n"
        "real = command.say\n"
        "def say(text):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    real(text)\n"
        "command.say = say\n"
        "sys.argv = ['flowledger', 'copy', '--from', sys.argv[1], '--to', sys.argv[2]]\n"
        "main()\n")
    env = {k: v for k, v in os.environ.items() if k != "FLOWLEDGER_STORE"}
    ended = subprocess.run([sys.executable, "-c", script, source, target], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
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
    assert text.returncode == 0, text.stderr
    assert "note: sessions were open in the source (wf)" in text.stderr
    assert json.loads(as_json.stdout)["open_sessions"] == ["wf"]
