"""Retry, reconciliation and lease policy: sane defaults, all injectable."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flowledger.domain.errors import ConfigurationError


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient failures and reconciliation."""

    transient_max_attempts: int = 5
    transient_base_delay: float = 2.0
    transient_max_delay: float = 300.0
    reconcile_max_attempts: int = 5
    reconcile_base_delay: float = 5.0
    reconcile_max_delay: float = 600.0
    jitter: float = 0.2
    lease_seconds: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("transient_max_attempts", "reconcile_max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"RetryPolicy.{name} must be at least 1")
        for name in ("transient_base_delay", "reconcile_base_delay", "lease_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"RetryPolicy.{name} must be positive")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError("RetryPolicy.jitter must be in [0, 1)")

    def _delay(self, attempt: int, base: float, cap: float) -> timedelta:
        delay = min(cap, base * 2 ** max(0, attempt - 1))
        delay *= 1 + self.jitter * (2 * self.rng.random() - 1)
        return timedelta(seconds=delay)

    def transient_retry_at(self, now: datetime, attempt: int) -> datetime | None:
        """When to try again after failed attempt number `attempt`; None: give up."""
        if attempt >= self.transient_max_attempts:
            return None
        return now + self._delay(attempt, self.transient_base_delay, self.transient_max_delay)

    def reconcile_at(self, now: datetime, attempts: int) -> datetime | None:
        """When to reconcile again after `attempts` answers of retry; None: give up."""
        if attempts >= self.reconcile_max_attempts:
            return None
        return now + self._delay(attempts, self.reconcile_base_delay, self.reconcile_max_delay)

    def lease_until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease_seconds)
