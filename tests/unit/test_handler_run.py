"""The HandlerRun aggregate's own rules (DESIGN §1.3, §1.4, §2.1), over random commands.

Any sequence of commands, sensible or not, is applied to a producer or a
consumer run. After each one:
  * phases only move forward, along the run kind's own sequence: a phase
    command that would not is refused;
  * a pause, failure, reactivation or supersession changes the status, never
    the phase; a pause takes only a paused status, a failure only a failed one;
  * a run records at most one mutation, and only in phase `mutating`; its
    ledger moves only along the mutation ledger's transitions;
  * a refused command records nothing and changes nothing;
  * the run holds reservations exactly when it last took some (prepared or
    carried forward) and has not committed, released or handed them on since;
    a release is recorded only while it holds some;
  * what sessions have counted of its cost is brought up to date whenever it
    pauses, fails, commits or is superseded;
  * it is finished exactly when committed, superseded, or failed holding nothing;
and in the end, replaying its events gives the same run.

When a driver may release reservations (only once the mutation is known not
to have happened) is the run decider's rule, not the aggregate's:
tests/unit/test_run_decider.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from flowledger.domain.errors import InternalError
from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.mutation_ledger import Mutation, MutationState
from flowledger.domain.phases import Phase, RunKind, RunStatus

START = datetime(2026, 1, 1, tzinfo=UTC)
P = Phase

# DESIGN §1.3, written out independently of the module.
ORDER = {
    RunKind.PRODUCER: [P.PENDING, P.EXECUTING, P.COMMITTED],
    RunKind.CONSUMER: [P.PENDING, P.PREPARING, P.PREPARED, P.MUTATING, P.MUTATED, P.EMITTING,
                       P.COMMITTED],
}
PAUSED = {RunStatus.PAUSED_TRANSIENT, RunStatus.PAUSED_APPROVAL,
          RunStatus.PAUSED_RECONCILIATION}
FAILED = {RunStatus.FAILED_LOGIC, RunStatus.FAILED_INTERNAL}

PHASE_COMMANDS = {"start_executing": P.EXECUTING, "start_preparing": P.PREPARING,
                  "prepared": P.PREPARED, "start_mutating": P.MUTATING, "mutated": P.MUTATED,
                  "start_emitting": P.EMITTING, "commit": P.COMMITTED}
LEDGER_COMMANDS = {"mutation_applied": MutationState.APPLIED,
                   "mutation_failed": MutationState.FAILED,
                   "mutation_needs_reconcile": MutationState.NEEDS_RECONCILE,
                   "mutation_indeterminate": MutationState.INDETERMINATE,
                   "mutation_skipped": MutationState.SKIPPED}
STATUS_COMMANDS = {"pause", "fail", "reactivate", "supersede"}
COUNTING_COMMANDS = {"pause", "fail", "commit", "supersede"}

reservations = st.dictionaries(st.sampled_from(["in", "other"]),
                               st.lists(st.sampled_from(["m1", "m2"]), max_size=2, unique=True),
                               max_size=2)
commands = st.one_of(
    st.tuples(st.sampled_from(["start_executing", "start_preparing", "start_mutating",
                               "start_emitting", "mutation_in_flight", "mutation_applied",
                               "mutation_failed", "mutation_needs_reconcile",
                               "mutation_indeterminate", "mutation_skipped",
                               "release_reservations", "hand_on_reservations", "reactivate",
                               "supersede", "record_read"]), st.none()),
    st.tuples(st.just("prepared"), reservations),
    st.tuples(st.just("carry_forward"), st.tuples(
        reservations, st.sampled_from([None, "applied", "skipped", "none"]))),
    st.tuples(st.just("mutated"), st.sampled_from(["applied", "none", "skipped"])),
    st.tuples(st.just("commit"), st.booleans()),
    st.tuples(st.sampled_from(["pause", "fail"]), st.sampled_from(list(RunStatus))),
    st.tuples(st.just("add_cost"), st.sampled_from(["0", "0.10", "1.5", "0.333"])),
)


# The ledger's paths a mutation may take after in_flight (as a call, reconciles
# and a person would move it).
LEDGER_PATHS = [["mutation_applied"], ["mutation_failed"],
                ["mutation_needs_reconcile", "mutation_applied"],
                ["mutation_needs_reconcile", "mutation_needs_reconcile", "mutation_failed"],
                ["mutation_needs_reconcile", "mutation_skipped"],
                ["mutation_indeterminate", "mutation_skipped"],
                ["mutation_indeterminate", "mutation_failed"],
                ["mutation_needs_reconcile", "mutation_indeterminate",
                 "mutation_needs_reconcile", "mutation_applied"]]


@st.composite
def scripts(draw: st.DrawFn, kind: RunKind) -> list[tuple[str, Any]]:
    """Mostly a run's sensible way through its phases (so later phases and the
    mutation ledger are reached), with any command at all mixed in anywhere."""
    if kind is RunKind.PRODUCER:
        plan: list[tuple[str, Any]] = [("start_executing", None)]
    else:
        ledger = [(name, None) for name in draw(st.sampled_from(LEDGER_PATHS))]
        if draw(st.booleans()):  # a second mutation asked for, mid-way
            ledger.insert(draw(st.integers(0, len(ledger))), ("mutation_in_flight", None))
        plan = [("start_preparing", None), ("prepared", draw(reservations)),
                ("start_mutating", None), ("mutation_in_flight", None), *ledger,
                ("mutated", draw(st.sampled_from(["applied", "none", "skipped"]))),
                ("start_emitting", None)]
    # How it ends: committed, or first let go of its reservations, paused,
    # failed or superseded (a commit may still be asked for after that).
    plan.append(draw(st.sampled_from([
        ("commit", True), ("release_reservations", None), ("hand_on_reservations", None),
        ("pause", RunStatus.PAUSED_TRANSIENT), ("fail", RunStatus.FAILED_LOGIC),
        ("supersede", None)])))
    plan.append(("commit", draw(st.booleans())))
    script: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(0, 30))):
        if plan and draw(st.integers(0, 2)):
            script.append(plan.pop(0))
        else:
            script.append(draw(commands))
    return script


def new_run(kind: RunKind) -> HandlerRun:
    return HandlerRun.create(id=UUID(int=1), now=START, workflow_id=UUID(int=2), workflow="wf",
                             session_id=UUID(int=3), kind=kind, handler="h")


def previous_run(held: dict[str, list[str]], outcome: Any) -> HandlerRun:
    """A run a retry may carry forward from (when its outcome is settled)."""
    previous = new_run(RunKind.CONSUMER)
    previous.reservations, previous.outcome, previous.data = held, outcome, b"\xa1d"
    previous.mutation = Mutation("ledger", "append", b"", None, state=MutationState.APPLIED)
    return previous


def apply(run: HandlerRun, name: str, arg: Any, now: datetime) -> None:
    if name == "prepared":
        run.prepared(now, arg, b"\xa1d", "a title", None)
    elif name == "carry_forward":
        run.carry_forward(now, previous_run(*arg))
    elif name == "mutated":
        run.mutated(now, arg)
    elif name == "commit":
        run.commit(now, state_replaced=arg)
    elif name == "mutation_in_flight":
        run.mutation_in_flight(now, "ledger", "append", b"\x90", "find_appended")
    elif name == "mutation_applied":
        run.mutation_applied(now, b"\x01", via="call")
    elif name == "mutation_failed":
        run.mutation_failed(now, "no", via="call")
    elif name == "mutation_needs_reconcile":
        run.mutation_needs_reconcile(now, "timeout", 1, now + timedelta(seconds=5))
    elif name == "mutation_indeterminate":
        run.mutation_indeterminate(now, "gave up")
    elif name == "mutation_skipped":
        run.mutation_skipped(now, "a person skipped it")
    elif name == "hand_on_reservations":
        run.hand_on_reservations(now, UUID(int=7))
    elif name == "pause":
        run.pause(now, arg, "paused", None)
    elif name == "fail":
        run.fail(now, arg, "failed")
    elif name == "reactivate":
        run.reactivate(now, "continued")
    elif name == "supersede":
        run.supersede(now, UUID(int=8), "retried")
    elif name == "add_cost":
        run.add_cost(now, Decimal(arg), "model")
    elif name == "record_read":
        run.record_read(now, "ledger", "find", b"\x90", b"\xc0")
    else:
        getattr(run, name)(now)


def fold(run: HandlerRun) -> tuple[Any, ...]:
    """Everything the run's events decide."""
    return (run.version, run.kind, run.phase, run.status, run.reason, run.retry_at,
            run.superseded_by, dict(run.reservations), run.holds_reservations, run.data,
            run.title, run.wake_at, run.mutation, run.outcome, run.outcome_result,
            tuple(run.costs), run.counted_cost,
            tuple((r.tool, r.method, r.params, r.result) for r in run.reads))


