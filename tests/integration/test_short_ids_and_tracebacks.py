"""Issue 13, in the engine: one place resolves a short id or prefix to the id it
names (Engine.resolve_id, used by every call that takes an id), and a run that
fails on a bug keeps its handler's traceback, bounded, in the log."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flowledger as fl
from flowledger.domain.failures import MAX_TRACEBACK_TEXT, TRACEBACK_FRAMES, traceback_of
from flowledger.read_side.queries import AmbiguousId, names_id
from tests.helpers import MemoryLedger, ScriptedLedgerTool, ledger_workflow


@pytest.fixture
def engine(store: str) -> Any:
    engine = fl.Engine(store)
    engine.register(ledger_workflow(items=["a", "b", "c", "d"]),
                    tools=[ScriptedLedgerTool(MemoryLedger())])
    assert engine.run_session("wf").status == "completed"
    yield engine
    engine.close()


def test_a_unique_prefix_or_short_id_names_its_run(engine: Any) -> None:
    runs = engine.runs()
    target: UUID = runs[0].run_id
    for named in (target.hex[-8:], str(target)[:23], target.hex[:28], target.hex.upper()[-8:],
                  target, str(target), target.hex[-8:-2]):  # the last: a short id's start
        assert engine.resolve_id("run", named) == target
    # Every call that takes a run id goes through it.
    assert engine.run(target.hex[-8:]).id == target
    assert engine.run_timeline(target.hex[-8:]).run.run_id == target
    assert [e.position for e in engine.events(run=target.hex[-8:])] == [
        e.position for e in engine.events(run=target)]


def test_sessions_go_through_it_too(engine: Any) -> None:
    session = engine.sessions()[0].session_id
    assert engine.resolve_id("session", session.hex[-8:]) == session
    assert engine.runs(session=session.hex[-8:]) == engine.runs(session=session)
    assert engine.costs(session=session.hex[-8:]).session_id == session


def test_an_ambiguous_prefix_lists_every_candidate(engine: Any) -> None:
    ids = [r.run_id for r in engine.runs()]
    prefix = ids[0].hex[:6]  # time-ordered ids made within a second share it
    matching = sorted(i for i in ids if i.hex.startswith(prefix))
    assert len(matching) > 1
    with pytest.raises(AmbiguousId) as refused:
        engine.resolve_id("run", prefix)
    assert list(refused.value.candidates) == matching
    assert isinstance(refused.value, fl.InvalidArgument)
    for run_id in matching:
        assert str(run_id) in str(refused.value)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_id_is_named_by_its_start_its_end_or_its_short_ids_start(engine: Any,
                                                                   data: st.DataObject) -> None:
    """resolve_id (SQL over the read side) names exactly the ids the rule names."""
    ids = [r.run_id for r in engine.runs()]
    one = data.draw(st.sampled_from(ids)).hex
    start = data.draw(st.integers(0, 28))
    digits = data.draw(st.one_of(
        st.integers(4, 32).map(lambda n: one[:n]),                 # a prefix
        st.integers(4, 32).map(lambda n: one[-n:]),                # an end
        st.integers(4, 8).map(lambda n: one[-8:][:n]),             # a short id's start
        st.integers(4, 8).map(lambda n: one[start:start + n]),     # anywhere: mostly nothing
        st.text("0123456789abcdef", min_size=4, max_size=8)))
    named = sorted(i for i in ids if names_id(i.hex, digits))
    if len(named) == 1:
        assert engine.resolve_id("run", digits) == named[0]
    elif not named:
        with pytest.raises(fl.NotFoundError):
            engine.resolve_id("run", digits)
    else:
        with pytest.raises(AmbiguousId) as refused:
            engine.resolve_id("run", digits)
        assert list(refused.value.candidates) == named


@pytest.mark.parametrize(("given", "error", "fragment"), [
    ("ab", fl.InvalidArgument, "too short"),
    ("not-hex!", fl.InvalidArgument, "is not a run id"),
    ("ffffffff", fl.NotFoundError, "no run 'ffffffff'"),
])
def test_what_names_no_run_is_refused(engine: Any, given: str, error: type,
                                      fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        engine.resolve_id("run", given)


def test_the_past_resolves_against_the_past(engine: Any) -> None:
    newest = engine.runs()[0].run_id
    with engine.at(3) as past, pytest.raises(fl.NotFoundError):
        past.run_timeline(newest.hex[-8:])


# ------------------------------------------------------------------ tracebacks


def _buggy() -> fl.Workflow:
    wf = fl.Workflow("buggy", topics=["in"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> None:
        ctx.publish("in", message_id="x", payload={"n": 0})

    @wf.consumer(subscribe=["in"])
    class Divide:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            pending = ctx.peek("in", limit=1)
            if not pending:
                return None
            return fl.Prepared(reservations={"in": [pending[0].message_id]},
                               data=1 / pending[0].payload["n"])

    return wf


def test_a_failing_handler_keeps_its_traceback(tmp_path: Path) -> None:
    with fl.Engine(f"sqlite:///{tmp_path / 'flow.db'}") as engine:
        engine.register(_buggy())
        engine.run_session("buggy")
        failed = [r for r in engine.runs() if r.status == "failed:logic"]
        assert len(failed) == 1
        run = engine.run(failed[0].run_id)
        assert run.reason == "ZeroDivisionError: division by zero"
        assert run.traceback is not None
        assert __file__ in run.traceback and ", in prepare" in run.traceback
        assert "data=1 / pending[0].payload[\"n\"]" in run.traceback
        assert run.traceback.endswith("ZeroDivisionError: division by zero")
        assert failed[0].traceback == run.traceback  # listings carry it
        assert engine.run_timeline(run.id).run.traceback == run.traceback
    # And a new engine reads it back from the log.
    with fl.Engine(f"sqlite:///{tmp_path / 'flow.db'}") as engine:
        assert engine.run(failed[0].run_id).traceback == run.traceback


def _deep(n: int) -> None:
    if n == 0:
        raise ValueError("x" * 10_000)
    _deep(n - 1)


def test_the_traceback_is_bounded_to_the_last_frames() -> None:
    try:
        _deep(50)
    except ValueError as e:
        text = traceback_of(e)
    assert text is not None
    assert text.count("  File ") <= TRACEBACK_FRAMES
    assert len(text) <= MAX_TRACEBACK_TEXT + 100
    assert "in _deep" in text
    assert traceback_of(ValueError("never raised")) is None
