"""`verify`: walk the log and its chain once, in position order (ADR 0023).

Each event's link is checked against the link before it as stored, so one
edit is reported once, at its own position: a changed (or moved) event, an
event removed (its link is left without it, or the next link names a
predecessor that is gone), an event inserted (no link). Time and memory are
linear in the log, read in batches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from uuid import UUID

from flowledger.domain.errors import InvalidArgument
from flowledger.infrastructure.hash_chain import CHAIN_TABLE, Chain
from flowledger.infrastructure.store import Cursor, LogStore, Row

BATCH = 5000


@dataclass(frozen=True)
class Problem:
    position: int
    kind: str  # "changed" | "removed" | "inserted" | "snapshot" | "projection"
    detail: str

    def __str__(self) -> str:
        return f"position {self.position}: {self.detail}"


@dataclass
class Verification:
    """What `verify` found. `ok`: every event from `covered_from` on is where
    the chain says, unchanged (and, if an anchor was expected, it is in it)."""

    events: int = 0
    covered_from: int = 1
    uncovered: int = 0  # events before the chain started (written before it existed)
    keyed: bool = False
    head_position: int = 0
    head_digest: str = ""
    problems: list[Problem] = field(default_factory=list)
    expected: str | None = None
    expected_found: bool | None = None  # None: no anchor was expected
    projection_rows: int | None = None  # rows of projections compared (None: not checked)

    @property
    def ok(self) -> bool:
        return not self.problems and self.expected_found is not False


_DIGEST = re.compile(r"[0-9a-f]{64}")


def _hex(stream: UUID | str) -> str:
    return stream.hex if isinstance(stream, UUID) else UUID(str(stream)).hex


def _chain_rows(c: Cursor, after: int, upto: int | None) -> list[tuple[int, int, bytes]]:
    sql = f"SELECT position, previous, digest FROM {CHAIN_TABLE} WHERE position>?"
    params: list[int] = [after]
    if upto is not None:
        sql += " AND position<=?"
        params.append(upto)
    c.execute(sql + " ORDER BY position", params)
    return [(int(p), int(q), bytes(d)) for p, q, d in c.fetchall()]


def verify_chain(recorder: LogStore, chain: Chain, expect: str | None = None,
                 batch: int = BATCH) -> Verification:
    report = Verification(covered_from=chain.starts_at, keyed=chain.keyed,
                          expected=expect.lower() if expect else None)
    anchor = expect.lower().partition(":")[2] or expect.lower() if expect else None
    if anchor is not None and not _DIGEST.fullmatch(anchor):
        raise InvalidArgument(
            f"expected digest {expect!r} is not a head digest: give the whole one an earlier "
            "verify printed after 'digest' (64 hex digits), as it printed it")
    previous_position, previous_digest = 0, chain.genesis  # as stored
    after = 0
    while True:
        with recorder.reading() as c:
            events = recorder.select_stored(c, after, batch)
            upto = events[-1][0] if events else None
            links = _chain_rows(c, after, upto)
        if not events and not links:
            break
        by_position = {p: (q, d) for p, q, d in links}
        stored = {p: e for p, e in events}
        for position in sorted(by_position.keys() | stored.keys()):
            event, link = stored.get(position), by_position.get(position)
            if event is not None:
                report.events += 1
                if position < chain.starts_at:
                    report.uncovered += 1
                    continue
            if link is None:
                report.problems.append(Problem(
                    position, "inserted", "this event has no link in the chain: it was "
                    "inserted outside flowledger (or written by a release without the chain)"))
                continue
            previous, digest = link
            if previous > previous_position:
                report.problems.append(Problem(
                    previous, "removed", f"the event the chain has here, before position "
                    f"{position}, is not in the log: it was removed (with its link)"))
            elif previous < previous_position:
                report.problems.append(Problem(
                    position, "changed", f"its link names position {previous} as the one "
                    f"before it, but the log's is {previous_position}: links were moved, or "
                    "the event before was inserted"))
            elif event is None:
                report.problems.append(Problem(
                    position, "removed", "the chain has a link here but the log has no event: "
                    "it was removed"))
            else:
                row: Row = (_hex(event.originator_id), event.originator_version,
                            event.topic, bytes(event.state))
                if chain.digest(previous_digest, position, previous, row) != digest:
                    report.problems.append(Problem(
                        position, "changed", "this event is not the one the chain recorded "
                        "here: it was changed, or moved from another position"))
            previous_position, previous_digest = position, digest
            report.head_position, report.head_digest = position, digest.hex()
            if anchor is not None and digest.hex() == anchor:
                report.expected_found = True
        # Links after the last event (events removed from the log's end) are
        # read with the last batch, which has no events and no upper bound.
        after = max([after, *stored.keys(), *by_position.keys()])
    if anchor is not None and report.expected_found is None:
        report.expected_found = False
    return report
