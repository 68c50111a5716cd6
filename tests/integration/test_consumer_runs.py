"""Consumer runs through prepare → mutate → next, and every mutation outcome."""

from __future__ import annotations

from typing import Any

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


def runs_of(result: fl.SessionResult, handler: str) -> list[fl.RunResult]:
    return [r for r in result.runs if r.handler == handler]


def test_happy_path_appends_each_item_once_and_commits(make_engine, ledger: ExternalLedger):
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    engine.register(ledger_workflow(), tools=[tool])

    result = engine.run_session("wf")

    assert result.status == "completed", result.error
    assert ledger.keys() == ["a", "b", "c"]
    assert [r.status.value for r in runs_of(result, "Append")] == ["committed"] * 3
    assert message_status(engine, "wf", "in") == {"consumed": 3}
    assert message_status(engine, "wf", "done") == {"pending": 3}
    run = engine.run(runs_of(result, "Append")[0].run_id)
    assert run.phase.value == "committed"
    assert run.mutation is not None and run.mutation.state is MutationState.APPLIED


def test_every_phase_change_is_its_own_event(make_engine, ledger: ExternalLedger):
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
    result = engine.run_session("wf")
    run_id = runs_of(result, "Append")[0].run_id

    names = [e.name for e in engine.events(run=run_id)]

    assert names == ["Created", "PreparingStarted", "Prepared", "MutatingStarted",
                     "MutationInFlight", "MutationApplied", "Mutated", "EmittingStarted",
                     "Committed"]


def test_next_sees_the_applied_result(make_engine, ledger: ExternalLedger):
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("wf")
    done = [e for e in engine.events(workflow="wf") if e.name == "Published"
            and e.fields["topic"] == "done"]
    assert done[0].fields["payload"]["outcome"] == "applied"
    assert done[0].fields["payload"]["result"]["key"] == "a"


