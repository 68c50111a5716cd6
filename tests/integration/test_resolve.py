"""A person's decisions on blocked mutations (DESIGN §1.4), and the reconcile loop."""

from __future__ import annotations

import pytest

import flowledger as fl
from flowledger.domain.mutation_ledger import MutationState
from tests.helpers import (
    ExternalLedger,
    NoReconcileTool,
    ScriptedLedgerTool,
    ledger_workflow,
    message_status,
)


def blocked_run(make_engine, ledger: ExternalLedger, *, reconcile: bool,
                written: bool) -> tuple[fl.Engine, fl.Tool, fl.BlockedRun]:
    """A run whose mutation's outcome is unknown and waits for a person."""
    engine = make_engine(policy=fl.RetryPolicy(reconcile_max_attempts=1))
    if reconcile:
        tool: fl.Tool = ScriptedLedgerTool(ledger)
        tool.script = ["uncertain_applied" if written else "uncertain"]
        tool.reconcile_script = ["retry"]
        engine.register(ledger_workflow(items=["a"]), tools=[tool])
    else:
        tool = NoReconcileTool(ledger)
        tool.script = ["uncertain_applied"]
        engine.register(ledger_workflow(items=["a"], tool_name="blind"), tools=[tool])
    assert engine.run_session("wf").status == "suspended"
    [blocked] = engine.blocked()
    return engine, tool, blocked


def test_reconcile_gives_up_after_the_policy_limit(make_engine, ledger):
    engine, _, blocked = blocked_run(make_engine, ledger, reconcile=True, written=True)
    run = engine.run(blocked.run_id)
    assert run.mutation is not None and run.mutation.state is MutationState.INDETERMINATE
    assert "gave up after 1 attempts" in (run.mutation.reason or "")
    assert blocked.actions == ("retry_reconcile", "did_not_happen", "skip")
    assert blocked.tool == "ledger" and blocked.method == "append"


def test_needs_reconcile_is_retried_with_backoff_until_it_settles(make_engine, ledger, clock):
    engine = make_engine(policy=fl.RetryPolicy(reconcile_max_attempts=5, jitter=0))
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["uncertain_applied"]
    tool.reconcile_script = ["retry", "retry"]
    engine.register(ledger_workflow(items=["a"]), tools=[tool])
    assert engine.run_session("wf").status == "suspended"
    assert engine.run_session("wf").status == "blocked"  # not due yet
    clock.advance(5)  # first backoff: 5 s
    assert engine.run_session("wf").status == "suspended"  # answered retry again
    clock.advance(10)  # second backoff: 10 s
    result = engine.run_session("wf")
    assert result.status == "completed", result.error
    assert len(tool.reconcile_calls) == 3
    assert len(tool.calls) == 1 and ledger.keys() == ["a"]


def test_retry_reconcile_asks_the_tool_again(make_engine, ledger):
    engine, tool, blocked = blocked_run(make_engine, ledger, reconcile=True, written=True)
    engine.resolve(blocked.run_id, "retry_reconcile")
    result = engine.run_session("wf")
    assert result.status == "completed", result.error
    assert len(tool.calls) == 1  # never mutated again
    assert message_status(engine, "wf", "in") == {"consumed": 1}


def test_did_not_happen_lets_a_fresh_run_mutate_again(make_engine, ledger):
    engine, tool, blocked = blocked_run(make_engine, ledger, reconcile=True, written=False)
    engine.resolve(blocked.run_id, "did_not_happen")
    old = engine.run(blocked.run_id)
    assert old.mutation is not None and old.mutation.state is MutationState.FAILED
    assert message_status(engine, "wf", "in") == {"pending": 1}
    result = engine.run_session("wf")
    assert result.status == "completed", result.error
    assert len(tool.calls) == 2 and ledger.keys() == ["a"]
    retry = engine.run(next(r.run_id for r in result.runs if r.handler == "Append"))
    assert retry.retry_of == blocked.run_id


def test_skip_runs_next_with_skipped_and_skips_the_events(make_engine, ledger):
    engine, _, blocked = blocked_run(make_engine, ledger, reconcile=False, written=True)
    engine.resolve(blocked.run_id, "skip")
    result = engine.run_session("wf")
    assert result.status == "completed", result.error
    assert message_status(engine, "wf", "in") == {"skipped": 1}
    done = [e for e in engine.events(workflow="wf")
            if e.name == "Published" and e.fields["topic"] == "done"]
    assert done[0].fields["payload"]["outcome"] == "skipped"
    assert ledger.keys() == ["a"]  # written once, by the original call


def test_decisions_that_do_not_apply_are_refused_and_change_nothing(make_engine, ledger):
    engine, _, blocked = blocked_run(make_engine, ledger, reconcile=False, written=True)
    before = list(engine.events())
    with pytest.raises(fl.ActionNotApplicable, match="no reconcile method"):
        engine.resolve(blocked.run_id, "retry_reconcile")
    with pytest.raises(fl.InvalidArgument, match="is not one of"):
        engine.resolve(blocked.run_id, "forget")
    with pytest.raises(fl.InvalidArgument, match="not a run id"):
        engine.resolve("not-a-uuid", "skip")
    with pytest.raises(fl.NotFoundError):
        engine.resolve("00000000-0000-0000-0000-000000000000", "skip")
    with pytest.raises(fl.ActionNotApplicable, match=r"decide first"):
        engine.resume("wf")
    assert list(engine.events()) == before

    engine.resolve(blocked.run_id, "skip")
    after_skip = list(engine.events())
    with pytest.raises(fl.ActionNotApplicable, match="applies only"):
        engine.resolve(blocked.run_id, "did_not_happen")
    assert list(engine.events()) == after_skip


def test_the_session_stops_at_a_logic_failure_and_leaves_the_rest(make_engine, ledger):
    wf = ledger_workflow(items=["a", "b", "c"])
    spec = wf.consumers[0]
    original = spec.cls.prepare

    def prepare(self, ctx, state):  # type: ignore[no-untyped-def]
        prepared = original(self, ctx, state)
        if prepared is not None and prepared.data["item"] == "b":
            raise KeyError("bug on b")
        return prepared

    spec.cls.prepare = prepare
    engine = make_engine()
    engine.register(wf, tools=[ScriptedLedgerTool(ledger)])
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert [r.status.value for r in result.runs if r.handler == "Append"] == [
        "committed", "failed:logic"]
    assert ledger.keys() == ["a"]
    assert message_status(engine, "wf", "in") == {"consumed": 1, "pending": 2}
    assert engine.run_session("wf").status == "blocked"
