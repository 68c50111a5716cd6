"""The run decider on its own: random observation sequences, no database.

A pure model drives one consumer run chain through the decider: the tool's
answers, the world's truth (did the effect happen?), reconcile answers that
tell the truth or say "retry", crashes at any point (the run is then found
unfinished and continued by the continuation table), and a person's truthful
decisions on a blocked mutation. After every sequence:
  * no mutation happened twice in the world, and none was lost for a chain
    that committed with an applied outcome;
  * a run's reservations are let go only when its effect did not happen;
  * every run's phases only moved forward;
  * a call is asked for only when every earlier call of the chain is known
    not to have happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from flowledger.domain.continuation import Step, continuation
from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.mutation_ledger import MutationState
from flowledger.domain.phases import PHASE_ORDER, RunKind, RunStatus
from flowledger.domain.run_decider import (
    NO_EFFECT_FOUND,
    CallRaised,
    CallReturned,
    CallTool,
    MutateEnded,
    MutatorCalled,
    NoReconcileMethod,
    PersonDecided,
    PrepareReturned,
    RaiseToHandler,
    Reconcile,
    ReconcileAnswered,
    RetryFresh,
    ReturnResult,
    Rules,
    RunMutate,
    RunNext,
    Settle,
    actions_for,
    decide,
    keeps_reservations,
    settlement,
)

START = datetime(2026, 1, 1, tzinfo=UTC)
RESULT = b"\xa2ok"


@dataclass
class World:
    """The outside world: which runs' calls took effect."""

    applied_by: list[UUID] = field(default_factory=list)

    @property
    def effects(self) -> int:
        return len(self.applied_by)


@dataclass
class Chain:
    runs: list[HandlerRun] = field(default_factory=list)
    calls: int = 0
    now: datetime = START
    committed: str | None = None  # the outcome next saw, once the chain commits

    def rules(self) -> Rules:
        return Rules(self.now, lambda now, n: None if n >= 3 else now + timedelta(minutes=n),
                     lambda now, n: None if n >= 3 else now + timedelta(seconds=n))


def new_run(chain: Chain, retry_of: HandlerRun | None) -> HandlerRun:
    run = HandlerRun.create(id=UUID(int=len(chain.runs) + 1), now=chain.now,
                            workflow_id=UUID(int=99), workflow="wf", session_id=None,
                            kind=RunKind.CONSUMER, handler="C", retry_of=retry_of)
    chain.runs.append(run)
    return run


def check_call_allowed(chain: Chain, run: HandlerRun, world: World) -> None:
    for earlier in chain.runs:
        if earlier is run or earlier.mutation is None:
            continue
        assert earlier.mutation.state is MutationState.FAILED, (
            "a call was asked for while an earlier call of the chain may have happened")
        assert earlier.id not in world.applied_by


def settle(chain: Chain, run: HandlerRun, effect: Settle, world: World) -> None:
    if not keeps_reservations(run):
        assert run.id not in world.applied_by, "reservations let go of an applied effect"
        run.release_reservations(chain.now)
    settlement(run, effect, chain.rules())


def reconcile_answer(data: st.DataObject, run: HandlerRun, world: World,
                     live: bool) -> ReconcileAnswered:
    truth = run.id in world.applied_by
    honest = "applied" if truth else "failed"
    status = data.draw(st.sampled_from([honest, "retry"]))
    return ReconcileAnswered(status, RESULT if status == "applied" else None, "", "unknown",
                             live)


def attempt(data: st.DataObject, chain: Chain, run: HandlerRun, world: World,
            has_reconcile: bool) -> None:
    """prepare → mutate (one call) → its outcome; may crash anywhere (returns early)."""
    crash = data.draw(st.sampled_from(["no", "before_call", "after_call", "after_outcome"]))
    run.start_preparing(chain.now)
    effect = decide(run, PrepareReturned({"in": ["m"]}, b"\xc0", None, None, True),
                    chain.rules()).effect
    assert isinstance(effect, RunMutate)
    check_call_allowed(chain, run, world)
    effect = decide(run, MutatorCalled("ledger", "append", b"\x90",
                                       "find" if has_reconcile else None),
                    chain.rules()).effect
    assert isinstance(effect, CallTool)
    if crash == "before_call":
        return
    chain.calls += 1
    answer = data.draw(st.sampled_from(
        ["returns", "transient", "approval", "uncertain", "unexpected"]))
    happened = answer == "returns" or (answer in ("uncertain", "unexpected")
                                       and data.draw(st.booleans()))
    if happened:
        world.applied_by.append(run.id)
    if crash == "after_call":
        return
    failure = None
    if answer == "returns":
        effect = decide(run, CallReturned(RESULT), chain.rules()).effect
        assert isinstance(effect, ReturnResult)
    else:
        failure = answer
        effect = decide(run, CallRaised(answer, f"{answer}!"), chain.rules()).effect  # type: ignore[arg-type]
        if isinstance(effect, Reconcile):
            effect = decide(run, reconcile_answer(data, run, world, live=True),
                            chain.rules()).effect
        if isinstance(effect, ReturnResult):
            failure = None
        else:
            assert isinstance(effect, RaiseToHandler)
    if crash == "after_outcome":
        return
    effect = decide(run, MutateEnded(None, None, failure), chain.rules()).effect  # type: ignore[arg-type]
    finish(chain, run, effect, world)


