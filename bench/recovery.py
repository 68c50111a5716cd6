"""How long `recover()` takes in a fresh process after a crash, by log length.

For logs of about 10^3, 10^4 and 10^5 events, each with a handful of
incomplete runs (five workflows, each killed right after its mutation went
in flight), a fresh process opens the store, registers the workflows and
calls `recover()`. Recovery should cost the same whatever the log's length:
it follows the unfinished work, not the history.

    .venv/bin/python bench/recovery.py [--sizes 1000,10000,100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

WORKFLOWS = 5

WORKLOAD = textwrap.dedent('''
    import sys, json, time
    import flowledger as fl

    def build(name, items):
        wf = fl.Workflow(name, topics=["in", "done"])

        @wf.producer(publishes=["in"])
        def produce(ctx, state):
            start = state or 0
            for i in range(start, start + items):
                ctx.publish("in", message_id=str(i), payload=i)
            return start + items

        @wf.consumer(subscribe=["in"], publishes=["done"])
        class Work:
            def prepare(self, ctx, state):
                m = ctx.peek("in", limit=1)
                return fl.Prepared({"in": [m[0].message_id]}, data=m[0].payload) if m else None
            def mutate(self, ctx, prepared):
                ctx.tools.sink.put(prepared.data)
            def next(self, ctx, prepared, outcome):
                ctx.publish("done", message_id=str(prepared.data), payload=outcome.result)
        return wf

    class Sink(fl.Tool):
        name = "sink"
        @fl.mutator(reconcile="check")
        def put(self, n):
            return n
        def check(self, n):
            return fl.Reconciliation.applied(n)

    def engine(store):
        e = fl.Engine(store)
        for w in range(%(workflows)d):
            e.register(build(f"wf{w}", 1), tools=[Sink()])
        return e

    store, mode = sys.argv[1], sys.argv[2]
    if mode == "fill":
        items = int(sys.argv[3])
        e = fl.Engine(store)
        e.register(build("wf0", items), tools=[Sink()])
        result = e.run_session("wf0", max_iterations=items)
        print(json.dumps(result.status))
    elif mode == "crash":
        e = engine(store)
        e.run_session(sys.argv[3], max_iterations=1)   # dies at FLOWLEDGER_CRASH_AT
    else:
        t0 = time.perf_counter()
        e = engine(store)
        t1 = time.perf_counter()
        results = e.recover()
        t2 = time.perf_counter()
        print(json.dumps({"open": t1 - t0, "recover": t2 - t1,
                          "results": [r.status for r in results]}))
''') % {"workflows": WORKFLOWS}


def run(script: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=3600)
    if done.returncode not in (0, 86):
        raise SystemExit(f"{args}: exit {done.returncode}\n{done.stderr}")
    return done.stdout


def events_in(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as c:
        return int(c.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])


def measure(size: int, repeat: int, folder: Path) -> dict[str, float]:
    script = folder / "workload.py"
    script.write_text(WORKLOAD)
    db = folder / f"log-{size}.db"
    store = f"sqlite:///{db}"
    # About 15 events per item processed (input, publish, the run's phases,
    # consumption, the session's counters).
    run(script, store, "fill", str(max(1, size // 15)))
    for w in range(WORKFLOWS):
        run(script, store, "crash", f"wf{w}", env={"FLOWLEDGER_CRASH_AT": "after_append:in_flight"})
    events = events_in(db)
    opens, recovers = [], []
    for i in range(repeat):
        copy = folder / f"copy-{size}-{i}.db"
        copy.write_bytes(db.read_bytes())
        wal = Path(str(db) + "-wal")
        if wal.exists():
            Path(str(copy) + "-wal").write_bytes(wal.read_bytes())
        out = json.loads(run(script, f"sqlite:///{copy}", "recover"))
        assert out["results"] == ["completed"] * WORKFLOWS, out
        opens.append(out["open"])
        recovers.append(out["recover"])
    return {"events": events, "open": statistics.median(opens),
            "recover": statistics.median(recovers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            started = time.perf_counter()
            rows.append(measure(size, args.repeat, Path(tmp)))
            print(f"  built and measured ~{size:,} events in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr)
    print(f"recover() in a fresh process, {WORKFLOWS} incomplete runs (mutation in flight), "
          f"median of {args.repeat}")
    print(f"{'events in log':>14} {'open + register':>16} {'recover()':>12} {'per run':>10}")
    for r in rows:
        print(f"{r['events']:>14,} {r['open'] * 1000:>13.1f} ms {r['recover'] * 1000:>9.1f} ms "
              f"{r['recover'] * 1000 / WORKFLOWS:>7.1f} ms")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")


if __name__ == "__main__":
    main()
