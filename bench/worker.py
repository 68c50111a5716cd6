"""The worker's figures (DESIGN §6), with real `flowledger worker` processes on one
SQLite store (or, with --postgres, on PostgreSQL, where workers are woken by the
store's notifications instead of polling):

* latency from an event appended by another process to the commit of the run
  that consumed it (p50 / p99), read from the log's own timestamps;
* throughput (consumer runs per second, each with one mutation) of one and of
  two worker processes over four workflows' backlog;
* the time a pass takes to serve one message, with 1 and with 50 workflows
  registered (in this process);
* takeover time: SIGKILL a worker in the middle of a call, until the other
  worker's `SessionTakenOver` is in the log;
* an idle worker's CPU time per minute.

    .venv/bin/python bench/worker.py [--events 100] [--backlog 400] [--idle 10] [--interval 0.5]
                                     [--postgres postgresql://postgres@127.0.0.1:5432]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKLOAD = textwrap.dedent('''
    import os, time
    import flowledger as fl

    class Sink(fl.Tool):
        name = "sink"
        @fl.mutator
        def put(self, key):
            time.sleep(float(os.environ.get("BENCH_CALL", "0")))
            return key

    def build(name):
        wf = fl.Workflow(name, topics=["in"])

        @wf.producer(publishes=["in"])
        def feed(ctx, state):
            start = state or 0
            for i in range(start, start + int(os.environ.get("BENCH_FEED", "1"))):
                ctx.publish("in", message_id=str(i), payload={})
            return start + int(os.environ.get("BENCH_FEED", "1"))

        @wf.consumer(subscribe=["in"])
        class Take:
            def prepare(self, ctx, state):
                pending = ctx.peek("in", limit=1)
                if not pending:
                    return None
                return fl.Prepared(reservations={"in": [pending[0].message_id]},
                                   data=pending[0].message_id)
            def mutate(self, ctx, prepared):
                ctx.tools.sink.put(prepared.data)
        return wf

    NAMES = os.environ.get("BENCH_WORKFLOWS", "w0").split(",")
    def register(engine):
        for name in NAMES:
            engine.register(build(name), tools=[Sink()])
''')


class Stores:
    """A new store per measurement: an SQLite file in its folder, or a schema of
    its own in one PostgreSQL database (created here, dropped at the end)."""

    DATABASE = "flowledger_bench_worker"

    def __init__(self) -> None:
        self.server: str | None = None

    def use_postgres(self, server: str) -> None:
        import psycopg

        self.server = server.rstrip("/")
        with psycopg.connect(f"{self.server}/postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.DATABASE}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{self.DATABASE}"')

    def new(self, folder: Path) -> str:
        if self.server is None:
            return f"sqlite:///{folder / 'flow.db'}"
        schema = "b_" + "".join(ch if ch.isalnum() else "_" for ch in folder.name)
        return f"{self.server}/{self.DATABASE}?schema={schema}"

    def drop(self) -> None:
        if self.server is not None:
            import psycopg

            with psycopg.connect(f"{self.server}/postgres", autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{self.DATABASE}" WITH (FORCE)')


STORES = Stores()


def worker(folder: Path, store: str, interval: float, env: dict[str, str]
           ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "flowledger.cli", "--store", store, "worker",
         str(folder / "workload.py"), "--interval", str(interval), "--quiet"],
        cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def load(folder: Path) -> object:
    """The workload module, imported afresh (it reads its workflows' names at import)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"workload_{folder.name}",
                                                  folder / "workload.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def environment(folder: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FLOWLEDGER_CRASH_AT", None)
    env.update(extra)
    return env


def consumed(store: str, names: list[str]) -> int:
    import flowledger as fl

    with fl.Engine(store) as engine:
        total = 0
        for name in names:
            for events in engine.events(workflow=name):
                if events.aggregate == "TopicEvent" and events.name == "Consumed":
                    total += 1
        return total


def publish(store: str, folder: Path, names: list[str], feed: int) -> None:
    os.environ["BENCH_FEED"] = str(feed)
    os.environ["BENCH_WORKFLOWS"] = ",".join(names)
    import flowledger as fl

    mod = load(folder)
    with fl.Engine(store) as engine:
        mod.register(engine)  # type: ignore[attr-defined]
        for name in names:
            engine.run_session(name, max_iterations=0)  # published, not consumed


def latency(base: Path, events: int, interval: float) -> tuple[float, float]:
    import flowledger as fl

    folder = Path(tempfile.mkdtemp(dir=base))
    (folder / "workload.py").write_text(WORKLOAD)
    store = STORES.new(folder)
    publish(store, folder, ["w0"], 0)  # registered, nothing pending
    w = worker(folder, store, interval, environment(folder, BENCH_WORKFLOWS="w0"))
    try:
        time.sleep(1.0)
        for _ in range(events):
            publish(store, folder, ["w0"], 1)
            time.sleep(interval * 1.5)  # one event at a time: the latency, not a queue
        deadline = time.monotonic() + 30
        while consumed(store, ["w0"]) < events and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        w.terminate()
        w.wait(10)
    published: dict[object, float] = {}
    took: list[float] = []
    with fl.Engine(store) as engine:
        for e in engine.events(workflow="w0"):
            if e.aggregate == "TopicEvent" and e.name == "Published":
                published[e.stream_id] = e.timestamp.timestamp()
            elif e.aggregate == "TopicEvent" and e.name == "Consumed":
                took.append(e.timestamp.timestamp() - published[e.stream_id])
    took.sort()
    return statistics.median(took), took[min(len(took) - 1, int(len(took) * 0.99))]


