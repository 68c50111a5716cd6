"""Runs per second of the engine on PostgreSQL, against the raw log and DBOS there.

    .venv/bin/python bench/postgres.py [--url postgresql://postgres@127.0.0.1:5432]
                                       [--runs 1000] [--repeat 3] [--warmup 50]

Everything runs against the local server, in databases this script creates
(`flowledger_bench_*`, dropped at the end). Figures are medians of --repeat
rounds; each round measures every system once. Printed:
 1. consumer runs/s (ONE mutator call each, as bench/runs.py) with one engine
    process, and with two processes at once, each on a workflow of its own on
    the same store (their sum); and, for scale, two processes on a store each
    in the same server (nothing shared but the server and the machine's cores);
 2. appends (log transactions) per consumer run, counted;
 3. the library's own Application saving one new aggregate with ONE event per
    save on its PostgreSQL module (saves/s), the raw bound = saves/s / appends
    per run, and the engine's share of it (target >= 0.8); and the library's
    saves/s with two processes on one store, the anchor for two engine
    processes (its log takes the same table lock);
 4. a producer publishing 100 new messages a run (messages/s), beside the
    library saving 100 new aggregates in one save (events/s);
 5. sessions of ONE consumer run each, one after another (what a worker serving
    one message at a time runs: each session opens, runs, closes), beside DBOS;
 6. DBOS (optional `bench` extra): the 3-step workflow of bench/runs.py with a
    PostgreSQL system database (target: engine >= 5x); two processes >= 1.5x one;
 7. a consumer run's appends made without the engine, each ONE message under
    the log table's lock, with one process and two on one store: what the
    lock itself allows two processes, beside what the engine's appends get;
 8. the server's WAL flushes (fsyncs) a consumer run and a DBOS workflow, and
    how long each took (pg_stat_wal, PostgreSQL 14 and later; timed where the
    script may set track_wal_io_timing): the part of a run that is the disk.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _workloads as wl  # noqa: E402
from eventsourcing.application import Application  # noqa: E402

from flowledger.domain.phases import RunKind  # noqa: E402


def admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(f"{url}/postgres", autocommit=True)


def fresh_db(url: str, name: str) -> str:
    with admin(url) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
        # The time of each WAL flush its sessions make (wal_flushes); a superuser's to set.
        with contextlib.suppress(psycopg.Error):
            c.execute(f'ALTER DATABASE "{name}" SET track_wal_io_timing = on')
    return f"{url}/{name}"


def drop_db(url: str, name: str) -> None:
    with admin(url) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def backends_cpu(store: str) -> float | None:
    """CPU seconds the server's processes for `store`'s database have used so
    far, from /proc (None: the server is not on this machine, or not readable)."""
    url, _, dbname = store.rpartition("/")
    with admin(url) as c:
        pids = [pid for (pid,) in c.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (dbname,))]
    try:
        total = 0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        return None
    return total / os.sysconf("SC_CLK_TCK")


CPU: dict[str, list[float]] = {"client": [], "server": []}  # ms a consumer run
# WAL flushes (fsyncs) of the whole server a consumer run / a DBOS workflow,
# and their ms each (0 where the server does not time them).
FLUSHES: dict[str, list[tuple[float, float]]] = {"one": [], "dbos": []}


def wal_flushes(store: str) -> tuple[int, float] | None:
    """The server's WAL flushes so far and their total ms (pg_stat_wal: the
    whole server, its WAL writer included; None before PostgreSQL 14)."""
    url, _, _ = store.rpartition("/")
    with admin(url) as c:
        try:
            row = c.execute("SELECT wal_sync, wal_sync_time FROM pg_stat_wal").fetchone()
        except psycopg.Error:
            return None
    return (int(row[0]), float(row[1])) if row is not None else None


def note_flushes(key: str, before: tuple[int, float] | None, store: str, n: int) -> None:
    after = wal_flushes(store)
    if before is not None and after is not None and after[0] > before[0]:
        syncs = after[0] - before[0]
        FLUSHES[key].append((syncs / n, (after[1] - before[1]) / syncs))


def consumer_rate(store: str, n: int, warmup: int, name: str = wl.CONSUMER_WF) -> float:
    """Consumer runs/s of one engine; its client and server CPU a run go to CPU."""
    b = wl.ConsumerBench(store, name)
    try:
        b.fill(warmup + n)
        if warmup:
            b.engine.run_session(name, trigger="event", max_iterations=warmup)
        server, flushes = backends_cpu(store), wal_flushes(store)
        cpu, t = time.process_time(), time.perf_counter()
        b.consume(n)
        took = time.perf_counter() - t
        note_flushes("one", flushes, store, n)
        CPU["client"].append((time.process_time() - cpu) / n * 1e3)
        after = backends_cpu(store)
        if server is not None and after is not None:
            CPU["server"].append((after - server) / n * 1e3)
        return n / took
    finally:
        b.close()


WORKER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import _workloads as wl
b = wl.ConsumerBench(sys.argv[2], sys.argv[3])
n, warmup = int(sys.argv[4]), int(sys.argv[5])
b.fill(warmup + n)
if warmup:
    b.engine.run_session(sys.argv[3], trigger="event", max_iterations=warmup)
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
t = time.perf_counter()
b.consume(n)
print(time.perf_counter() - t, flush=True)
b.close()
"""

