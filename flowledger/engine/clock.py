"""Time and ids come from here, and only the engine asks: the domain is handed them."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol
from uuid import UUID

from flowledger.domain.errors import DefinitionError, InvalidArgument
from flowledger.domain.schedule import parse_every


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to: for tests and simulations."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, by: float | timedelta | str) -> datetime:
        """Move forward by seconds, a timedelta, or text like "30s", "5m", "1h",
        "1d" (as `every=` takes); returns the new time."""
        self._now += _duration(by)
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when


def _duration(by: float | timedelta | str) -> timedelta:
    if isinstance(by, timedelta):
        step = by
    elif isinstance(by, str):
        try:
            step = timedelta(seconds=parse_every(by, "ManualClock.advance").seconds)
        except DefinitionError:
            raise InvalidArgument(f"ManualClock.advance({by!r}): give seconds, a timedelta "
                                  "or a text like '30s', '5m', '1h' or '1d'") from None
    elif isinstance(by, int | float) and not isinstance(by, bool):
        step = timedelta(seconds=by)
    else:
        raise InvalidArgument(f"ManualClock.advance({by!r}): give seconds, a timedelta "
                              "or a text like '30s', '5m', '1h' or '1d'")
    if step < timedelta(0):
        raise InvalidArgument(f"ManualClock.advance({by!r}): time only moves forward")
    return step


class LeaseClock:
    """Time for leases: the engine's clock moved onto the store's, when the store
    keeps one (PostgreSQL), so that engines on machines whose clocks differ agree
    on when a lease runs out (DESIGN §7). Lease ends are written and judged in
    the store's time; everything else keeps the engine's.

    The offset between the two is measured at opening (one query) and again at
    each session's opening, in the statement of its look at the log (`align_to`).
    An injected clock other than the system's
    (tests, simulations) is used as it is: its time is not the store's.
    """

    def __init__(self, clock: Clock, store_time: Callable[[], datetime | None]) -> None:
        self.clock = clock
        self._store_time = store_time
        self.offset = timedelta(0)

    def align(self) -> None:
        if not isinstance(self.clock, SystemClock):
            return
        before = self.clock.now()
        store = self._store_time()
        self.align_to(store, before, self.clock.now())

    def align_to(self, store: datetime | None, before: datetime, after: datetime) -> None:
        """Align on the store's time read between the engine's `before` and `after`."""
        if isinstance(self.clock, SystemClock):
            self.offset = (timedelta(0) if store is None
                           else store - (before + (after - before) / 2))

    def now(self) -> datetime:
        """The store's time now (the engine's, where the store keeps none)."""
        return self.clock.now() + self.offset

    def to_engine(self, when: datetime | None) -> datetime | None:
        """A lease end, in the engine's time (for rules that compare it to its now)."""
        return None if when is None else when - self.offset


class IdFactory(Protocol):
    def __call__(self) -> UUID: ...


def random_ids() -> UUID:
    """Time-ordered random ids (the layout of UUID version 7).

    New runs and sessions then sort after older ones, so their entries in the
    log's stream index land on the same few pages: fewer pages per append.
    """
    millis = time.time_ns() // 1_000_000
    value = (millis & (2**48 - 1)) << 80 | secrets.randbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return UUID(int=value)


class SeededIds:
    """Reproducible ids for property tests."""

    def __init__(self, seed: int = 0) -> None:
        self._random = random.Random(seed)

    def __call__(self) -> UUID:
        return UUID(int=self._random.getrandbits(128), version=4)
