"""Carry a whole log from one store to another, in position order (DESIGN §7).

Every stored event is copied (stream, version, type, body) at the source's
position, in their order, into a store that holds no event yet: a position
names the same event in both (`timeline`, `at P`, `log --after`); snapshots are
a cache and are not copied. The target's projections are then rebuilt from
its log by whoever opens it (an Engine catches up on start).

A body is copied as stored when both stores write bodies alike; otherwise it
is opened with the source's cipher and compression and sealed again with the
target's: that is how a key is rotated, a store encrypted or decrypted
(ADR 0022). The source's chain is verified first: a copy never launders a
log that was edited. The target writes a chain of its own as it is filled.
A log holding a NUL character in a name or id (written before flowledger
refused them, ADR 0014) is refused by a store whose text cannot keep one,
before anything is copied: its projections could not be built there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from flowledger.domain.errors import ConfigurationError, FlowledgerError, StoreError
from flowledger.domain.text import one_line
from flowledger.infrastructure.codec import PydanticMapper, decode
from flowledger.infrastructure.event_log import EventLog
from flowledger.infrastructure.log_verification import verify_chain
from flowledger.infrastructure.store import LogStore
from flowledger.infrastructure.store_failures import from_the_store
from flowledger.infrastructure.store_format import (
    COPIED,
    COPIED_EVENTS,
    COPIED_ID,
    COPYING,
    COPYING_ID,
    mark_copying,
    read_format,
    unmark_copying,
)

Progress = Callable[[int, int], None]  # (events copied, events in all)

BATCH = 2000


def copy_log(source: EventLog, target: EventLog, progress: Progress | None = None
             ) -> tuple[int, int]:
    """Copy every event of `source` to the empty `target`; returns how many the
    target holds, and how many of them this call wrote.

    The target is marked as being filled from `source` (`store_format.COPYING`)
    until the last event is in: an engine refuses to open it meanwhile (a
    partial log would have it make again what the rest records as done), and
    copying from the same source again goes on where the copy stopped. Once
    it ended, the mark becomes the record of where the log came from and how
    many events were copied: the same copy run again finds it whole."""
    src, dst = source.flow_recorder, target.flow_recorder
    if source.format.store_id and source.format.store_id == target.format.store_id:
        raise ConfigurationError(
            f"cannot copy {source.config.shown!r} into {target.config.shown!r}: they are the "
            "same store, named two ways. Copy into a new, empty store")
    chain = src.chain
    if chain is not None:
        found = verify_chain(src, chain)
        if found.problems:
            shown = "; ".join(str(p) for p in found.problems[:5])
            raise ConfigurationError(
                f"cannot copy {source.config.shown!r}: its log was edited outside flowledger "
                f"({len(found.problems)} problem(s): {shown}). Nothing was copied; run "
                "`flowledger verify` on it, and restore it from a backup")
    if not dst.HOLDS_NUL_IN_TEXT:
        _refuse_text_with_nul(source, target)
    recode = _recoder(source, target)
    with src.reading() as c:  # one snapshot: the head, and the events up to it
        total = src.max_position(c)
        c.execute(f"SELECT COUNT(*) FROM {src.events_table_name} "
                  f"WHERE {src.position_column} <= ?", (total,))
        events = int(c.fetchone()[0])  # positions may skip numbers (a rolled-back append)
    copied, after, finished = _start(source, target, total)
    if finished:  # by this copy, earlier: nothing to write
        if progress is not None:
            progress(copied, copied)
        return copied, 0
    started = copied
    if progress is not None:  # where it starts: an earlier copy's events are in
        progress(copied, max(events, copied))
    hook, dst.after_insert = dst.after_insert, None  # the target's projections: rebuilt after
    try:
        batches = _batches(src, after)
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    break
                rows = [(position, (_hex(stored.originator_id), stored.originator_version,
                                    stored.topic, recode(bytes(stored.state))))
                        for position, stored in batch]
                dst.place_rows(rows)
            except Exception as e:
                raise _stopped(source, target, copied, events, e) from e
            copied += len(rows)
            if progress is not None:
                progress(copied, max(events, copied))
        with dst.writing(sync=True) as c:  # synced: covers the unsynced commits before it
            unmark_copying(c, copied)
    finally:
        dst.after_insert = hook
    return copied, copied - started


def _start(source: EventLog, target: EventLog, total: int) -> tuple[int, int, bool]:
    """Mark an empty target as being filled from `source`, or find where an
    earlier copy from it stopped: (events in the target, the source's position
    of the last of them, whether that copy had ended). Under the target's
    write lock: of two copies at once, one marks it and the other finds it
    marked. A target this copy already finished (interrupted while its
    projections were rebuilt, say) is found whole, if it holds as many events
    as the copy wrote and the source has appended none since; else it is a
    store in use, refused (engines may be writing it: only a marked target is
    kept from them)."""
    dst, shown = target.flow_recorder, source.config.shown
    with dst.writing(sync=True) as c:
        held = dst.max_position(c)
        recorded = read_format(c)
        marked, marked_id = recorded.get(COPYING), recorded.get(COPYING_ID)
        if marked is None:
            if held:
                return *_whole_or_refuse(source, target, c, recorded, total, held), True
            mark_copying(c, shown, source.format.store_id)
            return 0, 0, False
    if not _same_source(source, marked, marked_id):
        raise ConfigurationError(
            f"cannot copy into {target.config.shown!r}: a copy of another log, {marked!r}, "
            "into it has not finished (it is under way, or it stopped). Let it finish, or "
            f"run it again to go on where it stopped; copy {shown!r} into a new, empty store")
    with dst.reading() as c:  # one snapshot: the count and the last event agree
        held, after = _prefix_or_refuse(source, target, c)
        if held:
            _at_the_source_s_positions(source, target, c, after)
        return held, after, False


def _whole_or_refuse(source: EventLog, target: EventLog, c: Any, recorded: dict[str, str],
                     total: int, held: int) -> tuple[int, int]:
    """A target that holds events and is not marked: refused, unless it is
    this copy, ended, holding what it wrote (events are only ever appended:
    as many means nothing since) of a source that appended nothing since.
    Whole, it is (events in it, the source's position of the last of them)."""
    shown, wrote = source.config.shown, recorded.get(COPIED_EVENTS)
    why = ""
    if wrote and _same_source(source, recorded.get(COPIED), recorded.get(COPIED_ID)):
        count = _count(target, c)
        if count > int(wrote):
            why = f" ({count - int(wrote):,} of them appended since it was copied from {shown!r})"
        else:
            done = _prefix_of(source, target, c, count)
            if done is not None and done[1] == total:
                return done
            why = (f" (the first of {shown!r}, copied before; it has appended more since, "
                   "and this copy may be in use)")
    raise ConfigurationError(
        f"cannot copy into {target.config.shown!r}: it already holds {held:,} "
        f"events{why}. Copy into a new, empty store (a new SQLite file, or an "
        "empty PostgreSQL database or ?schema=...)")


def _prefix_or_refuse(source: EventLog, target: EventLog, c: Any) -> tuple[int, int]:
    found = _prefix_of(source, target, c)
    if found is None:
        raise ConfigurationError(
            f"cannot copy into {target.config.shown!r}: the events it holds are not the "
            f"first of {source.config.shown!r}. Delete it and copy into a new, empty store")
    return found


def _count(target: EventLog, c: Any) -> int:
    c.execute(f"SELECT COUNT(*) FROM {target.flow_recorder.events_table_name}")
    return int(c.fetchone()[0])


def _prefix_of(source: EventLog, target: EventLog, c: Any, count: int | None = None
               ) -> tuple[int, int] | None:
    """(events in the target, the source's position of the last of them) if
    the target holds the source's first events and nothing else, else None.
    `c` reads the target; `count`: its events, if counted already."""
    src, dst = source.flow_recorder, target.flow_recorder
    count = _count(target, c) if count is None else count
    if not count:
        return 0, 0
    c.execute(f"SELECT originator_id, originator_version FROM {dst.events_table_name} "
              f"ORDER BY {dst.position_column} DESC LIMIT 1")
    last = c.fetchall()
    there = src.read_all(f"SELECT {src.position_column}, originator_id, originator_version FROM "
                         f"{src.events_table_name} ORDER BY {src.position_column} "
                         "LIMIT 1 OFFSET ?", (count - 1,))
    if not there or (_hex(there[0][1]), int(there[0][2])) != (_hex(last[0][0]),
                                                              int(last[0][1])):
        return None
    return count, int(there[0][0])


def _at_the_source_s_positions(source: EventLog, target: EventLog, c: Any, after: int) -> None:
    """A copy goes on only where the target's events stand at the source's
    positions: one begun by a release that numbered them afresh would go on
    above (or into) positions those took."""
    dst = target.flow_recorder
    held = dst.max_position(c)
    if held != after:
        raise ConfigurationError(
            f"cannot go on with the copy into {target.config.shown!r}: it was begun by an "
            f"earlier flowledger release, which numbered its events afresh (its last is at "
            f"position {held:,}, where {source.config.shown!r} has it at {after:,}). Nothing "
            "more was copied; delete it and copy into a new, empty store")


def _same_source(source: EventLog, named: str | None, named_id: str | None) -> bool:
    """Whether the store a target's mark names is `source`: by store id, by
    URL for a source that records none."""
    source_id = source.format.store_id
    return named_id == source_id if (named_id and source_id) else named == source.config.shown


def _batches(store: LogStore, after: int) -> Iterator[list[tuple[int, StoredEvent]]]:
    """The log's stored events after position `after`, BATCH at a time, each
    batch read in a snapshot of its own."""
    while True:
        with store.reading() as c:
            batch = store.select_stored(c, after, BATCH)
        if not batch:
            return
        yield batch
        after = batch[-1][0]


def _stopped(source: EventLog, target: EventLog, copied: int, total: int,
             error: Exception) -> FlowledgerError:
    """A copy stopped midway: a store that failed is a `StoreError` (ADR 0030)."""
    if isinstance(error, FlowledgerError):
        return error
    said = one_line(error)
    message = (
        f"the copy of {source.config.shown!r} into {target.config.shown!r} stopped after "
        f"{copied:,} of about {total:,} events ({type(error).__name__}: {said}). The target is "
        "marked unfinished and no engine opens it; run the same command again to go on "
        "where it stopped (two copies at once: let one finish)")
    return StoreError(message, error) if from_the_store(error) else ConfigurationError(message)


def _hex(stream: UUID | str) -> str:
    return stream.hex if isinstance(stream, UUID) else UUID(str(stream)).hex


def _refuse_text_with_nul(source: EventLog, target: EventLog) -> None:
    """Refuse, naming the first, if any event holds text with a NUL character."""
    mapper = source.flow_mapper
    found, first = 0, ""
    for batch in _batches(source.flow_recorder, 0):
        for position, stored in batch:
            try:
                fields = decode(_opened(mapper, bytes(stored.state)))
            except Exception:
                continue  # unreadable: copied as it is, as any other body
            where = _nul_in(fields)
            if where is not None:
                found += 1
                if not first:
                    first = (f"{stored.topic.rpartition(':')[2]} at position {position} "
                             f"(stream {_hex(stored.originator_id)}, {where})")
    if found:
        raise ConfigurationError(
            f"cannot copy {source.config.shown!r} to {target.config.shown!r}: {found:,} "
            f"event(s) hold a name or id with a NUL character ('\\x00'), which "
            f"{target.config.shown!r} cannot keep in text; the first is {first}. They were "
            "written before flowledger refused NUL in names and ids. Nothing was copied: "
            "keep this log on SQLite (a copy to another SQLite file keeps them)")


def _nul_in(value: Any, path: str = "") -> str | None:
    """Where in a decoded event a text holds NUL (payloads are bytes: not text)."""
    if isinstance(value, str):
        return (path or "its text") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else f"field {key!r}"
            if isinstance(key, str) and "\x00" in key:
                return f"a key in {path or 'the event'}"
            found = _nul_in(item, here)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _nul_in(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _opened(mapper: PydanticMapper, body: bytes) -> bytes:
    """A stored body decrypted (authenticated: a changed body fails here) and
    decompressed."""
    if mapper.cipher is not None:
        body = mapper.cipher.decrypt(body)
    if mapper.compressor is not None:
        body = mapper.compressor.decompress(body)
    return body


def _recoder(source: EventLog, target: EventLog) -> Callable[[bytes], bytes]:
    """Turns a body stored in `source` into one stored in `target`."""
    src, dst = source.flow_mapper, target.flow_mapper
    if (source.format.encrypted, source.format.compressed, source.protection.cipher_key) == (
            target.format.encrypted, target.format.compressed, target.protection.cipher_key):
        return lambda body: body

    def recode(body: bytes) -> bytes:
        body = _opened(src, body)
        if dst.compressor is not None:
            body = dst.compressor.compress(body)
        if dst.cipher is not None:
            body = dst.cipher.encrypt(body)
        return body

    return recode
