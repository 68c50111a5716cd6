"""PostgreSQL appends on the forecast (postgres_forecast.py, ADR 0017): a writer
that is the only one appending sends each append in one message; one whose
forecast another process made wrong stores nothing of that attempt, appends
the ordinary way, and leaves the log, its chain and its projections as if it
had never forecast."""

from __future__ import annotations

import inspect
import threading
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

import flowledger as fl
from flowledger.domain.ids import workflow_id
from flowledger.domain.workflow import Workflow
from flowledger.infrastructure.postgres_batch import PgBatch
from flowledger.infrastructure.postgres_forecast import GUARD_FAILED, Forecast
from flowledger.infrastructure.postgres_recorder import FlowPostgresRecorder
from flowledger.infrastructure.store import Fence
from flowledger.projections.runner import ProjectionRunner
from flowledger.testing import assert_projections_rebuild_equal
from tests.helpers import ExternalLedger, ScriptedLedgerTool, costly_workflow, mid_call_tool

on_postgresql = pytest.mark.parametrize(
    "store", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)


class Seen:
    """Counts appends made on a forecast, and those whose forecast missed, found
    at once or when the answer of an append sent without waiting was read
    (`missed_later`); the real methods run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent = self.missed = self.missed_later = 0
        append = FlowPostgresRecorder._append
        signature = inspect.signature(append)
        refused = FlowPostgresRecorder._after_refusal

        def counted_refusal(recorder: Any, e: BaseException, sent: Any) -> Any:
            missed = isinstance(e, psycopg.Error) and e.sqlstate == GUARD_FAILED
            self.missed += missed
            self.missed_later += missed
            return refused(recorder, e, sent)

        monkeypatch.setattr(FlowPostgresRecorder, "_after_refusal", counted_refusal)

        def counted(recorder: Any, *a: Any) -> Any:
            forecast = signature.bind(recorder, *a).arguments["forecast"]
            self.sent += forecast
            try:
                return append(recorder, *a)
            except psycopg.Error as e:
                self.missed += forecast and e.sqlstate == GUARD_FAILED
                raise

        monkeypatch.setattr(FlowPostgresRecorder, "_append", counted)


@on_postgresql
def test_a_writer_alone_appends_on_its_forecast(make_engine, ledger, monkeypatch):
    seen = Seen(monkeypatch)
    engine = make_engine()
    engine.register(costly_workflow(["a", "b", "c", "d"], ["0.5"]),
                    tools=[ScriptedLedgerTool(ledger)])
    result = engine.run_session("prop")
    assert result.status == "completed", result.error
    assert seen.missed == 0
    assert seen.sent >= 3 * 4  # every append of the four consumer runs, at least
    assert engine.verify().ok
    assert_projections_rebuild_equal(engine)


@on_postgresql
@pytest.mark.parametrize("meddle", ["append", "catch_up"])
def test_a_forecast_another_writer_made_wrong_stores_nothing(make_engine, tmp_path, monkeypatch,
                                                             caplog, meddle):
    """During each external call, another engine appends (the head moves) or
    only catches up (the head stays, the tracking rows move past this
    engine's held events): the run's next append misses its forecast. The
    position sequence is never set back by the attempt that missed (the other
    appends more events than that append holds: a sequence set from the
    forecast positions before the guard ran would be behind the head)."""
    seen = Seen(monkeypatch)
    ledger = ExternalLedger(tmp_path / "counted.db", count_calls=True)
    engine, other = make_engine(), make_engine()

    def write(key: str) -> None:
        if meddle == "append":
            for n in range(4):
                other.register(fl.Workflow(f"other-{key}-{n}", topics=["t"]))
        else:
            other.status()  # folds this engine's held events in

    engine.register(costly_workflow(["a", "b", "c"], ["0.5"]),
                    tools=[mid_call_tool(write)(ledger)])
    result = engine.run_session("prop")
    assert result.status == "completed", result.error
    assert [r.committed for r in result.runs] == [True] * 4
    assert seen.missed >= 1
    assert ledger.calls_made() == 3 and sorted(ledger.keys()) == ["a", "b", "c"]
    assert engine.verify().ok  # the chain links every event once, in order
    assert_projections_rebuild_equal(engine)
    rec = engine.log.flow_recorder
    with psycopg.connect(**rec.conninfo) as c:
        c.execute(f'SET search_path TO "{rec.schema}"')
        last = c.execute(f"SELECT last_value FROM {rec._sequence}").fetchone()[0]
    assert last == rec.max_notification_id()
    assert "position sequence" not in caplog.text  # never found behind the head


@on_postgresql
def test_a_stale_fence_on_the_forecast_path_stores_nothing(make_engine, monkeypatch):
    """The guard checks the fenced stream too: an append fenced on a version the
    stream is no longer at is refused even when nobody appended since this
    writer's last append (the head is as forecast), and nothing of it is stored."""
    seen = Seen(monkeypatch)
    engine = make_engine()
    engine.register(fl.Workflow("wf", topics=["t"]))
    log = engine.log
    wf = log.load(workflow_id("wf"))
    head = log.flow_recorder.max_notification_id()
    extra = Workflow.register(now=datetime(2026, 1, 1, tzinfo=UTC), name="other",
                              fingerprint="f", topics=["t"], handlers=[])
    sent = seen.sent
    with pytest.raises(fl.ConcurrencyError, match="lost its lock"):
        log.append(extra, fence=Fence(wf.id, wf.version + 1))  # one ahead of the stream
    assert seen.sent > sent and seen.missed >= 1  # tried on the forecast, which missed
    assert log.flow_recorder.max_notification_id() == head
    assert log.load(extra.id) is None
    assert engine.verify().ok


@on_postgresql
def test_an_ordinary_append_folds_from_what_it_asked_under_the_lock(make_engine, tmp_path,
                                                                    monkeypatch):
    """An append made the ordinary way asks, in its first message and under the
    log's lock, for the rows its fold will read: here the reserved message's.
    Another engine appended while each run prepared, moving the projections,
    so the engine drops the rows it kept of other workflows; not what it just
    asked for, which was read after that move. The fold reads nothing more:
    each append sends two messages, never three."""
    monkeypatch.setattr(Forecast, "usable", lambda self, chained: False)  # the ordinary way
    messages = [0]
    sent: list[int] = []
    flush, append = PgBatch.flush, FlowPostgresRecorder._append

    def counted_flush(batch: PgBatch, later: bool = False) -> bool:
        messages[0] += bool(batch._queue)
        return flush(batch, later)

    def counted_append(recorder: Any, *a: Any) -> Any:
        before = messages[0]
        try:
            return append(recorder, *a)
        finally:
            sent.append(messages[0] - before)

    engine, other = make_engine(), make_engine()
    ledger = ExternalLedger(tmp_path / "counted.db", count_calls=True)
    wf = fl.Workflow("wf", topics=["in"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> None:
        for item in "abc":
            ctx.publish("in", message_id=item, payload=item)

    @wf.consumer(subscribe=["in"])
    class Take:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            found = ctx.peek("in", limit=1)
            if not found:
                return None
            other.register(fl.Workflow(f"other-{found[0].message_id}", topics=["t"]))
            return fl.Prepared(reservations={"in": [found[0].message_id]},
                               data=found[0].payload)

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.ledger.append(prepared.data, "v")

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> None:
            return None

    engine.register(wf, tools=[ScriptedLedgerTool(ledger)])
    engine.run_session("wf", trigger="manual", max_iterations=0)  # publishes a, b, c
    # Another writer's append before the session too: this engine holds no append
    # (ADR 0012) from the session's first on.
    other.register(fl.Workflow("other", topics=["t"]))
    monkeypatch.setattr(PgBatch, "flush", counted_flush)
    monkeypatch.setattr(FlowPostgresRecorder, "_append", counted_append)

    result = engine.run_session("wf", trigger="event")

    assert result.status == "completed", result.error
    assert ledger.calls_made() == 3 and ledger.keys() == ["a", "b", "c"]
    assert sent and max(sent) == 2, sent
    assert_projections_rebuild_equal(engine)


@on_postgresql
def test_an_outcome_refused_after_it_was_sent_stops_the_session_at_its_next_append(
        make_engine, tmp_path, monkeypatch):
    """A run's outcome is sent without waiting (ADR 0017, "Answers read
    later"). Here another writer moved the session's workflow stream during
    the third run's tool call, so the server refuses that outcome (its
    fence): found when the session next uses the store, and the session
    stops at its next append with the refusal's own error, nothing more
    stored. Each call was made once; the run is left for recovery to
    reconcile, as after any refused append."""
    seen = Seen(monkeypatch)
    other = make_engine()

    def move_the_workflow() -> None:
        wf = other.log.load(workflow_id("prop"))
        assert wf is not None
        wf.change_definition(datetime(2026, 1, 1, tzinfo=UTC), "moved", wf.topics, wf.handlers)
        other.log.append(wf)

    engine, ledger = _meddling_engine(make_engine, tmp_path, monkeypatch, move_the_workflow)
    with pytest.raises(fl.ConcurrencyError, match=r"^this session lost its lock: another "
                                                  r"process took it over"):
        engine.run_session("prop")  # raised as the append itself would have
    assert seen.missed_later >= 1  # the outcome's guard, found when its answer was read
    assert ledger.calls_made() == 3
    assert len([e for e in engine.events() if e.name == "MutationApplied"]) == 2  # not c's
    assert engine.verify().ok


def _meddling_engine(make_engine: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                     meddle: Any) -> tuple[fl.Engine, ExternalLedger]:
    """An engine whose third tool call (of items a, b, c) runs `meddle`; the
    outcome's fold is held for the commit even though another writer appends,
    so the outcome's message asks for nothing and is sent without waiting."""
    monkeypatch.setattr(ProjectionRunner, "QUIET_BEFORE_HOLDING", 0)
    ledger = ExternalLedger(tmp_path / "counted.db", count_calls=True)
    engine = make_engine()

    def write(key: str) -> None:
        if key == "c":  # the runs before prepare the statements an outcome sends
            meddle()

    engine.register(costly_workflow(["a", "b", "c"], ["0.5"]), tools=[mid_call_tool(write)(ledger)])
    return engine, ledger


@on_postgresql
def test_an_outcome_whose_forecast_missed_after_it_was_sent_is_made_again(
        make_engine, tmp_path, monkeypatch):
    """Another engine appends during the third tool call: the outcome sent on
    the forecast is refused by its guard, found when its answer is read, and
    made again the ordinary way; the session completes as if it had waited."""
    seen = Seen(monkeypatch)
    other = make_engine()
    engine, ledger = _meddling_engine(make_engine, tmp_path, monkeypatch,
                                      lambda: other.register(fl.Workflow("other", topics=["t"])))
    result = engine.run_session("prop")
    assert result.status == "completed", result.error
    assert seen.missed_later >= 1
    assert ledger.calls_made() == 3 and sorted(ledger.keys()) == ["a", "b", "c"]
    assert len([e for e in engine.events() if e.name == "MutationApplied"]) == 3
    assert engine.verify().ok
    assert_projections_rebuild_equal(engine)


class BareLog:
    """An engine's log with no projection folding in its appends (a fold that
    reads rows sends a first message, which answers at once), and one append
    sent without waiting and answered: it prepares the statements on the
    connection (a statement's first PREPARE goes alone, and what comes
    before it cannot wait)."""

    def __init__(self, make_engine: Any) -> None:
        self.engine = make_engine()
        self.engine.register(fl.Workflow("wf", topics=["t"]))
        self.log = self.engine.log
        self.rec = self.log.flow_recorder
        self.wf = self.log.load(workflow_id("wf"))
        self.rec.after_insert = self.rec.before_fold = None
        self.told: list[Any] = []
        self.head = self.append("first")
        assert self.told == [] and self.rec.max_notification_id() == self.head
        assert self.told == [self.head]

    def append(self, name: str, stale: bool = False) -> int:
        """A new workflow's registration, appended without waiting for the
        answer, fenced on "wf" (as it is, or `stale`: one version ahead)."""
        registered = Workflow.register(now=datetime(2026, 1, 1, tzinfo=UTC), name=name,
                                       fingerprint="f", topics=["t"], handlers=[])
        fence = Fence(self.wf.id, self.wf.version + stale)
        return self.log.append(registered, fence=fence, sync=False, answered=self.told.append)


@on_postgresql
def test_an_append_answered_later_that_was_refused_is_told_when_the_store_is_next_used(
        make_engine):
    """An append sent without waiting (ADR 0017, "Answers read later"),
    fenced on a version its stream is no longer at: nothing of it is stored,
    and its caller is told, in the words the append would have raised, before
    the next read of the store goes on."""
    bare = BareLog(make_engine)
    assert bare.append("other", stale=True) == bare.head + 1
    assert bare.told == [bare.head]  # sent, not answered yet
    assert bare.rec.max_notification_id() == bare.head  # read once the answer was
    assert len(bare.told) == 2 and isinstance(bare.told[1], fl.ConcurrencyError)
    assert "this session lost its lock" in str(bare.told[1])
    assert bare.log.load(workflow_id("other")) is None
    assert bare.engine.verify().ok


@on_postgresql
def test_a_stream_the_unanswered_append_does_not_write_is_read_without_its_answer(
        make_engine):
    """A run's commit looks up the messages it publishes while the server
    stores the run's outcome: a read of one stream waits for an unanswered
    append only if that append writes the stream, and then sees it."""
    bare = BareLog(make_engine)
    bare.append("second")
    assert bare.rec._unanswered is not None and len(bare.told) == 1
    assert bare.log.load(workflow_id("first"), short=True) is not None  # another stream
    assert bare.rec._unanswered is not None and len(bare.told) == 1  # still unanswered
    assert bare.log.load(workflow_id("second"), short=True) is not None  # its own
    assert bare.rec._unanswered is None and len(bare.told) == 2


@on_postgresql
def test_an_answer_lost_with_its_connection_is_told_and_never_made_again(make_engine):
    """The writer's connection ends while an append sent without waiting
    waits for the log's lock: its outcome is unknown to the engine (here it
    was not stored), so it is told as the failure it is, not made again."""
    bare = BareLog(make_engine)
    rec = bare.rec
    with psycopg.connect(**bare.log.config.libpq(), autocommit=False) as holder:
        holder.execute(f'LOCK TABLE "{rec.schema}".{rec.events_table_name} IN EXCLUSIVE MODE')
        bare.append("second")
        holder.execute("SELECT pg_terminate_backend(%s)", (rec._writers[False].info.backend_pid,))
        holder.rollback()
    rec.settle()
    assert len(bare.told) == 2 and isinstance(bare.told[1], psycopg.OperationalError)
    assert rec.max_notification_id() == bare.head
    assert bare.log.load(workflow_id("second")) is None
    assert bare.engine.verify().ok


@on_postgresql
def test_another_threads_read_does_not_wait_for_an_unanswered_append(make_engine):
    """Only the thread that sent an append must see it: a read in another
    thread (a status call of a service, say) goes on without its answer."""
    bare = BareLog(make_engine)
    bare.append("second")
    elsewhere = threading.Thread(target=bare.rec.max_notification_id)
    elsewhere.start()
    elsewhere.join()
    assert bare.rec._unanswered is not None and len(bare.told) == 1
    bare.rec.max_notification_id()  # this thread's read: the answer first
    assert bare.rec._unanswered is None and len(bare.told) == 2
