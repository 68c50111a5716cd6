"""The test helpers every suite shares (fixtures are in tests/conftest.py).

* the outside world a mutator changes: a ledger in a real SQLite file
  (`ExternalLedger`, seen by other processes too) or in memory (`MemoryLedger`);
* the ledger tool that changes it, told call by call how to behave
  (`ScriptedLedgerTool`, `NoReconcileTool`), and the named mutation outcomes the
  crash and recovery tests go through (`OUTCOMES`);
* the workflows most tests run (`ledger_workflow`, `costly_workflow`), random
  histories of sessions and a person's decisions (`history`, `decide`,
  `new_engine`);
* ways to look at a store (`message_status`, `projection_rows`) and at what the
  engine reads of it (`count_loads`).

Subprocess scripts (tests/e2e/crash_worker.py, the scripts test modules write
to a temporary folder) import this module too: put the repository's root on
`sys.path` first.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from hypothesis import strategies as st

import flowledger as fl
from flowledger.projections import pending_work
from flowledger.projections.runner import ProjectionRunner
from flowledger.testing import projection_rows as projection_rows

# ----------------------------------------------------------- the outside world


class Ledger(Protocol):
    """What the ledger tool needs of the outside world."""

    def note_call(self) -> None: ...
    def append(self, key: str, value: str) -> int: ...
    def find(self, key: str) -> str | None: ...


class ExternalLedger:
    """A real SQLite table standing in for the outside world a mutator changes.

    Other processes on the same file see the same rows. A key is written at
    most once, as a unique key in a real system would: a second write raises
    `sqlite3.IntegrityError` and is noted in the `duplicates` table, so a test
    can see a mutation performed twice even when another process tried it.
    With `count_calls`, every mutator call that reaches it is counted in the
    file too (`calls_made`), across processes.
    """

    def __init__(self, path: Path, count_calls: bool = False) -> None:
        self.path = path
        self.count_calls = count_calls
        with self._db() as db:
            db.executescript("""
                BEGIN;
                CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY, value TEXT);
                CREATE TABLE IF NOT EXISTS duplicates (key TEXT);
                CREATE TABLE IF NOT EXISTS calls (n INTEGER);
                COMMIT;
            """)

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None)

    def note_call(self) -> None:
        if self.count_calls:
            with self._db() as db:
                db.execute("INSERT INTO calls VALUES (1)")

    def calls_made(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def append(self, key: str, value: str) -> int:
        with self._db() as db:
            try:
                cur = db.execute("INSERT INTO rows VALUES (?, ?)", (key, value))
            except sqlite3.IntegrityError:
                db.execute("INSERT INTO duplicates VALUES (?)", (key,))
                raise
            return int(cur.lastrowid or 0)

    def find(self, key: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT value FROM rows WHERE key=?", (key,)).fetchone()
            return row[0] if row else None

    def keys(self) -> list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute("SELECT key FROM rows ORDER BY key")]


class MemoryLedger:
    """The outside world kept in memory (fast enough for stateful tests).

    It takes every write, a second one of the same key too: `writes` lists
    them all, so a mutation performed twice shows there.
    """

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.writes: list[str] = []
        self.calls = 0

    def note_call(self) -> None:
        self.calls += 1

    def append(self, key: str, value: str) -> int:
        self.rows[key] = value
        self.writes.append(key)
        return len(self.writes)

    def find(self, key: str) -> str | None:
        return self.rows.get(key)

    def keys(self) -> list[str]:
        return sorted(self.rows)


# ------------------------------------------------------------------ the tool


class MutationScenario(NamedTuple):
    """How one mutation goes: its call, then what the reconcile answers."""

    call: str  # one of ScriptedLedgerTool's behaviours
    answers: list[str]  # the reconcile's answers after it, in order
    reconcile: bool  # whether the tool has a reconcile method at all


# The mutation outcomes the crash and recovery tests go through.
OUTCOMES: dict[str, MutationScenario] = {
    "applied": MutationScenario("ok", [], True),
    "failed": MutationScenario("transient", [], True),
    "uncertain_applied": MutationScenario("uncertain_applied", ["look"], True),
    "uncertain_failed": MutationScenario("uncertain", ["look"], True),
    "uncertain_retry": MutationScenario("uncertain", ["retry", "look"], True),
    "no_reconcile": MutationScenario("uncertain_applied", [], False),
}


class ScriptedLedgerTool(fl.Tool):
    """A ledger tool whose next calls can be told to fail in chosen ways.

    `script` holds, per call of `append`, one of: "ok", "transient", "auth",
    "uncertain_applied" (writes, then raises UncertainOutcome), "uncertain"
    (does not write, raises UncertainOutcome), "boom_applied" (writes, then
    raises a plain exception), "boom" (raises it without writing) — or a
    MutationScenario, whose call is one of these and whose answers join
    `reconcile_script` when the call is made. An empty script means "ok".
    `reconcile_script` holds answers of the reconcile: "look" (look the row
    up; also when it is empty), "retry", "raise". Tools that share one script pass the same lists.

    It remembers every call (`calls`), every reconcile (`reconcile_calls`) and
    every key it wrote (`writes`).
    """

    name = "ledger"

    def __init__(self, ledger: Ledger, script: list[str | MutationScenario] | None = None,
                 reconcile_script: list[str] | None = None) -> None:
        self.ledger = ledger
        self.script: list[str | MutationScenario] = [] if script is None else script
        self.reconcile_script: list[str] = [] if reconcile_script is None else reconcile_script
        self.calls: list[tuple[str, str]] = []
        self.reconcile_calls: list[tuple[str, str]] = []
        self.writes: list[str] = []

    @fl.read
    def find(self, key: str) -> str | None:
        return self.ledger.find(key)

    @fl.mutator(reconcile="find_appended")
    def append(self, key: str, value: str) -> dict[str, Any]:
        self.calls.append((key, value))
        self.ledger.note_call()
        how = self.script.pop(0) if self.script else "ok"
        if isinstance(how, MutationScenario):
            self.reconcile_script.extend(how.answers)
            how = how.call
        if how == "transient":
            raise fl.TransientError("rate limited")
        if how == "auth":
            raise fl.AuthError("token expired")
        if how == "uncertain":
            raise fl.UncertainOutcome("timeout before the write")
        if how == "boom":
            raise RuntimeError("connection refused")
        row = self.ledger.append(key, value)
        self.writes.append(key)
        if how == "uncertain_applied":
            raise fl.UncertainOutcome("timeout after the write")
        if how == "boom_applied":
            raise RuntimeError("connection reset")
        return {"row": row, "key": key}

    def find_appended(self, key: str, value: str) -> fl.Reconciliation:
        self.reconcile_calls.append((key, value))
        how = self.reconcile_script.pop(0) if self.reconcile_script else "look"
        if how == "retry":
            return fl.Reconciliation.retry("ledger not reachable")
        if how == "raise":
            raise RuntimeError("reconcile crashed")
        found = self.ledger.find(key)
        if found is None:
            return fl.Reconciliation.failed("no such row")
        return fl.Reconciliation.applied({"row": None, "key": key, "found": found})


def mid_call_tool(action: Callable[[str], None]) -> type[ScriptedLedgerTool]:
    """A ScriptedLedgerTool that calls `action(key)` inside each external call,
    before the script's behaviour: another process writing, a Ctrl-C, ..."""

    class MidCall(ScriptedLedgerTool):
        @fl.mutator(reconcile="find_appended")
        def append(self, key: str, value: str) -> dict[str, Any]:
            action(key)
            return super().append(key, value)

    return MidCall


