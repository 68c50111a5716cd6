"""A run's decisions, pure (DESIGN §1.3, §1.4, §2.3): one place for each rule.

`decide(run, observation, rules)` records on the run the events that follow
from what was observed (a prepare's answer, a mutator call, its outcome, a
reconcile answer, a person's decision) and says what comes next: the
`Effect`. The live driver (engine/handler_runs.py) and replay
(engine/replay.py) are two interpreters of it: the live one appends at the
durable points and calls tools; the dry one serves recorded reads and
captures the mutator call. How an unfinished run goes on is the continuation
table (domain/continuation.py), which both the decider's callers and the
read side consult.

No I/O, no clock: time, and when to try again, come in through `Rules`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from flowledger.domain.aggregate import EventSourcedAggregate
from flowledger.domain.errors import ActionNotApplicable, InternalError
from flowledger.domain.failures import CallFailure
from flowledger.domain.handler_run import HandlerRun, OutcomeStatus
from flowledger.domain.mutation_ledger import Mutation, MutationState
from flowledger.domain.phases import RunStatus

Action = Literal["retry_reconcile", "did_not_happen", "skip"]
ACTIONS: tuple[Action, ...] = ("retry_reconcile", "did_not_happen", "skip")


@dataclass(frozen=True)
class Rules:
    """What the decider must be told: now, and the retry policy's answers."""

    now: datetime
    # (now, attempts answered "retry" so far) -> when to reconcile again, None: give up
    reconcile_at: Callable[[datetime, int], datetime | None]
    # (now, failed attempt number) -> when to try again, None: give up
    transient_retry_at: Callable[[datetime, int], datetime | None]


# ------------------------------------------------------------ observations


@dataclass(frozen=True)
class PrepareReturned:
    reservations: dict[str, list[str]]
    data: bytes
    title: str | None
    wake_at: datetime | None
    has_mutate: bool


@dataclass(frozen=True)
class MutatorCalled:
    tool: str
    method: str
    params: bytes
    reconcile: str | None
    made_by: str | None = None  # the engine making the call (its owner string)


@dataclass(frozen=True)
class CallReturned:
    result: bytes  # packed; NONE_PACKED when the result could not be stored
    via: str = "call"


@dataclass(frozen=True)
class CallRaised:
    failure: CallFailure
    description: str


@dataclass(frozen=True)
class ReconcileAnswered:
    status: Literal["applied", "failed", "retry"]
    result: bytes | None  # packed, for applied
    reason: str  # the tool's own words, recordable
    cause: str  # why reconciliation was needed
    # True: asked right after the call, inside mutate; False: by recovery or
    # when its backoff fell due, with the run found unfinished.
    live: bool
    # Found unfinished: why the call may still be under way elsewhere (the
    # engine that made it still runs: its session was taken over when its
    # lease ran out, a process stopped or stalled), so "failed" proves nothing yet.
    maker_still_running: str | None = None


@dataclass(frozen=True)
class NoReconcileMethod:
    cause: str


@dataclass(frozen=True)
class MutateEnded:
    """The mutate handler returned (or raised), and any call it made is settled."""

    # The handler's own error (or, after an applied call, a result that could
    # not be kept): the status it calls for and its description.
    error: RunStatus | None
    reason: str | None
    call_failure: CallFailure | None  # how the mutator's call failed, if it did
    call_error: str | None = None  # and what it raised, described


@dataclass(frozen=True)
class PersonDecided:
    action: str


Observation = (PrepareReturned | MutatorCalled | CallReturned | CallRaised | ReconcileAnswered
               | NoReconcileMethod | MutateEnded | PersonDecided)


# ----------------------------------------------------------------- effects


@dataclass(frozen=True)
class RunMutate:
    """Call the consumer's mutate."""


@dataclass(frozen=True)
class RunNext:
    """Call next with this outcome; `declined`: prepare reserved nothing."""

    outcome: OutcomeStatus
    result: bytes | None = None
    declined: bool = False


