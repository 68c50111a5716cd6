"""Connectors: `fl.Tool` with `@fl.read` and `@fl.mutator(reconcile=...)` methods.

Handlers reach tools only through `ctx.tools`, which enforces the phase rules,
records reads in the run's stream and routes the one mutation through the
mutation ledger.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Literal, ParamSpec, TypeVar, overload

from flowledger.authoring.runnable import not_runnable
from flowledger.domain.errors import DefinitionError, FlowledgerError
from flowledger.domain.text import unfit_name

# The decorators hand back the method itself, marked: its signature is the
# user's (checked by tests/integration/test_tool_typing.py under mypy --strict).
P = ParamSpec("P")
R = TypeVar("R")

_KIND = "__flowledger_tool_method__"


@dataclass(frozen=True)
class ToolMethod:
    kind: Literal["read", "mutator"]
    name: str
    reconcile: str | None = None


def read(func: Callable[P, R]) -> Callable[P, R]:
    """Mark a tool method as a read: allowed in producers and prepare, recorded in the log."""
    setattr(func, _KIND, ToolMethod("read", func.__name__))
    return func


@overload
def mutator(func: Callable[P, R]) -> Callable[P, R]: ...


@overload
def mutator(*, reconcile: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def mutator(func: Callable[P, R] | None = None, *, reconcile: str | None = None
            ) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a tool method as the external side effect of a consumer's mutate.

    `@fl.mutator` or `@fl.mutator(reconcile="name")`: `reconcile` names a method
    of the same tool, called with the same arguments, that answers whether an
    uncertain call took effect.
    """

    def mark(f: Callable[P, R]) -> Callable[P, R]:
        setattr(f, _KIND, ToolMethod("mutator", f.__name__, reconcile))
        return f

    return mark(func) if func is not None else mark


@dataclass(frozen=True)
class Reconciliation:
    """A reconcile method's answer: applied (with the result), failed, or retry later."""

    status: Literal["applied", "failed", "retry"]
    result: Any = None
    reason: str = ""

    @classmethod
    def applied(cls, result: Any = None) -> Reconciliation:
        return cls("applied", result)

    @classmethod
    def failed(cls, reason: str = "") -> Reconciliation:
        return cls("failed", reason=reason)

    @classmethod
    def retry(cls, reason: str = "") -> Reconciliation:
        return cls("retry", reason=reason)


# The cost sink of the tool call in progress: lets a tool report cost itself.
_cost_sink: contextvars.ContextVar[Callable[[Any, str], None] | None] = contextvars.ContextVar(
    "flowledger_cost_sink", default=None
)


class Tool:
    """Base class of connectors. Set `name`; mark methods with @fl.read / @fl.mutator."""

    name: ClassVar[str] = ""

    def add_cost(self, amount: Decimal | int | str, label: str = "") -> None:
        """Report a cost from inside a tool call; it is added to the calling run."""
        sink = _cost_sink.get()
        if sink is None:
            raise FlowledgerError(
                f"tool {self.tool_name()!r}: add_cost was called outside a call made "
                "through ctx.tools; call tool methods through ctx.tools.<name>.<method>(...)"
            )
        sink(amount, label or self.tool_name())

    @classmethod
    def tool_name(cls) -> str:
        return cls.name or cls.__name__.lower()

    @classmethod
    def methods(cls) -> dict[str, ToolMethod]:
        found: dict[str, ToolMethod] | None = cls.__dict__.get("_flowledger_methods")
        if found is None:
            found = {}
            for attr, value in inspect.getmembers(cls):
                spec = getattr(value, _KIND, None)
                if isinstance(spec, ToolMethod):
                    found[attr] = spec
            cls._flowledger_methods = found  # type: ignore[attr-defined]
        return found

    @classmethod
    def check_definition(cls) -> None:
        tool = cls.tool_name()
        if not isinstance(tool, str) or not tool.strip():
            raise DefinitionError(f"tool class {cls.__name__}: name must be a non-empty "
                                  f"string, got {tool!r}")
        why = unfit_name(tool)
        if why is not None:
            raise DefinitionError(f"tool class {cls.__name__}: name {tool[:80]!r} {why}")
        for name, spec in cls.methods().items():
            why = not_runnable(getattr(cls, name))
            if why is not None:
                raise DefinitionError(f"tool {tool!r}: {spec.kind} {name!r} {why}")
            if spec.kind == "mutator" and spec.reconcile is not None:
                target = getattr(cls, spec.reconcile, None)
                if not callable(target):
                    raise DefinitionError(
                        f"tool {tool!r}: mutator {name!r} names reconcile="
                        f"{spec.reconcile!r}, but the tool has no such method. Define "
                        f"{spec.reconcile}(self, ...) taking the mutator's arguments."
                    )
                why = not_runnable(target)
                if why is not None:
                    raise DefinitionError(f"tool {tool!r}: reconcile method "
                                          f"{spec.reconcile!r} {why}")


def set_cost_sink(sink: Callable[[Any, str], None] | None) -> contextvars.Token[Any]:
    return _cost_sink.set(sink)


def reset_cost_sink(token: contextvars.Token[Any]) -> None:
    _cost_sink.reset(token)
