"""A workflow as registered with an engine: its definition and its tools."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from flowledger.authoring.definition import PROVIDE_TOOLS, ConsumerSpec, ProducerSpec, Workflow
from flowledger.authoring.tools import Tool
from flowledger.domain.errors import DefinitionError, InternalError


def checked_tools(workflow: Any, tools: Iterable[Tool],
                  provide: str = PROVIDE_TOOLS) -> dict[str, Tool]:
    """The pre-flight checks of a registration that need no store (DESIGN
    §1.6): the workflow and its tools, by name. The CLI runs them before it
    opens a store; an engine runs them again as it registers. `provide`: how
    to give a missing tool, where not engine.register's tools=."""
    if not isinstance(workflow, Workflow):
        raise DefinitionError(f"engine.register takes an fl.Workflow, got {workflow!r}")
    if isinstance(tools, Tool | str | bytes) or not isinstance(tools, Iterable):
        raise DefinitionError(
            f"workflow {workflow.name!r}: engine.register's tools must be a list of "
            f"fl.Tool instances (tools=[MyTool(...)], or [] for none), got {tools!r}")
    by_name: dict[str, Tool] = {}
    for tool in tools:
        if not isinstance(tool, Tool):
            raise DefinitionError(
                f"workflow {workflow.name!r}: tools must be fl.Tool instances, got {tool!r}")
        type(tool).check_definition()
        if tool.tool_name() in by_name:
            raise DefinitionError(f"workflow {workflow.name!r}: two tools are named "
                                  f"{tool.tool_name()!r}; give one a different `name`")
        by_name[tool.tool_name()] = tool
    workflow.check(by_name, provide)
    return by_name


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
