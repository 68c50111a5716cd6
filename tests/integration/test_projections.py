"""Projections are folds of the log (DESIGN §2.4, ADR 0005, ADR 0009).

For random histories (tests.helpers.history, as in test_properties: items, tool
outcomes, reconcile answers, costs, budgets, a person's decisions) on a real
SQLite file:
  * every projection rebuilt from position 0 equals the one kept live, row for row;
  * a projection stopped at a random position — while the engine goes on
    appending — and resumed by catch_up ends equal too, whatever the batch size;
  * the cost entries a session counted sum exactly to that session's cost.
"""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowledger as fl
from flowledger.domain.session import Session
from flowledger.domain.workflow import Workflow
from flowledger.projections import costs as costs_projection
from flowledger.projections.base import Projection
from tests.helpers import (
    ExternalLedger,
    MemoryLedger,
    ScriptedLedgerTool,
    costly_workflow,
    decide,
    history,
    ledger_workflow,
    mid_call_tool,
    new_engine,
    projection_rows,
)


def projection(engine: fl.Engine, name: str) -> Projection:
    return next(p for p in engine.projections.projections if p.name == name)


def stop_at(engine: fl.Engine, name: str, position: int, batch: int) -> None:
    """Empty one projection and fold it in only up to `position`: it is behind from then on."""
    runner = engine.projections
    runner._known.clear()
    with runner.recorder.datastore.transaction(commit=True) as c:
        projection(engine, name).clear(c)
        c.execute("DELETE FROM tracking WHERE application_name=?", (name,))
    runner.catch_up(batch=batch, upto=position)
    assert runner.positions()[name] == position


def run_history(engine: fl.Engine, clock: fl.ManualClock, sessions: list[tuple[int, str]]
                ) -> list[fl.SessionResult]:
    results = []
    for max_iterations, decision in sessions:
        results.append(engine.run_session("prop", max_iterations=max_iterations))
        clock.advance(7200)
        decide(engine, decision)
    return results


NAMES = ["pending_work", "costs", "audit", "log_times", "settled"]
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


