"""What a projection is: tables of its own, a fold of log events into them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from flowledger.projections.sealing import NO_SEAL, Seal

Cursor = Any  # the store's DB-API cursor, passed in: projections never open connections


class Projection(ABC):
    """A read model derived from the log, updated exactly once per event.

    `handlers` maps event classes to methods; events of other classes are
    skipped (their position is still tracked).
    """

    name: ClassVar[str]
    tables: ClassVar[tuple[str, ...]]
    # Folded in inside every append (the session loop reads it between
    # appends), or not (the read side): in batches from memory inside appends
    # (every FOLD_EVERY events and a session's close), else by `catch_up`
    # after each session and before a read (ADR 0010, 0017).
    inline: ClassVar[bool] = True
    # Copies of what handlers wrote are sealed with the store's cipher (ADR 0022);
    # set by the runner.
    seal: Seal = NO_SEAL

    def __init__(self) -> None:
        self._dispatch: dict[type, Callable[[Cursor, Any, int], None]] = {
            cls: getattr(self, method) for cls, method in self.handlers().items()
        }

    @abstractmethod
    def handlers(self) -> dict[type, str]:
        """Event class → name of the method that folds it in."""

    @abstractmethod
    def create_tables(self, c: Cursor) -> None: ...

    def forget(self) -> None:  # noqa: B027 - a hook: most projections keep nothing
        """Drop whatever was kept from earlier batches: the next batch does not
        follow the last one this process folded in (another writer came in
        between, or that batch's transaction rolled back). What was asked ahead
        is the runner's to drop (`drop_asked`)."""

    def drop_asked(self) -> None:  # noqa: B027 - a hook: most projections ask nothing
        """Drop what `prefetch` asked for and no fold has read yet."""

    def prefetch(self, c: Cursor, events: Sequence[Any]) -> None:  # noqa: B027 - a hook
        """Ask ahead (`c.prefetch`, where the store's cursor sends reads ahead)
        for what folding `events` next will read."""

    def forget_except(self, workflow_id: str) -> None:
        """Like `forget`, but what was kept of workflow `workflow_id` (hex)
        still holds: only other workflows' events were folded in between."""
        self.forget()

    def clear(self, c: Cursor) -> None:
        for table in self.tables:
            c.execute(f"DELETE FROM {table}")

    def apply(self, c: Cursor, event: Any, position: int) -> None:
        method = self._dispatch.get(type(event))
        if method is not None:
            method(c, event, position)

    def apply_batch(self, c: Cursor, batch: Sequence[tuple[Any, int]]) -> None:
        """Fold in events in log order; a projection may coalesce writes here."""
        for event, position in batch:
            self.apply(c, event, position)
