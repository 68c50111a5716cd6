"""Carry a whole log from one store to another, in position order (DESIGN §7).

Every stored event is copied (stream, version, type, body), in the order of
the source's positions, into a store that holds no event yet; snapshots are
a cache and are not copied. The target's projections are then rebuilt from
its log by whoever opens it (an Engine catches up on start).

A body is copied as stored when both stores write bodies alike; otherwise it
is opened with the source's cipher and compression and sealed again with the
target's: that is how a key is rotated, a store encrypted or decrypted
(ADR 0022). The source's chain is verified first: a copy never launders a
log that was edited. The target writes a chain of its own as it is filled.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from flowledger.domain.errors import ConfigurationError
from flowledger.infrastructure.event_log import EventLog
from flowledger.infrastructure.log_verification import verify_chain

Progress = Callable[[int, int], None]  # (events copied, events in all)

BATCH = 2000


def copy_log(source: EventLog, target: EventLog, progress: Progress | None = None) -> int:
    """Copy every event of `source` to the empty `target`; returns how many."""
    src, dst = source.flow_recorder, target.flow_recorder
    with dst.reading() as c:
        if dst.max_position(c):
            raise ConfigurationError(
                f"cannot copy into {target.config.shown!r}: it already holds "
                f"{dst.max_position(c):,} events. Copy into a new, empty store (a new "
                "SQLite file, or an empty PostgreSQL database or ?schema=...)")
    chain = src.chain
    if chain is not None:
        found = verify_chain(src, chain)
        if found.problems:
            shown = "; ".join(str(p) for p in found.problems[:5])
            raise ConfigurationError(
                f"cannot copy {source.config.shown!r}: its log was edited outside flowledger "
                f"({len(found.problems)} problem(s): {shown}). Nothing was copied; run "
                "`flowledger verify` on it, and restore it from a backup")
    recode = _recoder(source, target)
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
                     recode(bytes(stored.state))) for _, stored in batch]
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


def _recoder(source: EventLog, target: EventLog) -> Callable[[bytes], bytes]:
    """Turns a body stored in `source` into one stored in `target`."""
    src, dst = source.flow_mapper, target.flow_mapper
    if (source.format.encrypted, source.format.compressed, source.protection.cipher_key) == (
            target.format.encrypted, target.format.compressed, target.protection.cipher_key):
        return lambda body: body

    def recode(body: bytes) -> bytes:
        if src.cipher is not None:
            body = src.cipher.decrypt(body)  # authenticated: a changed body fails here
        if src.compressor is not None:
            body = src.compressor.decompress(body)
        if dst.compressor is not None:
            body = dst.compressor.compress(body)
        if dst.cipher is not None:
            body = dst.cipher.encrypt(body)
        return body

    return recode