class NoReconcileTool(ScriptedLedgerTool):
    """The same ledger tool without a reconcile method: an uncertain call of it
    cannot be settled without a person. Reached as `ctx.tools.blind`."""

    name = "blind"

    @fl.mutator
    def append(self, key: str, value: str) -> dict[str, Any]:
        return super().append(key, value)


# ----------------------------------------------------------------- workflows


def ledger_workflow(name: str = "wf", items: list[str] | None = None,
                    tool_name: str = "ledger",
                    on_peek: Callable[[str], None] | None = None) -> fl.Workflow:
    """A producer that publishes `items`, a consumer that appends each to the
    ledger (`on_peek(item)`: called in the prepare, with the item it found)."""
    wf = fl.Workflow(name, topics=["in", "done"])
    feed = list(items if items is not None else ["a", "b", "c"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> Any:
        for item in feed:
            ctx.publish("in", message_id=item, payload={"item": item})
        return None

    @wf.consumer(subscribe=["in"], publishes=["done"])
    class Append:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            pending = ctx.peek("in", limit=1)
            if not pending:
                return None
            m = pending[0]
            if on_peek is not None:
                on_peek(m.message_id)
            return fl.Prepared(reservations={"in": [m.message_id]}, data=m.payload,
                               title=f"append {m.message_id}")

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            tool = getattr(ctx.tools, tool_name)
            tool.append(prepared.data["item"], "v-" + prepared.data["item"])

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> Any:
            ctx.publish("done", message_id=prepared.data["item"],
                        payload={"outcome": outcome.status, "result": outcome.result})
            return {"last": prepared.data["item"]}

    return wf


def costly_workflow(items: list[str], costs: list[str]) -> fl.Workflow:
    """Workflow "prop": ledger_workflow's shape, with a cost in every step and a
    count of the items done as the consumer's state."""
    wf = fl.Workflow("prop", topics=["in", "done"])
    cost_iter = iter(costs * 50)

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> None:
        for item in items:
            ctx.publish("in", message_id=item, payload=item)
        ctx.add_cost(next(cost_iter), "poll")

    @wf.consumer(subscribe=["in"], publishes=["done"])
    class Append:
        def prepare(self, ctx: Any, state: Any) -> Any:
            pending = ctx.peek("in", limit=1)
            if not pending:
                return None
            ctx.add_cost(next(cost_iter), "think")
            return fl.Prepared({"in": [pending[0].message_id]},
                               data={"item": pending[0].payload, "count": state or 0})

        def mutate(self, ctx: Any, prepared: Any) -> None:
            ctx.tools.ledger.append(prepared.data["item"], "v")

        def next(self, ctx: Any, prepared: Any, outcome: Any) -> Any:
            ctx.add_cost(next(cost_iter), "write")
            ctx.publish("done", message_id=prepared.data["item"], payload=outcome.status)
            return prepared.data["count"] + 1

    return wf


# ------------------------------------------------------------ random histories


TOOL_BEHAVIOURS = ["ok", "transient", "auth", "uncertain", "uncertain_applied", "boom_applied"]

# A history of costly_workflow: items to process, tool outcomes, reconcile
# answers, costs, sessions with their budgets and a person's decision after each.
history = st.fixed_dictionaries({
    "items": st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=5, unique=True),
    "script": st.lists(st.sampled_from(TOOL_BEHAVIOURS), max_size=8),
    "reconcile": st.lists(st.sampled_from(["look", "retry"]), max_size=6),
    "costs": st.lists(st.sampled_from(["0", "0.01", "0.1", "1.5", "0.333"]), min_size=1,
                      max_size=4),
    "sessions": st.lists(st.tuples(st.integers(0, 6), st.sampled_from(
        ["none", "did_not_happen", "skip", "retry_reconcile", "resume"])), min_size=1,
        max_size=6),
})


def decide(engine: fl.Engine, decision: str) -> None:
    """A person acting on whatever waits for them, when the decision applies."""
    if decision == "none":
        return
    for blocked in engine.blocked():
        if decision != "resume" and decision in blocked.actions:
            engine.resolve(blocked.run_id, decision)
            return
    if decision == "resume":
        with contextlib.suppress(fl.ActionNotApplicable):
            engine.resume("prop")


def new_engine(folder: str, h: dict[str, Any]) -> tuple[fl.Engine, fl.ManualClock]:
    """An engine on a SQLite file in `folder`, with costly_workflow registered
    and its ledger tool scripted as the history `h` says."""
    ledger = ExternalLedger(Path(folder) / "ledger.db")
    tool = ScriptedLedgerTool(ledger)
    tool.script = list(h["script"])
    tool.reconcile_script = list(h["reconcile"])
    clock = fl.ManualClock()
    engine = fl.Engine(f"sqlite:///{Path(folder) / 'flow.db'}", clock=clock,
                       ids=fl.SeededIds(3),
                       policy=fl.RetryPolicy(transient_max_attempts=3, reconcile_max_attempts=2))
    engine.register(costly_workflow(h["items"], h["costs"]), tools=[tool])
    return engine, clock


# ---------------------------------------------------------- looking at a store

def message_status(engine: fl.Engine, workflow: str, topic: str) -> dict[str, int]:
    """How many messages of the topic are in each status, as pending work counts them."""
    from flowledger.domain.ids import workflow_id
    from flowledger.projections import pending_work

    with engine.log.reading() as c:
        return pending_work.message_status(c, workflow_id(workflow), topic)


def release_together(procs: list[subprocess.Popen[str]]) -> None:
    """Wait until every process printed "ready", then let them all go at once
    (each reads one line from its stdin): a race between real processes."""
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


# ------------------------------------------- a workflow for flowledger.testing


class OrderFolder(fl.Tool):
    """Orders waiting, one file each in `folder/orders` (the outside world a
    producer polls)."""

    name = "orders"

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "orders"
        self.folder.mkdir(exist_ok=True)

    @fl.read
    def waiting(self) -> list[str]:
        return sorted(p.name for p in self.folder.iterdir())


def place_order(folder: Path, order: str) -> None:
    (folder / "orders").mkdir(exist_ok=True)
    (folder / "orders" / order).write_text(order)


class OrderBook(fl.Tool):
    """A file of booked orders, one line each; `find` reconciles `add` by looking."""

    name = "book"

    def __init__(self, folder: Path) -> None:
        self.path = folder / "book.txt"

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    @fl.read
    def has(self, order: str) -> bool:
        return order in self.lines()

    @fl.mutator(reconcile="find")
    def add(self, order: str) -> int:
        with self.path.open("a") as f:
            f.write(order + "\n")
        return len(self.lines())

    def find(self, order: str) -> fl.Reconciliation:
        lines = self.lines()
        if order in lines:
            return fl.Reconciliation.applied(lines.index(order) + 1)
        return fl.Reconciliation.failed(f"{order} is not in the book")


def orders_workflow() -> fl.Workflow:
    """poll (publishes each waiting order once) -> BookOrder (adds it to the book)."""
    wf = fl.Workflow("orders", topics=["placed", "booked"])

    @wf.producer(publishes=["placed"], tools=["orders"])
    def poll(ctx: Any, state: Any) -> None:
        for order in ctx.tools.orders.waiting():
            ctx.publish("placed", message_id=order, payload=order)

    @wf.consumer(subscribe=["placed"], publishes=["booked"], tools=["book"])
    class BookOrder:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared:
            placed = ctx.peek("placed", limit=1)
            if not placed:
                return fl.Prepared()
            return fl.Prepared({"placed": [placed[0].message_id]}, data=placed[0].payload)

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.book.add(prepared.data)

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            if prepared.data is not None:
                ctx.publish("booked", message_id=prepared.data, payload=outcome.result)

    return wf


@contextlib.contextmanager
def checked_pending_hints() -> Iterator[list[int]]:
    """While active, each time a session loop takes its workflow's backlog and
    wake-ups from what the projection runner keeps (`pending_hints`), they are
    compared with the store's, read afresh: any difference fails the test, as
    when a session's opening append gives them. Yields the number of takes so
    far, and of comparisons (the reads this makes), in a list."""
    original = ProjectionRunner.pending_hints
    made = [0, 0]

    def checking(runner: ProjectionRunner, workflow_id: Any, fresh: bool = False,
                 *given: Any) -> Any:
        kept = original(runner, workflow_id, fresh, *given)
        found = given[0] if given else None
        with runner.recorder.reading(snapshot=False) as c:
            stored = pending_work.backlog_and_wakeups(c, workflow_id)
        assert kept == stored, f"kept {kept}, but the store holds {stored}"
        if found is None:  # a take by the session loop (else: read by its opening append)
            made[0] += 1
        made[1] += 1
        return kept

    ProjectionRunner.pending_hints = checking  # type: ignore[method-assign]
    try:
        yield made
    finally:
        ProjectionRunner.pending_hints = original  # type: ignore[method-assign]


def count_loads(monkeypatch: Any) -> list[Any]:
    """Every stream the engine loads by id, one by one (`EventLog.load`), in order."""
    from flowledger.infrastructure.event_log import EventLog

    loaded: list[Any] = []
    original = EventLog.load

    def counting(self: EventLog, aggregate_id: Any, version: int | None = None, *,
                 short: bool = False) -> Any:
        loaded.append(aggregate_id)
        return original(self, aggregate_id, version, short=short)

    monkeypatch.setattr(EventLog, "load", counting)
    return loaded


def run_createdb_as_said(url: str) -> None:
    """Open a store whose database does not exist, and run the createdb
    command its error says, as written."""
    import shlex
    import shutil
    import subprocess

    import pytest

    if shutil.which("createdb") is None:
        pytest.skip("PostgreSQL's createdb is not installed")
    with pytest.raises(fl.ConfigurationError) as caught:
        fl.Engine(url)
    said = str(caught.value)
    command = said.split("create it first (", 1)[1].split("), or name one that exists")[0]
    done = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{command}: {done.stderr}"


class Follower:
    """`engine.follow(0)` in a thread, for `with`: the positions it yields, in
    order, and what ended it, if anything did (stopped and joined at exit)."""

    def __init__(self, engine: fl.Engine) -> None:
        self.seen: list[int] = []
        self.failed: list[BaseException] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, args=(engine,))

    def _follow(self, engine: fl.Engine) -> None:
        try:
            self.seen.extend(e.position for e in engine.follow(0, interval=0.05, stop=self.stop))
        except BaseException as e:
            self.failed.append(e)

    def reaches(self, position: int, within: float = 20.0) -> bool:
        """Whether it yields `position` (or past it) within `within` seconds."""
        deadline = time.monotonic() + within
        while (not self.seen or self.seen[-1] < position) and time.monotonic() < deadline:
            time.sleep(0.02)
        return bool(self.seen) and self.seen[-1] >= position

    def __enter__(self) -> Follower:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(20)
