"""Replay debugging (DESIGN §2.5): would my current code have done the right thing?

`engine.replay(run_id)` runs the handler of a recorded run again, with the code
registered with the engine now, in a dry mode that writes nothing:
  * its state is the handler state as it was when the run began, and `peek`
    sees the messages that were pending then (time travel to the position just
    before the run's first append: what the live run saw);
  * tool reads are answered from the reads the run recorded; a read the new
    code makes that was not recorded is reported and not performed (the
    handler gets `UnrecordedRead`);
  * the mutator call is captured, never performed: if it is the call the run
    made, it returns the recorded result and `next` sees the recorded outcome;
    otherwise the outcome is unknown and `next` is not replayed;
  * publishes, registered inputs and the returned state stay in memory.
Then it reports what differs from the recorded run: reservations, mutation,
published messages, returned state, error.

It is the dry interpreter of the run decider (domain/run_decider.py), as
`RunDriver` is the live one: what follows prepare, and which recorded outcome
`next` may be replayed with, are the decider's answers; the handler's steps run
in the same `HandlerContext` (so every rule of DESIGN §1.1 holds as it did
live), with the same rule messages, limits and codec. It appends nothing and
calls no tool.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from flowledger.authoring.definition import ConsumerSpec, Outcome, Prepared, ProducerSpec
from flowledger.authoring.registration import Registration
from flowledger.authoring.tools import Tool, ToolMethod
from flowledger.domain.errors import FlowledgerError, NotFoundError
from flowledger.domain.failures import describe
from flowledger.domain.handler_rules import Step
from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.ids import handler_state_id, topic_event_id
from flowledger.domain.limits import Limits
from flowledger.domain.mutation_ledger import MutationState
from flowledger.domain.phases import RunKind
from flowledger.domain.run_decider import (
    PrepareReturned,
    Rules,
    RunMutate,
    decide,
    replayable_outcome,
)
from flowledger.domain.topic_event import TopicEvent
from flowledger.engine.context import HandlerContext
from flowledger.engine.prepared_check import check_prepared
from flowledger.infrastructure.codec import unpack
from flowledger.read_side.log_view import LoggedEvent

Loader = Callable[..., Any]  # (aggregate_id, short=False) -> aggregate as of the run's start
PeekThen = Callable[[str, int | None], list[tuple[str, bytes]]]

# Message ids the replay makes up for publish(message_id=None).
GENERATED_ID = "replay-new-id-"

# Replay decides only what follows prepare: no retry is ever scheduled.
_NO_RETRIES = Rules(datetime.min.replace(tzinfo=UTC), lambda now, n: None,
                    lambda now, n: None)


class UnrecordedRead(FlowledgerError):
    """Replay: the handler made a tool read that the recorded run did not make."""


@dataclass(frozen=True)
class ToolCall:
    tool: str
    method: str
    params: Any  # {"args": [...], "kwargs": {...}}, as the codec hands it back

    def __str__(self) -> str:
        args = [repr(a) for a in self.params.get("args", [])]
        args += [f"{k}={v!r}" for k, v in self.params.get("kwargs", {}).items()]
        return f"{self.tool}.{self.method}({', '.join(args)})"


@dataclass(frozen=True)
class PublishedMessage:
    topic: str
    message_id: str
    payload: Any


@dataclass(frozen=True)
class RunBehaviour:
    """What a run did, in the terms replay compares."""

    steps: tuple[str, ...]  # producer | prepare, mutate, next: the steps that ran
    reservations: dict[str, list[str]]
    mutation: ToolCall | None
    published: tuple[PublishedMessage, ...]
    state_replaced: bool
    state: Any
    error: str | None


@dataclass(frozen=True)
class Difference:
    what: str  # reservations | mutation | published TOPIC/ID | state | error
    recorded: Any
    replayed: Any


@dataclass(frozen=True)
class ReplayReport:
    run_id: UUID
    workflow: str
    handler: str
    kind: str
    as_of: int  # state and pending messages as of this log position (just before the run)
    recorded: RunBehaviour
    replayed: RunBehaviour
    differences: tuple[Difference, ...]
    unrecorded_reads: tuple[ToolCall, ...]  # made by the new code, not performed
    unused_reads: tuple[ToolCall, ...]  # recorded, not made by the new code
    notes: tuple[str, ...]

    @property
    def same(self) -> bool:
        """The current code does what the recorded run did."""
        return not self.differences and not self.unrecorded_reads


# ------------------------------------------------------------ what was recorded


def recorded_behaviour(run: HandlerRun, stream: list[LoggedEvent],
                       mentions: list[LoggedEvent], load: Loader) -> RunBehaviour:
    """The run's steps, reservations, mutation and error from its stream; its
    publishes and committed state from the events of other streams naming it."""
    starts = {"ExecutionStarted": "producer", "PreparingStarted": "prepare",
              "MutatingStarted": "mutate", "EmittingStarted": "next"}
    steps = [starts[e.name] for e in stream if e.name in starts]
    error: str | None = None
    for e in stream:
        if e.name in ("Paused", "Failed"):
            error = e.fields["reason"]
        elif e.name in ("Reactivated", "Committed"):
            error = None
    published: list[PublishedMessage] = []
    state_replaced, state = False, None
    for e in mentions:
        if e.fields.get("run_id") != run.id:
            continue
        if e.name == "Published":
            published.append(PublishedMessage(e.fields["topic"], e.fields["message_id"],
                                              e.fields["payload"]))
        elif e.name == "PayloadReplaced":
            message: TopicEvent | None = load(e.stream_id, short=True)
            assert message is not None
            published.append(PublishedMessage(message.topic, message.message_id,
                                              e.fields["payload"]))
        elif e.aggregate == "HandlerState":
            state_replaced, state = True, e.fields["state"]
    m = run.mutation
    return RunBehaviour(
        tuple(steps), _reservations(run.reservations),
        ToolCall(m.tool, m.method, unpack(m.params)) if m is not None else None,
        tuple(published), state_replaced, state, error)


def _reservations(value: dict[str, list[str]]) -> dict[str, list[str]]:
    return {t: list(ids) for t, ids in value.items() if ids}


# ------------------------------------------------------------------ the dry run


@dataclass
class _Replayed:
    steps: list[str] = field(default_factory=list)
    reservations: dict[str, list[str]] = field(default_factory=dict)
    mutation: ToolCall | None = None
    published: list[PublishedMessage] = field(default_factory=list)
    state_replaced: bool = False
    state: Any = None
    error: str | None = None
    stopped: bool = False  # ended before the end for want of a known outcome

    def frozen(self) -> RunBehaviour:
        return RunBehaviour(tuple(self.steps), self.reservations, self.mutation,
                            tuple(self.published), self.state_replaced, self.state,
                            self.error)


class DryRun:
    """One re-execution of one recorded run. Writes nothing, calls no tool."""

    def __init__(self, run: HandlerRun, registration: Registration, limits: Limits,
                 load_then: Loader, peek_then: PeekThen, carried_forward: bool) -> None:
        self.run = run
        self.reg = registration
        self.limits = limits
        self.load_then = load_then
        self.peek_then = peek_then
        self.carried_forward = carried_forward
        self.unused = list(run.reads)  # recorded reads not served yet, in order
        self.unrecorded: list[ToolCall] = []
        self.notes: list[str] = []
        self.out = _Replayed()
        self._ids = itertools.count(1)

    # ---------------------------------------------------------- context

    def _context(self, step: Step, publishes: tuple[str, ...], subscribe: tuple[str, ...],
                 declared_tools: tuple[str, ...] | None) -> HandlerContext:
        return HandlerContext(
            workflow=self.run.workflow, handler=self.run.handler, run_id=self.run.id,
            step=step, now=self.run.created_on, publishes=publishes, subscribe=subscribe,
            tools=self.reg.tools, declared_tools=declared_tools, limits=self.limits,
            new_message_id=lambda: f"{GENERATED_ID}{next(self._ids)}", peek=self.peek_then,
            input_known=lambda i: self.load_then(i, short=True) is not None,
            read_through=self._recorded_read)

    def _recorded_read(self, tool: Tool, spec: ToolMethod, params: bytes,
                       args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Serve the first recorded read of the same method with equal parameters."""
        wanted = unpack(params)
        for i, r in enumerate(self.unused):
            if (r.tool, r.method) == (tool.tool_name(), spec.name) and unpack(r.params) == wanted:
                del self.unused[i]
                return unpack(r.result)
        call = ToolCall(tool.tool_name(), spec.name, wanted)
        self.unrecorded.append(call)
        raise UnrecordedRead(
            f"replay of run {self.run.id}: the read {call} was not recorded by the run, so "
            "replay does not perform it (replay never calls tools)")

    def _fail(self, error: BaseException) -> None:
        self.out.error = describe(error)

    # ------------------------------------------------------------ steps

    def state_at_start(self) -> Any:
        agg = self.load_then(handler_state_id(self.run.workflow, self.run.handler))
        return unpack(agg.state) if agg is not None else None

    def producer(self, spec: ProducerSpec) -> None:
        ctx = self._context(Step.EXECUTE, spec.publishes, (), spec.tools)
        self.out.steps.append("producer")
        try:
            returned = spec.func(ctx, self.state_at_start())
            ctx.raise_if_broken()
            self._keep_state(returned, ctx)
        except Exception as e:
            self._fail(ctx.tool_failure or ctx.violation or e)
            return
        finally:
            ctx.close()
        self._keep_published(ctx)

    def consumer(self, spec: ConsumerSpec) -> None:
        handler = spec.cls()
        if self.carried_forward:
            run = self.run
            self.notes.append(
                f"run {run.id} carried forward the prepared data and the outcome of run "
                f"{run.retry_of}: only next is replayed")
            self.out.reservations = _reservations(run.reservations)
            prepared = Prepared(run.reservations, unpack(run.data), run.title, run.wake_at)
            status = run.outcome or "none"
            carried = Outcome(status, unpack(run.outcome_result) if status == "applied" else None)
            self._next(spec, handler, prepared, carried)
            return
        ctx = self._context(Step.PREPARE, (), spec.subscribe, spec.tools)
        self.out.steps.append("prepare")
        try:
            returned = handler.prepare(ctx, self.state_at_start())
            ctx.raise_if_broken()
            checked = check_prepared(
                returned, spec, self.run.chain_id, ctx,
                lambda topic, message_id: self.load_then(
                    topic_event_id(self.run.workflow, topic, message_id), short=True))
            prepared = Prepared(checked.reservations, unpack(checked.data), checked.title,
                                checked.wake_at)
        except Exception as e:
            self._fail(ctx.tool_failure or ctx.violation or e)
            return
        finally:
            ctx.close()
        self.out.reservations = _reservations(prepared.reservations)
        effect = decide(self._scratch_run(), PrepareReturned(
            checked.reservations, checked.data, checked.title, checked.wake_at,
            spec.has_mutate), _NO_RETRIES).effect
        outcome: Outcome | None = Outcome("none")
        if isinstance(effect, RunMutate):
            outcome = self._mutate(spec, handler, prepared)
        if outcome is not None:
            self._next(spec, handler, prepared, outcome)

    def _scratch_run(self) -> HandlerRun:
        """A copy of the run's start, in memory only: what the decider decides on."""
        run = self.run
        scratch = HandlerRun.create(id=run.id, now=run.created_on, workflow_id=run.workflow_id,
                                    workflow=run.workflow, session_id=None, kind=run.kind,
                                    handler=run.handler)
        scratch.start_preparing(run.created_on)
        return scratch

    def _mutate(self, spec: ConsumerSpec, handler: Any, prepared: Prepared) -> Outcome | None:
        ctx = self._context(Step.MUTATE, (), (), spec.tools)
        recorded = self.run.mutation
        result: list[Any] = []

        def capture(tool: Tool, method: ToolMethod, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            name = f"{tool.tool_name()}.{method.name}"
            params = ctx._pack({"args": list(args), "kwargs": kwargs},
                               f"parameters of {name}", "params")
            call = ToolCall(tool.tool_name(), method.name, unpack(params))
            self.out.mutation = call
            if recorded is not None and _same_call(call, recorded) and (
                    recorded.state is MutationState.APPLIED):
                result.append(unpack(recorded.result))
                return result[0]
            return None

        ctx._perform = capture
        self.out.steps.append("mutate")
        handler_error: BaseException | None = None
        try:
            handler.mutate(ctx, prepared)
        except Exception as e:
            handler_error = e
        finally:
            ctx.close()
        handler_error = ctx.violation or handler_error
        if handler_error is not None:
            self._fail(handler_error)
            return None
        call = self.out.mutation
        if call is None:
            return Outcome("none")
        status, note = replayable_outcome(
            recorded, recorded is not None and _same_call(call, recorded))
        if note is not None:
            self.notes.append(note)
        if status is None:
            self.out.stopped = True
            return None
        return Outcome(status, result[0] if status == "applied" and result else None)

    def _next(self, spec: ConsumerSpec, handler: Any, prepared: Prepared,
              outcome: Outcome) -> None:
        if not spec.has_next:
            return
        ctx = self._context(Step.NEXT, spec.publishes, (), spec.tools)
        self.out.steps.append("next")
        try:
            returned = handler.next(ctx, prepared, outcome)
            ctx.raise_if_broken()
            self._keep_state(returned, ctx)
        except Exception as e:
            self._fail(ctx.violation or e)
            return
        finally:
            ctx.close()
        self._keep_published(ctx)

    def _keep_state(self, returned: Any, ctx: HandlerContext) -> None:
        if returned is not None:  # None keeps the state as it was (ADR 0008)
            self.out.state = unpack(ctx._pack(returned, "returned state", "state"))
            self.out.state_replaced = True

    def _keep_published(self, ctx: HandlerContext) -> None:
        self.out.published = [PublishedMessage(p.topic, p.message_id, unpack(p.payload))
                              for p in ctx.published.values()]


def _same_call(call: ToolCall, recorded: Any) -> bool:
    return (call.tool, call.method, call.params) == (recorded.tool, recorded.method,
                                                     unpack(recorded.params))


# ------------------------------------------------------------------- comparing


def compare(recorded: RunBehaviour, replayed: RunBehaviour,
            complete: bool) -> list[Difference]:
    """What differs. Publishes and state are compared only when the replay ran to
    its end (`complete`): a replay that stopped for want of an outcome has none."""
    found: list[Difference] = []
    if recorded.reservations != replayed.reservations:
        found.append(Difference("reservations", recorded.reservations, replayed.reservations))
    if recorded.mutation != replayed.mutation:
        found.append(Difference("mutation", recorded.mutation, replayed.mutation))
    if complete:
        found += _published_differences(recorded.published, replayed.published)
        if (recorded.state_replaced, recorded.state) != (replayed.state_replaced,
                                                         replayed.state):
            found.append(Difference(
                "state", recorded.state if recorded.state_replaced else "(unchanged)",
                replayed.state if replayed.state_replaced else "(unchanged)"))
    if recorded.error != replayed.error:
        found.append(Difference("error", recorded.error, replayed.error))
    return found


def _published_differences(recorded: tuple[PublishedMessage, ...],
                           replayed: tuple[PublishedMessage, ...]) -> list[Difference]:
    by_key = {(m.topic, m.message_id): m for m in recorded}
    unmatched: list[PublishedMessage] = []
    found: list[Difference] = []
    for m in replayed:
        was = by_key.pop((m.topic, m.message_id), None)
        if was is None:
            unmatched.append(m)
        elif was.payload != m.payload:
            found.append(Difference(f"published {m.topic}/{m.message_id}", was.payload,
                                    m.payload))
    for m in unmatched:
        if m.message_id.startswith(GENERATED_ID):
            # The run's own made-up id cannot be made up again: pair by topic, in order.
            was = next((r for r in by_key.values() if r.topic == m.topic), None)
            if was is not None:
                del by_key[(was.topic, was.message_id)]
                if was.payload != m.payload:
                    found.append(Difference(f"published {m.topic}/(new id)", was.payload,
                                            m.payload))
                continue
        found.append(Difference(f"published {m.topic}/{m.message_id}", "(not published)",
                                m.payload))
    for was in by_key.values():
        found.append(Difference(f"published {was.topic}/{was.message_id}", was.payload,
                                "(not published)"))
    return found


def replay_run(run: HandlerRun, stream: list[LoggedEvent], mentions: list[LoggedEvent],
               registration: Registration, limits: Limits, load_then: Loader,
               load_now: Loader, peek_then: PeekThen) -> ReplayReport:
    """Re-execute `run` with the registered code; see the module docstring."""
    definition = registration.definition
    recorded = recorded_behaviour(run, stream, mentions, load_now)
    carried = any(e.name == "CarriedForward" for e in stream)
    dry = DryRun(run, registration, limits, load_then, peek_then, carried)
    if run.kind is RunKind.PRODUCER:
        spec_p = next((p for p in definition.producers if p.name == run.handler), None)
        if spec_p is None:
            raise _missing_handler(run, definition.handler_names)
        dry.producer(spec_p)
    else:
        spec_c = next((c for c in definition.consumers if c.name == run.handler), None)
        if spec_c is None:
            raise _missing_handler(run, definition.handler_names)
        dry.consumer(spec_c)
    if dry.out.stopped and recorded.mutation is not None and recorded.mutation == (
            dry.out.mutation) and recorded.error is not None:
        dry.out.error = recorded.error  # the tool's answer ended both runs at that call
    replayed = dry.out.frozen()
    complete = not dry.out.stopped
    if not complete:
        dry.notes.append("published messages and state are not compared: the replay "
                         "stopped before next")
    unused = [ToolCall(r.tool, r.method, unpack(r.params)) for r in dry.unused]
    if unused:
        dry.notes.append(f"{len(unused)} recorded read(s) were not made by the current code")
    as_of = stream[0].position - 1
    return ReplayReport(run.id, run.workflow, run.handler, run.kind.value, as_of, recorded,
                        replayed, tuple(compare(recorded, replayed, complete)),
                        tuple(dry.unrecorded), tuple(unused), tuple(dry.notes))


def _missing_handler(run: HandlerRun, names: list[str]) -> FlowledgerError:
    return NotFoundError(
        f"run {run.id} was made by handler {run.handler!r}, which the code registered for "
        f"workflow {run.workflow!r} does not define (it defines: {', '.join(names)}); "
        "replay needs the handler's current code")

