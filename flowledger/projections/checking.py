"""Whether a store's projections are what its log makes (`verify`, ADR 0033).

The chain covers the log, not the tables derived from it, yet the engine acts
on them: a run is given the payload its message has in pending work. So each
projection is folded again by its own class, up to the position its tracking
row names, into a private database, and the store's rows are compared with
those, all of them read in one snapshot of the store. Rows are compared by a
short digest each, so what is held in memory follows their number, not their
size.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flowledger.infrastructure.event_log import EventLog
from flowledger.infrastructure.store import scratch_database
from flowledger.projections.base import Cursor, Projection
from flowledger.projections.catalog import store_projections
from flowledger.projections.point_in_time import fold_each
from flowledger.projections.sealing import Seal

EXAMPLES = 3  # rows named for each table that differs


@dataclass(frozen=True)
class ProjectionDifference:
    projection: str
    folded_upto: int  # the position the store says the projection has folded up to
    detail: str


@dataclass
class ProjectionCheck:
    rows: int = 0  # rows of the store's projection tables compared
    differences: list[ProjectionDifference] = field(default_factory=list)


def check_projections(log: EventLog, projections: Sequence[Projection] | None = None
                      ) -> ProjectionCheck:
    """Compare every projection table of the store with a fold of its log."""
    chosen = list(projections) if projections is not None else store_projections()
    seal = Seal(log.column_cipher)  # deterministic: a fold seals as the engine did
    recorder = log.flow_recorder
    check = ProjectionCheck()
    with log.reading(lasting=True) as held:  # the store's rows and positions, one snapshot
        head = recorder.max_position(held)
        present = recorder.existing_tables(held, [t for p in chosen for t in p.tables])
        folded: dict[str, tuple[Projection, int]] = {}
        for projection in chosen:
            projection.seal = seal
            upto = recorder.tracked(held, projection.name)
            lacking = [t for t in projection.tables if t not in present]
            if upto > head:
                check.differences.append(ProjectionDifference(projection.name, upto, (
                    f"projection {projection.name} has folded the log up to position "
                    f"{upto}, past its head at {head}: the log lost events this store's "
                    "tables were made from (restored without the rest of the store?)")))
            elif lacking and upto > 0:
                check.differences.append(ProjectionDifference(projection.name, upto, (
                    f"projection {projection.name} has folded the log up to position "
                    f"{upto} but lacks its table(s) {', '.join(lacking)} (dropped outside "
                    "flowledger?)")))
            elif not lacking:  # else not made yet: a store an earlier release wrote
                folded[projection.name] = (projection, upto)
        db, made = scratch_database()
        try:
            for projection, _ in folded.values():
                projection.create_tables(made)
            fold_each(log, made, list(folded.values()))
            for projection, upto in folded.values():
                for table in projection.tables:
                    _compare(held, made, projection.name, table, upto, check)
        finally:
            db.close()
    return check


def _compare(held: Cursor, made: Cursor, name: str, table: str, upto: int,
             check: ProjectionCheck) -> None:
    columns = [d[0] for d in made.execute(f"SELECT * FROM {table} LIMIT 0").description]
    select = f"SELECT {', '.join(columns)} FROM {table}"
    ours = Counter(_digest(row) for row in made.execute(select))
    theirs = Counter(_digest(row) for row in held.execute(select))
    check.rows += sum(theirs.values())
    extra, missing = theirs - ours, ours - theirs
    if extra or missing:
        check.differences.append(ProjectionDifference(name, upto, (
            f"table {table} of projection {name} (folded up to position {upto}) is not "
            "what the log makes: "
            + _said(columns, _rows(held.execute(select), extra),
                    _rows(made.execute(select), missing),
                    sum(extra.values()), sum(missing.values())))))


def _plain(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row as both stores' drivers give it back: bytes, whatever the buffer;
    a time as the instant it names (an earlier release wrote a run's updated_at
    in its clock's zone, where a fold writes UTC)."""
    return tuple(bytes(v) if isinstance(v, (memoryview, bytearray))
                 else _instant(v) if isinstance(v, str) and _ISO_TIME.match(v) else v
                 for v in row)


_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?[+-]\d\d:\d\d$")


def _instant(text: str) -> Any:
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return text


def _digest(row: Sequence[Any]) -> bytes:
    return hashlib.blake2b(repr(_plain(row)).encode(), digest_size=16).digest()


def _rows(rows: Iterable[Sequence[Any]], wanted: Counter[bytes]) -> list[tuple[Any, ...]]:
    """Up to EXAMPLES of `rows` whose digest is among `wanted`."""
    found: list[tuple[Any, ...]] = []
    for row in rows:
        if len(found) < EXAMPLES and _digest(row) in wanted:
            found.append(_plain(row))
    return found


def _said(columns: list[str], extra: list[tuple[Any, ...]], missing: list[tuple[Any, ...]],
          extras: int, missings: int) -> str:
    """Which rows differ, named by their first column (the table's key, or its
    first part; the second too where the first names several). A row on both
    sides (the same first column) is paired with the one it differs from least,
    and said which of its columns differ."""
    left = list(missing)
    named: list[str] = []
    for row in extra:
        twins = [m for m in left if m[0] == row[0]]
        if not twins:
            named.append(f"a row whose {columns[0]} is {_shown(row[0])}, which the log "
                         "does not make")
            continue
        other = min(twins, key=lambda m: sum(a != b for a, b in zip(row, m, strict=True)))
        left.remove(other)
        shared = [f"{columns[0]} is {_shown(row[0])}"]
        if len(twins) > 1 and len(row) > 1 and row[1] == other[1]:  # the first is not enough
            shared.append(f"{columns[1]} is {_shown(row[1])}")
        changed = [c for c, a, b in zip(columns, row, other, strict=True) if a != b]
        named.append(f"the row whose {' and '.join(shared)} has {', '.join(changed)} other "
                     "than the log makes")
    named += [f"no row whose {columns[0]} is {_shown(m[0])}, which the log makes" for m in left]
    counts = f"{extras} row(s) the log does not make, {missings} it makes that are not there"
    return f"{counts}; " + "; ".join(named)


def _shown(value: Any) -> str:
    if isinstance(value, bytes):
        return value[:8].hex() + ("…" if len(value) > 8 else "")
    return repr(value)