RAW_WORKER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import postgres
n, warmup = int(sys.argv[4]), int(sys.argv[5])
print(n / postgres.raw_rate(sys.argv[2], n, warmup, ready=True), flush=True)
"""


ONE_MESSAGE_WORKER = """
import sys, time
sys.path.insert(0, sys.argv[1])
import postgres
n, warmup = int(sys.argv[4]), int(sys.argv[5])
print(n / postgres.one_message_rate(sys.argv[2], n, warmup, ready=True), flush=True)
"""


def two_process_rate(stores: list[str], n: int, warmup: int, worker: str = WORKER) -> float:
    """Two processes, each consuming n runs of its own workflow (or, with
    RAW_WORKER, making n raw saves), on one store (`stores` names it twice) or
    on a store each; started one after the other, timed from a common go: the
    work of both / the wall time until both are done."""
    procs = []
    for k, store in enumerate(stores):  # one after the other until ready: the
        # library's CREATE statements fail when two processes run them at once
        p = subprocess.Popen([sys.executable, "-c", worker, str(HERE), store, f"wf-{k}",
                              str(n), str(warmup)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        procs.append(p)
    t = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        p.communicate(timeout=600)
        if p.returncode:
            raise RuntimeError("a worker process failed")
    return 2 * n / (time.perf_counter() - t)


def session_rate(store: str, n: int, warmup: int) -> float:
    """Sessions/s of one engine, each session running one consumer run."""
    b = wl.ConsumerBench(store)
    try:
        b.fill(warmup + n)
        for _ in range(warmup):
            b.consume(1)
        t = time.perf_counter()
        for _ in range(n):
            b.consume(1)
        return n / (time.perf_counter() - t)
    finally:
        b.close()


def appends_per_run(store: str, n: int) -> float:
    b = wl.ConsumerBench(store)
    try:
        b.fill(n)
        with wl.AppendCounter().active() as counter:
            b.consume(n)
    finally:
        b.close()
    return statistics.mean(counter.per_run(RunKind.CONSUMER))


def _raw_app(url: str) -> Application[UUID]:
    """The library's own Application on its PostgreSQL module, on `url`'s database."""
    parts = url.split("://", 1)[1]
    userhost, _, dbname = parts.partition("/")
    user, _, host = userhost.rpartition("@")
    hostname, _, port = host.partition(":")
    return Application(env={
        "PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": hostname, "POSTGRES_PORT": port or "5432",
        "POSTGRES_USER": user.partition(":")[0] or "postgres",
        "POSTGRES_PASSWORD": user.partition(":")[2]})


def raw_rate(url: str, n: int, warmup: int, ready: bool = False) -> float:
    """The library's own Application on its PostgreSQL module, one event per
    save. `ready`: in a worker process, say so after the warm-up and wait for
    a line on stdin before the timed saves."""
    app = _raw_app(url)
    try:
        return _timed(lambda: app.save(wl.Row(0)), n, warmup, ready)
    finally:
        app.close()


def _timed(step: Any, n: int, warmup: int, ready: bool) -> float:
    """`step` run `warmup` times, then (`ready`: once the parent says go) n
    times, timed: n per second."""
    for _ in range(warmup):
        step()
    if ready:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.readline()
    t = time.perf_counter()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - t)


def one_message_rate(url: str, n: int, warmup: int, ready: bool = False) -> float:
    """A consumer run's shape without the engine: three appends (4 events
    waiting for the disk, then 2 and 5 not), each ONE message under the log
    table's lock (BEGIN; LOCK TABLE ... IN EXCLUSIVE MODE; INSERT; COMMIT),
    and one read of a stream; runs/s. With two processes: what one store
    allows when no append holds the lock across a round trip (ADR 0017).
    `ready`: as raw_rate."""
    conn = psycopg.connect(url, autocommit=True)
    body = "'\\x" + os.urandom(120).hex() + "'::bytea"
    conn.execute("CREATE TABLE IF NOT EXISTS one_message (position bigserial PRIMARY KEY, "
                 "stream uuid NOT NULL, version int NOT NULL, topic text NOT NULL, "
                 "state bytea NOT NULL, UNIQUE (stream, version))")

    def append(events: int, sync: bool) -> None:
        stream = uuid4()
        values = ",".join(f"('{stream}', {v}, 'bench:Event', {body})" for v in range(events))
        conn.execute(("BEGIN;" + ("" if sync else "SET LOCAL synchronous_commit = off;")
                      + "LOCK TABLE one_message IN EXCLUSIVE MODE;"
                      + f"INSERT INTO one_message (stream, version, topic, state) "
                      f"VALUES {values};COMMIT").encode())

    def run() -> None:
        append(4, True)
        append(2, False)
        append(5, False)
        conn.execute("SELECT * FROM one_message WHERE stream = %s", (uuid4(),)).fetchall()

    try:
        return _timed(run, n, warmup, ready)
    finally:
        conn.close()


def producer_rate(store: str, runs: int, per_run: int = 100) -> float:
    """Messages/s of one producer publishing `per_run` new messages a run (each
    with its implicit input), a session a run, as a poller that finds many new
    items does."""
    b = wl.ConsumerBench(store)
    try:
        b.fill(per_run)  # warm-up
        t = time.perf_counter()
        for _ in range(runs):
            b.fill(per_run)
        return runs * per_run / (time.perf_counter() - t)
    finally:
        b.close()


def raw_batch_rate(url: str, saves: int, per_save: int = 100) -> float:
    """Events/s of the library's Application saving `per_save` new aggregates
    (one event each) in one save: its own cost of a many-event transaction."""
    app = _raw_app(url)
    try:
        app.save(*[wl.Row(i) for i in range(per_save)])
        t = time.perf_counter()
        for k in range(saves):
            app.save(*[wl.Row(k * per_save + i) for i in range(per_save)])
        return saves * per_save / (time.perf_counter() - t)
    finally:
        app.close()


def dbos_rate(url: str, n: int, warmup: int) -> float:
    from dbos import DBOS, DBOSConfig

    book = wl._dbos_definitions()
    config: DBOSConfig = {"name": "flowledger-bench", "log_level": "WARNING",
                          "system_database_url": url}
    DBOS(config=config)
    DBOS.launch()
    try:
        for i in range(warmup):
            book(i)
        flushes, t = wal_flushes(url), time.perf_counter()
        for i in range(warmup, warmup + n):
            book(i)
        took = time.perf_counter() - t
        note_flushes("dbos", flushes, url, n)
        return n / took
    finally:
        DBOS.destroy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432",
                    help="the server (no database: the script makes its own)")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=50)
    args = ap.parse_args()
    url, n, warmup = args.url.rstrip("/"), args.runs, args.warmup
    dbos_v = wl.dbos_version()
    with admin(url) as c:
        server = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    print(f"flowledger {version('flowledger')} ({wl.git_revision(HERE.parent)}), "
          f"eventsourcing {version('eventsourcing')}, dbos {dbos_v or 'not installed'}, "
          f"PostgreSQL {server}, psycopg {psycopg.__version__}")
    print(f"N={n} runs, medians of {args.repeat} rounds, warm-up {warmup}; server {url}")
    got: dict[str, list[float]] = {"one": [], "two": [], "apart": [], "raw": [], "raw_two": [],
                                   "producer": [], "raw_batch": [], "sessions": [], "dbos": [],
                                   "message": [], "message_two": []}
    names = []
    try:
        for k in range(args.repeat):
            names += [f"flowledger_bench_{k}_{s}"
                      for s in ("message", "message_two", "sessions", "producer", "raw_batch",
                                "one", "two", "apart_a", "apart_b", "raw", "raw_two", "dbos")]
            got["one"].append(consumer_rate(fresh_db(url, names[-7]), n, warmup))
            shared = fresh_db(url, names[-6])
            got["two"].append(two_process_rate([shared, shared], n, warmup))
            got["apart"].append(two_process_rate(
                [fresh_db(url, names[-5]), fresh_db(url, names[-4])], n, warmup))
            got["raw"].append(raw_rate(fresh_db(url, names[-3]), n, warmup))
            shared = fresh_db(url, names[-2])
            got["raw_two"].append(two_process_rate([shared, shared], n, warmup, RAW_WORKER))
            runs_of_100 = max(n // 50, 4)
            got["producer"].append(producer_rate(fresh_db(url, names[-9]), runs_of_100))
            got["raw_batch"].append(raw_batch_rate(fresh_db(url, names[-8]), runs_of_100))
            got["sessions"].append(session_rate(fresh_db(url, names[-10]), max(n // 2, 10),
                                                warmup))
            got["message"].append(one_message_rate(fresh_db(url, names[-12]), n, warmup))
            shared = fresh_db(url, names[-11])
            got["message_two"].append(two_process_rate([shared, shared], n, warmup,
                                                       ONE_MESSAGE_WORKER))
            if dbos_v is not None:
                got["dbos"].append(dbos_rate(fresh_db(url, names[-1]), n, warmup))
            print(f"  round {k + 1}: " + ", ".join(
                f"{key} {values[-1]:,.0f}/s" for key, values in got.items() if values))
        names.append("flowledger_bench_count")
        appends = appends_per_run(fresh_db(url, names[-1]), min(n, 500))
    finally:
        for name in names:
            drop_db(url, name)
    med = {key: statistics.median(values) for key, values in got.items() if values}
    bound = med["raw"] / appends
    cpu = {key: statistics.median(v) for key, v in CPU.items() if v}
    split = (f"CPU a run: client {cpu['client']:.2f} ms" + (
        f", server {cpu['server']:.2f} ms, wall {1e3 / med['one']:.2f} ms"
        if "server" in cpu else ""))
    rows = [
        ("consumer runs/s, 1 process", f"{med['one']:,.0f}", f"1 mutation each; {split}"),
        ("consumer runs/s, 2 processes", f"{med['two']:,.0f}",
         f"both workflows together; {med['two'] / med['one']:.2f}x one (target >= 1.5x)"),
        ("... on a store each", f"{med['apart']:,.0f}",
         f"{med['apart'] / med['one']:.2f}x one: what this machine allows, sharing only the "
         "server"),
        ("appends / consumer run", f"{appends:.2f}", "log transactions"),
        ("raw eventsourcing saves/s", f"{med['raw']:,.0f}", "Application.save, 1 event"),
        ("raw bound runs/s", f"{bound:,.0f}", f"raw / {appends:.2f} appends per run"),
        ("engine / raw bound", f"{med['one'] / bound:.2f}", "target >= 0.8"),
        ("raw saves/s, 2 processes", f"{med['raw_two']:,.0f}",
         f"one store; {med['raw_two'] / med['raw']:.2f}x one (anchor for 2 processes)"),
        ("one-message appends, runs/s", f"{med['message']:,.0f}",
         "a run's 3 appends, each 1 message under the lock; no engine"),
        ("... 2 processes, one store", f"{med['message_two']:,.0f}",
         f"{med['message_two'] / med['message']:.2f}x one: what the log's lock allows"),
    ]
    rows += [
        ("producer messages/s", f"{med['producer']:,.0f}",
         "100 new messages a run, each with its implicit input"),
        ("raw events/s, 100 a save", f"{med['raw_batch']:,.0f}",
         "Application.save of 100 new aggregates, one event each"),
        ("producer / raw", f"{med['producer'] / med['raw_batch']:.2f}",
         "messages per raw event (a message: its event, its input's, pending work)"),
    ]
    if "dbos" in med:
        rows += [("DBOS workflows/s", f"{med['dbos']:,.0f}", "3 steps, PostgreSQL system db"),
                 ("engine / DBOS", f"{med['one'] / med['dbos']:.2f}x", "target >= 5x")]
    rows += [("sessions/s, one run each", f"{med['sessions']:,.0f}",
              "open, one consumer run, close: a worker serving one message at a time" + (
                  f"; {med['sessions'] / med['dbos']:.2f}x DBOS" if "dbos" in med else ""))]
    flushed = {key: (statistics.median(f for f, _ in v), statistics.median(ms for _, ms in v))
               for key, v in FLUSHES.items() if v}
    for key, what in (("one", "a consumer run"), ("dbos", "a DBOS workflow")):
        if key in flushed:
            count, ms = flushed[key]
            rows.append((f"WAL flushes, {what}", f"{count:.2f}",
                         f"{ms:.2f} ms each, the whole server's (pg_stat_wal)" if ms
                         else "the whole server's (pg_stat_wal; not timed)"))
    wl.print_figures("flowledger on PostgreSQL", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