def throughput(base: Path, backlog: int, workers: int, interval: float) -> float:
    folder = Path(tempfile.mkdtemp(dir=base))
    (folder / "workload.py").write_text(WORKLOAD)
    store = STORES.new(folder)
    names = [f"w{i}" for i in range(4)]
    publish(store, folder, names, backlog // len(names))
    env = environment(folder, BENCH_WORKFLOWS=",".join(names), BENCH_CALL="0.002")
    procs = [worker(folder, store, interval, env) for _ in range(workers)]
    try:
        while consumed(store, names) < backlog:
            time.sleep(0.5)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    # From the log's own times: the first consumption to the last (process start-up
    # is not the worker's throughput).
    import flowledger as fl

    with fl.Engine(store) as engine:
        times = [e.timestamp.timestamp() for e in engine.events()
                 if e.aggregate == "TopicEvent" and e.name == "Consumed"]
    return (len(times) - 1) / (max(times) - min(times))


def takeover(base: Path, interval: float) -> float:
    import flowledger as fl

    folder = Path(tempfile.mkdtemp(dir=base))
    (folder / "workload.py").write_text(WORKLOAD)
    store = STORES.new(folder)
    publish(store, folder, ["w0"], 3)
    env = environment(folder, BENCH_WORKFLOWS="w0", BENCH_CALL="3")
    a = worker(folder, store, interval, env)
    b = None
    try:
        with fl.Engine(store) as engine:
            while not any(e.name == "MutationInFlight" for e in engine.events(workflow="w0")):
                time.sleep(0.05)
        b = worker(folder, store, interval, env)
        time.sleep(1.0)  # b is up and idle (the session is a's)
        killed = time.monotonic()
        a.send_signal(signal.SIGKILL)
        a.wait(5)
        while True:
            with fl.Engine(store) as engine:
                if any(e.name == "SessionTakenOver" for e in engine.events(workflow="w0")):
                    return time.monotonic() - killed
            time.sleep(0.02)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(10)


def pass_time(base: Path, workflows: int, rounds: int = 30) -> float:
    """Seconds (median) a worker's pass takes to serve one message published to
    one of `workflows` registered (`Worker.run_once`, in this process): what a
    pass costs beside its session grows with the workflows a worker serves."""
    import flowledger as fl
    from flowledger.engine.worker import Worker

    folder = Path(tempfile.mkdtemp(dir=base))
    (folder / "workload.py").write_text(WORKLOAD)
    store = STORES.new(folder)
    names = [f"w{i}" for i in range(workflows)]
    publish(store, folder, names, 0)  # registered, nothing pending
    took: list[float] = []
    with fl.Engine(store) as engine:
        load(folder).register(engine)  # type: ignore[attr-defined]
        worker = Worker(engine)
        worker.run_once()
        os.environ["BENCH_FEED"] = "1"
        for k in range(rounds):
            engine.run_session(names[k % workflows], max_iterations=0)  # one message
            started = time.perf_counter()
            served = worker.run_once()
            took.append(time.perf_counter() - started)
            assert sum(r.consumer_runs for r in served) == 1
    return statistics.median(took)


def idle_cpu(base: Path, seconds: float, interval: float) -> float:
    folder = Path(tempfile.mkdtemp(dir=base))
    (folder / "workload.py").write_text(WORKLOAD)
    store = STORES.new(folder)
    publish(store, folder, ["w0"], 0)
    w = worker(folder, store, interval, environment(folder, BENCH_WORKFLOWS="w0"))
    try:
        time.sleep(2.0)  # started, recovered, nothing due

        def cpu() -> float:
            fields = Path(f"/proc/{w.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = cpu()
        time.sleep(seconds)
        return (cpu() - before) * 60 / seconds
    finally:
        w.terminate()
        w.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--backlog", type=int, default=400)
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--postgres", metavar="URL", default=None,
                        help="a PostgreSQL server (postgresql://user@host:port) to use "
                             "instead of SQLite files")
    args = parser.parse_args()
    if args.postgres:
        STORES.use_postgres(args.postgres)
        print(f"store: PostgreSQL at {args.postgres} (workers woken by notifications)")
    else:
        print("store: SQLite files (workers poll the log)")
    try:
        measure(args)
    finally:
        STORES.drop()


def measure(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        p50, p99 = latency(base, args.events, min(args.interval, 0.1))
        print(f"latency event -> commit (another process, interval 0.1 s): "
              f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms over {args.events} events")
        for n in (1, 2):
            rate = throughput(base, args.backlog, n, args.interval)
            print(f"throughput, {n} worker{'s' if n > 1 else ''}: {rate:.0f} consumer runs/s "
                  f"({args.backlog} runs over 4 workflows, one mutation each)")
        one, many = pass_time(base, 1), pass_time(base, 50)
        print(f"a pass serving one message: {one * 1000:.1f} ms with 1 workflow registered, "
              f"{many * 1000:.1f} ms with 50 ({many / one:.1f}x)")
        print(f"takeover after SIGKILL (interval {args.interval} s): "
              f"{takeover(base, args.interval):.2f} s")
        print(f"idle worker CPU (interval {args.interval} s): "
              f"{idle_cpu(base, args.idle, args.interval):.2f} CPU-seconds per minute")


if __name__ == "__main__":
    main()