@settings(max_examples=300)
@given(st.data())
def test_a_run_keeps_its_rules_whatever_it_is_told(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(list(RunKind)), label="kind")
    script = data.draw(scripts(kind), label="script")
    run = new_run(kind)
    holds = False  # the model of what the run holds
    in_flight_recorded = 0
    for n, (name, arg) in enumerate(script, start=1):
        now = START + timedelta(seconds=n)
        before, recorded_before = fold(run), run.pending_count
        order, phase_before = ORDER[kind], run.phase
        mutation_before = run.mutation
        try:
            apply(run, name, arg, now)
        except (InternalError, AssertionError):
            # Refused: nothing recorded, nothing changed.
            assert (fold(run), run.pending_count) == (before, recorded_before), name
            refused = True
        else:
            refused = False
            assert run.pending_count > recorded_before or name == "release_reservations"

        # Phases only move forward, along the kind's sequence.
        assert order.index(run.phase) >= order.index(phase_before)
        if name in PHASE_COMMANDS:
            target = PHASE_COMMANDS[name]
            forward = target in order and order.index(target) > order.index(phase_before)
            assert refused is not forward, (name, phase_before)
        elif run.phase is not phase_before:
            raise AssertionError(f"{name} changed the phase")
        # A failure changes the status, never the phase; each status its own command.
        if name == "pause":
            assert refused is (arg not in PAUSED)
        if name == "fail":
            assert refused is (arg not in FAILED)
        if name in STATUS_COMMANDS and not refused:
            assert run.phase is phase_before
        # One mutation per run, recorded only in phase mutating.
        if name == "mutation_in_flight":
            assert refused is not (phase_before is P.MUTATING and mutation_before is None)
            in_flight_recorded += not refused
        if name in LEDGER_COMMANDS:
            target_state = LEDGER_COMMANDS[name]
            allowed = mutation_before is not None and _may_move(mutation_before, target_state)
            assert refused is not allowed, (name, mutation_before)
        # Reservations: held from taking them until commit, release or hand-on.
        if not refused:
            if name == "prepared":
                holds = any(arg.values())
            elif name == "carry_forward":
                holds = any(arg[0].values())
            elif name in ("commit", "release_reservations", "hand_on_reservations"):
                if name == "release_reservations":
                    assert (run.pending_count > recorded_before) is holds  # only while held
                holds = False
        assert run.holds_reservations is holds
        # Costs: counted up to date at every pause, failure, commit, supersession.
        if name in COUNTING_COMMANDS and not refused:
            assert run.counted_cost == run.cost and run.uncounted_cost == 0
        assert run.cost == sum((a for a, _ in run.costs), Decimal(0))
        # Finished: nothing more will happen to it.
        assert run.is_finished is (run.status in (RunStatus.COMMITTED, RunStatus.SUPERSEDED)
                                   or (run.status in FAILED and not holds))

    assert in_flight_recorded <= 1
    events = run.collect_events()
    assert sum(type(e).__name__ == "MutationInFlight" for e in events) == in_flight_recorded
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
    replayed = None
    for e in events:
        replayed = e.mutate(replayed)
    assert replayed is not None and fold(replayed) == fold(run)


