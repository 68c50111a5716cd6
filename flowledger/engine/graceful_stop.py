"""Stopping on SIGTERM/SIGINT after the step in progress (DESIGN §6, ADR 0019,
ADR 0020): the one place the worker and `flowledger run` install their signal
handlers.

While a `GracefulStop` is entered (in the main thread), the first SIGTERM or
SIGINT only sets its event: the session checks it before each consumer run
(`SessionRequest.should_stop`) and closes with the work left listed, so a
mutation is never left between `in_flight` and its outcome of our own accord.
A second signal raises `KeyboardInterrupt` where the main thread is: the
session is left as a crash leaves it and its lease ends at once (ADR 0015);
the next session or recovery continues it. On leaving, the previous handlers
are put back. Outside the main thread (where Python cannot install handlers)
it does nothing but hold the event; a signal the process ignores stays ignored.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)

logger = logging.getLogger("flowledger.stop")


class GracefulStop:
    """`with GracefulStop(event) as stop:` — the first signal sets `stop.event`
    (and is kept in `stop.signal`), a second raises KeyboardInterrupt.

    `event` may be one the caller also sets itself (e.g. `serve(stop=...)`): a
    signal arriving once it is set stops at once, as a second signal does.
    Each signal is logged on `log` (None: not logged, the caller tells the person
    through `on_signal`). `on_signal(signum, at_once)` is called from the signal handler, before the
    event is set or KeyboardInterrupt raised (it must be quick and must not
    print through a buffered stream: use `os.write`).
    """

    def __init__(self, event: threading.Event | None = None, *,
                 log: logging.Logger | None = logger,
                 on_signal: Callable[[int, bool], None] | None = None) -> None:
        self.event = event if event is not None else threading.Event()
        self.signal: int | None = None  # the first signal received
        self._received = False
        self._log = log
        self._on_signal = on_signal
        self._previous: dict[int, Any] = {}

    def is_set(self) -> bool:
        """Whether a stop was asked: fits `SessionRequest.should_stop`."""
        return self.event.is_set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # The state changes first: a second signal can arrive while this handler
        # still runs (Python then runs its handler nested, here), and it must find
        # the first one recorded, or it would be taken for a first and lost.
        at_once = self._received or self.event.is_set()
        self._received = True
        if not at_once:
            self.signal = signum
            self._set_event()
        if self._on_signal is not None:
            self._on_signal(signum, at_once)
        if at_once:
            if self._log is not None:
                self._log.warning("second signal %s: stopping at once", signum)
            raise KeyboardInterrupt
        if self._log is not None:
            self._log.info("signal %s: stopping after the current step", signum)

    def _set_event(self) -> None:
        """Set the event from a thread of its own. The handler runs in the main
        thread, between two of its bytecodes, and that thread may be inside the
        event's own `wait` holding the event's lock (a plain Lock): setting it
        here would wait for that lock for ever. In the common case the setter is
        done at once; if not, it finishes as soon as the main thread goes on."""
        setter = threading.Thread(target=self.event.set, name="flowledger-stop", daemon=True)
        setter.start()
        setter.join(0.5)

    def install(self) -> None:
        """Take SIGTERM/SIGINT over (in the main thread only); `restore` gives them back."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            # A signal the process was started to ignore stays ignored, as Python
            # leaves it for KeyboardInterrupt (e.g. SIGINT of a job a script started
            # with `&`: a Ctrl-C meant for the script is not meant for it).
            self._previous = {s: signal.getsignal(s) for s in SIGNALS
                              if signal.getsignal(s) is not signal.SIG_IGN}
            for s in self._previous:
                signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, previous in self._previous.items():
            if previous is not None:  # None: not installed from Python, cannot be put back
                signal.signal(s, previous)
        self._previous = {}

    def __enter__(self) -> GracefulStop:
        self.install()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()