@dataclass(frozen=True)
class CallTool:
    """`in_flight` is recorded: make it durable (synced), then call the mutator."""


@dataclass(frozen=True)
class Reconcile:
    """The call's outcome is unknown: ask the tool's reconcile method."""


@dataclass(frozen=True)
class ReturnResult:
    """The mutation is applied and recorded: hand its result to the handler."""

    result: bytes


@dataclass(frozen=True)
class RaiseToHandler:
    """The mutator's error goes back to the mutate handler as raised."""


@dataclass(frozen=True)
class RetryFresh:
    """Known not to have happened: a fresh run prepares (and may mutate) again."""


@dataclass(frozen=True)
class Settle:
    """End the run without a commit: pause or fail it (see `settlement`)."""

    status: RunStatus
    reason: str
    retry_at: datetime | None = None
    traceback: str | None = None  # a failure's, kept with it (failures.traceback_of)


@dataclass(frozen=True)
class Resumed:
    """A person decided: the workflow is active again; `release` the run's
    reservations back to pending first if it says so."""

    release: bool


Effect = (RunMutate | RunNext | CallTool | Reconcile | ReturnResult | RaiseToHandler
          | RetryFresh | Settle | Resumed)


@dataclass(frozen=True)
class Decision:
    events: tuple[EventSourcedAggregate.Event, ...]  # recorded on the run by this step
    effect: Effect


# ---------------------------------------------------------------- deciding


def decide(run: HandlerRun, observation: Observation, rules: Rules) -> Decision:
    """Record what follows from `observation` on `run`; say what comes next."""
    mark = run.pending_count
    effect = _decide(run, observation, rules)
    return Decision(run.recorded_since(mark), effect)


def _decide(run: HandlerRun, o: Observation, rules: Rules) -> Effect:
    now = rules.now
    if isinstance(o, PrepareReturned):
        run.prepared(now, o.reservations, o.data, o.title, o.wake_at)
        if not any(o.reservations.values()):
            return RunNext("none", declined=True)
        if not o.has_mutate:
            return RunNext("none")
        run.start_mutating(now)
        return RunMutate()
    if isinstance(o, MutatorCalled):
        run.mutation_in_flight(now, o.tool, o.method, o.params, o.reconcile, o.made_by)
        return CallTool()
    if isinstance(o, CallReturned):
        return _applied(run, o.result, o.via, now)
    if isinstance(o, CallRaised):
        if o.failure in ("transient", "approval"):
            run.mutation_failed(now, o.description, via="call")
            return RaiseToHandler()
        # Uncertain, or an unexpected exception: the effect may have happened.
        return Reconcile() if _mutation(run).reconcile else _no_reconcile(run, o.description, now)
    if isinstance(o, NoReconcileMethod):  # found unfinished: a person must decide
        _no_reconcile(run, o.cause, now)
        return settle_unknown(run)
    if isinstance(o, ReconcileAnswered):
        return _reconciled(run, o, rules)
    if isinstance(o, MutateEnded):
        return _after_mutate(run, o, now)
    if isinstance(o, PersonDecided):
        return _person(run, o.action, now)
    raise InternalError(f"run {run.id}: nothing decides on {type(o).__name__}")


def _mutation(run: HandlerRun) -> Mutation:
    if run.mutation is None:
        raise InternalError(f"run {run.id} has no mutation")
    return run.mutation


def _applied(run: HandlerRun, result: bytes, via: str, now: datetime) -> Effect:
    run.mutation_applied(now, result, via=via)
    run.mutated(now, "applied")
    return ReturnResult(result)


def _no_reconcile(run: HandlerRun, cause: str, now: datetime) -> Effect:
    m = _mutation(run)
    run.mutation_indeterminate(
        now, f"{cause}; tool {m.tool!r} has no reconcile method for {m.method!r}")
    return RaiseToHandler()


NO_EFFECT_FOUND = "reconcile found no effect of the call"


