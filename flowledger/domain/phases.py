"""Phases and statuses of a handler run (DESIGN §1.3): orthogonal axes.

The phase says how far a run got and only moves forward; the status says how
it is doing. A failure changes the status, never the phase.
"""

from __future__ import annotations

from enum import StrEnum


class RunKind(StrEnum):
    PRODUCER = "producer"
    CONSUMER = "consumer"


class Phase(StrEnum):
    PENDING = "pending"
    EXECUTING = "executing"
    PREPARING = "preparing"
    PREPARED = "prepared"
    MUTATING = "mutating"
    MUTATED = "mutated"
    EMITTING = "emitting"
    COMMITTED = "committed"


PHASE_ORDER: dict[RunKind, tuple[Phase, ...]] = {
    RunKind.PRODUCER: (Phase.PENDING, Phase.EXECUTING, Phase.COMMITTED),
    RunKind.CONSUMER: (
        Phase.PENDING,
        Phase.PREPARING,
        Phase.PREPARED,
        Phase.MUTATING,
        Phase.MUTATED,
        Phase.EMITTING,
        Phase.COMMITTED,
    ),
}


class RunStatus(StrEnum):
    ACTIVE = "active"
    PAUSED_TRANSIENT = "paused:transient"
    PAUSED_APPROVAL = "paused:approval"
    PAUSED_RECONCILIATION = "paused:reconciliation"
    FAILED_LOGIC = "failed:logic"
    FAILED_INTERNAL = "failed:internal"
    COMMITTED = "committed"
    # A retry (or a recovery after a crash) took the run's place: see ADR 0006.
    SUPERSEDED = "superseded"

    @property
    def is_paused(self) -> bool:
        return self.value.startswith("paused:")

    @property
    def is_failed(self) -> bool:
        return self.value.startswith("failed:")


def phase_may_advance(kind: RunKind, current: Phase, new: Phase) -> bool:
    """Phases only move forward, along the run kind's own sequence."""
    order = PHASE_ORDER[kind]
    return current in order and new in order and order.index(new) > order.index(current)

