"""KeyboardInterrupt and SystemExit inside a session: a crash, never a failure.

The interruption reaches the embedding application as raised; the engine
that was interrupted (or any other on the store) continues the session at
once, by the rules of DESIGN §2.3: no mutation twice, none lost, no run
failed, the workflow never in error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from flowledger.domain.ids import workflow_id
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow, message_status

INTERRUPTIONS = [KeyboardInterrupt, SystemExit]


class InterruptingTool(ScriptedLedgerTool):
    """The ledger tool, interrupted before or after its side effect when told to."""

    def __init__(self, ledger: ExternalLedger) -> None:
        super().__init__(ledger)
        self.interrupt: tuple[str, type[BaseException]] | None = None
        self.attempts: list[tuple[str, str]] = []  # every call, interrupted or not

    def append(self, key: str, value: str) -> dict[str, Any]:
        self.attempts.append((key, value))
        when, what = self.interrupt or ("", KeyboardInterrupt)
        if when == "before":
            self.interrupt = None
            raise what()
        result = super().append(key, value)
        if when == "after":
            self.interrupt = None
            raise what()  # the effect happened; its answer never arrived
        return result

    append = fl.mutator(reconcile="find_appended")(append)


def interrupting_workflow(items: list[str], where: dict[str, type[BaseException]]
                          ) -> fl.Workflow:
    """ledger_workflow, whose handler steps raise `where[step]` once."""
    wf = ledger_workflow(items=items)
    consumer = wf.consumers[0].cls
    for step in ("prepare", "mutate", "next"):
        original = getattr(consumer, step)

        def wrapped(self: Any, *args: Any, _original: Any = original, _step: str = step
                    ) -> Any:
            error = where.pop(_step, None)
            if error is not None:  # in mutate: before it calls the tool
                raise error()
            return _original(self, *args)

        setattr(consumer, step, wrapped)
    return wf


def open_session(engine: fl.Engine) -> Any:
    return engine.log.load(workflow_id("wf")).open_session


def assert_done_exactly_once(engine: fl.Engine, tool: InterruptingTool,
                             ledger: ExternalLedger, items: list[str]) -> None:
    assert sorted(k for k, _ in tool.calls) == sorted(items)  # every effect of the tool
    assert ledger.keys() == sorted(items)
    assert message_status(engine, "wf", "in") == {"consumed": len(items)}
    assert open_session(engine) is None
    statuses = {r.status for r in engine.runs(workflow="wf")}
    assert not {s for s in statuses if s.startswith("failed")}, statuses
    assert engine.log.load(workflow_id("wf")).status == "active"


@pytest.mark.parametrize("interruption", INTERRUPTIONS)
@pytest.mark.parametrize("step", ["prepare", "mutate", "next"])
def test_an_interrupted_handler_leaves_the_same_engine_able_to_go_on(
        make_engine, ledger: ExternalLedger, step: str,
        interruption: type[BaseException]) -> None:
    tool = InterruptingTool(ledger)
    engine = make_engine()
    engine.register(interrupting_workflow(["a", "b"], {step: interruption}), tools=[tool])
    with pytest.raises(interruption):
        engine.run_session("wf")
    # No lease to wait out, no recover() needed: the next session goes on.
    result = engine.run_session("wf")
    assert result.status == "completed", result.error
    assert_done_exactly_once(engine, tool, ledger, ["a", "b"])
    if step == "next":  # the mutation had been applied: only next ran again
        assert len(tool.calls) == 2 and tool.reconcile_calls == []


@pytest.mark.parametrize("interruption", INTERRUPTIONS)
@pytest.mark.parametrize("when", ["before", "after"])
def test_an_interrupted_tool_call_is_reconciled_never_repeated_blindly(
        make_engine, ledger: ExternalLedger, when: str,
        interruption: type[BaseException]) -> None:
    tool = InterruptingTool(ledger)
    tool.interrupt = (when, interruption)
    engine = make_engine()
    engine.register(ledger_workflow(items=["a"]), tools=[tool])
    with pytest.raises(interruption):
        engine.run_session("wf")
    recovered = engine.recover()  # recover() now helps at once, too
    assert [r.status for r in recovered] == ["completed"], recovered
    assert tool.reconcile_calls == [("a", "v-a")]  # the in_flight call was reconciled
    # Applied: not called again. Not applied: called once more, by a fresh run.
    assert tool.attempts == [("a", "v-a")] * (1 if when == "after" else 2)
    assert_done_exactly_once(engine, tool, ledger, ["a"])


def test_another_engine_in_the_same_process_takes_over_at_once(make_engine,
                                                               ledger: ExternalLedger) -> None:
    tool = InterruptingTool(ledger)
    first = make_engine()
    first.register(interrupting_workflow(["a"], {"next": KeyboardInterrupt}), tools=[tool])
    with pytest.raises(KeyboardInterrupt):
        first.run_session("wf")
    second = make_engine()
    second.register(ledger_workflow(items=["a"]), tools=[tool])
    assert second.run_session("wf").status == "completed"
    assert_done_exactly_once(second, tool, ledger, ["a"])
    names = [e.name for e in second.events(workflow="wf")]
    assert "SessionAbandoned" in names and "SessionTakenOver" in names


def test_a_call_an_engine_of_this_process_left_is_retried_once_that_engine_is_gone(
        store: str, tmp_path: Path) -> None:
    """An engine interrupted in its tool call (before the effect) and dropped
    without close(): another engine of the same process recovers the run. The
    first cannot still be making the call, so the reconcile's "no effect" is
    proof and the run is retried at once (it counted as alive, its pid being
    this process's, and the run waited until a person decided)."""
    import gc

    ledger = ExternalLedger(tmp_path / "l.db", count_calls=True)

    class Interrupted(ScriptedLedgerTool):
        @fl.mutator(reconcile="find_appended")
        def append(self, key: str, value: str) -> dict[str, Any]:
            self.ledger.note_call()
            raise KeyboardInterrupt

    first = fl.Engine(store)
    first.register(ledger_workflow(items=["a"]), tools=[Interrupted(ledger)])
    with pytest.raises(KeyboardInterrupt):
        first.run_session("wf")
    del first
    gc.collect()

    tool = ScriptedLedgerTool(ledger)
    with fl.Engine(store) as second:
        second.register(ledger_workflow(items=["a"]), tools=[tool])
        (result,) = second.recover()
        assert result.status == "completed", result
    assert tool.calls == [("a", "v-a")] and ledger.keys() == ["a"]
    assert ledger.calls_made() == 2  # the interrupted call, then the retry's
