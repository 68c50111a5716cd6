"""`flowledger copy --from URL --to URL` as a user runs it."""

from __future__ import annotations

from pathlib import Path

import flowledger as fl
from tests.e2e.test_cli import assert_user_error, flowledger
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow


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
    status = flowledger("--store", target, "status", cwd=tmp_path)
    assert status.returncode == 0 and "wf" in status.stdout
    again = flowledger("copy", "--from", source, "--to", target, cwd=tmp_path)
    assert_user_error(again, f"already holds {count} events", "Copy into a new, empty store")
