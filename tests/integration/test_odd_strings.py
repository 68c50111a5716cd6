"""Strings the log cannot encode, and oversized ids: the run fails cleanly, by name.

Whatever text a handler hands in (a message id, an input's title, a cost's
label) or raises (an exception's message), the session closes, the workflow
can go on once resumed, and nothing already in the log is lost.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import flowledger as fl
from flowledger.domain.ids import workflow_id
from tests import postgres
from tests.helpers import message_status

LONE_SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
ANY_TEXT = st.text(st.one_of(st.characters(), LONE_SURROGATES), max_size=40)
_names = itertools.count()


def open_session(engine: fl.Engine, name: str) -> Any:
    wf = engine.log.load(workflow_id(name))
    return wf.open_session


def producer_workflow(name: str, body: Any) -> fl.Workflow:
    wf = fl.Workflow(name, topics=["in"])

    @wf.producer(publishes=["in"])
    def p(ctx: Any, state: Any) -> None:
        body(ctx)

    return wf


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def shared_engine(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One engine for many examples, on each store: on PostgreSQL, text columns
    cannot hold NUL, which ids refuse and recorded text escapes."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            store = f"sqlite:///{tmp_path_factory.mktemp('odd') / 'flow.db'}"
        else:
            store = stack.enter_context(postgres.fresh_schema())
        engine = fl.Engine(store)
        yield engine
        engine.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT)
@example(text="before\x00after")
def test_any_exception_text_leaves_the_session_closed(shared_engine: fl.Engine,
                                                      text: str) -> None:
    name = f"exc-{next(_names)}"

    def raise_it(ctx: Any) -> None:
        raise ValueError(text)

    shared_engine.register(producer_workflow(name, raise_it))
    result = shared_engine.run_session(name)
    assert result.status == "failed"
    assert result.error is not None
    result.error.encode("utf-8")  # what was recorded is plain UTF-8
    assert "ValueError" in result.error
    assert open_session(shared_engine, name) is None
    # The recorded reason is the one the log holds, readable by a new reader.
    with fl.Engine(shared_engine.store) as reader:
        assert [r.reason for r in shared_engine.runs(workflow=name)] == [
            r.reason for r in reader.runs(workflow=name)]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT, where=st.sampled_from(["message_id", "title", "label", "source"]))
@example(text="a\x00b", where="message_id")
@example(text="a\x00b", where="label")
@example(text="mail\x1fbox", where="source")
@example(text="a\x1fb", where="message_id")
def test_any_text_in_an_id_or_title_is_stored_or_refused_by_name(shared_engine: fl.Engine,
                                                                 text: str,
                                                                 where: str) -> None:
    name = f"txt-{next(_names)}"

    def use(ctx: Any) -> None:
        if where == "message_id":
            ctx.publish("in", message_id=text, payload=1)
        elif where == "title":
            ctx.publish("in", message_id="m", payload=1, input_id=ctx.register_input(
                source="mail", type="email", id="1", title=text))
        elif where == "label":
            ctx.add_cost("0.01", label=text)
        else:
            ctx.publish("in", message_id="m", payload=1, input_id=ctx.register_input(
                source=text, type="email", id="1"))

    shared_engine.register(producer_workflow(name, use))
    result = shared_engine.run_session(name)
    assert open_session(shared_engine, name) is None
    encodable = ("\x00" not in text and "\x1f" not in text
                 and not any(0xD800 <= ord(c) <= 0xDFFF for c in text))
    empty_refused = where in ("message_id", "source") and not text
    if encodable and not empty_refused:
        assert result.status == "completed", result.error
    else:
        assert result.status == "failed"
        assert result.error is not None
        wanted = {"message_id": "message_id", "title": "title of input",
                  "label": "label", "source": "source"}[where]
        assert wanted in result.error
        assert "LogicError" in result.error


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


@pytest.mark.parametrize("error", [
    Unprintable(), ValueError("x" * 3_000_000), ValueError("\ud800" * 10),
])
def test_an_exception_that_cannot_be_shown_still_fails_the_run_cleanly(make_engine,
                                                                       error: Exception
                                                                       ) -> None:
    def raise_it(ctx: Any) -> None:
        raise error

    engine = make_engine()
    engine.register(producer_workflow("wf", raise_it))
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert result.error is not None and len(result.error) < 10_000
    assert open_session(engine, "wf") is None


def test_an_unencodable_message_id_is_named_as_such_even_without_a_consumer(make_engine
                                                                           ) -> None:
    def publish(ctx: Any) -> None:
        ctx.publish("in", message_id="id-\ud800", payload=1)

    engine = make_engine()
    engine.register(producer_workflow("wf", publish))
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert "message_id of a message published to 'in' holds '\\ud800' at position 3" in (
        result.error or "")
    assert "returned state" not in (result.error or "")


def test_a_message_id_is_bounded_like_other_fields(make_engine) -> None:
    def publish(ctx: Any) -> None:
        ctx.publish("in", message_id="m" * (2 * 1024 * 1024), payload=1)

    engine = make_engine()
    engine.register(producer_workflow("wf", publish))
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert "message_id is 2,097,152 bytes, over the limit of 1,024 bytes" in (result.error or "")
    small = make_engine(limits=fl.Limits(message_id=8))
    small.register(producer_workflow("wf2", lambda ctx: ctx.publish("in", "123456789")))
    assert "message_id is 9 bytes, over the limit of 8" in (small.run_session("wf2").error or "")


def test_a_consumer_reserving_an_unencodable_id_fails_by_the_reservation_rule(make_engine
                                                                             ) -> None:
    wf = fl.Workflow("wf", topics=["in"])

    @wf.producer(publishes=["in"])
    def p(ctx: Any, state: Any) -> None:
        ctx.publish("in", message_id="m", payload=1)

    @wf.consumer(subscribe=["in"])
    class C:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared:
            return fl.Prepared(reservations={"in": ["\udfff"]}, title="t\ud800")

    engine = make_engine()
    engine.register(wf)
    result = engine.run_session("wf")
    assert result.status == "failed"
    error = result.error or ""
    assert "reserved in/\\udfff, which is un" in error and "UnicodeEncodeError" not in error
    assert open_session(engine, "wf") is None
    assert message_status(engine, "wf", "in") == {"pending": 1}  # nothing lost


def test_names_that_would_join_into_another_s_id_are_refused(make_engine) -> None:
    """Stream ids join names with the unit separator: an input of source
    "mail\x1fbox", type "msg" was the input of source "mail", type "box\x1fmsg",
    and workflow "w\x1fa"'s topic "b" held workflow "w"'s topic "a\x1fb"'s
    messages. The separator is refused in names and ids, by name."""
    with pytest.raises(fl.DefinitionError, match=r"topics 'a\\x1fb' holds the unit separator"):
        fl.Workflow("w", topics=["a\x1fb"])
    with pytest.raises(fl.DefinitionError, match=r"a workflow's name 'w\\x1fa' holds the unit"):
        fl.Workflow("w\x1fa", topics=["b"])
    engine = make_engine()
    engine.register(producer_workflow("inputs", lambda ctx: ctx.register_input(
        source="mail", type="box\x1fmsg", id="1")))
    result = engine.run_session("inputs")
    assert result.status == "failed" and "type holds the unit separator" in (result.error or "")
    assert open_session(engine, "inputs") is None


@pytest.mark.parametrize("what", ["workflow", "topic", "handler", "tool"])
def test_a_name_longer_than_a_store_can_index_is_refused_at_definition(what: str) -> None:
    """A 3,000-character topic or handler name ran on SQLite and left the
    workflow stuck on PostgreSQL, whose index rows hold about 2.7 kB."""
    long = "n" * 201
    with pytest.raises(fl.DefinitionError, match="is 201 bytes long, over the 200 bytes"):
        if what == "workflow":
            fl.Workflow(long)
        elif what == "topic":
            fl.Workflow("w", topics=[long])
        elif what == "handler":
            wf = fl.Workflow("w", topics=["in"])
            wf.producer(publishes=["in"], name=long)(lambda ctx, state: None)
        else:
            type("LongTool", (fl.Tool,), {"name": long}).check_definition()
    fl.Workflow("n" * 200, topics=["é" * 100])  # 200 bytes each: accepted
