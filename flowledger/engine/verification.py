"""`fl.verify_store` / `Engine.verify`: prove the log was not edited (DESIGN §9, ADR 0023)."""

from __future__ import annotations

import itertools
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from flowledger.domain.text import one_line
from flowledger.infrastructure.encryption import protection
from flowledger.infrastructure.event_log import EventLog
from flowledger.infrastructure.log_verification import Problem, Verification, verify_chain
from flowledger.infrastructure.store_failures import store_errors_as_ours
from flowledger.projections.checking import check_projections

__all__ = ["Problem", "Verification", "verify_log", "verify_store"]


def verify_log(log: EventLog, expect: str | None = None, projections: bool = True
               ) -> Verification:
    chain = log.flow_recorder.chain
    assert chain is not None  # set when the log was opened
    report = verify_chain(log.flow_recorder, chain, expect)
    report.problems.extend(snapshot_problems(log))
    if projections and not report.problems:  # the engine acts on pending work, which
        # the chain does not cover; a log found changed is restored first anyway
        check = check_projections(log)
        report.projection_rows = check.rows
        report.problems.extend(Problem(d.folded_upto, "projection", d.detail)
                               for d in check.differences)
    return report


def snapshot_problems(log: EventLog) -> list[Problem]:
    """A long stream is loaded from its latest snapshot: each stored snapshot
    must be the fold of its stream's events up to its version. The chain covers
    events, not snapshots, so a snapshot edited (or moved to another version)
    outside flowledger would have the engine act on a state the log never had."""
    mapper = log.flow_mapper
    problems: list[Problem] = []
    for stream_id, group in itertools.groupby(log.flow_recorder.select_snapshots(),
                                              key=lambda s: s.originator_id):
        assert isinstance(stream_id, UUID)
        with log.reading() as c:
            rows = log.flow_recorder.select_stream(c, stream_id, None)
        folded: Any = None
        at = 0  # rows folded so far
        for stored in group:
            version = stored.originator_version
            try:
                while at < len(rows) and rows[at][1] <= version:
                    _, v, topic, state = rows[at]
                    folded = mapper.to_domain_event(StoredEvent(
                        originator_id=stream_id, originator_version=v, topic=topic,
                        state=state)).mutate(folded)
                    at += 1
                found = mapper.to_domain_event(stored)
                fresh = (mapper.to_domain_event(mapper.to_stored_event(
                    type(folded).Snapshot.take(folded))) if folded is not None else None)
            except Exception as e:  # an event or the snapshot cannot be read
                problems.append(Problem(_position(rows, version), "snapshot", (
                    f"the snapshot of stream {stream_id} at version {version} cannot be "
                    f"checked: {one_line(e)}")))
                break
            if fresh is None or folded.version != version:
                problems.append(Problem(_position(rows, version), "snapshot", (
                    f"a snapshot of stream {stream_id} says version {version}, which the "
                    "log does not hold: it was written or moved outside flowledger")))
            elif found.topic != fresh.topic or _differs(found.state, fresh.state, folded):
                problems.append(Problem(_position(rows, version), "snapshot", (
                    f"the snapshot of stream {stream_id} at version {version} is not what "
                    "the stream's events make: it was changed, or moved from another "
                    "version, outside flowledger")))
    return problems


def _differs(state: Any, fresh: Any, folded: Any) -> bool:
    """Whether a snapshot's state differs from the fold's (`fresh`), but for the
    fields an earlier release kept and this one drops (`dropped_fields`:
    restored, they are left out) and those this one added where the snapshot,
    an earlier release's, lacks them (`added_fields`)."""
    cls = type(folded)
    if not isinstance(state, dict) or not isinstance(fresh, dict):
        return bool(state != fresh)
    state = {k: v for k, v in state.items() if k not in cls.dropped_fields}
    lacking = {k for k in cls.added_fields if k not in state}
    return state != {k: v for k, v in fresh.items() if k not in lacking}


def _position(rows: list[tuple[int, int, str, bytes]], version: int) -> int:
    """The log position of the stream's event at `version` (0: none)."""
    return next((position for position, v, _, _ in rows if v == version), 0)


@store_errors_as_ours
def verify_store(store: str, *, cipher_key: str | None = None, chain_key: str | None = None,
                 expect: str | None = None, projections: bool = True) -> Verification:
    """Walk store `store`'s log and chain once, in position order: every changed,
    removed, inserted or moved event is reported by position. `expect`: a head
    digest recorded earlier (`verify` prints it), which must still be in the chain.
    `projections`: also fold the log again and compare every projection table
    with it (a second read of the log; rows that differ are problems too).
    Keys as for `Engine` (arguments, else FLOWLEDGER_CIPHER_KEY / FLOWLEDGER_CHAIN_KEY)."""
    log = EventLog.open(store, protection(cipher_key, None, chain_key), create=False)
    try:
        return verify_log(log, expect, projections)
    finally:
        log.close()
