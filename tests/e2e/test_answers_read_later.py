"""On PostgreSQL a run's outcome and commit are sent and their answer read
when the session next uses the store (ADR 0017, "Answers read later"). A
process that dies between sending one and reading its answer leaves it as a
process that died during the append would: stored whole or not at all. Real
processes die right after each such send (the n-th); a fresh one recovers:
the tool was called once for each item, never twice, every message ended
consumed once, and the projections kept live equal those rebuilt."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import flowledger as fl
from flowledger.engine.faults import CRASH_EXIT_CODE
from tests import postgres
from tests.e2e.crash_worker import ITEMS
from tests.helpers import message_status, projection_rows

pytestmark = pytest.mark.postgres

WORKER = Path(__file__).with_name("crash_worker.py")

# crash_worker.py, dying right after the n-th append it sends without reading
# the answer (the engine itself has no such point: a fault injected at a
# durable point makes every answer read at once).
DYING = f"""
import os, runpy, sys
from flowledger.infrastructure import postgres_batch
nth, sent = int(os.environ["FL_DIE_AFTER_SENT"]), 0
commit = postgres_batch.PgBatch.commit

def dying(self, later=False):
    global sent
    left = commit(self, later)
    if left:
        sent += 1
        if sent == nth:
            os._exit({CRASH_EXIT_CODE})
    return left

postgres_batch.PgBatch.commit = dying
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _worker(store: str, ledger: Path, mode: str, outcome: str,
            die_after: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLOWLEDGER_CRASH_AT"}
    command = [sys.executable, str(WORKER), store, str(ledger), mode, outcome]
    if die_after is not None:
        env["FL_DIE_AFTER_SENT"] = str(die_after)
        command[1:1] = ["-c", DYING]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def _ledger(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as c:
        return list(c.execute(sql))


# Sent without waiting, in order: item a's outcome and commit, then b's.
@pytest.mark.parametrize(("outcome", "die_after"), [
    ("applied", 1), ("applied", 2), ("applied", 3), ("applied", 4),
    ("uncertain_applied", 1), ("uncertain_applied", 2),  # reconciled live, then recorded
])
def test_a_process_dead_before_an_answer_is_recovered_with_each_call_made_once(
        tmp_path: Path, outcome: str, die_after: int) -> None:
    ledger = tmp_path / "ledger.db"
    with postgres.fresh_schema() as store:
        died = _worker(store, ledger, "session", outcome, die_after)
        # It died there: the append was sent and its answer never read.
        assert died.returncode == CRASH_EXIT_CODE, died.stderr
        recovered = _worker(store, ledger, "recover", outcome)
        assert recovered.returncode == 0, recovered.stderr
        statuses = json.loads(recovered.stdout)["statuses"]
        assert statuses[-1] == "completed", statuses

        assert sorted(k for (k,) in _ledger(ledger, "SELECT key FROM rows")) == ITEMS
        assert _ledger(ledger, "SELECT key FROM duplicates") == []
        engine = fl.Engine(store)
        try:
            skipped = statuses.count("skip")
            expected = {"consumed": len(ITEMS) - skipped}
            if skipped:
                expected["skipped"] = skipped
            assert message_status(engine, "crashy", "in") == expected
            status = engine.status()
            assert status.open_sessions == [] and status.unfinished_runs == []
            live = projection_rows(engine)
            engine.projections.rebuild()
            assert projection_rows(engine) == live
        finally:
            engine.close()
