"""Crash injection in-process: an engine dies at a named durable point, as a
killed process would, and a fresh engine on the same store recovers (ADR 0021).

    with fl.testing.crash_at(engine, "after_call"):
        engine.run_session("orders")
    engine = flowledger_new_engine()          # a new "process" on the same store
    engine.register(wf, tools=tools)
    engine.recover()

The engine's checkpoint raises `SimulatedCrash` at the point; the engine writes
nothing more on its way out (ADR 0015). When it reaches the `with`, the engine
is killed: its connections close (a PostgreSQL store then knows it is gone), it
is judged gone like a process that no longer runs (so its session is taken over
at once), and every later call raises `EngineCrashed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from flowledger.domain.errors import FlowledgerError, InvalidArgument
from flowledger.engine.closing import refuse_everything
from flowledger.engine.engine import Engine
from flowledger.engine.faults import DURABLE_POINTS, SimulatedCrash, declare_dead
from flowledger.infrastructure.store_url import shown

__all__ = ["DURABLE_POINTS", "CrashNotReached", "CrashReport", "EngineCrashed", "crash_at",
           "crash_if_reached", "expect_crash"]


class EngineCrashed(FlowledgerError):
    """A call on an engine that crashed (flowledger.testing): it is as dead as
    the process it stands for."""


class CrashNotReached(AssertionError):
    """The block ended without the crash it was meant to contain."""


class Crash(SimulatedCrash):
    """The process dying at `point` (a durable point, or inside a tool double's call)."""

    def __init__(self, point: str) -> None:
        super().__init__(point)
        self.point = point


@dataclass
class CrashReport:
    """What `crash_at`/`expect_crash` saw: where the engine died, if it did."""

    point: str | None = None

    @property
    def happened(self) -> bool:
        return self.point is not None


def parse_point(spec: str) -> tuple[str, int]:
    """"after_call" or "after_call#2" -> ("after_call", 2), refusing unknown names."""
    name, _, nth = spec.partition("#")
    if name not in DURABLE_POINTS:
        raise InvalidArgument(f"{name!r} is not a durable point; the points are "
                              f"{', '.join(DURABLE_POINTS)}")
    if nth and (not nth.isdigit() or int(nth) < 1):
        raise InvalidArgument(f"{spec!r}: the count after '#' must be a whole number >= 1")
    return name, int(nth) if nth else 1


@contextlib.contextmanager
def crash_at(engine: Engine, point: str) -> Iterator[CrashReport]:
    """Kill `engine` at `point` ("after_call", or "after_call#2" for its 2nd
    passing within the block). The block must get there: if it does not,
    `CrashNotReached` is raised (the engine is left alive)."""
    with crash_if_reached(engine, point) as report:
        yield report
    if not report.happened:
        raise CrashNotReached(f"the block never reached durable point {point!r}, so "
                              "the engine did not crash there")


@contextlib.contextmanager
def expect_crash(engine: Engine) -> Iterator[CrashReport]:
    """Contain a crash that something else causes (a tool double told to crash
    during a call): the engine is killed, and the block must crash."""
    _refuse_private_store(engine)
    with _killed_on_crash(engine) as report:
        yield report
    if not report.happened:
        raise CrashNotReached("the block ended without a crash")


@contextlib.contextmanager
def crash_if_reached(engine: Engine, point: str | None) -> Iterator[CrashReport]:
    """`crash_at` that tolerates not reaching the point (`report.happened` says
    whether it did), e.g. to walk every point of a workflow some of which only a
    retry passes. None: no point armed, but a tool double's crash is contained."""
    _refuse_private_store(engine)
    previous = engine.checkpoint
    if point is not None:
        engine.checkpoint = _crashing_checkpoint(previous, point)
    try:
        with _killed_on_crash(engine) as report:
            yield report
    finally:
        if not report.happened:
            engine.checkpoint = previous


def _crashing_checkpoint(previous: Callable[[str], None], spec: str) -> Callable[[str], None]:
    name, wanted = parse_point(spec)
    seen = 0

    def checkpoint(point: str) -> None:
        nonlocal seen
        previous(point)
        if point == name:
            seen += 1
            if seen == wanted:
                raise Crash(spec)

    return checkpoint


@contextlib.contextmanager
def _killed_on_crash(engine: Engine) -> Iterator[CrashReport]:
    report = CrashReport()
    try:
        yield report
    except SimulatedCrash as crash:
        report.point = getattr(crash, "point", None) or str(crash) or type(crash).__name__
        kill(engine, report.point)


def kill(engine: Engine, point: str) -> None:
    """What a process dying leaves of its engine: nothing usable. Its connections
    close (their open transactions roll back), it is judged gone, and every later
    call raises EngineCrashed naming the point."""
    engine.heartbeat.stop()
    with contextlib.suppress(Exception):  # a dead process closes nothing cleanly either
        engine.log.close()
    declare_dead(engine.owner)
    why = (f"this engine (store {shown(engine.store)!r}) crashed at {point!r} "
           "(flowledger.testing): like the process it stands for, it can do nothing "
           "more. Open a new fl.Engine on the same store and register the workflow; its "
           "recover() or next run_session continues the work")
    refuse_everything(engine, EngineCrashed, why)


def _refuse_private_store(engine: Engine) -> None:
    if engine.log.config.kind == "memory":
        raise InvalidArgument(
            "a crash needs a store that a new engine can open after it, and a memory:// "
            "store is private to its engine: use an SQLite file (the flowledger_store "
            "fixture's default) or PostgreSQL")
