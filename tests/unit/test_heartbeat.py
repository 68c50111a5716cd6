"""The heartbeat's stop waits for a renewal under way: the engine closes the
store's connections right after, and a renewal met them closing."""

from __future__ import annotations

import threading
import time

from flowledger.engine.heartbeat import Heartbeat


def test_stop_waits_for_a_renewal_under_way() -> None:
    beat = Heartbeat(0.01)
    renewing, release = threading.Event(), threading.Event()
    renewals: list[str] = []

    def keep_alive() -> None:
        renewing.set()
        assert release.wait(30)
        renewals.append("renewed")

    with beat.window(keep_alive):
        assert renewing.wait(30)  # a renewal under way; the call window ends meanwhile
    stopping = threading.Thread(target=beat.stop, daemon=True)
    stopping.start()
    time.sleep(0.2)
    assert stopping.is_alive() and not renewals  # waiting for it
    release.set()
    stopping.join(30)
    assert not stopping.is_alive() and renewals == ["renewed"]


def test_stop_without_a_thread_returns_at_once() -> None:
    beat = Heartbeat(0.01)
    beat.stop()  # never started: nothing to wait for
    with beat.window(lambda: None):
        pass  # stopped: no thread is started
    beat.stop()
