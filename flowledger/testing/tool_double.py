"""Tool doubles: a user's tool (or a fake written as one) whose every read,
mutator and reconcile call is recorded, and whose calls can be told to fail.

    ledger = fl.testing.double(Ledger(path))        # wraps the real tool
    ledger.fail("append", Fault.UNCERTAIN_AFTER_EFFECT)   # its next call
    engine.register(wf, tools=[ledger])
    ...
    assert [c.args for c in ledger.effects("append")] == [("A-1", "12.50")]

A fake is a subclass: `class FakeLedger(fl.testing.ToolDouble)` with
`@fl.read`/`@fl.mutator` methods as on any `fl.Tool`; they are recorded too.
"""

from __future__ import annotations

import enum
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from flowledger.authoring.tools import Reconciliation, Tool, mutator, read
from flowledger.domain.errors import (
    AuthError,
    InvalidArgument,
    PermissionDenied,
    TransientError,
    UncertainOutcome,
)
from flowledger.testing.crashes import Crash

__all__ = ["Fault", "RecordedCall", "ToolDouble", "double"]

CallKind = Literal["read", "mutator", "reconcile"]
Effect = Literal["happened", "did_not_happen", "unknown"]


class Fault(enum.Enum):
    """How a call is told to fail. "Effect" is the tool's side effect: the
    wrapped method runs (the effect happens) only where the name says so."""

    TRANSIENT = "transient"  # raises fl.TransientError; no effect
    AUTH = "auth"  # raises fl.AuthError; no effect
    UNCERTAIN = "uncertain"  # raises fl.UncertainOutcome; no effect
    UNCERTAIN_AFTER_EFFECT = "uncertain_after_effect"  # effect, then fl.UncertainOutcome
    CRASH_BEFORE_EFFECT = "crash_before_effect"  # the process dies during the call
    CRASH_AFTER_EFFECT = "crash_after_effect"  # effect, then the process dies
    RECONCILE_RETRY = "reconcile_retry"  # a reconcile answers retry without looking


# Which faults make sense for which kind of call.
FAULTS_FOR: dict[CallKind, frozenset[Fault]] = {
    "read": frozenset({Fault.TRANSIENT, Fault.AUTH, Fault.CRASH_BEFORE_EFFECT}),
    "mutator": frozenset(set(Fault) - {Fault.RECONCILE_RETRY}),
    "reconcile": frozenset({Fault.RECONCILE_RETRY, Fault.CRASH_BEFORE_EFFECT}),
}
_NOT_RUN = frozenset({Fault.TRANSIENT, Fault.AUTH, Fault.UNCERTAIN, Fault.CRASH_BEFORE_EFFECT,
                      Fault.RECONCILE_RETRY})
# By their contract, these say a mutator's effect did not happen (DESIGN §1.3).
_DEFINITELY_NOT_APPLIED = (TransientError, AuthError, PermissionDenied)


@dataclass
class RecordedCall:
    """One call of a tool method, as the double saw it."""

    tool: str
    method: str
    kind: CallKind
    number: int  # 1 for the method's first call
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    fault: Fault | None = None
    result: Any = None
    error: BaseException | None = None
    ran: bool = False  # whether the wrapped method ran to its end
    done: bool = field(default=False, repr=False)
    # Whether a call it made in turn (to any double: a reconcile's own read)
    # was failed by a fault it was told.
    saw_fault: bool = field(default=False, repr=False)

    @property
    def effect(self) -> Effect | None:
        """For a mutator: whether its side effect happened (None for reads and
        reconciles). A call that raised on its own is "unknown" unless it raised
        fl.TransientError, fl.AuthError or fl.PermissionDenied."""
        if self.kind != "mutator":
            return None
        if self.ran:
            return "happened"
        if self.fault in _NOT_RUN or isinstance(self.error, _DEFINITELY_NOT_APPLIED):
            return "did_not_happen"
        return "unknown"

    def describe(self) -> str:
        call = f"{self.tool}.{self.method}({_arguments(self.args, self.kwargs)})"
        injected = f" [injected: {self.fault.value}]" if self.fault else ""
        if self.error is not None:
            how = f"raised {type(self.error).__name__}: {self.error}"
        elif not self.done:
            how = "did not return"
        else:
            how = f"returned {_short(self.result)}"
        effect = f", effect {self.effect}" if self.effect else ""
        return f"{call} #{self.number} {how}{injected}{effect}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return ", ".join([*(_short(a, 40) for a in args),
                      *(f"{k}={_short(v, 40)}" for k, v in kwargs.items())])


