"""A person may skip a mutation while it is still being reconciled (DESIGN §1.4).

resolve accepts a `needs_reconcile` mutation, and skip must be carried out:
the ledger used to refuse needs_reconcile → skipped with an InternalError
(found by tests/unit/test_run_decider.py).
"""

from __future__ import annotations

import flowledger as fl
from flowledger.domain.mutation_ledger import MutationState
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow, message_status


def test_skip_on_a_mutation_that_needs_reconcile(make_engine, ledger: ExternalLedger) -> None:
    engine = make_engine(policy=fl.RetryPolicy(reconcile_max_attempts=5, jitter=0))
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["uncertain"]
    tool.reconcile_script = ["retry"]
    engine.register(ledger_workflow(items=["a"]), tools=[tool])
    assert engine.run_session("wf").status == "suspended"
    assert engine.blocked() == []  # it waits for its backoff, not for a person
    [paused] = engine.runs(workflow="wf", status="paused:reconciliation")
    run = engine.run(paused.run_id)
    assert run.mutation is not None and run.mutation.state is MutationState.NEEDS_RECONCILE
    engine.resolve(paused.run_id, "skip")  # a person need not wait for it
    run = engine.run(paused.run_id)
    assert run.mutation is not None and run.mutation.state is MutationState.SKIPPED
    result = engine.run_session("wf")
    assert result.status == "completed", result.error
    assert message_status(engine, "wf", "in") == {"skipped": 1}
    assert len(tool.calls) == 1 and ledger.keys() == []  # never called again
