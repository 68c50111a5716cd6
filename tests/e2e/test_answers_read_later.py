"""On PostgreSQL a run's outcome and commit are sent and their answer read
when the session next uses the store (ADR 0017, "Answers read later"). A
process that dies between sending one and reading its answer leaves it as a
process that died during the append would: stored whole or not at all. Real
processes die right after each such send (the n-th); a fresh one recovers:
the tool was called once for each item, never twice, every message ended
consumed once, and the projections kept live equal those rebuilt."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowledger.engine.faults import CRASH_EXIT_CODE
from tests import postgres
from tests.e2e.test_crash_recovery import recovered_once, worker
from tests.helpers import projection_rows

pytestmark = pytest.mark.postgres

# crash_worker.py, dying right after the n-th append it sends without reading
# the answer (the engine itself has no such point: a fault injected at a
# durable point makes every answer read at once).
DYING = f"""
import os, runpy, sys
from flowledger.infrastructure import postgres_batch
nth, sent = int(os.environ["FL_DIE_AFTER_SENT"]), 0
commit = postgres_batch.PgBatch.commit

def dying(self, later=False, then=None):
    global sent
    left = commit(self, later, then)
    if left:
        sent += 1
        if sent == nth:
            os._exit({CRASH_EXIT_CODE})
    return left

postgres_batch.PgBatch.commit = dying
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# Sent without waiting, in order: item a's outcome and commit, then b's.
@pytest.mark.parametrize(("outcome", "die_after"), [
    ("applied", 1), ("applied", 2), ("applied", 3), ("applied", 4),
    ("uncertain_applied", 1), ("uncertain_applied", 2),  # reconciled live, then recorded
])
def test_a_process_dead_before_an_answer_is_recovered_with_each_call_made_once(
        tmp_path: Path, outcome: str, die_after: int) -> None:
    ledger = tmp_path / "ledger.db"
    with postgres.fresh_schema() as store:
        died = worker(store, ledger, "session", outcome, wrapper=("-c", DYING),
                      env={"FL_DIE_AFTER_SENT": str(die_after)})
        # It died there: the append was sent and its answer never read.
        assert died.returncode == CRASH_EXIT_CODE, died.stderr
        engine, _ = recovered_once(store, ledger, worker(store, ledger, "recover", outcome))
        try:
            status = engine.status()
            assert status.open_sessions == [] and status.unfinished_runs == []
            live = projection_rows(engine)
            engine.projections.rebuild()
            assert projection_rows(engine) == live
        finally:
            engine.close()
