"""The HandlerRun aggregate: one run of a producer or consumer (DESIGN §1.3, §1.4).

Every phase change, mutation-ledger transition, recorded read, cost and status
change is an event of the run's own stream; rebuilding a run is replaying it.
Values handed in by handlers (data, params, results, read results) arrive here
already packed by the codec, so their size is known and replay is exact.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal
from uuid import UUID

from flowledger.domain.aggregate import EventSourcedAggregate
from flowledger.domain.amounts import minus, total
from flowledger.domain.errors import InternalError
from flowledger.domain.mutation_ledger import Mutation, MutationState
from flowledger.domain.phases import Phase, RunKind, RunStatus, phase_may_advance

OutcomeStatus = Literal["applied", "none", "skipped"]


class RecordedRead:
    """A tool read as it happened: replay debugging re-serves it (DESIGN §2.5)."""

    __slots__ = ("method", "params", "result", "tool")

    def __init__(self, tool: str, method: str, params: bytes, result: bytes) -> None:
        self.tool, self.method, self.params, self.result = tool, method, params, result


class HandlerRun(EventSourcedAggregate):
    append_order: ClassVar[int] = 0
    added_fields: ClassVar[dict[str, Any]] = {"mutation_made_by": None}  # 2026-12-07

    def __init__(self) -> None:
        self.workflow_id: UUID
        self.workflow: str = ""
        self.session_id: UUID | None = None
        self.kind: RunKind = RunKind.CONSUMER
        self.handler: str = ""
        self.retry_of: UUID | None = None
        self.chain_id: UUID
        self.attempt: int = 1
        self.phase: Phase = Phase.PENDING
        self.status: RunStatus = RunStatus.ACTIVE
        self.reason: str | None = None
        # The failing handler's traceback (its last frames), when it failed on a bug.
        self.traceback: str | None = None
        self.retry_at: datetime | None = None
        self.superseded_by: UUID | None = None
        self.reservations: dict[str, list[str]] = {}
        self.holds_reservations: bool = False
        self.data: bytes | None = None
        self.title: str | None = None
        self.wake_at: datetime | None = None
        self.mutation: Mutation | None = None
        # The engine (its owner string) that recorded the mutation in flight and
        # made its call; None in runs recorded before it was kept.
        self.mutation_made_by: str | None = None
        self.outcome: OutcomeStatus | None = None
        self.outcome_result: bytes | None = None
        self.costs: list[tuple[Decimal, str]] = []
        # How much of `cost` sessions have counted: a run continued after a
        # crash is counted by the session that ends it, for what is not yet.
        self.counted_cost: Decimal = Decimal(0)
        self.reads: list[RecordedRead] = []

    # ----------------------------------------------------------------- events

    class Created(EventSourcedAggregate.Created):
        workflow_id: UUID
        workflow: str
        session_id: UUID | None
        kind: RunKind
        handler: str
        retry_of: UUID | None
        chain_id: UUID
        attempt: int

        def apply(self, run: HandlerRun) -> None:
            run.workflow_id = self.workflow_id
            run.workflow = self.workflow
            run.session_id = self.session_id
            run.kind = self.kind
            run.handler = self.handler
            run.retry_of = self.retry_of
            run.chain_id = self.chain_id
            run.attempt = self.attempt

    class ExecutionStarted(EventSourcedAggregate.Event):
        phase_reached: ClassVar[Phase] = Phase.EXECUTING
        def apply(self, run: HandlerRun) -> None:
            run.phase = self.phase_reached

    class PreparingStarted(EventSourcedAggregate.Event):
        phase_reached: ClassVar[Phase] = Phase.PREPARING
        def apply(self, run: HandlerRun) -> None:
            run.phase = self.phase_reached

    class ReadRecorded(EventSourcedAggregate.Event):
        tool: str
        method: str
        params: bytes
        result: bytes

        def apply(self, run: HandlerRun) -> None:
            run.reads.append(RecordedRead(self.tool, self.method, self.params, self.result))

    class CostAdded(EventSourcedAggregate.Event):
        amount: Decimal
        label: str

        def apply(self, run: HandlerRun) -> None:
            run.costs.append((self.amount, self.label))

    class Prepared(EventSourcedAggregate.Event):
        phase_reached: ClassVar[Phase] = Phase.PREPARED
        reservations: dict[str, list[str]]
        data: bytes
        title: str | None
        wake_at: datetime | None

        def apply(self, run: HandlerRun) -> None:
            run.phase = self.phase_reached
            run.reservations = self.reservations
            run.holds_reservations = any(self.reservations.values())
            run.data = self.data
            run.title = self.title
            run.wake_at = self.wake_at

    class CarriedForward(EventSourcedAggregate.Event):
        """A retry after an applied (or skipped) mutation takes over its result."""

        from_run: UUID
        reservations: dict[str, list[str]]
        data: bytes
        title: str | None
        mutation_tool: str | None
        mutation_method: str | None
        outcome: str
        outcome_result: bytes | None

        def apply(self, run: HandlerRun) -> None:
            run.reservations = self.reservations
            run.holds_reservations = any(self.reservations.values())
            run.data = self.data
            run.title = self.title
            run.outcome = self.outcome  # type: ignore[assignment]
            run.outcome_result = self.outcome_result

    class MutatingStarted(EventSourcedAggregate.Event):
        phase_reached: ClassVar[Phase] = Phase.MUTATING
        def apply(self, run: HandlerRun) -> None:
            run.phase = self.phase_reached

    class MutationInFlight(EventSourcedAggregate.Event):
        ledger_state: ClassVar[MutationState] = MutationState.IN_FLIGHT
        tool: str
        method: str
        params: bytes
        reconcile: str | None
        made_by: str | None = None  # absent in events recorded before it was kept

        def apply(self, run: HandlerRun) -> None:
            run.mutation = Mutation(self.tool, self.method, self.params, self.reconcile)
            run.mutation_made_by = self.made_by

    class MutationApplied(EventSourcedAggregate.Event):
        ledger_state: ClassVar[MutationState] = MutationState.APPLIED
        result: bytes
        via: str

        def apply(self, run: HandlerRun) -> None:
            assert run.mutation is not None
            run.mutation = run.mutation.moved_to(
                self.ledger_state, result=self.result, next_reconcile_at=None
            )

    class MutationFailed(EventSourcedAggregate.Event):
        ledger_state: ClassVar[MutationState] = MutationState.FAILED
        reason: str
        via: str

        def apply(self, run: HandlerRun) -> None:
            assert run.mutation is not None
            run.mutation = run.mutation.moved_to(
                self.ledger_state, reason=self.reason, next_reconcile_at=None
            )

    class MutationNeedsReconcile(EventSourcedAggregate.Event):
        ledger_state: ClassVar[MutationState] = MutationState.NEEDS_RECONCILE
        reason: str
        attempts: int
        next_attempt_at: datetime | None

        def apply(self, run: HandlerRun) -> None:
            assert run.mutation is not None
            run.mutation = run.mutation.moved_to(
                self.ledger_state,
                reason=self.reason,
                reconcile_attempts=self.attempts,
                next_reconcile_at=self.next_attempt_at,
            )

    class MutationIndeterminate(EventSourcedAggregate.Event):
        ledger_state: ClassVar[MutationState] = MutationState.INDETERMINATE
        reason: str

        def apply(self, run: HandlerRun) -> None:
            assert run.mutation is not None
            run.mutation = run.mutation.moved_to(
                self.ledger_state, reason=self.reason, next_reconcile_at=None
            )

    class MutationSkipped(EventSourcedAggregate.Event):
        ledger_state: ClassVar[MutationState] = MutationState.SKIPPED
        reason: str

        def apply(self, run: HandlerRun) -> None:
            assert run.mutation is not None
            run.mutation = run.mutation.moved_to(self.ledger_state, reason=self.reason)

    class Mutated(EventSourcedAggregate.Event):
        phase_reached: ClassVar[Phase] = Phase.MUTATED
        outcome: str

        def apply(self, run: HandlerRun) -> None:
            run.phase = self.phase_reached
            run.outcome = self.outcome  # type: ignore[assignment]
            if run.mutation is not None and run.mutation.state is MutationState.APPLIED:
                run.outcome_result = run.mutation.result

    class EmittingStarted(EventSourcedAggregate.Event):
        phase_reached: ClassVar[Phase] = Phase.EMITTING
        def apply(self, run: HandlerRun) -> None:
            run.phase = self.phase_reached

    class Committed(EventSourcedAggregate.Event):
        phase_reached: ClassVar[Phase] = Phase.COMMITTED
        state_replaced: bool
        counted_cost: Decimal

        def apply(self, run: HandlerRun) -> None:
            run.counted_cost = self.counted_cost
            run.phase = self.phase_reached
            run.status = RunStatus.COMMITTED
            run.holds_reservations = False
            run.reason = None

    class ReservationsReleased(EventSourcedAggregate.Event):
        def apply(self, run: HandlerRun) -> None:
            run.holds_reservations = False

    class ReservationsHandedOn(EventSourcedAggregate.Event):
        to_run: UUID

        def apply(self, run: HandlerRun) -> None:
            run.holds_reservations = False

    class Paused(EventSourcedAggregate.Event):
        status: RunStatus
        reason: str
        retry_at: datetime | None
        counted_cost: Decimal

        def apply(self, run: HandlerRun) -> None:
            run.counted_cost = self.counted_cost
            run.status = self.status
            run.reason = self.reason
            run.retry_at = self.retry_at

    class Failed(EventSourcedAggregate.Event):
        status: RunStatus
        reason: str
        counted_cost: Decimal
        # The handler's traceback, bounded (failures.traceback_of); None in logs
        # written before it was recorded.
        traceback: str | None = None

        def apply(self, run: HandlerRun) -> None:
            run.counted_cost = self.counted_cost
            run.status = self.status
            run.reason = self.reason
            run.traceback = self.traceback
            run.retry_at = None

    class Reactivated(EventSourcedAggregate.Event):
        reason: str

        def apply(self, run: HandlerRun) -> None:
            run.status = RunStatus.ACTIVE
            run.reason = None
            run.retry_at = None

    class Superseded(EventSourcedAggregate.Event):
        by_run: UUID
        reason: str
        counted_cost: Decimal

        def apply(self, run: HandlerRun) -> None:
            run.counted_cost = self.counted_cost
            run.status = RunStatus.SUPERSEDED
            run.superseded_by = self.by_run
            run.reason = self.reason
            run.retry_at = None

    # --------------------------------------------------------------- commands

    @classmethod
    def create(
        cls,
        *,
        id: UUID,
        now: datetime,
        workflow_id: UUID,
        workflow: str,
        session_id: UUID | None,
        kind: RunKind,
        handler: str,
        retry_of: HandlerRun | None = None,
        attempt: int | None = None,
    ) -> HandlerRun:
        """A new run; a retry links to the run it retries and counts one more attempt
        unless `attempt` says otherwise (a crash, or a person's decision, is no attempt)."""
        return cls.start(
            cls.Created,
            id,
            now,
            workflow_id=workflow_id,
            workflow=workflow,
            session_id=session_id,
            kind=kind,
            handler=handler,
            retry_of=retry_of.id if retry_of else None,
            chain_id=retry_of.chain_id if retry_of else id,
            attempt=attempt or (retry_of.attempt + 1 if retry_of else 1),
        )

    def _advance(self, event: type[EventSourcedAggregate.Event], new: Phase, now: datetime,
                 **fields: object) -> None:
        if not phase_may_advance(self.kind, self.phase, new):
            raise InternalError(
                f"run {self.id} ({self.handler}): phase cannot go from "
                f"{self.phase.value} to {new.value}; phases only move forward"
            )
        self.record(event, now, **fields)

    def start_executing(self, now: datetime) -> None:
        self._advance(self.ExecutionStarted, Phase.EXECUTING, now)

    def start_preparing(self, now: datetime) -> None:
        self._advance(self.PreparingStarted, Phase.PREPARING, now)

    def record_read(self, now: datetime, tool: str, method: str, params: bytes,
                    result: bytes) -> None:
        self.record(self.ReadRecorded, now, tool=tool, method=method, params=params,
                    result=result)

    def add_cost(self, now: datetime, amount: Decimal, label: str) -> None:
        self.record(self.CostAdded, now, amount=amount, label=label)

    def prepared(self, now: datetime, reservations: dict[str, list[str]], data: bytes,
                 title: str | None, wake_at: datetime | None) -> None:
        self._advance(self.Prepared, Phase.PREPARED, now, reservations=reservations,
                      data=data, title=title, wake_at=wake_at)

    def carry_forward(self, now: datetime, previous: HandlerRun) -> None:
        if previous.outcome not in ("applied", "skipped", "none"):
            raise InternalError(f"run {previous.id} has no settled mutation to carry forward")
        mutation = previous.mutation
        self.record(
            self.CarriedForward,
            now,
            from_run=previous.id,
            reservations=previous.reservations,
            data=previous.data or b"",
            title=previous.title,
            mutation_tool=mutation.tool if mutation else None,
            mutation_method=mutation.method if mutation else None,
            outcome=previous.outcome,
            outcome_result=previous.outcome_result,
        )

    def start_mutating(self, now: datetime) -> None:
        self._advance(self.MutatingStarted, Phase.MUTATING, now)

    def mutation_in_flight(self, now: datetime, tool: str, method: str, params: bytes,
                           reconcile: str | None, made_by: str | None = None) -> None:
        if self.phase is not Phase.MUTATING:
            raise InternalError(f"run {self.id}: a mutation starts only in phase mutating")
        if self.mutation is not None:
            raise InternalError(f"run {self.id} already recorded a mutation")
        self.record(self.MutationInFlight, now, tool=tool, method=method, params=params,
                    reconcile=reconcile, made_by=made_by)

    def mutation_applied(self, now: datetime, result: bytes, via: str) -> None:
        self.record(self.MutationApplied, now, result=result, via=via)

    def mutation_failed(self, now: datetime, reason: str, via: str) -> None:
        self.record(self.MutationFailed, now, reason=reason, via=via)

    def mutation_needs_reconcile(self, now: datetime, reason: str, attempts: int,
                                 next_attempt_at: datetime | None) -> None:
        self.record(self.MutationNeedsReconcile, now, reason=reason, attempts=attempts,
                    next_attempt_at=next_attempt_at)

    def mutation_indeterminate(self, now: datetime, reason: str) -> None:
        self.record(self.MutationIndeterminate, now, reason=reason)

    def mutation_skipped(self, now: datetime, reason: str) -> None:
        self.record(self.MutationSkipped, now, reason=reason)

    def mutated(self, now: datetime, outcome: OutcomeStatus) -> None:
        self._advance(self.Mutated, Phase.MUTATED, now, outcome=outcome)

    def start_emitting(self, now: datetime) -> None:
        self._advance(self.EmittingStarted, Phase.EMITTING, now)

    def commit(self, now: datetime, state_replaced: bool) -> None:
        self._advance(self.Committed, Phase.COMMITTED, now, state_replaced=state_replaced,
                      counted_cost=self.cost)

    def release_reservations(self, now: datetime) -> None:
        if self.holds_reservations:
            self.record(self.ReservationsReleased, now)

    def hand_on_reservations(self, now: datetime, to_run: UUID) -> None:
        self.record(self.ReservationsHandedOn, now, to_run=to_run)

    def pause(self, now: datetime, status: RunStatus, reason: str,
              retry_at: datetime | None = None) -> None:
        if not status.is_paused:
            raise InternalError(f"{status.value} is not a paused status")
        self.record(self.Paused, now, status=status, reason=reason, retry_at=retry_at,
                    counted_cost=self.cost)

    def fail(self, now: datetime, status: RunStatus, reason: str,
             traceback: str | None = None) -> None:
        if not status.is_failed:
            raise InternalError(f"{status.value} is not a failed status")
        self.record(self.Failed, now, status=status, reason=reason, counted_cost=self.cost,
                    traceback=traceback)

    def reactivate(self, now: datetime, reason: str) -> None:
        self.record(self.Reactivated, now, reason=reason)

    def supersede(self, now: datetime, by_run: UUID, reason: str) -> None:
        self.record(self.Superseded, now, by_run=by_run, reason=reason, counted_cost=self.cost)

    # ---------------------------------------------------------------- queries

    @property
    def cost(self) -> Decimal:
        return total(amount for amount, _ in self.costs)

    @property
    def uncounted_cost(self) -> Decimal:
        """What the run spent that no session has counted yet."""
        return minus(self.cost, self.counted_cost)

    @property
    def is_finished(self) -> bool:
        """Nothing more will ever happen to this run on its own or by a person."""
        if self.status in (RunStatus.COMMITTED, RunStatus.SUPERSEDED):
            return True
        return self.status.is_failed and not self.holds_reservations

    @property
    def mutation_state(self) -> MutationState | None:
        return self.mutation.state if self.mutation else None

    @property
    def reserved_message_ids(self) -> list[tuple[str, str]]:
        return [(t, m) for t, ids in self.reservations.items() for m in ids]
