"""The HandlerState aggregate: a handler's only durable memory (DESIGN §1.1).

Replaced atomically with the commit of the run that returned it.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar
from uuid import UUID

from flowledger.domain.aggregate import EventSourcedAggregate
from flowledger.domain.ids import handler_state_id


class HandlerState(EventSourcedAggregate):
    append_order: ClassVar[int] = 1

    def __init__(self) -> None:
        self.workflow_id: UUID
        self.handler: str = ""
        self.state: bytes = b""
        self.committed_by: UUID | None = None

    class Initialised(EventSourcedAggregate.Created):
        workflow_id: UUID
        workflow: str
        handler: str
        run_id: UUID
        state: bytes

        def apply(self, agg: HandlerState) -> None:
            agg.workflow_id = self.workflow_id
            agg.handler = self.handler
            agg.state = self.state
            agg.committed_by = self.run_id

    class Committed(EventSourcedAggregate.Event):
        run_id: UUID
        state: bytes

        def apply(self, agg: HandlerState) -> None:
            agg.state = self.state
            agg.committed_by = self.run_id

    @classmethod
    def initialise(cls, *, now: datetime, workflow_id: UUID, workflow: str, handler: str,
                   run_id: UUID, state: bytes) -> HandlerState:
        return cls.start(cls.Initialised, handler_state_id(workflow, handler), now,
                         workflow_id=workflow_id, workflow=workflow, handler=handler,
                         run_id=run_id, state=state)

    def commit(self, now: datetime, run_id: UUID, state: bytes) -> None:
        self.record(self.Committed, now, run_id=run_id, state=state)
