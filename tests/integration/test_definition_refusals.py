"""Definitions that could never run as written are refused before anything runs.

`async def` handlers and tool methods (their body would never run: an
`async def mutate` would skip its side effect without a word), generator
functions, and a `None` or a single object where a list is expected.
"""

from __future__ import annotations

from typing import Any

import pytest

import flowledger as fl
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow, message_status


def consumer_with(step: str, kind: str) -> type:
    namespace: dict[str, Any] = {}
    body = {"async": f"async def {step}(self, *args): pass",
            "generator": f"def {step}(self, *args):\n    yield None"}[kind]
    exec(body, namespace)  # builds the method under test
    methods: dict[str, Any] = {"prepare": lambda self, ctx, state: None}
    methods[step] = namespace[step]
    return type("Handler", (), methods)


@pytest.mark.parametrize("kind", ["async", "generator"])
@pytest.mark.parametrize("step", ["prepare", "mutate", "next"])
def test_an_async_or_generator_consumer_method_is_refused(step: str, kind: str) -> None:
    wf = fl.Workflow("wf", topics=["in"])
    with pytest.raises(fl.DefinitionError) as e:
        wf.consumer(subscribe=["in"])(consumer_with(step, kind))
    text = str(e.value)
    assert f"consumer 'Handler': {step} is " in text
    assert ("async def" if kind == "async" else "generator function") in text
    assert wf.consumers == []


def test_an_async_producer_is_refused() -> None:
    wf = fl.Workflow("wf", topics=["in"])

    async def poll(ctx: Any, state: Any) -> None:
        ctx.publish("in", payload=1)

    with pytest.raises(fl.DefinitionError, match="producer 'poll': the producer is an async"):
        wf.producer(publishes=["in"])(poll)


class AsyncMutatorTool(fl.Tool):
    name = "ledger"

    @fl.mutator
    async def append(self, key: str, value: str) -> None:
        raise AssertionError("never called")


class AsyncReadTool(fl.Tool):
    name = "ledger"

    @fl.read
    async def find(self, key: str) -> None:
        raise AssertionError("never called")

    @fl.mutator
    def append(self, key: str, value: str) -> None:
        raise AssertionError("never called")


class AsyncReconcileTool(fl.Tool):
    name = "ledger"

    @fl.mutator(reconcile="check")
    def append(self, key: str, value: str) -> None:
        raise AssertionError("never called")

    async def check(self, key: str, value: str) -> fl.Reconciliation:
        raise AssertionError("never called")


@pytest.mark.parametrize(("tool", "words"), [
    (AsyncMutatorTool, "tool 'ledger': mutator 'append' is an async def"),
    (AsyncReadTool, "tool 'ledger': read 'find' is an async def"),
    (AsyncReconcileTool, "tool 'ledger': reconcile method 'check' is an async def"),
])
def test_an_async_tool_method_is_refused_at_registration(make_engine, tool: type,
                                                         words: str) -> None:
    engine = make_engine()
    with pytest.raises(fl.DefinitionError, match=words):
        engine.register(ledger_workflow(), tools=[tool()])
    assert list(engine.events()) == []  # nothing was written


def test_a_mutate_that_hands_back_a_coroutine_fails_the_run_and_loses_nothing(
        make_engine, ledger: ExternalLedger) -> None:
    """A plain def that returns a coroutine gets past registration; at run time
    the run fails as a logic error instead of skipping the side effect."""
    wf = ledger_workflow(items=["a"])
    consumer = wf.consumers[0].cls
    original = consumer.mutate

    async def later(self: Any, ctx: Any, prepared: fl.Prepared) -> None:
        original(self, ctx, prepared)

    consumer.mutate = lambda self, ctx, prepared: later(self, ctx, prepared)
    tool = ScriptedLedgerTool(ledger)
    engine = make_engine()
    engine.register(wf, tools=[tool])
    result = engine.run_session("wf")
    assert result.status == "failed"
    assert "returned coroutine, so its body never ran" in (result.error or "")
    assert tool.calls == [] and ledger.keys() == []
    assert message_status(engine, "wf", "in") == {"pending": 1}  # not consumed, not lost


@pytest.mark.parametrize("tools", [None, ScriptedLedgerTool, "ledger", 3])
def test_register_names_its_tools_argument(make_engine, ledger: ExternalLedger,
                                           tools: Any) -> None:
    if tools is ScriptedLedgerTool:
        tools = ScriptedLedgerTool(ledger)  # one tool, not a list of them
    engine = make_engine()
    with pytest.raises(fl.DefinitionError) as e:
        engine.register(ledger_workflow(), tools=tools)
    assert "engine.register's tools must be a list of fl.Tool instances" in str(e.value)
    assert "or [] for none" in str(e.value)


@pytest.mark.parametrize(("make", "words"), [
    (lambda: fl.Workflow("wf", topics=5), "topics must be a list of names, got 5"),
    (lambda: fl.Workflow("wf", topics=["a", None]),
     "topics: expected a non-empty string, got None"),
    (lambda: fl.Workflow("w\ud800"), "a workflow's name 'w\\ud800' holds '\\ud800'"),
    (lambda: fl.Workflow("wf", topics=["a"]).producer(publishes=["a"], name=7)(
        lambda ctx, state: None), "a handler's name: expected a non-empty string, got 7"),
    (lambda: fl.Workflow("wf", topics=["a"]).consumer(subscribe=3)(type("C", (), {})),
     "subscribe must be a list of names, got 3"),
])
def test_a_bad_argument_to_a_definition_is_named(make: Any, words: str) -> None:
    with pytest.raises(fl.DefinitionError) as e:
        make()
    assert words in str(e.value)
