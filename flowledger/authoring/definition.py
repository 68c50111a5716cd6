"""How users declare a workflow: `fl.Workflow`, `@wf.producer`, `@wf.consumer`.

The decorators check what they can see at once; `check` does the pre-flight
validation of DESIGN §1.6 that needs the whole workflow and its tools.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from flowledger.authoring.runnable import not_runnable
from flowledger.authoring.tools import Tool
from flowledger.domain.errors import DefinitionError
from flowledger.domain.schedule import Schedule, parse_schedule
from flowledger.domain.text import unfit_name

# The decorators hand back what they decorate: a user's handlers keep their types.
ProducerFunc = TypeVar("ProducerFunc", bound=Callable[..., Any])
ConsumerClass = TypeVar("ConsumerClass", bound=type)


@dataclass(frozen=True)
class Prepared:
    """What prepare returns: the events to consume, data for mutate and next."""

    reservations: dict[str, list[str]] = field(default_factory=dict)
    data: Any = None
    title: str | None = None
    wake_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """How the mutation question was settled, as `next` sees it."""

    status: Literal["applied", "none", "skipped"]
    result: Any = None


@dataclass(frozen=True)
class TopicMessage:
    topic: str
    message_id: str
    payload: Any


@dataclass(frozen=True)
class ProducerSpec:
    name: str
    func: Callable[[Any, Any], Any]
    publishes: tuple[str, ...]
    tools: tuple[str, ...] | None
    schedule: Schedule | None = None  # every= / cron=: run by the worker when due


@dataclass(frozen=True)
class ConsumerSpec:
    name: str
    cls: type
    subscribe: tuple[str, ...]
    publishes: tuple[str, ...]
    tools: tuple[str, ...] | None

    @property
    def has_mutate(self) -> bool:
        return callable(getattr(self.cls, "mutate", None))

    @property
    def has_next(self) -> bool:
        return callable(getattr(self.cls, "next", None))


def _names(value: Iterable[str] | str | None, what: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    try:
        names = tuple(value)
    except TypeError:
        raise DefinitionError(f"{where}: {what} must be a list of names, got {value!r}"
                              ) from None
    for n in names:
        _name(n, what, where)
    return names


def _name(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DefinitionError(f"{where}: {what}: expected a non-empty string, got {value!r}")
    why = unfit_name(value)
    if why is not None:
        raise DefinitionError(f"{where}: {what} {value[:80]!r} {why}")
    return value


# How a tool a handler names is given to a workflow (the CLI says its own way).
PROVIDE_TOOLS = "pass it in engine.register(wf, tools=[...])"


class Workflow:
    """A set of topics, producers and consumers, registered with `engine.register`."""

    def __init__(self, name: str, topics: Sequence[str] = ()) -> None:
        if not isinstance(name, str) or not name.strip():
            raise DefinitionError(f"a workflow needs a non-empty name, got {name!r}")
        self.name = _name(name, "a workflow's name", "fl.Workflow")
        self.topics = _names(topics, "topics", f"workflow {name!r}")
        if len(set(self.topics)) != len(self.topics):
            raise DefinitionError(f"workflow {name!r}: topics are listed twice: {self.topics}")
        self.producers: list[ProducerSpec] = []
        self.consumers: list[ConsumerSpec] = []

    def __repr__(self) -> str:
        return f"Workflow({self.name!r})"

    def producer(self, publishes: Iterable[str] | str = (), *, name: str | None = None,
                 tools: Iterable[str] | None = None, every: timedelta | str | None = None,
                 cron: str | None = None) -> Callable[[ProducerFunc], ProducerFunc]:
        def register(func: ProducerFunc) -> ProducerFunc:
            handler = name or getattr(func, "__name__", "")
            where = f"workflow {self.name!r}, producer {handler!r}"
            schedule = parse_schedule(every, cron, where)
            handler = _name(handler, "a handler's name", where)
            if not callable(func) or inspect.isclass(func):
                raise DefinitionError(f"{where}: @producer decorates a function (ctx, state)")
            why = not_runnable(func)
            if why is not None:
                raise DefinitionError(f"{where}: the producer {why}")
            self.producers.append(ProducerSpec(
                handler, func, _names(publishes, "publishes", where),
                None if tools is None else _names(tools, "tools", where), schedule))
            return func

        return register

    def consumer(self, subscribe: Iterable[str] | str = (),
                 publishes: Iterable[str] | str = (), *, name: str | None = None,
                 tools: Iterable[str] | None = None
                 ) -> Callable[[ConsumerClass], ConsumerClass]:
        def register(cls: ConsumerClass) -> ConsumerClass:
            handler = name or getattr(cls, "__name__", "")
            where = f"workflow {self.name!r}, consumer {handler!r}"
            handler = _name(handler, "a handler's name", where)
            if not inspect.isclass(cls):
                raise DefinitionError(
                    f"{where}: @consumer decorates a class with prepare (and optionally "
                    "mutate and next) methods"
                )
            for method in ("prepare", "mutate", "next"):
                why = not_runnable(getattr(cls, method, None))
                if why is not None:
                    raise DefinitionError(f"{where}: {method} {why}")
            self.consumers.append(ConsumerSpec(
                handler, cls, _names(subscribe, "subscribe", where),
                _names(publishes, "publishes", where),
                None if tools is None else _names(tools, "tools", where)))
            return cls

        return register

    # ----------------------------------------------------------- pre-flight

    @property
    def handler_names(self) -> list[str]:
        return [p.name for p in self.producers] + [c.name for c in self.consumers]

    def fingerprint(self) -> str:
        parts = [self.name, ",".join(self.topics)]
        parts += [f"P:{p.name}>{','.join(p.publishes)}" for p in self.producers]
        parts += [f"C:{c.name}<{','.join(c.subscribe)}>{','.join(c.publishes)}"
                  for c in self.consumers]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def check(self, tools: dict[str, Tool], provide: str = PROVIDE_TOOLS) -> None:
        """Raise one DefinitionError listing every problem found (DESIGN §1.6);
        `provide` says how to give a missing tool."""
        problems: list[str] = []
        declared = set(self.topics)
        seen: dict[str, str] = {}
        for kind, spec in [("producer", p) for p in self.producers] + [
            ("consumer", c) for c in self.consumers
        ]:
            where = f"{kind} {spec.name!r}"
            if spec.name in seen:
                problems.append(f"handler name {spec.name!r} is used by a {seen[spec.name]} "
                                f"and a {kind}; give one of them name=...")
            seen[spec.name] = kind
            used = list(spec.publishes) + list(getattr(spec, "subscribe", ()))
            for topic in used:
                if topic not in declared:
                    problems.append(f"{where} uses topic {topic!r}, which the workflow does "
                                    f"not declare (topics={list(self.topics)})")
            for tool in spec.tools or ():
                if tool not in tools:
                    problems.append(f"{where} uses tool {tool!r}, which was not provided "
                                    f"(provided: {sorted(tools)}); {provide}")
        for c in self.consumers:
            where = f"consumer {c.name!r}"
            if not c.subscribe:
                problems.append(f"{where} subscribes to nothing; give it subscribe=[...]")
            if not callable(getattr(c.cls, "prepare", None)):
                problems.append(f"{where} has no prepare(self, ctx, state) method")
            try:
                c.cls()
            except Exception as e:
                problems.append(f"{where} cannot be created without arguments ({e}); "
                                "handlers get everything they need from ctx and state")
        if problems:
            raise DefinitionError(
                f"workflow {self.name!r} cannot be registered:\n  - " + "\n  - ".join(problems)
            )