def _reconciled(run: HandlerRun, o: ReconcileAnswered, rules: Rules) -> Effect:
    """Live, every answer goes back into mutate (its end settles the run);
    found unfinished, the run goes on to next, is retried fresh, or waits."""
    now = rules.now
    if o.status == "applied":
        assert o.result is not None
        applied = _applied(run, o.result, "reconcile", now)
        return applied if o.live else RunNext("applied", o.result)
    if o.status == "failed" and (o.live or o.maker_still_running is None):
        # Not the cause that asked (an "outcome unknown" beside "it had not
        # happened" reads as a contradiction): what reconcile found.
        run.mutation_failed(now, o.reason or NO_EFFECT_FOUND, via="reconcile")
        return RaiseToHandler() if o.live else RetryFresh()
    attempts = _mutation(run).reconcile_attempts + 1
    next_at = rules.reconcile_at(now, attempts)
    if o.status == "failed":  # not yet proof: the call may land after this look
        reason = (f"reconcile found no effect yet, but {o.maker_still_running}: its call "
                  "may still land, so it is looked for again")
    else:
        reason = f"{o.cause}; reconcile said retry" + (f" ({o.reason})" if o.reason else "")
    if next_at is None:
        run.mutation_indeterminate(now, f"{reason}; gave up after {attempts} attempts")
    else:
        run.mutation_needs_reconcile(now, reason, attempts, next_at)
    return RaiseToHandler() if o.live else settle_unknown(run)


def settle_unknown(run: HandlerRun) -> Settle:
    """A mutation whose outcome is not known: the run waits for reconciliation
    (or, indeterminate, for a person)."""
    m = _mutation(run)
    return Settle(RunStatus.PAUSED_RECONCILIATION, m.reason or "outcome unknown",
                  m.next_reconcile_at)


def _after_mutate(run: HandlerRun, o: MutateEnded, now: datetime) -> Effect:
    m = run.mutation
    if m is None:  # mutate made no call
        if o.error is not None:
            return Settle(o.error, o.reason or "")
        run.mutated(now, "none")
        return RunNext("none")
    if m.state is MutationState.APPLIED:
        if o.error is not None:  # the effect happened; the handler or the result failed
            return Settle(o.error, o.reason or "")
        return RunNext("applied", run.outcome_result)
    if m.state is MutationState.FAILED:
        failure = o.call_failure or "unexpected"
        if failure == "unexpected":  # what it raised, then what the reconcile found
            found = (NO_EFFECT_FOUND if m.reason == NO_EFFECT_FOUND
                     else f"reconcile says it did not happen: {m.reason}")
            return Settle(RunStatus.FAILED_INTERNAL,
                          f"mutator raised {o.call_error or 'an exception'}; {found}")
        return Settle(call_failed_status(failure), m.reason or "")
    return settle_unknown(run)


def call_failed_status(failure: CallFailure) -> RunStatus:
    """How a run ends whose mutator failed definitely (or was proven not applied)."""
    if failure in ("transient", "uncertain"):
        return RunStatus.PAUSED_TRANSIENT
    if failure == "approval":
        return RunStatus.PAUSED_APPROVAL
    # An unexpected exception is a tool bug, even when reconcile proves nothing happened.
    return RunStatus.FAILED_INTERNAL


def keeps_reservations(run: HandlerRun) -> bool:
    """Reservations stay with a run while its mutation may have happened (§1.3)."""
    return run.outcome in ("applied", "skipped") or (
        run.mutation is not None and run.mutation.state is not MutationState.FAILED)


@dataclass(frozen=True)
class Settlement:
    """What ending a run without a commit does to its workflow."""

    workflow: Literal["pause", "error"]
    reason: str
    retry_at: datetime | None


