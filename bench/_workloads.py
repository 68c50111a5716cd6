"""Workloads shared by the benchmark scripts under bench/.

Everything here runs on SQLite files in a directory the caller chooses; nothing
touches the engine's behaviour. The append counter wraps
`EventLog.append` (the engine's one way to write the log: one call is one
transaction) only while it is active, and only in counted passes that are not
timed.
"""

from __future__ import annotations

import shlex
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

import flowledger as fl
from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.phases import RunKind
from flowledger.infrastructure.event_log import EventLog

# --------------------------------------------------------------------------- helpers


def sqlite_url(path: Path) -> str:
    """A file store URL for an absolute path (sqlite:////abs/path.db)."""
    return f"sqlite:///{path}"


def file_bytes(path: Path) -> tuple[int, int]:
    """(main file size, -wal file size) of a SQLite database."""
    wal = Path(f"{path}-wal")
    return (path.stat().st_size if path.exists() else 0,
            wal.stat().st_size if wal.exists() else 0)


def journal_mode(path: Path) -> str:
    with sqlite3.connect(path) as c:
        return str(c.execute("PRAGMA journal_mode").fetchone()[0])


# ----------------------------------------------------------------- append counter


@dataclass
class Append:
    """One call of EventLog.append, i.e. one log transaction."""

    runs: dict[UUID, RunKind]  # runs with events in this append
    events: int


@dataclass
class AppendCounter:
    appends: list[Append] = field(default_factory=list)

    @contextmanager
    def active(self) -> Iterator[AppendCounter]:
        original = EventLog.append
        counter = self

        def counting(log: EventLog, *aggregates: Any, **kwargs: Any) -> Any:
            # Look before appending: the append takes the pending events off.
            runs = {a.id: a.kind for a in aggregates
                    if isinstance(a, HandlerRun) and a.has_pending_events}
            events = sum(len(a._pending_events) for a in aggregates)
            counter.appends.append(Append(runs, events))
            return original(log, *aggregates, **kwargs)

        EventLog.append = counting  # type: ignore[method-assign]
        try:
            yield self
        finally:
            EventLog.append = original  # type: ignore[method-assign]

    def per_run(self, kind: RunKind) -> list[int]:
        """Appends that carried events of each run of this kind."""
        counts: dict[UUID, int] = {}
        for a in self.appends:
            for run_id, k in a.runs.items():
                if k is kind:
                    counts[run_id] = counts.get(run_id, 0) + 1
        return list(counts.values())

    @property
    def without_runs(self) -> int:
        """Appends that carry no run's events: session open/close, registration."""
        return sum(1 for a in self.appends if not a.runs)


# ------------------------------------------------------------ the engine workloads


class Ledger(fl.Tool):
    """The external system: a dict standing in for a sheet or an API."""

    name = "ledger"

    def __init__(self) -> None:
        self.rows: dict[int, int] = {}

    @fl.mutator(reconcile="find")
    def put(self, key: int) -> int:
        self.rows[key] = key
        return key

    def find(self, key: int) -> fl.Reconciliation:
        if key in self.rows:
            return fl.Reconciliation.applied(self.rows[key])
        return fl.Reconciliation.failed()


CONSUMER_WF = "bench-consumer"


class ConsumerBench:
    """One consumer: prepare reserves one pending event, mutate makes ONE mutator
    call, next publishes one downstream event. A producer fills the input topic
    beforehand (not timed)."""

    def __init__(self, store: str, name: str = CONSUMER_WF) -> None:
        self.name = name
        self.plan = {"publish": 0}
        self.ledger = Ledger()
        wf = fl.Workflow(name, topics=["in", "out"])
        plan = self.plan

        @wf.producer(publishes=["in"])
        def fill(ctx: Any, state: Any) -> int:
            start = state or 0
            for i in range(start, start + plan["publish"]):
                ctx.publish("in", message_id=str(i), payload={"i": i})
            return start + plan["publish"]

        @wf.consumer(subscribe=["in"], publishes=["out"])
        class Book:
            def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
                msgs = ctx.peek("in", 1)
                if not msgs:
                    return None
                m = msgs[0]
                return fl.Prepared({"in": [m.message_id]}, data=m.payload)

            def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
                ctx.tools.ledger.put(prepared.data["i"])

            def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
                i = prepared.data["i"]
                ctx.publish("out", message_id=str(i), payload={"i": i, "row": outcome.result})

        self.engine = fl.Engine(store)
        self.engine.register(wf, tools=[self.ledger])

    def fill(self, n: int) -> None:
        """Publish n events in one producer run (one session, no consumer runs)."""
        self.plan["publish"] = n
        r = self.engine.run_session(self.name, trigger="manual", max_iterations=0)
        expected = "budget_exhausted" if n else "completed"
        if r.status != expected:
            raise RuntimeError(f"fill session ended {r.status}: {r.error}")

    def consume(self, n: int) -> fl.SessionResult:
        """One session (trigger=event: no producers) running up to n consumer runs."""
        r = self.engine.run_session(self.name, trigger="event", max_iterations=n)
        if r.consumer_runs != n or not all(x.committed for x in r.runs):
            raise RuntimeError(f"consumer session ended {r.status} after {r.consumer_runs} "
                               f"of {n} runs: {r.error}")
        return r

    def close(self) -> None:
        self.engine.close()


PRODUCER_WF = "bench-producers"


