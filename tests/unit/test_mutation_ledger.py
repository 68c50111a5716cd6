"""The mutation ledger's own rules (DESIGN §1.4), on `Mutation` alone.

A mutation is created `in_flight` (recorded before the external call) and
moves only along the ledger's transitions: a call's outcome or a reconcile's
answer moves `in_flight` or `needs_reconcile` on; only a person moves an
`indeterminate` one (retry reconciliation, "it did not happen", skip) — or,
while it is still being reconciled, skips it. `applied`, `failed` and
`skipped` are final. Nothing ever goes back to `in_flight`: a run chain
decides a mutation once.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowledger.domain.errors import InternalError
from flowledger.domain.mutation_ledger import Mutation, MutationState

S = MutationState

# The transitions DESIGN §1.4 allows, written out independently of the module.
ALLOWED: dict[MutationState, set[MutationState]] = {
    # the call's outcome, or the first reconcile's answer
    S.IN_FLIGHT: {S.APPLIED, S.FAILED, S.NEEDS_RECONCILE, S.INDETERMINATE},
    # each later reconcile's answer; or a person skips it while it is being
    # reconciled (tests/integration/test_skip_while_reconciling.py)
    S.NEEDS_RECONCILE: {S.APPLIED, S.FAILED, S.NEEDS_RECONCILE, S.INDETERMINATE, S.SKIPPED},
    # a person: retry reconciliation (→ needs_reconcile, then maybe applied),
    # "it did not happen" (→ failed), skip (→ skipped)
    S.INDETERMINATE: {S.NEEDS_RECONCILE, S.APPLIED, S.FAILED, S.SKIPPED},
    S.APPLIED: set(),
    S.FAILED: set(),
    S.SKIPPED: set(),
}
FINAL = {S.APPLIED, S.FAILED, S.SKIPPED}
LATER = datetime(2026, 1, 1, tzinfo=UTC)


def mutation(state: MutationState = S.IN_FLIGHT) -> Mutation:
    return Mutation("ledger", "append", b"\x92\xa1a\xa1v", "find_appended", state=state)


@pytest.mark.parametrize("source", list(S))
@pytest.mark.parametrize("target", list(S))
def test_a_mutation_moves_only_along_the_ledgers_transitions(source: MutationState,
                                                             target: MutationState) -> None:
    before = mutation(source)
    if target in ALLOWED[source]:
        moved = before.moved_to(target)
        assert moved.state is target
    else:
        with pytest.raises(InternalError) as refused:
            before.moved_to(target)
        message = str(refused.value)
        assert "ledger.append" in message
        assert f"from {source.value} to {target.value}" in message
    assert before.state is source  # a Mutation is a value: moving it makes another


def test_applied_failed_and_skipped_are_final_and_nothing_returns_to_in_flight() -> None:
    for state in FINAL:
        for target in S:
            with pytest.raises(InternalError):
                mutation(state).moved_to(target)
    for state in S:
        with pytest.raises(InternalError):
            mutation(state).moved_to(S.IN_FLIGHT)


@given(st.lists(st.sampled_from(list(S)), max_size=12))
def test_any_sequence_of_moves_keeps_to_the_ledger(moves: list[MutationState]) -> None:
    """Whatever is asked, in whatever order: an allowed move happens, any other
    is refused and changes nothing; once final, the mutation stays as it is;
    what was attempted (tool, method, params, reconcile) never changes."""
    m = mutation()
    path = [m.state]
    for target in moves:
        if target in ALLOWED[m.state]:
            m = m.moved_to(target, reason=f"to {target.value}")
            path.append(m.state)
        else:
            with pytest.raises(InternalError):
                m.moved_to(target)
        assert (m.tool, m.method, m.params, m.reconcile) == (
            "ledger", "append", b"\x92\xa1a\xa1v", "find_appended")
    assert path.count(S.IN_FLIGHT) == 1  # decided once: never in flight again
    finals = [i for i, s in enumerate(path) if s in FINAL]
    assert finals in ([], [len(path) - 1])  # a final state is the last one, reached once


def test_a_move_carries_the_fields_it_is_given_and_keeps_the_rest() -> None:
    m = mutation().moved_to(S.NEEDS_RECONCILE, reason="timeout", reconcile_attempts=1,
                            next_reconcile_at=LATER)
    assert (m.state, m.reason, m.reconcile_attempts, m.next_reconcile_at) == (
        S.NEEDS_RECONCILE, "timeout", 1, LATER)
    applied = m.moved_to(S.APPLIED, result=b"\x01", next_reconcile_at=None)
    assert (applied.result, applied.reason, applied.reconcile_attempts) == (
        b"\x01", "timeout", 1)
    assert applied.next_reconcile_at is None
