"""Carry a whole log from one store to another, in position order (DESIGN §7).

Every stored event is copied as stored (stream, version, type, body), in
the order of the source's positions, into a store that holds no event yet;
snapshots are a cache and are not copied. The target's projections are then
rebuilt from its log by whoever opens it (an Engine catches up on start).
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from flowledger.domain.errors import ConfigurationError
from flowledger.infrastructure.event_log import EventLog

Progress = Callable[[int, int], None]  # (events copied, events in all)

BATCH = 2000


def copy_log(source: EventLog, target: EventLog, progress: Progress | None = None) -> int:
    """Copy every event of `source` to the empty `target`; returns how many."""
    src, dst = source.flow_recorder, target.flow_recorder
    with dst.reading() as c:
        if dst.max_position(c):
            raise ConfigurationError(
                f"cannot copy into {target.config.url!r}: it already holds "
                f"{dst.max_position(c):,} events. Copy into a new, empty store (a new "
                "SQLite file, or an empty PostgreSQL database or ?schema=...)")
    with src.reading() as c:
        total = src.max_position(c)
    hook, dst.after_insert = dst.after_insert, None  # the target's projections: rebuilt after
    copied, after = 0, 0
    try:
        while True:
            with src.reading() as c:
                batch = src.select_stored(c, after, BATCH)
            if not batch:
                break
            rows = [(_hex(stored.originator_id), stored.originator_version, stored.topic,
                     bytes(stored.state)) for _, stored in batch]
            dst.append_rows(rows, [], sync=False)
            copied += len(rows)
            after = batch[-1][0]
            if progress is not None:
                progress(copied, max(total, copied))
        with dst.writing(sync=True):
            pass  # one synced commit covers the unsynced ones before it
    finally:
        dst.after_insert = hook
    return copied


def _hex(stream: UUID | str) -> str:
    return stream.hex if isinstance(stream, UUID) else UUID(str(stream)).hex
