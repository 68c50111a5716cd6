"""When a scheduled producer's ticks fall (DESIGN §6): `every=` or `cron=`.

Pure: a schedule answers "the first tick after this time"; nothing here reads
a clock. Intervals are anchored on the Unix epoch (UTC), so every worker, and
a worker started again, computes the same ticks; cron expressions are parsed
by `croniter` and evaluated in UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import croniter  # type: ignore[import-untyped]

from flowledger.domain.errors import DefinitionError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")


@dataclass(frozen=True)
class Every:
    """A tick every `seconds`, on the grid of multiples of it since the epoch."""

    seconds: int

    def next_after(self, when: datetime) -> datetime:
        elapsed = (when - _EPOCH) // timedelta(seconds=1)  # whole seconds, floor
        return _EPOCH + timedelta(seconds=(elapsed // self.seconds + 1) * self.seconds)

    def describe(self) -> str:
        return f"every {self.seconds}s"


@dataclass(frozen=True)
class Cron:
    """A tick at each time a five-field cron expression matches (UTC)."""

    expression: str

    def next_after(self, when: datetime) -> datetime:
        value = croniter(self.expression, when.astimezone(UTC)).get_next(datetime)
        assert isinstance(value, datetime)
        return value.astimezone(UTC)

    def describe(self) -> str:
        return f"cron {self.expression!r}"


Schedule = Every | Cron


def parse_every(value: object, where: str) -> Every:
    """A timedelta, or text like "30s", "5m", "1h", "1d" (whole seconds, at least 1)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        if seconds < 1 or seconds != int(seconds):
            raise DefinitionError(f"{where}: every={value!r} must be a whole number of "
                                  "seconds, at least 1")
        return Every(int(seconds))
    if isinstance(value, str):
        match = _INTERVAL.match(value)
        if match and int(match.group(1)) >= 1:
            return Every(int(match.group(1)) * _UNITS[match.group(2)])
        if match:
            raise DefinitionError(f"{where}: every={value!r} must be at least 1 second")
    raise DefinitionError(f"{where}: every={value!r} is not an interval; give a timedelta or "
                          "a text like '30s', '5m', '1h' or '1d'")


def parse_cron(value: object, where: str) -> Cron:
    if not isinstance(value, str) or len(value.split()) != 5:
        raise DefinitionError(f"{where}: cron={value!r} is not a cron expression of five "
                              "fields (minute hour day month weekday), e.g. '*/5 * * * *'")
    if not croniter.is_valid(value):
        raise DefinitionError(
            f"{where}: cron={value!r} has a field croniter cannot read: each is a number in "
            "its range (minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-6), a list, "
            "a range or a step of them, or *; e.g. '*/5 * * * *'")
    return Cron(value)


def parse_schedule(every: object, cron: object, where: str) -> Schedule | None:
    if every is not None and cron is not None:
        raise DefinitionError(f"{where}: give every= or cron=, not both")
    if every is not None:
        return parse_every(every, where)
    if cron is not None:
        return parse_cron(cron, where)
    return None