@SETTINGS
@given(h=history)
def test_a_projection_rebuilt_from_zero_equals_the_live_one(h: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        engine, clock = new_engine(folder, h)
        try:
            results = run_history(engine, clock, h["sessions"])
            live = projection_rows(engine)
            assert live["fl_runs"], "the history ran nothing"

            read = engine.projections.rebuild()

            assert read == engine.log.flow_recorder.max_notification_id()
            assert projection_rows(engine) == live
            check_session_costs(engine, results)
        finally:
            engine.close()


@SETTINGS
@given(h=history, data=st.data())
def test_a_projection_stopped_anywhere_catches_up_to_the_same_rows(
        h: dict[str, Any], data: st.DataObject) -> None:
    """Stopped at a random position, left behind while later sessions append
    (only costs and audit: the session loop itself reads pending work), then
    resumed in random batches: the rows equal a rebuild from 0."""
    with tempfile.TemporaryDirectory() as folder:
        engine, clock = new_engine(folder, h)
        try:
            split = data.draw(st.integers(0, len(h["sessions"])), label="sessions before stop")
            run_history(engine, clock, h["sessions"][:split])
            name = data.draw(st.sampled_from(NAMES if split == len(h["sessions"])
                                              else NAMES[1:]),
                             label="projection")
            head = engine.log.flow_recorder.max_notification_id() or 0
            stop_at(engine, name, data.draw(st.integers(0, head), label="stopped at"),
                    batch=data.draw(st.integers(1, 50), label="batch"))
            run_history(engine, clock, h["sessions"][split:])  # it stays behind meanwhile

            engine.projections.catch_up(batch=data.draw(st.integers(1, 50), label="batch"))
            resumed = projection_rows(engine, [name])
            engine.projections.rebuild([name])

            assert resumed == projection_rows(engine, [name])
            assert engine.projections.lag() == 0
        finally:
            engine.close()


def check_session_costs(engine: fl.Engine, results: list[fl.SessionResult]) -> None:
    """What the cost entries say a session counted is exactly the session's cost."""
    counted: dict[UUID, Decimal] = defaultdict(Decimal)
    with engine.log.reading() as c:
        for entry in costs_projection.cost_entries(c, workflow="prop"):
            if entry.counted and entry.session_id is not None:
                counted[entry.session_id] += entry.amount
    for result in results:
        if result.session_id is not None:
            session = engine.log.load(result.session_id)
            assert isinstance(session, Session)
            assert counted.get(result.session_id, Decimal(0)) == session.cost == result.cost


# ------------------------------------------------------------- live behaviour


def test_every_projection_is_current_when_a_session_returns(make_engine,
                                                            ledger: ExternalLedger) -> None:
    """No lag after a session: pending work moved with every append, costs and
    audit were folded in at the session's end (ADR 0010)."""
    engine = make_engine()
    engine.register(costly_workflow(["a", "b"], ["0.25"]), tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("prop")

    head = engine.log.flow_recorder.max_notification_id()
    assert engine.projections.positions() == dict.fromkeys(NAMES, head)
    with engine.log.reading() as c:
        assert c.execute("SELECT COUNT(*) FROM fl_costs").fetchone()[0] == 5  # 1 poll + 2x2
        assert c.execute("SELECT COUNT(*) FROM fl_audit_causes").fetchone()[0] == 4


def test_another_process_catching_up_or_rebuilding_mid_session_changes_nothing(
        tmp_path: Path, ledger: ExternalLedger) -> None:
    """While a session runs, a second engine on the same file (as another
    process's `flowledger cost` or `projections rebuild` would) folds the
    session's events into costs and audit and rebuilds pending work. The
    session must neither fold those events twice nor trust what it kept."""
    store = f"sqlite:///{tmp_path / 'flow.db'}"
    engine = fl.Engine(store, clock=fl.ManualClock())
    others: list[fl.Engine] = []

    class Meddling(ScriptedLedgerTool):
        @fl.mutator(reconcile="find_appended")
        def append(self, key: str, value: str) -> dict[str, Any]:
            if key == "b":  # mid-session: runs "a" is committed, "c" not yet prepared
                other = fl.Engine(store)
                others.append(other)
                other.costs()  # catches costs and audit up, past this engine's memory
                other.projections.rebuild(["pending_work"])
            return super().append(key, value)

    engine.register(costly_workflow(["a", "b", "c"], ["0.5"]), tools=[Meddling(ledger)])
    try:
        result = engine.run_session("prop")
        assert result.status == "completed", result.error
        assert [r.committed for r in result.runs] == [True] * 4
        live = projection_rows(engine)
        engine.projections.rebuild()
        assert projection_rows(engine) == live
        check_session_costs(engine, [result])
    finally:
        for other in others:
            other.close()
        engine.close()


def test_a_store_without_the_new_projections_catches_up_on_open(tmp_path: Path,
                                                                ledger: ExternalLedger) -> None:
    """A store written before a projection existed is folded in when an engine opens it."""
    store = f"sqlite:///{tmp_path / 'flow.db'}"
    engine = fl.Engine(store, clock=fl.ManualClock())
    engine.register(costly_workflow(["a"], ["1"]), tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("prop")
    live = projection_rows(engine)
    with engine.log.writing() as c:
        for name in ("costs", "audit", "log_times"):
            projection(engine, name).clear(c)
            c.execute("DELETE FROM tracking WHERE application_name=?", (name,))
    engine.close()

    reopened = fl.Engine(store)
    try:
        assert projection_rows(reopened) == live
    finally:
        reopened.close()


@pytest.mark.parametrize("batch", [1, 7, 2000])
def test_rebuild_reports_progress_up_to_the_head(make_engine, ledger: ExternalLedger,
                                                 batch: int) -> None:
    engine = make_engine()
    engine.register(costly_workflow(["a", "b", "c"], ["0.5"]), tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("prop")
    head = engine.log.flow_recorder.max_notification_id()
    seen: list[tuple[int, int]] = []

    read = engine.projections.rebuild(batch=batch, progress=lambda done, total: seen.append(
        (done, total)))

    assert read == head
    assert seen[-1] == (head, head)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_only_a_lock_timeout_lets_a_catch_up_wait_for_the_next_read(tmp_path: Path) -> None:
    """After a session, a catch-up that finds another writer holding the file is
    left to the next read; any other database error is raised."""
    from eventsourcing.persistence import OperationalError

    from flowledger.infrastructure.sqlite_recorder import is_lock_timeout

    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError) as locked:
        other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError) as missing:
        other.execute("SELECT * FROM no_such_table")
    holder.rollback()
    wrapped = OperationalError(locked.value)
    wrapped.__cause__ = locked.value

    assert is_lock_timeout(locked.value) and is_lock_timeout(wrapped)
    assert not is_lock_timeout(missing.value)
    assert not is_lock_timeout(OperationalError("no cause"))


def test_a_run_between_its_appends_is_seen_by_another_process(tmp_path: Path,
                                                              ledger: ExternalLedger) -> None:
    """Pending work folds a run's in_flight and outcome appends in with its commit
    (ADR 0012). During the external call, the run's row is not in the tables yet;
    another process's `status` and `register` catch up first and see it."""
    store = f"sqlite:///{tmp_path / 'flow.db'}"
    engine = fl.Engine(store, clock=fl.ManualClock())
    other = fl.Engine(store)  # opened, and so caught up, before the session
    seen: dict[str, Any] = {}

    def look(key: str) -> None:
        # Each catch-up folds for every process, so each call gets a run of its own.
        head = engine.log.flow_recorder.max_notification_id()
        seen[f"held {key}"] = head - engine.projections.positions()["pending_work"]
        if key == "a":
            runs = other.status().unfinished_runs
            seen["runs"] = [(r.handler, r.phase, r.mutation_state) for r in runs]
        else:
            with pytest.raises(fl.DefinitionError, match="handler 'Append' not found"):
                other.register(fl.Workflow("prop", topics=["in", "done"]))

    tool = mid_call_tool(look)(ledger)
    engine.register(costly_workflow(["a", "b"], ["0.5"]), tools=[tool])
    try:
        result = engine.run_session("prop")
        assert result.status == "completed", result.error
        assert seen["held a"] > 0 and seen["held b"] > 0, "in_flight was folded in at once"
        assert seen["runs"] == [("Append", "mutating", "in_flight")]
        live = projection_rows(engine)
        engine.projections.rebuild()
        assert projection_rows(engine) == live
    finally:
        other.close()
        engine.close()


def test_a_writer_between_a_runs_appends_is_folded_in_order(tmp_path: Path,
                                                            ledger: ExternalLedger) -> None:
    """During the external call, other writers append: one that folds pending work
    (another engine registering a workflow) and one that does not (code without
    these projections). The run's commit follows the log over both, so pending
    work is current before the session reads it again, and equals a rebuild."""
    store = f"sqlite:///{tmp_path / 'flow.db'}"
    engine = fl.Engine(store, clock=fl.ManualClock())
    bare = fl.Engine(store)
    bare.log.set_after_insert(None)  # appends only, as code without projections
    seen: dict[str, int] = {}

    def write(key: str) -> None:
        if key == "a":
            with fl.Engine(store) as other:
                other.register(fl.Workflow("other-a", topics=["t"]))
        elif key == "b":
            seen["foreign"] = bare.log.append(Workflow.register(
                now=datetime(2026, 1, 1, tzinfo=UTC), name="other-b", fingerprint="f",
                topics=["t"], handlers=[]))
        else:  # the next run's call: run "b" committed since, past the foreign event
            seen["folded"] = engine.projections.positions()["pending_work"]

    tool = mid_call_tool(write)(ledger)
    engine.register(costly_workflow(["a", "b", "c"], ["0.5"]), tools=[tool])
    try:
        result = engine.run_session("prop")
        assert result.status == "completed", result.error
        assert [r.committed for r in result.runs] == [True] * 4
        assert seen["folded"] > seen["foreign"]
        head = engine.log.flow_recorder.max_notification_id()
        assert engine.projections.positions()["pending_work"] == head
        live = projection_rows(engine, ["pending_work"])
        names = sorted(r[1] for r in live["fl_workflows"])
        assert names == ["other-a", "other-b", "prop"]
        engine.projections.rebuild(["pending_work"])
        assert projection_rows(engine, ["pending_work"]) == live
    finally:
        bare.close()
        engine.close()


MESSAGE_OPS = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(
    ["reserve", "release", "move", "consume", "skip", "replace"])), max_size=25)


