"""What to do with a run that a session finds unfinished (DESIGN §1.3, §1.4, §2.3).

One table, pure: given the run as its stream tells it, whether the workflow was
cleared by a person, and now, say how the run goes on.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.mutation_ledger import MutationState
from flowledger.domain.phases import RunKind, RunStatus


class Step(StrEnum):
    RETRY_FRESH = "retry_fresh"  # nothing applied: release, and a new run prepares again
    RETRY_NEXT = "retry_next"  # applied: a new run carries the outcome and re-runs next only
    CONTINUE_NEXT = "continue_next"  # applied and the run was cut short: run next in it
    RECONCILE = "reconcile"  # outcome unknown: ask the tool
    WAIT = "wait"  # a retry or reconciliation that is not due yet
    BLOCKED = "blocked"  # a person must decide


class Attempt(StrEnum):
    NEXT = "next"  # a retry after a failure: one more attempt
    SAME = "same"  # a crash is not a failed attempt
    RESET = "reset"  # a person cleared the workflow: count afresh


def attempt_number(current: int, attempt: Attempt) -> int:
    return {Attempt.NEXT: current + 1, Attempt.SAME: current, Attempt.RESET: 1}[attempt]


def _applied(run: HandlerRun) -> bool:
    if run.outcome in ("applied", "skipped"):
        return True
    m = run.mutation
    return m is not None and m.state in (MutationState.APPLIED, MutationState.SKIPPED)


def continuation(run: HandlerRun, cleared: bool, now: datetime) -> tuple[Step, Attempt]:
    """The next step, and how the attempt that follows is counted.

    `cleared`: the workflow is active again, so a person has dealt with whatever
    paused or failed it.
    """
    status = run.status
    m = run.mutation
    due = run.retry_at is None or run.retry_at <= now
    if status is RunStatus.ACTIVE:  # cut short by a crash
        if run.kind is RunKind.PRODUCER:  # its effects were never stored: run it again
            return Step.RETRY_FRESH, Attempt.SAME
        if m is None or m.state is MutationState.FAILED:
            return (Step.CONTINUE_NEXT if _applied(run) else Step.RETRY_FRESH), Attempt.SAME
        if m.state in (MutationState.IN_FLIGHT, MutationState.NEEDS_RECONCILE):
            return Step.RECONCILE, Attempt.SAME
        if m.state is MutationState.INDETERMINATE:
            return Step.BLOCKED, Attempt.SAME
        return Step.CONTINUE_NEXT, Attempt.SAME
    if status in (RunStatus.COMMITTED, RunStatus.SUPERSEDED):
        return Step.WAIT, Attempt.SAME
    # Whatever paused or failed it: a mutation that may have happened is never
    # retried fresh. One in flight (a reconcile that could not be asked, e.g.
    # its tool was not provided) or waiting for reconciliation is reconciled;
    # an indeterminate one waits for a person's decision.
    if m is not None and m.state in (MutationState.IN_FLIGHT, MutationState.NEEDS_RECONCILE):
        reconcile_due = m.next_reconcile_at is None or m.next_reconcile_at <= now
        return (Step.RECONCILE if reconcile_due or cleared else Step.WAIT), Attempt.SAME
    if m is not None and m.state is MutationState.INDETERMINATE:
        return Step.BLOCKED, Attempt.SAME
    if status is RunStatus.PAUSED_RECONCILIATION:
        return (Step.RETRY_NEXT if _applied(run) else Step.RETRY_FRESH), Attempt.SAME
    if status is RunStatus.PAUSED_TRANSIENT:
        if not (due or cleared):
            return Step.WAIT, Attempt.SAME
        attempt = Attempt.RESET if cleared else Attempt.NEXT
        return (Step.RETRY_NEXT if _applied(run) else Step.RETRY_FRESH), attempt
    if status is RunStatus.PAUSED_APPROVAL or status.is_failed:
        if not cleared:
            return Step.BLOCKED, Attempt.SAME
        return (Step.RETRY_NEXT if _applied(run) else Step.RETRY_FRESH), Attempt.RESET
    return Step.WAIT, Attempt.SAME
