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
    assert_user_error(again, f"already holds {count} events", "Copy into a new, empty store")


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
