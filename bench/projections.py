"""Projection rebuild speed against reading the log, and the size of log and projections.

    .venv/bin/python bench/projections.py [--events 100000] [--repeat 3] [--keep]

Builds one SQLite store of about --events events through the real Engine (a
producer registers an input and publishes a message per item; a consumer
reserves each, reports a cost, makes one mutator call and publishes a
downstream message: every projection has work), then, in the same process:

 1. reads every notification of the log in batches, raw (rows only) and
    decoded into domain events (read + decode): what any fold must pay at least;
 2. rebuilds the projections from position 0 (`ProjectionRunner.rebuild`: empty
    them, then read, decode and fold every event, batch by batch, with their
    tracking rows, all in one transaction: ADR 0013), all together and each alone, and
    prints events/s and the ratio rebuild / (read + decode) from the same round;
 3. prints the bytes of the log and of each projection's tables and indexes,
    from SQLite's `dbstat` table (page counts if it is missing), as the live
    appends left them.
Timed figures are medians of --repeat rounds; each round measures everything
once, one after the other. The temporary directory is removed unless --keep.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _workloads as wl  # noqa: E402

import flowledger as fl  # noqa: E402

WORKFLOW = "bench-audit"
ITEMS_PER_SESSION = 500
EVENTS_PER_ITEM = 17  # measured: input, publish, a consumer run of 15 events, session share


class Shop(fl.Tool):
    name = "shop"

    @fl.mutator(reconcile="find")
    def book(self, n: int) -> int:
        return n

    def find(self, n: int) -> fl.Reconciliation:
        return fl.Reconciliation.applied(n)


def audited_workflow(plan: dict[str, int]) -> fl.Workflow:
    wf = fl.Workflow(WORKFLOW, topics=["order", "booked"])

    @wf.producer(publishes=["order"])
    def take_orders(ctx: Any, state: Any) -> int:
        start = state or 0
        for n in range(start, start + plan["items"]):
            input_id = ctx.register_input(source="shop", type="order", id=n, title=f"order {n}")
            ctx.publish("order", message_id=str(n), payload={"n": n, "amount": "12.50"},
                        input_id=input_id)
        return start + plan["items"]

    @wf.consumer(subscribe=["order"], publishes=["booked"])
    class Book:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            pending = ctx.peek("order", limit=1)
            if not pending:
                return None
            ctx.add_cost("0.0021", "model")
            m = pending[0]
            return fl.Prepared({"order": [m.message_id]}, data=m.payload,
                               title=f"book {m.message_id}")

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.shop.book(prepared.data["n"])

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            ctx.publish("booked", message_id=str(prepared.data["n"]),
                        payload={"line": outcome.result})

    return wf


def build(store: str, events: int) -> tuple[int, float]:
    """Sessions of ITEMS_PER_SESSION items (produced, then consumed) until the log
    holds about `events` events. Returns (events, seconds)."""
    plan = {"items": 0}
    engine = fl.Engine(store)
    started = time.perf_counter()
    try:
        engine.register(audited_workflow(plan), tools=[Shop()])
        while (engine.log.flow_recorder.max_notification_id() or 0) < events:
            left = events - (engine.log.flow_recorder.max_notification_id() or 0)
            plan["items"] = max(1, min(ITEMS_PER_SESSION, left // EVENTS_PER_ITEM))
            result = engine.run_session(WORKFLOW, max_iterations=plan["items"])
            if result.status not in ("completed", "budget_exhausted"):
                raise RuntimeError(f"build session ended {result.status}: {result.error}")
        return engine.log.flow_recorder.max_notification_id() or 0, (
            time.perf_counter() - started)
    finally:
        engine.close()


def read_log(engine: fl.Engine, decode: bool, batch: int = 2000) -> int:
    """Every notification, in batches, in one read transaction; optionally decoded."""
    recorder, mapper = engine.log.flow_recorder, engine.log.mapper
    read = after = 0
    with engine.log.reading() as c:
        while True:
            rows = recorder.select_stored(c, after, batch)
            if not rows:
                return read
            if decode:
                for _, stored in rows:
                    mapper.to_domain_event(stored)
            read += len(rows)
            after = rows[-1][0]


def timed(action: Callable[[], int]) -> float:
    """Events per second of `action`, which returns how many events it read."""
    started = time.perf_counter()
    count = action()
    return count / (time.perf_counter() - started)


def sizes(db: Path, tables_of: dict[str, tuple[str, ...]]) -> tuple[dict[str, int], str]:
    """Bytes per group (the log, its snapshots, each projection, the rest), counting
    each table with its indexes."""
    with sqlite3.connect(db) as c:
        owner = dict(c.execute("SELECT name, tbl_name FROM sqlite_master "
                               "WHERE type IN ('table', 'index')").fetchall())
        try:
            pages = c.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
            how = "dbstat"
        except sqlite3.OperationalError:
            page = c.execute("PRAGMA page_size").fetchone()[0]
            total = c.execute("PRAGMA page_count").fetchone()[0] * page
            return {"whole file": total}, "page_count (no dbstat: no breakdown)"
    group_of = {"stored_events": "log (stored_events)", "stored_snapshots": "snapshots",
                **{t: f"projection {name}" for name, tables in tables_of.items()
                   for t in tables}}
    found: dict[str, int] = {}
    for name, size in pages:
        group = group_of.get(owner.get(name, name), "other (schema, tracking)")
        found[group] = found.get(group, 0) + size
    return found, how


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000, help="about this many events")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians")
    ap.add_argument("--keep", action="store_true", help="keep the SQLite file")
    args = ap.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="flowledger-bench-projections-"))
    db = folder / "flow.db"
    store = wl.sqlite_url(db)
    print(f"flowledger {fl.__version__} ({wl.git_revision(HERE.parent)}), eventsourcing "
          f"{version('eventsourcing')}, SQLite {sqlite3.sqlite_version}, Python "
          f"{sys.version.split()[0]}")
    events, seconds = build(store, args.events)
    print(f"built {events:,} events in {seconds:.0f} s through the engine ({folder})")

    engine = fl.Engine(store)
    names = [p.name for p in engine.projections.projections]
    tables_of = {p.name: p.tables for p in engine.projections.projections}
    found, how = sizes(db, tables_of)  # as the live appends left them
    got: dict[str, list[float]] = {k: [] for k in ["raw", "decoded", "all", *names]}
    try:
        for r in range(args.repeat):
            got["raw"].append(timed(lambda: read_log(engine, decode=False)))
            got["decoded"].append(timed(lambda: read_log(engine, decode=True)))
            got["all"].append(timed(lambda: engine.projections.rebuild()))
            for name in names:
                got[name].append(timed(lambda n=name: engine.projections.rebuild([n])))
            print(f"  round {r + 1}/{args.repeat}: " + ", ".join(
                f"{k} {v[-1]:,.0f}/s" for k, v in got.items()), file=sys.stderr)
    finally:
        engine.close()

    med = {k: statistics.median(v) for k, v in got.items()}

    def ratio_note(key: str) -> str:
        each = "/".join(f"{a / b:.2f}" for a, b in zip(got[key], got["decoded"], strict=True))
        return f"{med[key] / med['decoded']:.2f} of read + decode (rounds {each})"

    rows = [
        ("log read, rows", f"{med['raw']:,.0f}", "events/s: select_stored in batches of 2000, "
                                                 "one read transaction"),
        ("log read + decode", f"{med['decoded']:,.0f}",
         "events/s: the same, each row decoded into its pydantic event"),
        ("rebuild all projections", f"{med['all']:,.0f}",
         "events/s, " + ratio_note("all") + f": {', '.join(names)} together"),
        *[(f"rebuild {name} alone", f"{med[name]:,.0f}", "events/s, " + ratio_note(name))
          for name in names],
    ]
    total = sum(found.values())
    for group, size in sorted(found.items(), key=lambda kv: -kv[1]):
        rows.append((f"size: {group}", f"{size / 1e6:.2f} MB",
                     f"{size / events:.0f} B/event, {100 * size / total:.0f}% of the file"))
    rows.append(("size: whole file", f"{total / 1e6:.2f} MB",
                 f"{total / events:.0f} B/event ({how})"))

    wl.print_figures(f"flowledger projections benchmark: {events:,} events, medians of "
                     f"{args.repeat} rounds", rows)
    if not args.keep:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