@settings(max_examples=60, deadline=None)
@given(ops=MESSAGE_OPS, cuts=st.lists(st.booleans(), min_size=40, max_size=40),
       forgets=st.lists(st.booleans(), min_size=40, max_size=40))
def test_message_rows_are_the_fold_of_their_events_however_batched(
        ops: list[tuple[int, str]], cuts: list[bool], forgets: list[bool]) -> None:
    """Pending work folds a batch's message changes in memory and writes each row
    and topic count once. Whatever the batches (and whether the projection kept
    anything from the last one), every row says what the message's own stream
    says: status, holder, payload, when it last became available, and the
    topic's pending and reserved counts."""
    from flowledger.domain.topic_event import TopicEvent
    from flowledger.projections.pending_work import PendingWork

    now = datetime(2026, 1, 1, tzinfo=UTC)
    wf = UUID(int=7)
    runs = [UUID(int=100 + i) for i in range(4)]
    messages = [TopicEvent.publish(now=now, workflow_id=wf, workflow="wf",
                                   topic="t" if i < 2 else "u", message_id=str(i),
                                   payload=b"p0", caused_by=[], run_id=runs[0])
                for i in range(3)]
    available = {}
    log: list[tuple[Any, int]] = []

    def collect(m: TopicEvent) -> None:
        for e in m.collect_events():
            log.append((e, len(log) + 1))
            if isinstance(e, TopicEvent.Published | TopicEvent.Released) or (
                    isinstance(e, TopicEvent.PayloadReplaced) and m.status.value == "pending"):
                available[m.id] = len(log)

    for m in messages:
        collect(m)
    for n, (i, op) in enumerate(ops):
        m, holder = messages[i], messages[i].reserved_by
        if op == "reserve" and m.status.value == "pending":
            m.reserve(now, runs[n % 4], runs[n % 4])
        elif op == "replace":
            m.replace_payload(now, f"p{n}".encode(), [], runs[0])
        elif holder is not None and op == "release":
            m.release(now, holder)
        elif holder is not None and op == "move":
            m.move_reservation(now, holder, runs[(n + 1) % 4])
        elif holder is not None and op == "consume":
            m.consume(now, holder)
        elif holder is not None and op == "skip":
            m.skip(now, holder)
        collect(m)

    with tempfile.TemporaryDirectory() as folder:
        db = sqlite3.connect(Path(folder) / "pending.db", isolation_level=None)
        c = db.cursor()
        p = PendingWork()
        p.create_tables(c)
        batch: list[tuple[Any, int]] = []
        for k, item in enumerate(log):
            batch.append(item)
            if cuts[k % len(cuts)] or k == len(log) - 1:
                c.execute("BEGIN")
                p.apply_batch(c, batch)
                c.execute("COMMIT")
                batch = []
                if forgets[k % len(forgets)]:
                    p.forget()
        rows = {r[0]: r[1:] for r in c.execute(
            "SELECT event_id, status, reserved_by, payload, available_since FROM fl_messages")}
        counts = {r[0]: r[1:] for r in c.execute(
            "SELECT topic, pending, reserved FROM fl_backlog")}
        db.close()

    assert rows == {m.id.hex: (m.status.value, m.reserved_by.hex if m.reserved_by else None,
                               m.payload, available[m.id]) for m in messages}
    for topic in ("t", "u"):
        mine = [m for m in messages if m.topic == topic]
        assert counts[topic] == (sum(m.status.value == "pending" for m in mine),
                                 sum(m.status.value == "reserved" for m in mine))


