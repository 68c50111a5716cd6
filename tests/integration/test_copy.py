"""`fl.copy_store` / `flowledger copy`: a whole log moved to another store.

From an SQLite file to each kind of store (an SQLite file, and PostgreSQL
where reachable): the same events in the same order, and `status`, an input's
audit trail and a run's timeline answer the same afterwards. A target that
already holds events is refused and left as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow


def filled(path: Path, ledger: ExternalLedger) -> str:
    source = f"sqlite:///{path}"
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["ok", "transient", "ok", "ok"]
    engine = fl.Engine(source, clock=fl.ManualClock(), ids=fl.SeededIds(7))
    engine.register(ledger_workflow(items=["a", "b", "c"]), tools=[tool])
    engine.run_session("wf")  # b pauses on a transient error
    engine.clock.advance(600)  # type: ignore[attr-defined]
    engine.run_session("wf")
    engine.close()
    return source


def answers(engine: fl.Engine) -> dict[str, Any]:
    events = list(engine.events())
    runs = engine.runs(workflow="wf")
    first_input = next(e for e in events if e.name == "Registered" and e.aggregate == "Input")
    return {
        "log": [(e.stream_id, e.version, e.name, e.fields) for e in events],
        "status": [(w.name, w.status, w.open_session) for w in engine.status().workflows],
        "runs": sorted((r.run_id, r.handler, r.status, r.phase) for r in runs),
        "timeline": [(e.name, e.fields) for e in engine.run_timeline(runs[-1].run_id).entries],
        "audit": [(e.name, e.stream_id) for e in
                  engine.input_history(first_input.stream_id).entries],
        "costs": [(line.key, line.amount) for line in engine.costs(by="handler").lines],
    }


def test_a_copied_log_answers_the_same(tmp_path: Path, ledger: ExternalLedger,
                                       store: str) -> None:
    source = filled(tmp_path / "source.db", ledger)
    seen: list[tuple[int, int]] = []
    copied = fl.copy_store(source, store, lambda done, total: seen.append((done, total)))
    with fl.Engine(source) as before, fl.Engine(store) as after:
        assert copied == len(list(before.events())) > 50
        assert seen[-1] == (copied, copied)
        assert answers(after) == answers(before)
        assert after.projections.lag() == 0


def test_copying_into_a_store_that_holds_events_is_refused(tmp_path: Path,
                                                           ledger: ExternalLedger,
                                                           store: str) -> None:
    source = filled(tmp_path / "source.db", ledger)
    fl.copy_store(source, store)
    with fl.Engine(store) as target:
        count = len(list(target.events()))
    with pytest.raises(fl.ConfigurationError, match=r"already holds .* events\. Copy into a new"):
        fl.copy_store(source, store)
    with fl.Engine(store) as target:
        assert len(list(target.events())) == count
