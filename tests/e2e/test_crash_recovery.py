"""Crash recovery is a replay of the log, proven by killing real processes.

Every named durable point, for every mutation outcome: a process running a
session dies there (`os._exit`, no cleanup), a fresh process recovers, and the
outside world, the messages, the handler state, the statuses and the log are
checked.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import flowledger as fl
from flowledger.domain.ids import handler_state_id
from flowledger.engine.faults import CRASH_EXIT_CODE
from flowledger.infrastructure.codec import unpack
from tests.e2e.crash_worker import ITEMS
from tests.helpers import OUTCOMES, message_status, projection_rows

WORKER = Path(__file__).with_name("crash_worker.py")
LABELS = ["session_open", "producer_commit", "in_flight", "outcome", "commit", "failure",
          "session_close"]
POINTS = [f"{when}_append:{label}" for label in LABELS for when in ("before", "after")]
POINTS[4:4] = ["before_call", "after_call"]


def worker(store: str, ledger: Path, mode: str, outcome: str, crash_at: str | None = None,
           wrapper: tuple[str, ...] = (), env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    """crash_worker.py in a process of its own (`wrapper`: `-c SCRIPT` run
    first, which then runs the worker)."""
    env = {k: v for k, v in os.environ.items() if k != "FLOWLEDGER_CRASH_AT"} | (env or {})
    if crash_at:
        env["FLOWLEDGER_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, *wrapper, str(WORKER), store, str(ledger), mode,
                           outcome], capture_output=True, text=True, timeout=120, env=env)


def recovered_once(store: str, ledger: Path, recovered: subprocess.CompletedProcess[str]
                   ) -> tuple[fl.Engine, list[str]]:
    """The recovering process completed the work; the outside world got each
    mutation exactly once, never twice; every message ended consumed exactly
    once (or skipped by a person). An engine on the store, and the statuses."""
    assert recovered.returncode == 0, recovered.stderr
    statuses: list[str] = json.loads(recovered.stdout)["statuses"]
    assert statuses[-1] == "completed", statuses
    assert sorted(k for (k,) in table(ledger, "SELECT key FROM rows")) == ITEMS
    assert table(ledger, "SELECT key FROM duplicates") == []
    engine = fl.Engine(store)
    skipped = statuses.count("skip")
    expected = {"consumed": len(ITEMS) - skipped}
    if skipped:
        expected["skipped"] = skipped
    assert message_status(engine, "crashy", "in") == expected
    return engine, statuses


def table(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as c:
        return list(c.execute(sql))


@pytest.mark.parametrize("outcome", list(OUTCOMES))
@pytest.mark.parametrize("point", POINTS)
def test_crash_at_a_durable_point_then_recover(tmp_path: Path, point: str, outcome: str):
    store = f"sqlite:///{tmp_path / 'flow.db'}"
    ledger = tmp_path / "ledger.db"

    crashed = worker(store, ledger, "session", outcome, crash_at=point)
    assert crashed.returncode in (0, CRASH_EXIT_CODE), crashed.stderr
    engine, _ = recovered_once(store, ledger, worker(store, ledger, "recover", outcome))
    try:
        assert message_status(engine, "crashy", "done") == {"pending": len(ITEMS)}
        # Handler state is the fold of the committed runs.
        state = engine.log.load(handler_state_id("crashy", "Append"))
        assert sorted(unpack(state.state)) == ITEMS
        # Statuses: no session left open, nothing unfinished, workflow active.
        status = engine.status()
        assert status.open_sessions == [] and status.unfinished_runs == []
        assert [w.status for w in status.workflows] == ["active"]
        # The log is intact: every stream replays, and projections rebuilt
        # from position 0 equal the ones kept live.
        streams = {e.stream_id for e in engine.events()}
        assert all(engine.log.load(s) is not None for s in streams)
        live = projection_rows(engine)
        engine.projections.rebuild()
        assert projection_rows(engine) == live
    finally:
        engine.close()


def test_the_next_session_recovers_what_a_dead_process_left(tmp_path: Path):
    """DESIGN §2.3 "on start": no explicit recover() call is needed."""
    store = f"sqlite:///{tmp_path / 'flow.db'}"
    ledger = tmp_path / "ledger.db"
    crashed = worker(store, ledger, "session", "applied", crash_at="after_append:in_flight")
    assert crashed.returncode == CRASH_EXIT_CODE
    again = worker(store, ledger, "session", "applied")
    assert json.loads(again.stdout)["statuses"] == ["completed"], again.stderr
    assert sorted(k for (k,) in table(ledger, "SELECT key FROM rows")) == ITEMS
    engine = fl.Engine(store)
    try:
        names = [e.name for e in engine.events(workflow="crashy")]
        assert names.count("SessionTakenOver") == 1
        assert engine.status().open_sessions == []
    finally:
        engine.close()
