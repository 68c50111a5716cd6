"""What each handler step may do (DESIGN §1.1), and the wording of each broken rule.

A reader finds every rule of §1.1 and §1.2 that concerns a handler's calls here.
"""

from __future__ import annotations

from enum import StrEnum

from flowledger.domain.errors import LogicError


class Step(StrEnum):
    EXECUTE = "producer"
    PREPARE = "prepare"
    MUTATE = "mutate"
    NEXT = "next"


class Operation(StrEnum):
    READ = "read through a tool"
    MUTATE = "call a mutator"
    PEEK = "peek a topic"
    PUBLISH = "publish"
    REGISTER_INPUT = "register an input"
    ADD_COST = "add a cost"


ALLOWED: dict[Step, frozenset[Operation]] = {
    Step.EXECUTE: frozenset(
        {Operation.READ, Operation.PUBLISH, Operation.REGISTER_INPUT, Operation.ADD_COST}
    ),
    Step.PREPARE: frozenset({Operation.PEEK, Operation.READ, Operation.ADD_COST}),
    Step.MUTATE: frozenset({Operation.MUTATE, Operation.ADD_COST}),
    Step.NEXT: frozenset({Operation.PUBLISH, Operation.ADD_COST}),
}

_WHY: dict[Step, str] = {
    Step.EXECUTE: "a producer may read, register inputs and publish; it may not mutate or peek",
    Step.PREPARE: "prepare is read-only: it may peek and read, nothing else",
    Step.MUTATE: "mutate may make one mutator call and nothing else",
    Step.NEXT: "next may only publish: no reads, no mutations",
}


class RuleBroken(LogicError):
    """A handler broke a rule of DESIGN §1.1 and §1.2; `rule` names it."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


def check_allowed(step: Step, op: Operation, where: str) -> None:
    if op not in ALLOWED[step]:
        raise RuleBroken(
            f"no {op.name.lower()} in {step.value}",
            f"{where}: tried to {op.value} in {step.value}; {_WHY[step]}",
        )


def second_mutation(where: str, first: str, second: str) -> RuleBroken:
    return RuleBroken(
        "one mutation per run",
        f"{where}: mutate called {second} after {first}; a run makes at most one "
        f"mutator call. Split the work into two consumers or two runs.",
    )


def call_after_mutation(where: str, what: str) -> RuleBroken:
    return RuleBroken(
        "mutation is the last thing mutate does",
        f"{where}: tried to {what} after the mutator call; the mutator call must be "
        f"the last thing mutate does. Move that work to prepare or next.",
    )


def undeclared_topic(where: str, topic: str, declared: list[str]) -> RuleBroken:
    return RuleBroken(
        "publish only to declared topics",
        f"{where}: published to {topic!r}, which it does not declare "
        f"(publishes={declared}). Add it to the decorator's publishes=[...].",
    )


def unsubscribed_topic(where: str, topic: str, subscribed: list[str], action: str) -> RuleBroken:
    return RuleBroken(
        f"{action} only subscribed topics",
        f"{where}: tried to {action} topic {topic!r}, which it does not subscribe to "
        f"(subscribe={subscribed}). Add it to the decorator's subscribe=[...].",
    )


def unreservable_message(where: str, topic: str, message_id: str, status: str) -> RuleBroken:
    return RuleBroken(
        "reserve only pending events",
        f"{where}: reserved {topic}/{message_id}, which is {status}; only pending events "
        f"(or events already reserved by the same run chain) can be reserved. "
        f"Reserve what ctx.peek() returned.",
    )


def input_id_in_next(where: str) -> RuleBroken:
    return RuleBroken(
        "next inherits causes",
        f"{where}: passed input_id to publish in next; events published in next inherit "
        f"the inputs of the events the run reserved. Drop the input_id argument.",
    )


def unknown_input(where: str, input_id: object, why: str = "") -> RuleBroken:
    return RuleBroken(
        "publish with a registered input",
        f"{where}: input_id {input_id} was not returned by ctx.register_input in this "
        f"workflow. {why or 'Register the input first and pass the id it returns.'}",
    )


def undeclared_tool(where: str, tool: str, declared: list[str]) -> RuleBroken:
    return RuleBroken(
        "use only declared tools",
        f"{where}: used tool {tool!r}, which it does not declare (tools={declared}). "
        f"Add it to the decorator's tools=[...].",
    )