class ToolDouble(Tool):
    """A tool whose calls are recorded and can be told to fail (see `Fault`)."""

    wrapped: Tool | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, spec in list(cls.methods().items()):
            if name in cls.__dict__:
                original = cls.__dict__[name]
                recorded = _recording(original, name, spec.kind)
                setattr(cls, name, mutator(reconcile=spec.reconcile)(recorded)
                        if spec.kind == "mutator" else read(recorded))
            if spec.reconcile is not None and spec.reconcile in cls.__dict__:
                setattr(cls, spec.reconcile,
                        _recording(cls.__dict__[spec.reconcile], spec.reconcile, "reconcile"))

    # The instance's bookkeeping is made on first use: a fake need not call
    # super().__init__().
    def _book(self) -> _Book:
        book: _Book | None = self.__dict__.get("_double_book")
        if book is None:
            book = self.__dict__.setdefault("_double_book", _Book())
        return book

    # ------------------------------------------------------------ telling

    def fail(self, method: str, fault: Fault, *, call: int | None = None,
             times: int = 1) -> None:
        """Make the next `times` calls of `method` fail with `fault`, or (with
        `call=N`) its N-th call counted from its first."""
        kind = self.kind_of(method)
        if fault not in FAULTS_FOR[kind]:
            raise InvalidArgument(f"{self.tool_name()}.{method} is a {kind}: it can be told "
                                  f"{', '.join(sorted(f.name for f in FAULTS_FOR[kind]))}, "
                                  f"not {fault.name}")
        book = self._book()
        with book.lock:
            if call is not None:
                book.numbered[(method, call)] = fault
            else:
                book.queued.setdefault(method, []).extend([fault] * times)

    def clear_faults(self) -> None:
        """Forget every failure told and not yet used."""
        book = self._book()
        with book.lock:
            book.numbered.clear()
            book.queued.clear()

    def kind_of(self, method: str) -> CallKind:
        """"read", "mutator" or "reconcile"; InvalidArgument for any other name."""
        specs = type(self).methods()
        if method in specs:
            return specs[method].kind
        if any(s.reconcile == method for s in specs.values()):
            return "reconcile"
        raise InvalidArgument(f"tool {self.tool_name()!r} has no read, mutator or reconcile "
                              f"named {method!r} (it has {', '.join(sorted(specs))})")

    # ------------------------------------------------------------ looking

    @property
    def calls(self) -> list[RecordedCall]:
        """Every call, in the order they were made."""
        book = self._book()
        with book.lock:
            return list(book.calls)

    def calls_of(self, method: str) -> list[RecordedCall]:
        self.kind_of(method)
        return [c for c in self.calls if c.method == method]

    def effects(self, method: str | None = None) -> list[RecordedCall]:
        """The mutator calls whose side effect happened (or, having raised on
        their own, may have: `effect == "unknown"`)."""
        return [c for c in self.calls if c.effect in ("happened", "unknown")
                and (method is None or c.method == method)]

    def __getattr__(self, name: str) -> Any:
        # A wrapped tool's other attributes (e.g. a method people use to look at
        # the outside world) are reached through the double.
        wrapped = self.__dict__.get("wrapped")
        if wrapped is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(wrapped, name)


class _Book:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[RecordedCall] = []
        self.counts: dict[str, int] = {}
        self.numbered: dict[tuple[str, int], Fault] = {}
        self.queued: dict[str, list[Fault]] = {}

    def start(self, tool: str, method: str, kind: CallKind, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> RecordedCall:
        with self.lock:
            number = self.counts[method] = self.counts.get(method, 0) + 1
            fault = self.numbered.pop((method, number), None)
            queue = self.queued.get(method)
            if fault is None and queue:
                fault = queue.pop(0)
            call = RecordedCall(tool, method, kind, number, args, dict(kwargs), fault)
            self.calls.append(call)
            return call



_under_way = threading.local()  # the recorded calls in progress in this thread, outermost first


def _recording(original: Callable[..., Any], name: str, kind: CallKind) -> Callable[..., Any]:
    @functools.wraps(original)
    def recorded(self: ToolDouble, *args: Any, **kwargs: Any) -> Any:
        call = self._book().start(self.tool_name(), name, kind, args, kwargs)
        fault = call.fault
        where = f"{call.tool}.{name} call #{call.number}"
        outer: list[RecordedCall] = _under_way.__dict__.setdefault("calls", [])
        if fault is not None:
            for enclosing in outer:
                enclosing.saw_fault = True
        outer.append(call)
        try:
            if fault is Fault.CRASH_BEFORE_EFFECT:
                raise Crash(f"{where}, before its effect")
            if fault is Fault.TRANSIENT:
                raise TransientError(f"{where}: injected transient failure")
            if fault is Fault.AUTH:
                raise AuthError(f"{where}: injected auth failure")
            if fault is Fault.UNCERTAIN:
                raise UncertainOutcome(f"{where}: injected uncertain outcome (no effect)")
            if fault is Fault.RECONCILE_RETRY:
                call.result = Reconciliation.retry(f"{where}: injected retry")
                return call.result
            call.result = original(self, *args, **kwargs)
            call.ran = True
            if fault is Fault.UNCERTAIN_AFTER_EFFECT:
                raise UncertainOutcome(f"{where}: injected uncertain outcome (after its effect)")
            if fault is Fault.CRASH_AFTER_EFFECT:
                raise Crash(f"{where}, after its effect")
            return call.result
        except BaseException as e:
            call.error = e
            raise
        finally:
            call.done = True
            outer.pop()

    return recorded


def double(tool: Tool) -> ToolDouble:
    """A double of the real `tool`: the same name, reads, mutators and reconciles,
    each recorded and forwarded to it (reached as `.wrapped`)."""
    if isinstance(tool, ToolDouble):
        return tool
    real = type(tool)
    namespace: dict[str, Any] = {"name": real.tool_name(), "__module__": real.__module__,
                                 "__doc__": f"A recording double of {real.__qualname__}."}
    for name, spec in real.methods().items():
        namespace[name] = _forward(real, name)
        if spec.kind == "mutator":
            namespace[name] = mutator(reconcile=spec.reconcile)(namespace[name])
            if spec.reconcile is not None:
                namespace[spec.reconcile] = _forward(real, spec.reconcile)
        else:
            namespace[name] = read(namespace[name])
    cls = type(f"{real.__name__}Double", (ToolDouble,), namespace)
    instance: ToolDouble = cls()
    instance.wrapped = tool
    return instance


def _forward(real: type[Tool], name: str) -> Callable[..., Any]:
    @functools.wraps(getattr(real, name))
    def forward(self: ToolDouble, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.wrapped, name)(*args, **kwargs)

    return forward
