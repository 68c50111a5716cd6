"""The Input aggregate: the user-facing ledger of external things (DESIGN §1.2).

Unique per workflow by (source, type, external_id): its id is derived from
them, so registering twice finds the same stream.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar
from uuid import UUID

from flowledger.domain.aggregate import EventSourcedAggregate
from flowledger.domain.ids import input_id


class Input(EventSourcedAggregate):
    append_order: ClassVar[int] = 1

    def __init__(self) -> None:
        self.workflow_id: UUID
        self.source: str = ""
        self.type: str = ""
        self.external_id: str = ""
        self.title: str | None = None
        self.registered_by: UUID | None = None

    class Registered(EventSourcedAggregate.Created):
        workflow_id: UUID
        workflow: str
        source: str
        type: str
        external_id: str
        title: str | None
        run_id: UUID
        implicit: bool

        def apply(self, agg: Input) -> None:
            agg.workflow_id = self.workflow_id
            agg.source = self.source
            agg.type = self.type
            agg.external_id = self.external_id
            agg.title = self.title
            agg.registered_by = self.run_id

    @classmethod
    def register(cls, *, now: datetime, workflow_id: UUID, workflow: str, source: str,
                 type_: str, external_id: str, title: str | None, run_id: UUID,
                 implicit: bool = False) -> Input:
        return cls.start(cls.Registered, input_id(workflow, source, type_, external_id), now,
                         workflow_id=workflow_id, workflow=workflow, source=source, type=type_,
                         external_id=external_id, title=title, run_id=run_id,
                         implicit=implicit)
