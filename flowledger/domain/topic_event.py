"""The TopicEvent aggregate: one message of one topic (DESIGN §1.2).

Status: pending → reserved (by exactly one run) → consumed, or skipped.
Publishing the same message_id again replaces the payload and keeps the status.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar
from uuid import UUID

from flowledger.domain.aggregate import EventSourcedAggregate
from flowledger.domain.errors import InternalError
from flowledger.domain.ids import topic_event_id


class MessageStatus(StrEnum):
    PENDING = "pending"
    RESERVED = "reserved"
    CONSUMED = "consumed"
    SKIPPED = "skipped"


class TopicEvent(EventSourcedAggregate):
    append_order: ClassVar[int] = 1

    def __init__(self) -> None:
        self.workflow_id: UUID
        self.workflow: str = ""
        self.topic: str = ""
        self.message_id: str = ""
        self.payload: bytes = b""
        self.caused_by: list[UUID] = []
        self.status: MessageStatus = MessageStatus.PENDING
        self.reserved_by: UUID | None = None
        self.reserved_chain: UUID | None = None
        self.published_by: UUID | None = None

    class Published(EventSourcedAggregate.Created):
        workflow_id: UUID
        workflow: str
        topic: str
        message_id: str
        payload: bytes
        caused_by: list[UUID]
        run_id: UUID

        def apply(self, event: TopicEvent) -> None:
            event.workflow_id = self.workflow_id
            event.workflow = self.workflow
            event.topic = self.topic
            event.message_id = self.message_id
            event.payload = self.payload
            event.caused_by = list(self.caused_by)
            event.published_by = self.run_id

    class PayloadReplaced(EventSourcedAggregate.Event):
        payload: bytes
        caused_by: list[UUID]
        run_id: UUID

        def apply(self, event: TopicEvent) -> None:
            event.payload = self.payload
            event.caused_by = list(self.caused_by)

    class Reserved(EventSourcedAggregate.Event):
        run_id: UUID
        chain_id: UUID

        def apply(self, event: TopicEvent) -> None:
            event.status = MessageStatus.RESERVED
            event.reserved_by = self.run_id
            event.reserved_chain = self.chain_id

    class Released(EventSourcedAggregate.Event):
        run_id: UUID

        def apply(self, event: TopicEvent) -> None:
            event.status = MessageStatus.PENDING
            event.reserved_by = None
            event.reserved_chain = None

    class ReservationMoved(EventSourcedAggregate.Event):
        from_run: UUID
        to_run: UUID

        def apply(self, event: TopicEvent) -> None:
            event.reserved_by = self.to_run

    class Consumed(EventSourcedAggregate.Event):
        run_id: UUID

        def apply(self, event: TopicEvent) -> None:
            event.status = MessageStatus.CONSUMED
            event.reserved_by = None

    class Skipped(EventSourcedAggregate.Event):
        run_id: UUID

        def apply(self, event: TopicEvent) -> None:
            event.status = MessageStatus.SKIPPED
            event.reserved_by = None

    @classmethod
    def publish(cls, *, now: datetime, workflow_id: UUID, workflow: str, topic: str,
                message_id: str, payload: bytes, caused_by: list[UUID],
                run_id: UUID) -> TopicEvent:
        return cls.start(
            cls.Published,
            topic_event_id(workflow, topic, message_id),
            now,
            workflow_id=workflow_id,
            workflow=workflow,
            topic=topic,
            message_id=message_id,
            payload=payload,
            caused_by=caused_by,
            run_id=run_id,
        )

    def replace_payload(self, now: datetime, payload: bytes, caused_by: list[UUID],
                        run_id: UUID) -> None:
        # Last write wins for the payload; the causes accumulate so that the
        # audit trail never loses an input that once caused this message.
        merged = list(dict.fromkeys([*self.caused_by, *caused_by]))
        self.record(self.PayloadReplaced, now, payload=payload, caused_by=merged,
                    run_id=run_id)

    def may_be_reserved_by(self, chain_id: UUID) -> bool:
        """Pending, or already reserved by the same run chain (DESIGN §1.2)."""
        if self.status is MessageStatus.PENDING:
            return True
        return self.status is MessageStatus.RESERVED and self.reserved_chain == chain_id

    def reserve(self, now: datetime, run_id: UUID, chain_id: UUID) -> None:
        if not self.may_be_reserved_by(chain_id):
            raise InternalError(
                f"message {self.topic}/{self.message_id} is {self.status.value}; "
                "only pending messages can be reserved"
            )
        if self.reserved_by == run_id:
            return
        self.record(self.Reserved, now, run_id=run_id, chain_id=chain_id)

    def _require_reserved_by(self, run_id: UUID, action: str) -> None:
        if self.status is not MessageStatus.RESERVED or self.reserved_by != run_id:
            raise InternalError(
                f"cannot {action} message {self.topic}/{self.message_id}: it is "
                f"{self.status.value} (reserved by {self.reserved_by}), not reserved by {run_id}"
            )

    def release(self, now: datetime, run_id: UUID) -> None:
        self._require_reserved_by(run_id, "release")
        self.record(self.Released, now, run_id=run_id)

    def move_reservation(self, now: datetime, from_run: UUID, to_run: UUID) -> None:
        self._require_reserved_by(from_run, "move the reservation of")
        self.record(self.ReservationMoved, now, from_run=from_run, to_run=to_run)

    def consume(self, now: datetime, run_id: UUID) -> None:
        self._require_reserved_by(run_id, "consume")
        self.record(self.Consumed, now, run_id=run_id)

    def skip(self, now: datetime, run_id: UUID) -> None:
        self._require_reserved_by(run_id, "skip")
        self.record(self.Skipped, now, run_id=run_id)
