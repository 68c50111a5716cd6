"""Closing an engine that other threads still use (DESIGN §5: a service embeds
it, runs sessions from request threads and `serve()` in another).

`Engine.close()` used to close the store's connections and drop the liveness
lock under a session still in its tool call: another engine then took that
session over and, reconciling a call that had not returned yet, made it
again. Now the sessions and `serve()` loops under way in other threads are
asked to stop after their step, as on SIGTERM, and waited for; only then are
the connections closed. Whatever is called on the engine after that raises
`EngineClosed`, instead of opening connections nobody closes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from flowledger.domain.errors import EngineClosed, EngineForked, FlowledgerError
from flowledger.infrastructure.store_failures import store_errors_as_ours

logger = logging.getLogger("flowledger.engine")

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Activity:
    """The calls of one engine under way (sessions, recoveries, `serve()`
    loops, reads), by thread, and the stop events of the loops."""

    def __init__(self, shown_store: str) -> None:
        self._changed = threading.Condition()
        self._by_thread: Counter[int] = Counter()
        self._stops: list[threading.Event] = []
        self.closing = False
        self.why = (f"this engine (store {shown_store!r}) was closed: it does nothing more. "
                    "Open a new fl.Engine on the store to go on")
        self._pid = os.getpid()  # the process whose connections and threads it holds

    @property
    def forked(self) -> bool:
        """Whether this is a process forked from the one that opened the engine:
        there its connections are the parent's sockets (statements of the two
        would interleave), its liveness is the parent's pid and lock, and its
        heartbeat thread does not run (a long call's lease would run out)."""
        return os.getpid() != self._pid

    def forked_why(self) -> str:
        return (f"this engine was opened in process {self._pid} and is used in process "
                f"{os.getpid()}, forked from it: its store connections, its liveness and "
                "its lease's heartbeat belong to the parent, and using them here would "
                "mix the two processes' statements or let another engine take this "
                "one's session over mid-call. Nothing was done. Open a new fl.Engine in "
                "the child, after the fork (with a pre-forking server, in its post-fork "
                "hook)")

    @property
    def busy(self) -> bool:
        """Whether a call of this engine is under way in any thread."""
        with self._changed:
            return any(n for n in self._by_thread.values())

    def refuse_if_closed(self) -> None:
        if self.closing:
            raise EngineClosed(self.why)
        if self.forked:
            raise EngineForked(self.forked_why())

    @contextlib.contextmanager
    def running(self, stop: threading.Event | None = None) -> Iterator[None]:
        """A call under way (`stop`: the event that ends a loop)."""
        me = threading.get_ident()
        with self._changed:
            self.refuse_if_closed()
            self._by_thread[me] += 1
            if stop is not None:
                self._stops.append(stop)
        try:
            yield
        finally:
            with self._changed:
                self._by_thread[me] -= 1
                if stop is not None:
                    self._stops.remove(stop)
                self._changed.notify_all()

    def ending_on_close(self, items: Iterator[T], stop: threading.Event) -> Iterator[T]:
        """A generator read for as long as its caller likes (`follow`): not
        waited for by `close()`, which sets its `stop` so that it ends (as it
        stops a serve() loop) instead of reading a closed store."""
        with self._changed:
            self.refuse_if_closed()
            self._stops.append(stop)
        try:
            while True:
                if self.forked:  # read on in a child: its connection is the parent's
                    raise EngineForked(self.forked_why())
                try:
                    item = next(items)
                except StopIteration:
                    return
                if stop.is_set():  # closed (or stopped) while it was read
                    return
                yield item
        finally:
            with self._changed:
                self._stops.remove(stop)
            _close(items)  # its waiter's connection too

    def refusing_after_close(self, items: Iterator[T]) -> Iterator[T]:
        """A generator of a call that has returned (`events()`): read after
        `close()` began, it raises `EngineClosed` at its next item instead of
        reading the closed store on (or ending as if the log had)."""
        try:
            while True:
                self.refuse_if_closed()  # before reading: nothing read from a closed store
                try:
                    item = next(items)
                except StopIteration:
                    return
                yield item
        finally:
            _close(items)

    def close(self) -> None:
        """Refuse what starts from now on, stop the serve() loops, and wait for
        what other threads are doing to end its step. Refused from inside a
        session of this engine (a handler, a tool): that session cannot be
        waited for, and would go on on the store closed under it."""
        me = threading.get_ident()
        with self._changed:
            if self._by_thread[me]:
                raise RuntimeError(
                    "Engine.close() was called inside a session of this engine (from a "
                    "handler or a tool): it would close the store under that session, "
                    "which goes on. Nothing was closed; close the engine once run_session "
                    "(or serve, or recover) has returned")
            self.closing = True
            for stop in self._stops:
                stop.set()
            said = False
            while any(n for thread, n in self._by_thread.items() if thread != me):
                if not said:
                    logger.info("closing: waiting for the sessions under way in other "
                                "threads to end their step")
                    said = True
                self._changed.wait()


def _close(items: Iterator[Any]) -> None:
    """A generator read no further: its own `finally` (a connection) runs now."""
    close = getattr(items, "close", None)
    if close is not None:
        close()


class WhileOpen:
    """Stands for the engine's log in what outlives the call that made it (an
    `at()` view, kept and read later): every use refuses once `close()` began,
    instead of opening connections on the closed store that nobody closes."""

    def __init__(self, target: Any, refuse: Callable[[], None]) -> None:
        self._target, self._refuse = target, refuse

    def __getattr__(self, name: str) -> Any:
        self._refuse()
        return getattr(self._target, name)


class Refusing:
    """What stands for an engine's log, projections and lease clock once the
    engine can do nothing more (closed, or crashed in a test: testing/crashes.py):
    every use raises `error(why)`; closing it again is allowed."""

    def __init__(self, error: type[FlowledgerError], why: str) -> None:
        self._error, self._why = error, why

    def close(self) -> None:
        """Closing again (a `with`, a fixture's teardown) does nothing."""

    def __getattr__(self, name: str) -> Any:
        raise self._error(self._why)


def refuse_everything(engine: Any, error: type[FlowledgerError], why: str) -> None:
    """Everything an engine does goes through its log, projections and lease
    clock: each is replaced by one that refuses."""
    stand_in = Refusing(error, why)
    for part in ("log", "projections", "lease"):
        setattr(engine, part, stand_in)


def engine_call(method: Callable[P, R]) -> Callable[P, R]:
    """A public method of the engine: `close()` waits for a call under way to
    end (a read's connection closed under it failed it as if the store had),
    one begun once `close()` began raises `EngineClosed`, and the store's
    failures reach the caller as `StoreError`. A generator it returns is not
    waited for: `follow` ends on close (`Activity.ending_on_close`), `events`
    refuses its next item (`Activity.refusing_after_close`)."""
    ours = store_errors_as_ours(method)

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        with args[0]._activity.running():  # type: ignore[attr-defined] # the engine's
            return ours(*args, **kwargs)

    return call
