"""The continuation table (DESIGN §1.3, §1.4, §2.3): how a run found unfinished goes on.

`continuation(run, cleared, now)` reads the run as its stream tells it (kind,
status, mutation state, outcome, when a retry or a reconcile is due), whether
a person cleared the workflow, and the time; it answers the next step and how
the attempt that follows is counted. Its rules, for every run a session can
find:
  * the mutate handler never runs again for a mutation that may have happened
    (in flight, needs reconcile, indeterminate, applied, skipped): no RETRY_FRESH;
  * a mutation known to have happened goes on to `next` (in the run, or in a
    retry that carries its outcome) — it is not asked about again;
  * one known not to have happened (failed, or never attempted) is retried
    fresh — never carried forward;
  * an outcome still unknown is reconciled; an indeterminate one waits for a
    person, whether or not the workflow was cleared;
  * a crash is never an attempt: a run cut short goes on with the same count;
    only a transient pause that fell due counts one more, and a person's
    clearing starts the count afresh;
  * a paused run that is not due and not cleared waits; a run that waits for a
    person (approval, a failure) stays blocked until the workflow is cleared.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowledger.domain.continuation import Attempt, Step, attempt_number, continuation
from flowledger.domain.handler_run import HandlerRun, OutcomeStatus
from flowledger.domain.mutation_ledger import Mutation, MutationState
from flowledger.domain.phases import Phase, RunKind, RunStatus

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
M = MutationState
S = RunStatus
MAY_HAVE_HAPPENED = {M.IN_FLIGHT, M.NEEDS_RECONCILE, M.INDETERMINATE, M.APPLIED, M.SKIPPED}
HAPPENED = {M.APPLIED, M.SKIPPED}
WAITS_FOR_A_PERSON = [S.PAUSED_APPROVAL, S.FAILED_LOGIC, S.FAILED_INTERNAL]


@dataclass(frozen=True)
class Found:
    """A run as a session finds it in the log."""

    kind: RunKind
    status: RunStatus
    mutation: MutationState | None
    outcome: OutcomeStatus | None
    retry_at: datetime | None
    reconcile_at: datetime | None

    def run(self) -> HandlerRun:
        run = HandlerRun.create(id=UUID(int=1), now=NOW - timedelta(hours=1),
                                workflow_id=UUID(int=2), workflow="wf", session_id=UUID(int=3),
                                kind=self.kind, handler="h", attempt=2)
        # The fold's result, set directly: the table reads nothing else.
        run.phase = Phase.MUTATING if self.mutation is not None else Phase.PREPARED
        run.status = self.status
        run.retry_at = self.retry_at
        run.outcome = self.outcome
        if self.mutation is not None:
            run.mutation = Mutation("ledger", "append", b"", "find_appended",
                                    state=self.mutation, next_reconcile_at=self.reconcile_at)
        return run

    @property
    def happened(self) -> bool:
        return self.mutation in HAPPENED or self.outcome in ("applied", "skipped")

    @property
    def may_have_happened(self) -> bool:
        return self.mutation in MAY_HAVE_HAPPENED or self.outcome in ("applied", "skipped")


times = st.one_of(st.none(), st.integers(-3600, 3600).map(lambda s: NOW + timedelta(seconds=s)))


def outcomes_for(mutation: MutationState | None) -> st.SearchStrategy[OutcomeStatus | None]:
    """The outcome a run records next to its mutation (a carried-forward run has
    an outcome and no mutation of its own)."""
    if mutation is None:
        return st.sampled_from([None, "none", "applied", "skipped"])
    if mutation is M.APPLIED:
        return st.sampled_from([None, "applied"])
    if mutation is M.SKIPPED:
        return st.sampled_from([None, "skipped"])
    return st.just(None)


# Which mutation states a run of each status can hold, as the engine settles runs
# (run_decider.settle_unknown: an unsettled mutation pauses its run for
# reconciliation; a pause or failure of any other kind follows a mutation that
# failed, happened, or was never made). Paused for reconciliation while still
# in flight: recovery found the call in flight but could not ask (its tool was
# not provided).
STATES_BY_STATUS: dict[RunStatus, list[MutationState | None]] = {
    S.ACTIVE: [None, *M],  # cut short by a crash anywhere
    S.PAUSED_RECONCILIATION: [M.IN_FLIGHT, M.NEEDS_RECONCILE, M.INDETERMINATE, M.FAILED,
                              M.APPLIED],
    S.PAUSED_TRANSIENT: [None, M.FAILED, M.APPLIED, M.SKIPPED],
    S.PAUSED_APPROVAL: [None, M.FAILED, M.APPLIED, M.SKIPPED],
    S.FAILED_LOGIC: [None, M.FAILED, M.APPLIED, M.SKIPPED],
    S.FAILED_INTERNAL: [None, M.FAILED, M.APPLIED, M.SKIPPED],
}


@st.composite
def found_consumer_runs(draw: st.DrawFn, statuses: list[RunStatus] | None = None) -> Found:
    status = draw(st.sampled_from(statuses or list(STATES_BY_STATUS)))
    mutation = draw(st.sampled_from(STATES_BY_STATUS[status]))
    reconcile_at = draw(times) if mutation is M.NEEDS_RECONCILE else None
    return Found(RunKind.CONSUMER, status, mutation, draw(outcomes_for(mutation)), draw(times),
                 reconcile_at)


def step_of(found: Found, cleared: bool) -> tuple[Step, Attempt]:
    return continuation(found.run(), cleared, NOW)


# --------------------------------------------------------------- the mutation


@given(found_consumer_runs(), st.booleans())
def test_a_mutation_that_may_have_happened_is_never_retried_fresh(found: Found,
                                                                  cleared: bool) -> None:
    step, _ = step_of(found, cleared)
    if found.may_have_happened:
        assert step is not Step.RETRY_FRESH, found


@given(found_consumer_runs(), st.booleans())
def test_a_mutation_that_happened_goes_on_to_next_and_is_not_asked_again(
        found: Found, cleared: bool) -> None:
    step, _ = step_of(found, cleared)
    if found.happened:
        assert step in (Step.CONTINUE_NEXT, Step.RETRY_NEXT, Step.WAIT, Step.BLOCKED), found
        if found.status is S.ACTIVE:
            assert step is Step.CONTINUE_NEXT  # cut short: its own next runs, in it


@given(found_consumer_runs(), st.booleans())
def test_a_mutation_known_not_to_have_happened_is_retried_fresh_never_carried(
        found: Found, cleared: bool) -> None:
    step, _ = step_of(found, cleared)
    if found.mutation in (None, M.FAILED) and not found.happened:
        assert step in (Step.RETRY_FRESH, Step.WAIT, Step.BLOCKED), found
        if found.status in (S.ACTIVE, S.PAUSED_RECONCILIATION) or cleared:
            assert step is Step.RETRY_FRESH


@given(found_consumer_runs(), st.booleans())
def test_an_unknown_outcome_is_reconciled_and_an_indeterminate_one_waits_for_a_person(
        found: Found, cleared: bool) -> None:
    step, attempt = step_of(found, cleared)
    if found.mutation is M.INDETERMINATE:
        assert (step, attempt) == (Step.BLOCKED, Attempt.SAME)  # resume alone does not do
    if found.status is S.ACTIVE and found.mutation in (M.IN_FLIGHT, M.NEEDS_RECONCILE):
        assert step is Step.RECONCILE


# ------------------------------------------------------------------- attempts


@given(found_consumer_runs([S.ACTIVE]), st.booleans())
def test_a_crash_never_counts_as_an_attempt(found: Found, cleared: bool) -> None:
    assert step_of(found, cleared)[1] is Attempt.SAME


@pytest.mark.parametrize("cleared", [False, True])
def test_a_producer_cut_short_runs_again_as_the_same_attempt(cleared: bool) -> None:
    found = Found(RunKind.PRODUCER, S.ACTIVE, None, None, None, None)
    assert step_of(found, cleared) == (Step.RETRY_FRESH, Attempt.SAME)


@given(found_consumer_runs(), st.booleans())
def test_only_a_transient_pause_that_fell_due_counts_one_more_attempt(found: Found,
                                                                      cleared: bool) -> None:
    step, attempt = step_of(found, cleared)
    if attempt is Attempt.NEXT:
        assert found.status is S.PAUSED_TRANSIENT and not cleared
        assert found.retry_at is None or found.retry_at <= NOW
    if attempt is Attempt.RESET:
        assert cleared and step in (Step.RETRY_FRESH, Step.RETRY_NEXT)


def test_attempt_numbers() -> None:
    assert attempt_number(3, Attempt.NEXT) == 4
    assert attempt_number(3, Attempt.SAME) == 3
    assert attempt_number(3, Attempt.RESET) == 1


# ------------------------------------------------------------- pauses and time


@given(found_consumer_runs([S.PAUSED_TRANSIENT]), st.booleans())
def test_a_transient_pause_waits_until_it_is_due_or_cleared(found: Found,
                                                            cleared: bool) -> None:
    step, attempt = step_of(found, cleared)
    due = found.retry_at is None or found.retry_at <= NOW
    if not due and not cleared:
        assert (step, attempt) == (Step.WAIT, Attempt.SAME)
    else:
        assert step in (Step.RETRY_FRESH, Step.RETRY_NEXT)
        assert attempt is (Attempt.RESET if cleared else Attempt.NEXT)


@given(found_consumer_runs([S.PAUSED_RECONCILIATION]), st.booleans())
def test_a_reconciliation_waits_until_it_is_due_or_cleared(found: Found, cleared: bool) -> None:
    step, attempt = step_of(found, cleared)
    assert attempt is Attempt.SAME  # reconciling again is no new attempt
    if found.mutation is M.NEEDS_RECONCILE:
        due = found.reconcile_at is None or found.reconcile_at <= NOW
        assert step is (Step.RECONCILE if due or cleared else Step.WAIT)


@given(found_consumer_runs(WAITS_FOR_A_PERSON), st.booleans())
def test_a_run_that_waits_for_a_person_is_blocked_until_the_workflow_is_cleared(
        found: Found, cleared: bool) -> None:
    step, attempt = step_of(found, cleared)
    if cleared:
        assert step in (Step.RETRY_FRESH, Step.RETRY_NEXT) and attempt is Attempt.RESET
    else:
        assert (step, attempt) == (Step.BLOCKED, Attempt.SAME)


@given(found_consumer_runs(), st.booleans())
def test_the_table_only_reads_the_run(found: Found, cleared: bool) -> None:
    run = found.run()
    before = (dict(vars(run)), run.pending_count)
    continuation(run, cleared, NOW)
    assert (dict(vars(run)), run.pending_count) == before


def test_a_run_paused_for_reconciliation_while_in_flight_is_not_retried_fresh() -> None:
    found = Found(RunKind.CONSUMER, S.PAUSED_RECONCILIATION, M.IN_FLIGHT, None, None, None)
    step, _ = step_of(found, cleared=True)  # after the person's `resume`
    assert step is not Step.RETRY_FRESH