def _may_move(m: Mutation, state: MutationState) -> bool:
    """What the mutation ledger allows (its table: tests/unit/test_mutation_ledger.py)."""
    try:
        m.moved_to(state)
    except InternalError:
        return False
    return True


def test_a_retry_counts_one_more_attempt_and_stays_in_its_chain() -> None:
    first = new_run(RunKind.CONSUMER)
    retry = HandlerRun.create(id=UUID(int=11), now=START, workflow_id=UUID(int=2),
                              workflow="wf", session_id=None, kind=RunKind.CONSUMER,
                              handler="h", retry_of=first)
    again = HandlerRun.create(id=UUID(int=12), now=START, workflow_id=UUID(int=2),
                              workflow="wf", session_id=None, kind=RunKind.CONSUMER,
                              handler="h", retry_of=retry, attempt=retry.attempt)
    assert (first.attempt, retry.attempt, again.attempt) == (1, 2, 2)  # a crash: no attempt
    assert retry.retry_of == first.id and again.retry_of == retry.id
    assert first.chain_id == retry.chain_id == again.chain_id == first.id


def test_only_a_settled_outcome_is_carried_forward() -> None:
    for outcome in (None, "applied", "skipped", "none"):
        run = new_run(RunKind.CONSUMER)
        previous = previous_run({"in": ["m1"]}, outcome)
        if outcome is None:
            try:
                run.carry_forward(START, previous)
            except InternalError:
                continue
            raise AssertionError("an unsettled outcome was carried forward")
        run.carry_forward(START, previous)
        assert (run.outcome, run.reservations, run.holds_reservations) == (
            outcome, {"in": ["m1"]}, True)
        assert run.phase is P.PENDING and run.mutation is None  # next only: no mutation


def test_a_failure_recorded_before_tracebacks_still_reads() -> None:
    """HandlerRun.Failed gained `traceback` (issue 13) with a default: an event
    written without it reads back, and folds to a run without one."""
    from flowledger.infrastructure.codec import MsgpackTranscoder

    fields = {"originator_id": UUID(int=1), "originator_version": 2, "timestamp": START,
              "status": RunStatus.FAILED_LOGIC, "reason": "KeyError: 'x'",
              "counted_cost": Decimal(0)}
    old = HandlerRun.Failed(**fields)
    assert old.traceback is None
    transcoder = MsgpackTranscoder()
    decoded = transcoder.decode(transcoder.encode(old.model_dump(exclude={"traceback"})))
    assert HandlerRun.Failed.model_validate(decoded).traceback is None
    new = HandlerRun.Failed(**fields, traceback='  File "x.py", line 1\nKeyError: \'x\'')
    assert HandlerRun.Failed.model_validate(new.model_dump()).traceback == new.traceback
