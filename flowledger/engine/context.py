"""`ctx`: what a handler may do in the step it is in (DESIGN §1.1, §5).

Everything a handler publishes, registers or reports is buffered here and only
reaches the log when its run commits. A broken rule raises at once and is also
remembered, so a handler that swallows the exception still fails.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any
from uuid import UUID

from flowledger.authoring.definition import TopicMessage
from flowledger.authoring.tools import Tool, ToolMethod, reset_cost_sink, set_cost_sink
from flowledger.domain import handler_rules as rules
from flowledger.domain.amounts import amount_problem
from flowledger.domain.errors import FlowledgerError, InternalError, LogicError, ToolError
from flowledger.domain.handler_rules import Operation, RuleBroken, Step
from flowledger.domain.ids import input_id as make_input_id
from flowledger.domain.limits import Limits
from flowledger.domain.secret import Secret
from flowledger.domain.text import unstorable
from flowledger.engine.secret_resolution import SecretResolver, scrub
from flowledger.infrastructure.codec import pack, unpack

Peek = Callable[[str, int | None], list[tuple[str, bytes]]]
Perform = Callable[[Tool, ToolMethod, tuple[Any, ...], dict[str, Any]], Any]
# Answers a tool read instead of the tool (replay debugging serves recorded
# reads): (tool, method, packed params, args, kwargs) -> the read's value.
ReadThrough = Callable[[Tool, ToolMethod, bytes, tuple[Any, ...], dict[str, Any]], Any]

logger = logging.getLogger("flowledger.engine")

# A run's messages are held in memory until it commits, and stored in one
# transaction: a few kilobytes each (a scale trial's run of 100,000 took 1.1 GB).
MANY_PUBLISHES = 10_000


@dataclass(frozen=True)
class Publish:
    topic: str
    message_id: str
    payload: bytes
    input_id: UUID | None
    # Its id made here, fresh: no message, nor implicit input, exists under it yet.
    fresh: bool = False


@dataclass(frozen=True)
class InputRegistration:
    input_id: UUID
    source: str
    type: str
    external_id: str
    title: str | None


@dataclass(frozen=True)
class Read:
    tool: str
    method: str
    params: bytes
    result: bytes


class ToolProxy:
    def __init__(self, ctx: HandlerContext, tool: Tool) -> None:
        self._ctx, self._tool = ctx, tool

    def __getattr__(self, method: str) -> Callable[..., Any]:
        spec = type(self._tool).methods().get(method)
        if spec is None:
            raise self._ctx._broke(RuleBroken(
                "tools are used through their marked methods",
                f"{self._ctx.where}: {self._tool.tool_name()}.{method} is not a method marked "
                "@fl.read or @fl.mutator; mark it, or call a marked one",
            ))

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._ctx._call_tool(self._tool, spec, args, kwargs)

        return call


class ToolsView:
    def __init__(self, ctx: HandlerContext) -> None:
        self._ctx = ctx

    def __getattr__(self, name: str) -> ToolProxy:
        ctx = self._ctx
        if ctx._declared_tools is not None and name not in ctx._declared_tools:
            raise ctx._broke(rules.undeclared_tool(ctx.where, name, list(ctx._declared_tools)))
        tool = ctx._tools.get(name)
        if tool is None:
            raise ctx._broke(RuleBroken(
                "use only provided tools",
                f"{ctx.where}: no tool named {name!r} was provided "
                f"(provided: {sorted(ctx._tools)}); pass it in engine.register(..., tools=[...])",
            ))
        return ToolProxy(ctx, tool)


class HandlerContext:
    """The `ctx` a handler receives; one per step of one run."""

    def __init__(self, *, workflow: str, handler: str, run_id: UUID, step: Step,
                 now: Any, publishes: tuple[str, ...], subscribe: tuple[str, ...],
                 tools: dict[str, Tool], declared_tools: tuple[str, ...] | None,
                 limits: Limits, new_message_id: Callable[[], str],
                 peek: Peek | None = None, perform: Perform | None = None,
                 input_known: Callable[[UUID], bool] | None = None,
                 read_through: ReadThrough | None = None,
                 secrets: SecretResolver | None = None) -> None:
        self.workflow = workflow
        self.handler = handler
        self.run_id = run_id
        self.now = now
        self._secrets = secrets if secrets is not None else SecretResolver()
        self.step = step
        self.tools = ToolsView(self)
        self._publishes_allowed = publishes
        self._subscribe = subscribe
        self._tools = tools
        self._declared_tools = declared_tools
        self._limits = limits
        self._new_message_id = new_message_id
        self._peek = peek
        self._perform = perform
        self._input_known = input_known
        self._read_through = read_through
        self._closed = False
        self.violation: LogicError | None = None
        self.tool_failure: InternalError | None = None
        self.mutation_call: str | None = None
        self.published: dict[tuple[str, str], Publish] = {}
        self.inputs: dict[UUID, InputRegistration] = {}
        self.costs: list[tuple[Decimal, str]] = []
        self.reads: list[Read] = []

    @cached_property
    def where(self) -> str:
        """Where an error happened, for its message (built only when one is)."""
        return (f"workflow {self.workflow!r}, {self.step.value} of {self.handler!r}, "
                f"run {self.run_id}")

    # ------------------------------------------------------------ the rules

    def _broke(self, error: LogicError) -> LogicError:
        if self.violation is None:
            self.violation = error
        return error

    def _guard(self, op: Operation) -> None:
        if self._closed:
            raise self._broke(RuleBroken(
                "ctx lives for one step",
                f"{self.where}: tried to {op.value} after the step ended; do all work "
                "inside the handler call",
            ))
        if self.mutation_call is not None and op is not Operation.ADD_COST:
            raise self._broke(rules.call_after_mutation(self.where, op.value))
        try:
            rules.check_allowed(self.step, op, self.where)
        except LogicError as e:
            raise self._broke(e) from None

    def close(self) -> None:
        self._closed = True

    def raise_if_broken(self) -> None:
        if self.tool_failure is not None:
            raise self.tool_failure
        if self.violation is not None:
            raise self.violation

    # ---------------------------------------------------------- operations

    def publish(self, topic: str, message_id: str | None = None, payload: Any = None,
                input_id: UUID | str | None = None) -> str:
        """Publish (or replace, by message_id) a message; visible once the run commits."""
        self._guard(Operation.PUBLISH)
        if topic not in self._publishes_allowed:
            raise self._broke(rules.undeclared_topic(self.where, topic,
                                                     list(self._publishes_allowed)))
        if self.step is Step.NEXT and input_id is not None:
            raise self._broke(rules.input_id_in_next(self.where))
        fresh = message_id is None
        if message_id is None:
            message_id = self._new_message_id()
        self._text(message_id, f"message_id of a message published to {topic!r}", "message_id")
        if input_id is not None and not isinstance(input_id, UUID):
            input_id = self._input_id(input_id)
        if input_id is not None and input_id not in self.inputs and not (
            self._input_known and self._input_known(input_id)
        ):
            raise self._broke(rules.unknown_input(self.where, input_id))
        data = self._pack(payload, f"payload of {topic}/{message_id}", "payload")
        self.published[(topic, message_id)] = Publish(topic, message_id, data, input_id, fresh)
        if len(self.published) == MANY_PUBLISHES:
            logger.warning(
                "%s has published %s messages so far: a run's messages are held in memory "
                "until it commits (a few kilobytes each) and stored in one transaction. "
                "Split a backfill across runs (return the state to go on from)",
                self.where, f"{MANY_PUBLISHES:,}")
        return message_id

    def register_input(self, source: str, type: str, id: str | int,
                       title: str | None = None) -> UUID:
        """Record an external thing this workflow handles; the same triple, the same id."""
        self._guard(Operation.REGISTER_INPUT)
        if isinstance(id, int) and not isinstance(id, bool):
            id = str(id)
        source, type, id = (self._text(value, f"register_input's {name}", "input_key")
                            for name, value in (("source", source), ("type", type), ("id", id)))
        if title is not None:
            self._text(title, f"title of input {source}/{id}", "title", empty_ok=True)
        new_id = make_input_id(self.workflow, source, type, id)
        self.inputs.setdefault(new_id, InputRegistration(new_id, source, type, id, title))
        return new_id

    def peek(self, topic: str, limit: int | None = None) -> list[TopicMessage]:
        """Pending messages of a subscribed topic, oldest first."""
        self._guard(Operation.PEEK)
        if topic not in self._subscribe:
            raise self._broke(rules.unsubscribed_topic(self.where, topic, list(self._subscribe),
                                                       "peek"))
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                                  or limit < 0):
            raise self._broke(LogicError(f"{self.where}: peek limit must be an int >= 0 "
                                         f"(got {limit!r})"))
        assert self._peek is not None
        return [TopicMessage(topic, m, unpack(p)) for m, p in self._peek(topic, limit)]

    def add_cost(self, amount: Decimal | int | float | str, label: str = "") -> None:
        """Report a cost of this run; exact decimals, summed into the session."""
        self._guard(Operation.ADD_COST)
        self.costs.append((self._amount(amount), self._label(label)))

    # -------------------------------------------------------------- helpers

    def _amount(self, amount: Any) -> Decimal:
        if isinstance(amount, bool) or not isinstance(amount, Decimal | int | float | str):
            raise self._broke(LogicError(
                f"{self.where}: add_cost needs a Decimal, int, float or str amount, "
                f"got {amount!r}"))
        if isinstance(amount, float) and not math.isfinite(amount):
            raise self._broke(LogicError(f"{self.where}: cost {amount!r} is not a number"))
        try:
            value = Decimal(str(amount)) if isinstance(amount, float) else Decimal(amount)
        except InvalidOperation:
            raise self._broke(LogicError(
                f"{self.where}: cost {amount!r} is not a decimal number")) from None
        why = amount_problem(value)
        if why is not None:
            raise self._broke(LogicError(f"{self.where}: cost {amount!r} {why}"[:2000]))
        return value

    def _input_id(self, value: Any) -> UUID:
        """An input id given as text (str(id), as from a queue or a file) is the
        UUID it spells; anything else is not an input id."""
        if isinstance(value, str):
            try:
                return UUID(value)
            except ValueError:
                pass
        raise self._broke(rules.unknown_input(
            self.where, repr(value)[:200],
            "It is not an input id: pass the uuid.UUID ctx.register_input returned."))

    def _text(self, value: Any, what: str, limit: str, empty_ok: bool = False) -> str:
        """A name or id handed in for the log: a string, encodable, within its limit."""
        if not isinstance(value, str) or not (value or empty_ok):
            raise self._broke(LogicError(
                f"{self.where}: {what} must be a non-empty string, got {value!r}"[:2000]))
        why = unstorable(value)
        if why is not None:
            raise self._broke(LogicError(f"{self.where}: {what} {why}"))
        self._check_size(limit, len(value.encode()), what)
        return value

    def _label(self, label: Any) -> str:
        return self._text(str(label), "the cost's label", "label", empty_ok=True)

    def _check_size(self, field: str, size: int, what: str) -> None:
        try:
            self._limits.check(field, size, lambda: f"{self.where}, {what}")
        except LogicError as e:
            raise self._broke(e) from None

    def _pack(self, value: Any, what: str, field: str) -> bytes:
        try:
            data = pack(value, lambda: self.where, what)
        except LogicError as e:
            raise self._broke(e) from None
        self._check_size(field, len(data), what)
        return data

    def _call_tool(self, tool: Tool, spec: ToolMethod, args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        name = f"{tool.tool_name()}.{spec.name}"
        if spec.kind == "mutator":
            if self.mutation_call is not None:
                raise self._broke(rules.second_mutation(self.where, self.mutation_call, name))
            self._guard(Operation.MUTATE)
            self.mutation_call = name
            assert self._perform is not None
            return self._perform(tool, spec, args, kwargs)
        self._guard(Operation.READ)
        params = self._pack({"args": list(args), "kwargs": kwargs},
                            f"parameters of {name}", "params")
        token = set_cost_sink(self._tool_cost)
        revealed: dict[str, Secret] = {}
        try:
            if self._read_through is not None:
                value = self._read_through(tool, spec, params, args, kwargs)
            else:
                real_args, real_kwargs, revealed = self._secrets.resolve(args, kwargs)
                value = getattr(tool, spec.name)(*real_args, **real_kwargs)
        except (ToolError, FlowledgerError) as e:
            scrub(e, revealed)
            raise
        except Exception as e:
            scrub(e, revealed)
            self.tool_failure = InternalError(
                f"{self.where}: tool read {name} raised {type(e).__name__}: {e}. This is a bug "
                "in the tool: tools signal trouble with fl.TransientError, fl.AuthError, "
                "fl.PermissionDenied or fl.UncertainOutcome"
            )
            raise self.tool_failure from e
        finally:
            reset_cost_sink(token)
        try:
            result = pack(value, lambda: self.where, f"result of {name}")
        except LogicError as e:
            self.tool_failure = InternalError(str(e))
            raise self.tool_failure from None
        self._check_size("read", len(result), f"result of {name}")
        self.reads.append(Read(tool.tool_name(), spec.name, params, result))
        # Hand back what the log holds, so a replay sees exactly what this run saw.
        return unpack(result)

    def _tool_cost(self, amount: Any, label: str) -> None:
        self.costs.append((self._amount(amount), self._label(label)))
