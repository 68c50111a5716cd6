"""The mutation ledger (DESIGN §1.4): one external side effect per consumer run.

`in_flight` is recorded durably before the external call starts; from then on
the mutate handler is never executed again for this run chain unless a person
says the mutation did not happen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from flowledger.domain.errors import InternalError


class MutationState(StrEnum):
    IN_FLIGHT = "in_flight"
    APPLIED = "applied"
    FAILED = "failed"
    NEEDS_RECONCILE = "needs_reconcile"
    INDETERMINATE = "indeterminate"
    SKIPPED = "skipped"


_NEXT: dict[MutationState, frozenset[MutationState]] = {
    MutationState.IN_FLIGHT: frozenset(
        {
            MutationState.APPLIED,
            MutationState.FAILED,
            MutationState.NEEDS_RECONCILE,
            MutationState.INDETERMINATE,
        }
    ),
    MutationState.NEEDS_RECONCILE: frozenset(
        {
            MutationState.APPLIED,
            MutationState.FAILED,
            MutationState.NEEDS_RECONCILE,
            MutationState.INDETERMINATE,
            MutationState.SKIPPED,  # a person may skip it while it is being reconciled
        }
    ),
    # Only a person moves an indeterminate mutation on.
    MutationState.INDETERMINATE: frozenset(
        {
            MutationState.NEEDS_RECONCILE,
            MutationState.APPLIED,
            MutationState.FAILED,
            MutationState.SKIPPED,
        }
    ),
    MutationState.APPLIED: frozenset(),
    MutationState.FAILED: frozenset(),
    MutationState.SKIPPED: frozenset(),
}


@dataclass(frozen=True)
class Mutation:
    """What a run attempted, with which parameters, and what is known of it."""

    tool: str
    method: str
    params: bytes
    reconcile: str | None
    state: MutationState = MutationState.IN_FLIGHT
    result: bytes | None = None
    reason: str | None = None
    reconcile_attempts: int = 0
    next_reconcile_at: datetime | None = None

    def moved_to(self, state: MutationState, **changes: object) -> Mutation:
        if state not in _NEXT[self.state]:
            raise InternalError(
                f"mutation ledger: {self.tool}.{self.method} cannot go from "
                f"{self.state.value} to {state.value}"
            )
        return replace(self, state=state, **changes)  # type: ignore[arg-type]
