"""Size limits (DESIGN §1.7): going over is a logic error naming field, size and limit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from flowledger.domain.errors import ConfigurationError, LogicError

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Limits:
    """Largest packed size, in bytes, of each kind of value a handler hands over."""

    payload: int = 1 * MiB
    state: int = 256 * KiB
    data: int = 256 * KiB
    params: int = 256 * KiB
    result: int = 256 * KiB
    read: int = 256 * KiB
    title: int = 1 * KiB
    message_id: int = 1 * KiB
    input_key: int = 1 * KiB  # each of an input's source, type and id
    label: int = 1 * KiB  # a cost's label

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigurationError(
                    f"limit {f.name!r} must be a positive number of bytes, got {value!r}"
                )

    def check(self, field: str, size: int, where: str | Callable[[], str]) -> None:
        """`where` may be a function: the place is worked out only for the error."""
        limit: int = getattr(self, field)
        if size > limit:
            raise LogicError(
                f"{where() if callable(where) else where}: {field} is {size:,} bytes, "
                f"over the limit of {limit:,} bytes. "
                f"Keep large content outside the log (store a path, key or URL instead), "
                f"or raise the limit with fl.Limits({field}=...)."
            )