def test_a_failed_append_forgets_before_another_thread_folds(make_engine) -> None:
    """An append that fails drops what the projections kept (ADR 0012). On
    SQLite that happened after its writer lock was released: another thread's
    append, folding meanwhile, lost what it was about to write (its messages'
    rows and backlog), and pending work no longer matched the log. Here thread
    A's append fails, and its forgetting waits (up to 1 s) for thread B to be
    about to write its messages' rows."""
    engine = make_engine()
    for name in ("a", "b"):
        engine.register(ledger_workflow(name, items=["x", "y"]),
                        tools=[ScriptedLedgerTool(MemoryLedger())])
        engine.run_session(name, max_iterations=0)  # published, nothing consumed
    rec, pending = engine.log.flow_recorder, projection(engine, "pending_work")
    insert, abort, write = rec.after_insert, rec.after_abort, pending._write_messages
    aborting, b_writes, forgot = threading.Event(), threading.Event(), threading.Event()

    def failing_insert(*args: Any) -> None:
        insert(*args)
        if threading.current_thread().name == "A" and not aborting.is_set():
            raise RuntimeError("A's append fails after its fold")

    def slow_abort() -> None:
        if threading.current_thread().name == "A" and not forgot.is_set():
            aborting.set()
            b_writes.wait(1)  # B cannot fold while A holds the writer
            abort()
            forgot.set()
        else:
            abort()

    def paused_write(c: Any) -> None:
        if threading.current_thread().name == "B" and pending._msgs and not b_writes.is_set():
            b_writes.set()
            forgot.wait(2)
        write(c)

    rec.after_insert, rec.after_abort = failing_insert, slow_abort
    pending._write_messages = paused_write
    failed: list[BaseException] = []

    def run_a() -> None:
        try:
            engine.run_session("a")
        except RuntimeError as e:
            failed.append(e)

    def run_b() -> None:
        aborting.wait(5)
        engine.run_session("b")

    threads = [threading.Thread(target=run_a, name="A"), threading.Thread(target=run_b, name="B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(failed) == 1 and forgot.is_set() and b_writes.is_set()
    rec.after_insert, rec.after_abort = insert, abort
    del pending._write_messages
    live = projection_rows(engine)
    engine.projections.rebuild()
    assert projection_rows(engine) == live
