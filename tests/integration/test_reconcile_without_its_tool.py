"""A call found in flight whose tool is missing waits; it is never made again.

Recovery that finds a mutation `in_flight` but is not given its tool cannot
ask the tool's reconcile method: the run pauses for reconciliation with the
mutation still in flight. Once the tool is provided (and even after a person
resumes the workflow), the call is reconciled, never retried fresh: the
continuation table used to send such a run to RETRY_FRESH and call the
mutator a second time.
"""

from __future__ import annotations

from typing import Any

import pytest

from flowledger.domain.mutation_ledger import MutationState
from flowledger.engine.faults import SimulatedCrash
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow, message_status


class Died(SimulatedCrash):
    pass


def test_a_call_in_flight_is_reconciled_once_its_tool_is_back(make_engine, clock,
                                                              ledger: ExternalLedger) -> None:
    def die_after_call(point: str) -> None:
        if point == "after_call":
            raise Died(point)

    tool = ScriptedLedgerTool(ledger)
    first = make_engine(checkpoint=die_after_call)
    first.register(ledger_workflow(items=["a"]), tools=[tool])
    with pytest.raises(Died):
        first.run_session("wf")
    assert len(tool.calls) == 1 and ledger.keys() == ["a"]  # the effect happened

    clock.advance(3600)  # the dead holder's lease ran out
    without_tool = make_engine()
    without_tool.register(ledger_workflow(items=["a"]), tools=[])
    [recovered] = without_tool.recover()
    assert recovered.status == "suspended"
    [run_info] = without_tool.runs(workflow="wf", status="paused:reconciliation")
    run = without_tool.run(run_info.run_id)
    assert run.mutation is not None and run.mutation.state is MutationState.IN_FLIGHT
    assert "tool 'ledger' is not provided" in (run.reason or "")
    without_tool.resume("wf")  # a person lifts the pause before the tool is back

    back = make_engine()
    back.register(ledger_workflow(items=["a"]), tools=[tool])
    result: Any = back.run_session("wf")
    assert result.status == "completed", result.error
    assert len(tool.calls) == 1, "the mutator was called again"
    assert tool.reconcile_calls == [("a", "v-a")]
    assert ledger.keys() == ["a"]
    assert message_status(back, "wf", "in") == {"consumed": 1}