def settlement(run: HandlerRun, settle: Settle, rules: Rules) -> Settlement:
    """Record the run's pause or failure, and say what follows for its workflow:
    a transient failure past its last attempt gives up. (Its reservations were
    released first, if `keeps_reservations` said they go.)"""
    now = rules.now
    status, reason, retry_at = settle.status, settle.reason, settle.retry_at
    give_up = False
    if status is RunStatus.PAUSED_TRANSIENT and retry_at is None:
        retry_at = rules.transient_retry_at(now, run.attempt)
        give_up = retry_at is None
    if status.is_paused:
        run.pause(now, status, reason, retry_at)
        if give_up:
            return Settlement("error", f"run {run.id} ({run.handler}) gave up after "
                              f"{run.attempt} attempts: {reason}", None)
        return Settlement("pause", f"run {run.id} ({run.handler}) is {status.value}: {reason}",
                          retry_at)
    run.fail(now, status, reason, settle.traceback)
    return Settlement("error", f"run {run.id} ({run.handler}) {status.value}: {reason}", None)


# ------------------------------------------------------------ a person's word


def actions_for(run: HandlerRun) -> tuple[Action, ...]:
    """The decisions a person may take on this run's mutation (DESIGN §1.4)."""
    m = run.mutation
    if m is None or m.state not in (MutationState.INDETERMINATE,
                                    MutationState.NEEDS_RECONCILE):
        return ()
    return tuple(a for a in ACTIONS if a != "retry_reconcile" or m.reconcile)


def check_decision(run: HandlerRun, action: str) -> None:
    """Raise ActionNotApplicable, saying why, unless `action` applies to the run."""
    if action not in ACTIONS:
        raise ActionNotApplicable(f"action {action!r} is not one of {list(ACTIONS)}")
    m = run.mutation
    if action not in actions_for(run):
        if m is None or m.state not in (MutationState.INDETERMINATE,
                                        MutationState.NEEDS_RECONCILE):
            state = m.state.value if m else "no mutation"
            raise ActionNotApplicable(
                f"run {run.id} ({run.handler}): its mutation is {state}; resolve applies only "
                "to a mutation whose outcome is unknown (indeterminate or needs_reconcile). "
                "Nothing was changed.")
        raise ActionNotApplicable(
            f"run {run.id}: tool {m.tool!r} has no reconcile method for {m.method!r}, so "
            "reconciliation cannot be retried; choose did_not_happen or skip. Nothing "
            "was changed.")


def _person(run: HandlerRun, action: str, now: datetime) -> Effect:
    check_decision(run, action)
    if action == "retry_reconcile":
        run.mutation_needs_reconcile(now, "a person asked to reconcile again", 0, now)
        return Resumed(release=False)
    if action == "did_not_happen":
        run.mutation_failed(now, "a person said it did not happen", via="person")
        run.release_reservations(now)
        run.pause(now, RunStatus.PAUSED_TRANSIENT, "a person said the mutation did not "
                  "happen; a fresh run may mutate again", retry_at=now)
        return Resumed(release=True)
    run.mutation_skipped(now, "a person chose to skip it")
    run.mutated(now, "skipped")
    run.reactivate(now, "a person chose to skip the mutation")
    return Resumed(release=False)


# --------------------------------------------------------------- outcomes


def settled_outcome(run: HandlerRun) -> OutcomeStatus:
    """The outcome `next` sees for a run whose mutation question is settled."""
    m = run.mutation
    if m is not None and m.state is MutationState.APPLIED:
        return "applied"
    if m is not None and m.state is MutationState.SKIPPED:
        return "skipped"
    return "none"


def replayable_outcome(recorded: Mutation | None, same_call: bool
                       ) -> tuple[OutcomeStatus | None, str | None]:
    """Replay: the outcome next may be replayed with after the captured call,
    or None and why not (replay never performs a mutation)."""
    if recorded is None or not same_call:
        return None, ("next was not replayed: the mutator call differs from the recorded "
                      "one, so its outcome is unknown (replay never performs a mutation)")
    if recorded.state is MutationState.APPLIED:
        return "applied", None
    if recorded.state is MutationState.SKIPPED:
        return "skipped", "a person skipped the recorded mutation: next sees 'skipped'"
    return None, (f"the recorded mutation ended {recorded.state.value}; replay cannot know a "
                  "tool's answer, so it stops there as the recorded run did")

