"""The Session aggregate: one burst of work for one workflow (DESIGN §1.5).

Its counters move in the same append as the runs they count, so the session's
cost is, by construction, the exact sum of its runs' costs.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import ClassVar
from uuid import UUID

from flowledger.domain.aggregate import EventSourcedAggregate
from flowledger.domain.amounts import plus
from flowledger.domain.errors import InternalError
from flowledger.domain.phases import RunKind


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    MANUAL = "manual"
    EVENT = "event"


class SessionOutcome(StrEnum):
    COMPLETED = "completed"
    BUDGET_EXHAUSTED = "budget_exhausted"
    SUSPENDED = "suspended"
    FAILED = "failed"
    BUSY = "busy"
    BLOCKED = "blocked"


class Session(EventSourcedAggregate):
    append_order: ClassVar[int] = 2
    # Every ended run's cost by run id, read by nothing: a session of 20,000
    # runs kept 100 snapshots of up to 20,000 entries (25 MB).
    dropped_fields: ClassVar[tuple[str, ...]] = ("ended_runs",)

    def __init__(self) -> None:
        self.workflow_id: UUID
        self.workflow: str = ""
        self.trigger: Trigger = Trigger.MANUAL
        self.max_iterations: int = 100
        self.max_cost: Decimal | None = None
        self.owner: str = ""
        self.consumer_runs: int = 0
        self.committed_handlers: list[str] = []
        self.cost: Decimal = Decimal(0)
        self.outcome: SessionOutcome | None = None
        self.reason: str | None = None
        self.budget: str | None = None
        self.remaining: dict[str, dict[str, int]] = {}

    class Opened(EventSourcedAggregate.Created):
        workflow_id: UUID
        workflow: str
        trigger: Trigger
        max_iterations: int
        max_cost: Decimal | None
        owner: str

        def apply(self, s: Session) -> None:
            s.workflow_id = self.workflow_id
            s.workflow = self.workflow
            s.trigger = self.trigger
            s.max_iterations = self.max_iterations
            s.max_cost = self.max_cost
            s.owner = self.owner

    class RunEnded(EventSourcedAggregate.Event):
        """A run this session worked on ended (committed, paused, failed, superseded).

        The session's counters move here, in the same append as the run's end.
        """

        run_id: UUID
        handler: str
        kind: RunKind
        status: str
        cost: Decimal

        def apply(self, s: Session) -> None:
            s.cost = plus(s.cost, self.cost)
            # A replaced run is counted for its cost only.
            if self.status != "superseded" and self.kind == RunKind.CONSUMER:
                s.consumer_runs += 1
            if self.status == "committed" and self.handler not in s.committed_handlers:
                s.committed_handlers.append(self.handler)

    class Closed(EventSourcedAggregate.Event):
        outcome: SessionOutcome
        reason: str | None
        budget: str | None
        remaining: dict[str, dict[str, int]]

        def apply(self, s: Session) -> None:
            s.outcome = self.outcome
            s.reason = self.reason
            s.budget = self.budget
            s.remaining = self.remaining

    def restored_from_snapshot(self) -> None:
        self.trigger = Trigger(self.trigger)
        if self.outcome is not None:
            self.outcome = SessionOutcome(self.outcome)

    @classmethod
    def open(cls, *, id: UUID, now: datetime, workflow_id: UUID, workflow: str,
             trigger: Trigger, max_iterations: int, max_cost: Decimal | None,
             owner: str) -> Session:
        return cls.start(cls.Opened, id, now, workflow_id=workflow_id, workflow=workflow,
                         trigger=trigger, max_iterations=max_iterations, max_cost=max_cost,
                         owner=owner)

    def run_ended(self, now: datetime, run_id: UUID, handler: str, kind: RunKind, status: str,
                  cost: Decimal) -> None:
        """`cost` is what the run spent that no session counted before."""
        self._require_open()
        self.record(self.RunEnded, now, run_id=run_id, handler=handler, kind=kind,
                    status=status, cost=cost)

    def close(self, now: datetime, outcome: SessionOutcome, reason: str | None = None,
              budget: str | None = None,
              remaining: dict[str, dict[str, int]] | None = None) -> None:
        self._require_open()
        self.record(self.Closed, now, outcome=outcome, reason=reason, budget=budget,
                    remaining=remaining or {})

    def _require_open(self) -> None:
        if self.outcome is not None:
            raise InternalError(f"session {self.id} is already closed ({self.outcome.value})")
