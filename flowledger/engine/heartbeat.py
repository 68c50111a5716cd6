"""Renewing a session's lease while a handler or a tool call runs (ADR 0019).

A session renews its lease in passing with its own appends. A handler or tool
call longer than half the lease makes no append, so a heartbeat thread renews
it meanwhile: it appends `Workflow.LeaseRenewed` alone, fenced like every
append of the session, and never at the same time as one of the session's own
appends — both hold the session's `Streams.lock`, and the heartbeat only acts
inside a call window (`SessionScope.in_call`), where the engine records
nothing on the workflow stream but through that lock. If the renewal is
refused (the session was taken over), the session's next append fails and it
stops there, as fencing requires.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

logger = logging.getLogger("flowledger.heartbeat")


class Heartbeat:
    """One daemon thread per engine, started at its first call window."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._lock = threading.Lock()
        self._windows: dict[int, tuple[int, Callable[[], None]]] = {}  # by thread id
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @contextlib.contextmanager
    def window(self, keep_alive: Callable[[], None]) -> Iterator[None]:
        """While the body runs, `keep_alive` is called every `period` seconds."""
        me = threading.get_ident()
        with self._lock:
            depth, _ = self._windows.get(me, (0, keep_alive))
            self._windows[me] = (depth + 1, keep_alive)
            if self._thread is None and not self._stopped.is_set():
                self._thread = threading.Thread(target=self._beat, name="flowledger-heartbeat",
                                                daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                depth, fn = self._windows[me]
                if depth <= 1:
                    del self._windows[me]
                else:
                    self._windows[me] = (depth - 1, fn)

    def _beat(self) -> None:
        while not self._stopped.wait(self.period):
            with self._lock:
                calls = [fn for _, fn in self._windows.values()]
            for keep_alive in calls:
                try:
                    keep_alive()
                except Exception:  # never let the heartbeat die; the session's appends tell
                    logger.exception("renewing a lease failed")

    # How long `stop` waits for a renewal under way (one append, or a store
    # that does not answer: the engine closes then anyway).
    STOP_WITHIN_S = 10.0

    def stop(self) -> None:
        """No more renewals; a renewal under way ends first (the store's
        connections are closed next, and it met them closing)."""
        self._stopped.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.STOP_WITHIN_S)
            if thread.is_alive():
                logger.warning("a lease renewal still under way after %ss; closing anyway",
                               self.STOP_WITHIN_S)
