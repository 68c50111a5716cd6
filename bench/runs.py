"""Runs per second of the engine, against the raw log it writes to and DBOS.

    .venv/bin/python bench/runs.py [--runs 2000] [--repeat 3] [--warmup 100]
                                   [--dbos-journal default|wal] [--profile] [--keep]

Everything is measured in this one process, on SQLite files in a fresh
temporary directory (one file per measurement, so every repeat starts from the
same empty store; removed at the end unless --keep). Timed figures are medians
of --repeat rounds; each round measures every system once, one after the other,
so a slow spell of the disk hits all of them rather than one. Each measurement
starts with an untimed warm-up on its own file. Counts (appends, bytes) come
from separate untimed passes of the same workloads.

Figures:
 1. consumer runs/s: one session running --runs consumer runs, each reserving
    one event, making ONE mutator call and publishing one event in `next`,
    through the real Engine on a `sqlite:///` file. Producer runs/s: see the
    comment at `producer_rate` for how producer runs are timed.
 2. appends (log transactions) per consumer run, counted by wrapping
    EventLog.append, excluding the session open/close appends; stored bytes per
    event from the `stored_events` table, and the SQLite file size.
 3. the library's own Application saving one new aggregate with ONE event per
    save (saves/s), the raw bound = saves/s / appends per consumer run, and the
    engine's share of that bound (target >= 0.8).
 4. DBOS (optional `bench` extra): a @DBOS.workflow of three @DBOS.step()s
    (prepare, mutate, next) on a SQLite system database file; engine/DBOS
    (target >= 5x).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _workloads as wl  # noqa: E402

from flowledger.domain.phases import RunKind  # noqa: E402

RAW_TARGET = 0.8
DBOS_TARGET = 5.0
# Producer runs happen once per producer at the start of a session: see producer_rate.
PRODUCERS_PER_SESSION = 50


def verdict(value: float, target: float) -> str:
    return "met" if value >= target else "MISSED"


def each(values: list[float], fmt: str = ",.0f") -> str:
    return "/".join(format(v, fmt) for v in values)


class Timing:
    """Wall and CPU time (all threads of this process) of `ops` operations."""

    def __init__(self, wall: float, cpu: float, ops: int) -> None:
        self.rate = ops / wall
        self.cpu_ms = 1000 * cpu / ops


class Timer:
    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    def per(self, ops: int) -> Timing:
        return Timing(self.wall, self.cpu, ops)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=2000, help="measured runs per repeat (N)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians")
    ap.add_argument("--warmup", type=int, default=100, help="untimed runs before each timing")
    ap.add_argument("--dbos-journal", choices=("default", "wal"), default="default",
                    help="DBOS's SQLite journal: its own default (rollback journal) or WAL, "
                         "as the engine's file uses")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile one consumer session and print the top hotspots")
    ap.add_argument("--keep", action="store_true", help="keep the SQLite files")
    args = ap.parse_args()
    n, repeat, warmup = args.runs, args.repeat, args.warmup
    if n < PRODUCERS_PER_SESSION or repeat < 1 or warmup < 0:
        ap.error(f"--runs must be >= {PRODUCERS_PER_SESSION}, --repeat >= 1, --warmup >= 0")

    tmp = Path(tempfile.mkdtemp(prefix="flowledger-bench-"))
    try:
        return run(args, n, repeat, warmup, tmp)
    finally:
        if args.keep:
            print(f"files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, n: int, repeat: int, warmup: int, tmp: Path) -> int:
    dbos_v = wl.dbos_version()
    print(f"flowledger {version('flowledger')} ({wl.git_revision(HERE.parent)}), "
          f"eventsourcing {version('eventsourcing')}, dbos {dbos_v or 'not installed'}, "
          f"SQLite {sqlite3.sqlite_version}, Python {platform.python_version()}")
    print(f"N={n} runs, medians of {repeat} rounds, warm-up {warmup}; files in {tmp}")

    # ---- 1a. consumer runs/s ------------------------------------------------
    def consumer_rate(k: int) -> Timing:
        b = wl.ConsumerBench(wl.sqlite_url(tmp / f"consumer-{k}.db"))
        try:
            b.fill(warmup + n)  # one producer run publishing everything: untimed
            if warmup:
                b.engine.run_session(wl.CONSUMER_WF, trigger="event", max_iterations=warmup)
            with Timer() as t:
                b.consume(n)  # one session, n consumer runs; open and close included
            return t.per(n)
        finally:
            b.close()

    # ---- 1b. producer runs/s ------------------------------------------------
    # A producer runs once per session, at its start, so timing one session per
    # producer run would measure sessions (open + run + close = 3 appends), not
    # producer runs. Instead a workflow of 50 producers, each publishing ONE
    # event per run and keeping a cursor as its state, runs N/50 sessions: N
    # producer runs timed as a whole, the 2 session appends per 50 runs (and the
    # session's reads) honestly included. Each producer's state stream grows by
    # one event per session, as a real poller's does.
    sessions = max(1, n // PRODUCERS_PER_SESSION)
    producer_runs = sessions * PRODUCERS_PER_SESSION

    def producer_rate(k: int) -> Timing:
        b = wl.ProducerBench(wl.sqlite_url(tmp / f"producer-{k}.db"), PRODUCERS_PER_SESSION)
        try:
            for _ in range(max(1, warmup // PRODUCERS_PER_SESSION)):
                b.session()
            with Timer() as t:
                for _ in range(sessions):
                    b.session()
            return t.per(producer_runs)
        finally:
            b.close()

    # ---- 3. raw eventsourcing: the library's Application, 1 event per save ------
    def raw_rate(k: int) -> Timing:
        return Timing(*wl.raw_eventsourcing(tmp / f"raw-{k}.db", n, warmup), n)

    # ---- 4. DBOS ------------------------------------------------------------------
    def dbos_rate(k: int) -> Timing:
        return Timing(*wl.dbos_run(tmp / f"dbos-{k}.sqlite", n, warmup,
                                   wal=args.dbos_journal == "wal"), n)

    measures = {"consumer": consumer_rate, "producer": producer_rate, "raw": raw_rate}
    if dbos_v is not None:
        measures["dbos"] = dbos_rate
    got: dict[str, list[float]] = {name: [] for name in measures}
    cpu: dict[str, list[float]] = {name: [] for name in measures}
    for k in range(repeat):
        for name, measure in measures.items():
            timing = measure(k)
            got[name].append(timing.rate)
            cpu[name].append(timing.cpu_ms)
        print(f"  round {k + 1}/{repeat}: " + ", ".join(
            f"{name} {got[name][-1]:,.0f}/s ({cpu[name][-1]:.2f} ms CPU)" for name in measures))
    med = {name: statistics.median(values) for name, values in got.items()}
    mcpu = {name: statistics.median(values) for name, values in cpu.items()}
    consumer, producer, raw = med["consumer"], med["producer"], med["raw"]

    # ---- 2. appends per run, bytes per event (untimed counted passes) -------------
    counted_db = tmp / "consumer-counted.db"
    b = wl.ConsumerBench(wl.sqlite_url(counted_db))
    try:
        b.fill(n)
        with wl.AppendCounter().active() as counter:
            b.consume(n)
    finally:
        b.close()
    per_consumer = counter.per_run(RunKind.CONSUMER)
    if len(per_consumer) != n:
        raise RuntimeError(f"counted {len(per_consumer)} consumer runs, expected {n}")
    c_mean, c_max = statistics.mean(per_consumer), max(per_consumer)
    session_appends = counter.without_runs
    events_per_run = sum(a.events for a in counter.appends if a.runs) / n

    pb = wl.ProducerBench(wl.sqlite_url(tmp / "producer-counted.db"), PRODUCERS_PER_SESSION)
    try:
        with wl.AppendCounter().active() as pcounter:
            pb.session()
    finally:
        pb.close()
    per_producer = pcounter.per_run(RunKind.PRODUCER)
    p_mean, p_max = statistics.mean(per_producer), max(per_producer)

    sb = wl.stored_bytes(counted_db)
    main_size, wal_size = wl.file_bytes(counted_db)
    journal = wl.journal_mode(counted_db)

    bound = raw / c_mean
    ratio_raw = consumer / bound
    ratio_raw_each = [c / (r / c_mean) for c, r in zip(got["consumer"], got["raw"], strict=True)]

    if args.profile:
        profile_consumer(tmp, n)

    # ---- 5. the table -----------------------------------------------------------
    rows: list[tuple[str, str, str]] = [
        ("consumer runs/s", f"{consumer:,.0f}",
         f"1 mutation each, Engine on sqlite:/// ({journal}); {mcpu['consumer']:.2f} ms CPU/run; "
         f"rounds {each(got['consumer'])}"),
        ("producer runs/s", f"{producer:,.0f}",
         f"1 event each; {sessions} sessions x {PRODUCERS_PER_SESSION} producers, session "
         f"open/close included; {mcpu['producer']:.2f} ms CPU/run; rounds {each(got['producer'])}"),
        ("appends / consumer run", f"{c_mean:.2f} (max {c_max})",
         f"log transactions, excluding the session's {session_appends} open/close appends; "
         f"{events_per_run:.1f} events per run"),
        ("appends / producer run", f"{p_mean:.2f} (max {p_max})",
         "excluding session open/close"),
        ("stored bytes / event", f"{sb['total']:.0f}",
         f"state {sb['state']:.0f} + key columns {sb['keys']:.0f}, over {sb['events']:,.0f} "
         "stored_events of the counted consumer pass"),
        ("SQLite file", f"{main_size / 1e6:.2f} MB",
         f"{main_size / sb['events']:.0f} B/event with indexes and projections; "
         f"-wal {wal_size / 1e6:.2f} MB"),
        ("raw eventsourcing saves/s", f"{raw:,.0f}",
         f"Application.save, 1 new aggregate, 1 event; {mcpu['raw']:.2f} ms CPU/save; rounds "
         f"{each(got['raw'])}"),
        ("raw bound runs/s", f"{bound:,.0f}", f"raw saves/s / {c_mean:.2f} appends per run"),
        ("engine / raw bound", f"{ratio_raw:.2f}",
         f"target >= {RAW_TARGET}: {verdict(ratio_raw, RAW_TARGET)}; rounds "
         f"{each(ratio_raw_each, '.2f')}"),
    ]
    if dbos_v is None:
        rows.append(("DBOS workflows/s", "skipped",
                     "dbos not installed: `make bench` or `.venv/bin/pip install -e "
                     "'.[bench]'` to compare"))
        print("\nDBOS comparison skipped: dbos is not installed. Enable it with `make bench` "
              "or `.venv/bin/pip install -e '.[bench]'`.")
    else:
        dbos = med["dbos"]
        ratio_dbos = consumer / dbos
        ratio_dbos_each = [c / d for c, d in zip(got["consumer"], got["dbos"], strict=True)]
        dbos_journal = wl.journal_mode(tmp / "dbos-0.sqlite")
        rows += [
            ("DBOS workflows/s", f"{dbos:,.0f}",
             f"dbos {dbos_v}: 3 steps, SQLite system db ({dbos_journal}); "
             f"{mcpu['dbos']:.2f} ms CPU/workflow; rounds {each(got['dbos'])}"),
            ("engine / DBOS", f"{ratio_dbos:.2f}x",
             f"target >= {DBOS_TARGET:g}x: {verdict(ratio_dbos, DBOS_TARGET)}; rounds "
             f"{each(ratio_dbos_each, '.2f')}"),
        ]
    wl.print_figures(f"flowledger runs benchmark: medians of {repeat} rounds, N={n}, "
                     f"warm-up {warmup}", rows)
    return 0


def profile_consumer(tmp: Path, n: int) -> None:
    """cProfile one consumer session of n runs; print the top hotspots."""
    b = wl.ConsumerBench(wl.sqlite_url(tmp / "consumer-profiled.db"))
    try:
        b.fill(n)
        prof = cProfile.Profile()
        prof.enable()
        b.consume(n)
        prof.disable()
    finally:
        b.close()
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(key).print_stats(20)
        text = out.getvalue()
        print(f"\ncProfile of one consumer session ({n} runs), top 20 by {key}:")
        print(text[text.find("   ncalls"):].rstrip())


if __name__ == "__main__":
    sys.exit(main())
