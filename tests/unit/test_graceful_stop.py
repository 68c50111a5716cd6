"""The signal handler's rule (engine/graceful_stop.py), without sending signals:
the first stops after the step in progress, any later one stops at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flowledger.engine.graceful_stop import GracefulStop

ROOT = str(Path(__file__).resolve().parents[2])


def test_the_first_signal_asks_for_a_stop_and_the_second_stops_at_once() -> None:
    stop = GracefulStop(log=None)
    stop._handle(signal.SIGINT, None)
    assert stop.is_set() and stop.signal == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


def test_a_second_signal_arriving_while_the_first_is_handled_is_not_lost() -> None:
    """Python runs a handler for a signal that arrives during another handler
    nested inside it: here, the second Ctrl-C comes while the first one's message
    is written (as a person pressing twice, or a test that sends the second as soon
    as it reads the first's message)."""
    told: list[bool] = []

    def on_signal(signum: int, at_once: bool) -> None:
        told.append(at_once)
        if len(told) == 1:
            stop._handle(signal.SIGINT, None)  # the second signal, nested

    stop = GracefulStop(log=None, on_signal=on_signal)
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)
    assert told == [False, True]
    assert stop.is_set()


def test_a_stop_already_asked_by_the_caller_makes_a_signal_stop_at_once() -> None:
    event = threading.Event()
    event.set()  # e.g. serve(stop=event), set by the application
    with pytest.raises(KeyboardInterrupt):
        GracefulStop(event, log=None)._handle(signal.SIGTERM, None)


def test_a_signal_arriving_inside_the_events_own_wait_does_not_hang() -> None:
    """The main thread is waiting on the stop event (follow, the worker's idle
    wait) and holds the event's lock at the instant the handler runs in it: the
    handler must not wait for that lock (a real process: a hang would block the
    test run, so it is bounded by a timeout there)."""
    script = (
        "import signal\n"
        "from flowledger.engine.graceful_stop import GracefulStop\n"
        "stop = GracefulStop(log=None)\n"
        "with stop.event._cond:  # as inside Event.wait, before it lets go\n"
        "    stop._handle(signal.SIGINT, None)\n"
        "assert stop.event.wait(5)\n"
        "print('stopped')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=20, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"
