"""Time and ids come from here, and only the engine asks: the domain is handed them."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol
from uuid import UUID


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

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def set(self, when: datetime) -> None:
        self._now = when


class LeaseClock:
    """Time for leases: the engine's clock moved onto the store's, when the store
    keeps one (PostgreSQL), so that engines on machines whose clocks differ agree
    on when a lease runs out (DESIGN §7). Lease ends are written and judged in
    the store's time; everything else keeps the engine's.

    The offset between the two is measured at opening and again at each
    session's opening (one query). An injected clock other than the system's
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
        after = self.clock.now()
        self.offset = timedelta(0) if store is None else store - (before + (after - before) / 2)

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
