"""The signal handler's rule (engine/graceful_stop.py), without sending signals:
the first stops after the step in progress, any later one stops at once."""

from __future__ import annotations

import signal
import threading

import pytest

from flowledger.engine.graceful_stop import GracefulStop


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
