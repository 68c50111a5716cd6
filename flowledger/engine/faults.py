"""Fault injection, for tests only: crash a real process at a named durable point.

Set FLOWLEDGER_CRASH_AT to a point name (optionally `name#N` for its N-th time)
and the process exits at once with code 86 when it gets there: no cleanup, no
flush, like a power cut or a SIGKILL. Points:

  before_append:LABEL / after_append:LABEL   around each append; LABEL is one of
      session_open, release, in_flight, outcome, commit, producer_commit, failure,
      session_close
  before_call    between the in_flight append and the external call
  after_call     between the call's return and recording its outcome
"""

from __future__ import annotations

import os
from collections.abc import Callable

from flowledger.domain.errors import ConfigurationError

CRASH_EXIT_CODE = 86
ENV = "FLOWLEDGER_CRASH_AT"

# The labels of the appends a session makes (handler_runs.SessionScope.append,
# and the session's opening in engine.py), and every durable point named after
# them: the one list the docstring above, the README and flowledger.testing
# (which walks them all) go by.
APPEND_LABELS = ("session_open", "release", "in_flight", "outcome", "commit",
                 "producer_commit", "failure", "session_close")
DURABLE_POINTS = (
    *(f"{side}_append:{label}" for label in APPEND_LABELS for side in ("before", "after")),
    "before_call", "after_call",
)


class SimulatedCrash(BaseException):
    """Raised by an in-process test's checkpoint to stand for the process dying
    there. The engine writes nothing more when it sees it, as a dead process
    would not; any other exception that interrupts a session (KeyboardInterrupt,
    SystemExit) makes the engine end its lease first, so the session is
    continued at once (engine.Engine._abandon)."""


# Engines (their `Engine.owner`) that an in-process test killed
# (flowledger.testing.crash_at): judged gone, as a process that no longer runs is.
_dead_owners: set[str] = set()


def declare_dead(owner: str) -> None:
    _dead_owners.add(owner)


def declared_dead(owner: str) -> bool:
    return owner in _dead_owners


def no_faults(point: str) -> None:
    """The default checkpoint: does nothing."""


def crash_at(spec: str) -> Callable[[str], None]:
    name, _, nth = spec.partition("#")
    if name not in DURABLE_POINTS or (nth and not (nth.isdigit() and int(nth) > 0)):
        # A point that does not exist would never be reached: the "crash test"
        # would pass without crashing anything.
        raise ConfigurationError(
            f"{ENV}={spec!r} names no durable point; use one of {', '.join(DURABLE_POINTS)}, "
            "optionally with #N for its N-th time (e.g. after_call#2)")
    wanted = int(nth) if nth else 1
    seen = 0

    def checkpoint(point: str) -> None:
        nonlocal seen
        if point == name:
            seen += 1
            if seen == wanted:
                os._exit(CRASH_EXIT_CODE)

    return checkpoint


def from_environment() -> Callable[[str], None]:
    spec = os.environ.get(ENV, "").strip()
    return crash_at(spec) if spec else no_faults