def test_prepare_failure_fails_the_run_and_leaves_events_pending(make_engine):
    wf = fl.Workflow("wf", topics=["in"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> None:
        ctx.publish("in", message_id="x", payload=1)

    @wf.consumer(subscribe=["in"])
    class Broken:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared:
            raise ValueError("bad input")

    engine = make_engine()
    engine.register(wf)
    result = engine.run_session("wf")

    assert result.status == "failed"
    assert "ValueError: bad input" in (result.error or "")
    assert runs_of(result, "Broken")[0].status.value == "failed:logic"
    assert message_status(engine, "wf", "in") == {"pending": 1}
    assert engine.status().workflows[0].status == "error"
    blocked = engine.blocked()
    assert [(b.handler, b.status, b.actions) for b in blocked] == [
        ("Broken", "failed:logic", ("resume",))]
    assert engine.resume("wf") is True
    assert engine.status().workflows[0].status == "active"
    assert engine.blocked() == []


def test_empty_reservations_commit_in_one_append_and_do_not_loop(make_engine):
    wf = fl.Workflow("wf", topics=["in"])
    prepares: list[int] = []

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> None:
        ctx.publish("in", message_id="x", payload=1)

    @wf.consumer(subscribe=["in"])
    class NotInterested:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared:
            prepares.append(1)
            return fl.Prepared()

    engine = make_engine()
    engine.register(wf)
    result = engine.run_session("wf", max_iterations=50)

    assert result.status == "completed"
    assert len(prepares) == 1  # declined once; not re-run in the same session
    run = runs_of(result, "NotInterested")[0]
    names = [e.name for e in engine.events(run=run.run_id)]
    assert names == ["Created", "PreparingStarted", "Prepared", "EmittingStarted", "Committed"]
    assert message_status(engine, "wf", "in") == {"pending": 1}


def test_mutate_without_a_mutator_call_commits_with_outcome_none(make_engine):
    wf = fl.Workflow("wf", topics=["in", "out"])
    seen: list[str] = []

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> None:
        ctx.publish("in", message_id="x", payload=1)

    @wf.consumer(subscribe=["in"], publishes=["out"])
    class Skips:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            m = ctx.peek("in")
            return fl.Prepared({"in": [m[0].message_id]}) if m else None

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            return None

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            seen.append(outcome.status)

    engine = make_engine()
    engine.register(wf)
    result = engine.run_session("wf")

    assert result.status == "completed"
    assert seen == ["none"]
    assert message_status(engine, "wf", "in") == {"consumed": 1}
    run = engine.run(runs_of(result, "Skips")[0].run_id)
    assert run.mutation is None and run.outcome == "none"


def test_definite_failure_releases_reservations_and_pauses(make_engine, ledger, clock):
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["transient"]
    engine.register(ledger_workflow(items=["a"]), tools=[tool])

    result = engine.run_session("wf")

    assert result.status == "suspended"
    run = engine.run(runs_of(result, "Append")[0].run_id)
    assert run.status.value == "paused:transient"
    assert run.mutation is not None and run.mutation.state is MutationState.FAILED
    assert run.retry_at is not None and run.retry_at > clock.now()
    assert message_status(engine, "wf", "in") == {"pending": 1}
    assert ledger.keys() == []
    assert engine.status().workflows[0].status == "paused"


def test_auth_error_pauses_for_approval(make_engine, ledger):
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["auth"]
    engine.register(ledger_workflow(items=["a"]), tools=[tool])

    result = engine.run_session("wf")

    assert result.status == "suspended"
    assert runs_of(result, "Append")[0].status.value == "paused:approval"
    blocked = engine.run_session("wf")
    assert blocked.status == "blocked" and "waits for a person" in (blocked.error or "")


def test_uncertain_outcome_reconciled_as_applied_goes_on_to_next(make_engine, ledger):
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["uncertain_applied"]
    engine.register(ledger_workflow(items=["a"]), tools=[tool])

    result = engine.run_session("wf")

    assert result.status == "completed", result.error
    assert ledger.keys() == ["a"]
    assert tool.reconcile_calls == [("a", "v-a")]  # same arguments as the mutator call
    run = engine.run(runs_of(result, "Append")[0].run_id)
    assert run.mutation is not None and run.mutation.state is MutationState.APPLIED
    applied = [e for e in engine.events(run=run.id) if e.name == "MutationApplied"]
    assert applied[0].fields["via"] == "reconcile"


def test_uncertain_outcome_reconciled_as_failed_releases_and_pauses(make_engine, ledger):
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["uncertain"]
    engine.register(ledger_workflow(items=["a"]), tools=[tool])

    result = engine.run_session("wf")

    assert result.status == "suspended"
    run = engine.run(runs_of(result, "Append")[0].run_id)
    assert run.mutation is not None and run.mutation.state is MutationState.FAILED
    assert run.status.value == "paused:transient"
    assert message_status(engine, "wf", "in") == {"pending": 1}


def test_uncertain_outcome_reconcile_says_retry_keeps_reservations(make_engine, ledger):
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["uncertain"]
    tool.reconcile_script = ["retry"]
    engine.register(ledger_workflow(items=["a"]), tools=[tool])

    result = engine.run_session("wf")

    assert result.status == "suspended"
    run = engine.run(runs_of(result, "Append")[0].run_id)
    assert run.status.value == "paused:reconciliation"
    assert run.mutation is not None and run.mutation.state is MutationState.NEEDS_RECONCILE
    assert run.mutation.next_reconcile_at is not None
    assert message_status(engine, "wf", "in") == {"reserved": 1}


def test_uncertain_outcome_without_reconcile_is_indeterminate_and_blocks(make_engine, ledger):
    engine = make_engine()
    tool = NoReconcileTool(ledger)
    tool.script = ["uncertain_applied"]
    engine.register(ledger_workflow(items=["a"], tool_name="blind"), tools=[tool])

    result = engine.run_session("wf")

    assert result.status == "suspended"
    run = engine.run(runs_of(result, "Append")[0].run_id)
    assert run.mutation is not None and run.mutation.state is MutationState.INDETERMINATE
    assert message_status(engine, "wf", "in") == {"reserved": 1}
    blocked = engine.blocked()
    assert [b.run_id for b in blocked] == [run.id]
    assert blocked[0].params == {"args": ["a", "v-a"], "kwargs": {}}
    assert set(blocked[0].actions) == {"did_not_happen", "skip"}
    again = engine.run_session("wf")
    assert again.status == "blocked"


def test_unexpected_mutator_exception_is_reconciled_at_once(make_engine, ledger):
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["boom_applied"]
    engine.register(ledger_workflow(items=["a"]), tools=[tool])

    result = engine.run_session("wf")

    assert result.status == "completed", result.error
    assert tool.reconcile_calls == [("a", "v-a")]
    assert ledger.keys() == ["a"]


@pytest.mark.parametrize("reconcile, found", [
    ("look", "reconcile says it did not happen: no such row"),
    ("no_reason", "reconcile found no effect of the call")])
def test_an_unexpected_exception_proven_harmless_names_what_was_raised(
        make_engine, ledger, reconcile, found):
    """The run fails as a tool bug, its reason saying what the mutator raised and
    what the reconcile found (it read "mutator raised reconcile found no effect
    of the call; reconcile says it did not happen", the exception lost)."""
    class Silent(ScriptedLedgerTool):
        def find_appended(self, key: str, value: str) -> fl.Reconciliation:
            answer = super().find_appended(key, value)
            return fl.Reconciliation.failed() if reconcile == "no_reason" else answer

    engine = make_engine()
    tool = Silent(ledger)
    tool.script = ["boom"]
    engine.register(ledger_workflow(items=["a"]), tools=[tool])

    result = engine.run_session("wf")

    assert result.status == "failed"
    run = engine.run(runs_of(result, "Append")[0].run_id)
    assert run.status.value == "failed:internal"
    assert run.reason == f"mutator raised RuntimeError: connection refused; {found}"
    assert tool.calls == [("a", "v-a")] and ledger.keys() == []


def test_failure_in_next_after_applied_keeps_reservations_and_never_remutates(
        make_engine, ledger, clock):
    wf = ledger_workflow(items=["a"])
    spec = wf.consumers[0]
    original_next = spec.cls.next
    fail = {"next": True}

    def flaky_next(self: Any, ctx: Any, prepared: Any, outcome: Any) -> Any:
        if fail["next"]:
            raise fl.TransientError("downstream busy")
        return original_next(self, ctx, prepared, outcome)

    spec.cls.next = flaky_next
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    engine.register(wf, tools=[tool])

    first = engine.run_session("wf")
    assert first.status == "suspended"
    failed_run = engine.run(runs_of(first, "Append")[0].run_id)
    assert failed_run.mutation is not None
    assert failed_run.mutation.state is MutationState.APPLIED
    assert message_status(engine, "wf", "in") == {"reserved": 1}

    fail["next"] = False
    clock.advance(3600)
    second = engine.run_session("wf")

    assert second.status == "completed", second.error
    assert len(tool.calls) == 1  # the mutation was not performed again
    retry = engine.run(runs_of(second, "Append")[0].run_id)
    assert retry.retry_of == failed_run.id
    assert retry.outcome == "applied"
    assert message_status(engine, "wf", "in") == {"consumed": 1}
    assert engine.run(failed_run.id).status.value == "superseded"


def test_transient_pause_is_retried_by_a_linked_fresh_run(make_engine, ledger, clock):
    engine = make_engine()
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["transient"]
    engine.register(ledger_workflow(items=["a"]), tools=[tool])
    first = engine.run_session("wf")
    paused = runs_of(first, "Append")[0]

    too_early = engine.run_session("wf")
    assert too_early.status == "blocked" and "paused until" in (too_early.error or "")

    clock.advance(3600)
    second = engine.run_session("wf")
    assert second.status == "completed", second.error
    retry = engine.run(runs_of(second, "Append")[0].run_id)
    assert retry.retry_of == paused.run_id
    assert retry.attempt == 2
    assert ledger.keys() == ["a"]


def test_transient_failures_give_up_after_the_policy_limit(make_engine, ledger, clock):
    engine = make_engine(policy=fl.RetryPolicy(transient_max_attempts=2))
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["transient", "transient"]
    engine.register(ledger_workflow(items=["a"]), tools=[tool])
    engine.run_session("wf")
    clock.advance(3600)
    second = engine.run_session("wf")

    assert second.status == "suspended"
    assert engine.status().workflows[0].status == "error"
    assert "gave up after 2 attempts" in (engine.status().workflows[0].reason or "")
