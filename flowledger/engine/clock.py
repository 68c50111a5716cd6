"""Time and ids come from here, and only the engine asks: the domain is handed them."""

from __future__ import annotations

import random
import uuid
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


class IdFactory(Protocol):
    def __call__(self) -> UUID: ...


def random_ids() -> UUID:
    return uuid.uuid4()


class SeededIds:
    """Reproducible ids for property tests."""

    def __init__(self, seed: int = 0) -> None:
        self._random = random.Random(seed)

    def __call__(self) -> UUID:
        return UUID(int=self._random.getrandbits(128), version=4)