class ProducerBench:
    """A workflow of `producers` producers, each publishing ONE event per run
    (with an implicit input, as a producer that passes no input_id gets) and
    keeping a cursor as its state, as a poller does. One session runs each
    producer once: sessions x producers producer runs."""

    def __init__(self, store: str, producers: int) -> None:
        wf = fl.Workflow(PRODUCER_WF, topics=["in"])
        for p in range(producers):
            name = f"poll{p:03d}"

            def poll(ctx: Any, state: Any, name: str = name) -> int:
                cursor = state or 0
                ctx.publish("in", message_id=f"{name}-{cursor}", payload={"n": cursor})
                return cursor + 1

            wf.producer(publishes=["in"], name=name)(poll)
        self.producers = producers
        self.engine = fl.Engine(store)
        self.engine.register(wf)

    def session(self) -> fl.SessionResult:
        r = self.engine.run_session(PRODUCER_WF, trigger="manual", max_iterations=0)
        if r.status != "completed" or len(r.runs) != self.producers or not all(
                x.committed for x in r.runs):
            raise RuntimeError(f"producer session ended {r.status}: {r.error}")
        return r

    def close(self) -> None:
        self.engine.close()


def stored_bytes(path: Path) -> dict[str, float]:
    """What the log holds per stored event, from the `stored_events` table."""
    with sqlite3.connect(path) as c:
        n, state, oid, topic = c.execute(
            "SELECT COUNT(*), SUM(LENGTH(state)), SUM(LENGTH(originator_id)), "
            "SUM(LENGTH(topic)) FROM stored_events").fetchone()
    # originator_version and the notification id are integers: counted as 8
    # bytes each (SQLite stores them as 1-8 byte varints).
    keys = oid + topic + 16 * n
    return {"events": n, "state": state / n, "keys": keys / n, "total": (state + keys) / n}


# ------------------------------------------------------- raw eventsourcing saves


class Row(Aggregate):
    """The library's own Aggregate, one event per instance."""

    @event("Booked")
    def __init__(self, i: int) -> None:
        self.i = i


def raw_eventsourcing(path: Path, n: int, warmup: int) -> tuple[float, float]:
    """Wall and CPU seconds for n `Application.save`s of one new aggregate with ONE event each,
    on the library's own Application and SQLite module (after `warmup` saves)."""
    app: Application[UUID] = Application(env={
        "PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)})
    try:
        for i in range(warmup):
            app.save(Row(i))
        t, c = time.perf_counter(), time.process_time()
        for i in range(n):
            app.save(Row(i))
        return time.perf_counter() - t, time.process_time() - c
    finally:
        app.close()


# ----------------------------------------------------------------------- DBOS


def dbos_version() -> str | None:
    try:
        from importlib.metadata import version

        import dbos  # noqa: F401
    except ImportError:
        return None
    return version("dbos")


_dbos_workflow: Callable[[int], Any] | None = None
_dbos_ledger = Ledger()


def _dbos_definitions() -> Callable[[int], Any]:
    """The DBOS counterpart of ConsumerBench: a workflow of three steps. Decorated
    once per process (DBOS keeps a global registry of names)."""
    global _dbos_workflow
    if _dbos_workflow is None:
        from dbos import DBOS

        @DBOS.step()
        def prepare(i: int) -> dict[str, int]:
            return {"i": i}

        @DBOS.step()
        def mutate(data: dict[str, int]) -> int:
            return _dbos_ledger.put(data["i"])

        @DBOS.step()
        def next_(data: dict[str, int], result: int) -> dict[str, int]:
            return {"i": data["i"], "row": result}

        @DBOS.workflow()
        def book(i: int) -> dict[str, int]:
            data = prepare(i)
            result = mutate(data)
            return next_(data, result)

        _dbos_workflow = book
    return _dbos_workflow


def dbos_run(path: Path, n: int, warmup: int, wal: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds for n DBOS workflows run one after another (after `warmup` of them),
    on a SQLite system database file; DBOS's own defaults otherwise (a rollback
    journal), or the file switched to WAL first when `wal` (it stays WAL)."""
    from dbos import DBOS, DBOSConfig

    book = _dbos_definitions()
    if wal:
        with sqlite3.connect(path) as c:
            c.execute("PRAGMA journal_mode=WAL")
    config: DBOSConfig = {"name": "flowledger-bench", "log_level": "WARNING",
                          "system_database_url": f"sqlite:///{path}"}
    DBOS(config=config)
    DBOS.launch()
    try:
        for i in range(warmup):
            book(i)
        t, c = time.perf_counter(), time.process_time()
        for i in range(warmup, warmup + n):
            book(i)
        return time.perf_counter() - t, time.process_time() - c
    finally:
        DBOS.destroy()


def git_revision(repo: Path) -> str:
    """The checkout's commit, with `+dirty` when tracked files differ from it."""
    import subprocess

    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no", "--", "flowledger"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def print_figures(title: str, rows: list[tuple[str, str, str]]) -> None:
    """The closing table every bench script prints: figure, value, note, then the command."""
    widths = [max(len(r[i]) for r in [*rows, ("figure", "value", "")]) for i in range(2)]
    rule = "-" * (widths[0] + widths[1] + 4 + max(len(r[2]) for r in rows))
    print(f"\n{title}")
    print(rule)
    print(f"{'figure'.ljust(widths[0])}  {'value'.rjust(widths[1])}  note")
    print(rule)
    for name, value, note in rows:
        print(f"{name.ljust(widths[0])}  {value.rjust(widths[1])}  {note}")
    print(rule)
    print("command: " + shlex.join([sys.executable, *sys.argv]))