def finish(chain: Chain, run: HandlerRun, effect: object, world: World) -> None:
    if isinstance(effect, RunNext):
        if run.phase.value != "mutated":
            run.mutated(chain.now, effect.outcome)
        run.start_emitting(chain.now)
        run.commit(chain.now, state_replaced=False)
        chain.committed = effect.outcome
    elif isinstance(effect, Settle):
        settle(chain, run, effect, world)
    else:
        assert isinstance(effect, RetryFresh)


def continue_chain(data: st.DataObject, chain: Chain, world: World,
                   has_reconcile: bool) -> None:
    """Sessions after the first: find the last run unfinished and go on by the table."""
    for _ in range(12):
        if chain.committed is not None:
            return
        run = chain.runs[-1]
        chain.now += timedelta(minutes=data.draw(st.sampled_from([0, 1, 10])))
        step, _ = continuation(run, cleared=False, now=chain.now)
        if step is Step.WAIT:
            continue
        if step is Step.BLOCKED:
            actions = actions_for(run)
            if not actions:  # failed or waiting for approval: a person resumes
                step, _ = continuation(run, cleared=True, now=chain.now)
            else:  # a truthful person
                truth = run.id in world.applied_by
                options = [a for a in actions if a != "did_not_happen" or not truth]
                action = data.draw(st.sampled_from(options))
                decide(run, PersonDecided(action), chain.rules())
                continue
        if step is Step.RETRY_FRESH:
            if not keeps_reservations(run):
                assert run.id not in world.applied_by
            run.supersede(chain.now, UUID(int=len(chain.runs) + 1), "retried")
            attempt(data, chain, new_run(chain, run), world, has_reconcile)
        elif step is Step.RECONCILE:
            if run.status is not RunStatus.ACTIVE:
                run.reactivate(chain.now, "continued")
            if run.mutation is not None and run.mutation.reconcile is None:
                effect = decide(run, NoReconcileMethod("crashed"), chain.rules()).effect
            else:
                effect = decide(run, reconcile_answer(data, run, world, live=False),
                                chain.rules()).effect
            if isinstance(effect, RetryFresh):
                run.supersede(chain.now, UUID(int=len(chain.runs) + 1), "retried")
                attempt(data, chain, new_run(chain, run), world, has_reconcile)
            else:
                finish(chain, run, effect, world)
        else:  # RETRY_NEXT / CONTINUE_NEXT: the effect happened or was skipped
            m = run.mutation
            assert m is not None and m.state in (MutationState.APPLIED, MutationState.SKIPPED)
            if run.status is not RunStatus.ACTIVE:
                run.reactivate(chain.now, "continued")
            outcome = "applied" if m.state is MutationState.APPLIED else "skipped"
            finish(chain, run, RunNext(outcome), world)


def phases_only_move_forward(run: HandlerRun) -> bool:
    """Replayed from its events, the run's phase never goes back."""
    order = PHASE_ORDER[RunKind.CONSUMER]
    phases: list[int] = []
    replayed = None
    for event in run.recorded_since(0):
        replayed = event.mutate(replayed)
        phases.append(order.index(replayed.phase))
    return phases == sorted(phases)


@settings(max_examples=500, deadline=None)
@given(data=st.data(), has_reconcile=st.booleans())
def test_a_run_chain_performs_its_mutation_at_most_once(data: st.DataObject,
                                                        has_reconcile: bool) -> None:
    chain, world = Chain(), World()
    attempt(data, chain, new_run(chain, None), world, has_reconcile)
    continue_chain(data, chain, world, has_reconcile)
    assert world.effects <= 1, "a mutation happened twice"
    if chain.committed == "applied":
        assert world.effects == 1
    if world.effects == 1 and chain.committed is not None:
        assert chain.committed in ("applied", "skipped"), "next ran as if nothing happened"
    for run in chain.runs:
        assert phases_only_move_forward(run)


