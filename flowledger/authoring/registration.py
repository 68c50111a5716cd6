"""A workflow as registered with an engine: its definition and its tools."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from flowledger.authoring.definition import ConsumerSpec, ProducerSpec, Workflow
from flowledger.authoring.tools import Tool
from flowledger.domain.errors import InternalError


@dataclass(frozen=True)
class Registration:
    definition: Workflow
    tools: dict[str, Tool]
    workflow_id: UUID

    @property
    def topics(self) -> tuple[str, ...]:
        return self.definition.topics

    def producer(self, name: str) -> ProducerSpec:
        for p in self.definition.producers:
            if p.name == name:
                return p
        raise InternalError(f"workflow {self.definition.name!r} has no producer {name!r}")

    def consumer(self, name: str) -> ConsumerSpec:
        for c in self.definition.consumers:
            if c.name == name:
                return c
        raise InternalError(f"workflow {self.definition.name!r} has no consumer {name!r}")