def blocked_run(reconcile: str | None, state: str) -> HandlerRun:
    chain = Chain()
    run = new_run(chain, None)
    run.start_preparing(START)
    decide(run, PrepareReturned({"in": ["m"]}, b"\xc0", None, None, True), chain.rules())
    decide(run, MutatorCalled("ledger", "append", b"\x90", reconcile), chain.rules())
    if state == "indeterminate":
        run.mutation_indeterminate(START, "no answer")
    elif state == "needs_reconcile":
        run.mutation_needs_reconcile(START, "retry", 1, START)
    elif state == "applied":
        decide(run, CallReturned(RESULT), chain.rules())
    return run


@given(reconcile=st.sampled_from([None, "find"]),
       state=st.sampled_from(["in_flight", "needs_reconcile", "indeterminate", "applied"]),
       action=st.sampled_from(["retry_reconcile", "did_not_happen", "skip", "resume"]))
def test_a_person_may_decide_only_what_applies(reconcile: str | None, state: str,
                                               action: str) -> None:
    import pytest

    from flowledger.domain.errors import ActionNotApplicable

    run = blocked_run(reconcile, state)
    offered = actions_for(run)
    if state in ("needs_reconcile", "indeterminate"):
        assert ("retry_reconcile" in offered) == (reconcile is not None)
        assert {"did_not_happen", "skip"} <= set(offered)
    else:
        assert offered == ()
    if action not in offered:
        before = run.pending_count
        with pytest.raises(ActionNotApplicable):
            decide(run, PersonDecided(action), Chain().rules())
        assert run.pending_count == before  # nothing recorded
        return
    decided = decide(run, PersonDecided(action), Chain().rules())
    assert decided.events  # the decision is in the run's stream
    m = run.mutation
    assert m is not None
    if action == "did_not_happen":
        assert m.state is MutationState.FAILED and not keeps_reservations(run)
        assert decided.effect.release  # type: ignore[union-attr]
    elif action == "skip":
        assert m.state is MutationState.SKIPPED and keeps_reservations(run)
    else:
        assert m.state is MutationState.NEEDS_RECONCILE and keeps_reservations(run)


@given(told=st.sampled_from(["", "no ledger row for A-2"]), live=st.booleans())
def test_a_call_reconcile_found_not_made_is_failed_for_what_reconcile_said(
        told: str, live: bool) -> None:
    """The cause that asked ("outcome unknown") is not the failure's reason:
    recovery printed "it had not happened (outcome unknown)"."""
    run = blocked_run("find", "in_flight")
    decided = decide(run, ReconcileAnswered("failed", None, told, "outcome unknown", live),
                     Chain().rules())
    failed = [e for e in decided.events if type(e).__name__ == "MutationFailed"]
    assert [e.reason for e in failed] == [told or NO_EFFECT_FOUND]  # type: ignore[attr-defined]


def test_a_transient_failure_past_its_last_attempt_gives_up() -> None:
    chain = Chain()
    run = new_run(chain, None)
    for attempt_number, wanted in [(1, "pause"), (3, "error")]:
        run.attempt = attempt_number
        ending = settlement(run, Settle(RunStatus.PAUSED_TRANSIENT, "rate limited"),
                            chain.rules())
        assert ending.workflow == wanted
        assert (ending.retry_at is None) == (wanted == "error")


def test_no_effect_found_while_the_maker_may_still_run_is_looked_for_again() -> None:
    """Found unfinished, a reconcile's "failed" proves the call did not happen only
    once its maker cannot still be making it: while another engine that made it
    is not proven gone (taken over when its lease ran out), the run waits for
    reconciliation again, and gives up to a person after the policy's attempts."""
    chain = Chain()
    run = new_run(chain, None)
    run.start_preparing(START)
    decide(run, PrepareReturned({"in": ["m"]}, b"\xc0", None, None, True), chain.rules())
    decide(run, MutatorCalled("ledger", "append", b"\x90", "find", "host:1:abc"),
           chain.rules())
    assert run.mutation_made_by == "host:1:abc"
    maker = "the engine that made the call (host:1:abc) may still be running it"

    def looked(maker_still_running: str | None) -> object:
        return decide(run, ReconcileAnswered("failed", None, "", "found unfinished", False,
                                             maker_still_running), chain.rules()).effect

    effect = looked(maker)
    assert isinstance(effect, Settle) and effect.status is RunStatus.PAUSED_RECONCILIATION
    assert run.mutation is not None and run.mutation.state is MutationState.NEEDS_RECONCILE
    assert maker in (run.mutation.reason or "")
    looked(maker)
    looked(maker)  # the policy's third attempt: given up to a person
    assert run.mutation.state is MutationState.INDETERMINATE
    assert isinstance(looked(None), RetryFresh)  # its maker proven gone: proof at last
    assert run.mutation.state is MutationState.FAILED
