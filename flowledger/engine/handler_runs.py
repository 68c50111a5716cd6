"""Drives one handler run through its phases (DESIGN §1.3, §1.4, §2.2).

Durable points, the only appends of a run:
  consumer with a mutation: (1) prepared + reservations + mutation in_flight,
  before the external call; (2) the outcome + mutated; (3) the commit.
  consumer that reserves nothing, or whose mutate calls no mutator: one append.
  producer: one append. A failure ends the run with one more append at most.
Every phase change is still its own event; events are appended together where
no external effect lies between them.

`RunDriver` is the live interpreter of the run decider (domain/run_decider.py):
it runs the handler's steps and the tool calls, tells the decider what came of
them, records what it decides on the run, and appends at the durable points.
What follows what (the rules of DESIGN §1.3 to §1.4) is decided there, not here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from flowledger.authoring.definition import ConsumerSpec, Outcome, Prepared, ProducerSpec
from flowledger.authoring.runnable import refuse_awaitable
from flowledger.authoring.tools import (
    Reconciliation,
    Tool,
    ToolMethod,
    reset_cost_sink,
    set_cost_sink,
)
from flowledger.domain.continuation import Attempt, attempt_number
from flowledger.domain.continuation import Step as Continue
from flowledger.domain.errors import InternalError, LogicError
from flowledger.domain.failures import (
    CallFailure,
    call_failure,
    describe,
    status_for,
    traceback_of,
)
from flowledger.domain.handler_rules import Step
from flowledger.domain.handler_run import HandlerRun, OutcomeStatus
from flowledger.domain.handler_state import HandlerState
from flowledger.domain.ids import handler_state_id, input_id, topic_event_id
from flowledger.domain.input_record import Input
from flowledger.domain.limits import Limits
from flowledger.domain.phases import Phase, RunKind, RunStatus
from flowledger.domain.run_decider import (
    CallRaised,
    CallReturned,
    Effect,
    MutateEnded,
    MutatorCalled,
    NoReconcileMethod,
    Observation,
    PrepareReturned,
    Reconcile,
    ReconcileAnswered,
    RetryFresh,
    ReturnResult,
    Rules,
    RunMutate,
    RunNext,
    Settle,
    decide,
    keeps_reservations,
    settled_outcome,
    settlement,
)
from flowledger.domain.secret import Secret
from flowledger.domain.session import Session
from flowledger.domain.text import recordable
from flowledger.domain.topic_event import TopicEvent
from flowledger.domain.workflow import Workflow
from flowledger.engine.clock import Clock, IdFactory, LeaseClock
from flowledger.engine.context import HandlerContext
from flowledger.engine.faults import no_faults
from flowledger.engine.heartbeat import Heartbeat
from flowledger.engine.pending_window import MessageChange, PendingWindow
from flowledger.engine.policy import RetryPolicy
from flowledger.engine.prepared_check import CheckedPrepared, check_prepared
from flowledger.engine.publish_guess import PublishGuesses
from flowledger.engine.secret_resolution import SecretResolver, scrub
from flowledger.engine.store_errors import StoreFailedForHandler, read_for_handler
from flowledger.engine.streams import Streams
from flowledger.infrastructure.codec import NONE_PACKED, pack, unpack
from flowledger.infrastructure.store import ReadAfter
from flowledger.projections import pending_work
from flowledger.projections.sealing import Seal

Checkpoint = Callable[[str], None]
T = TypeVar("T")


@dataclass(frozen=True)
class RunResult:
    run_id: UUID
    handler: str
    kind: RunKind
    status: RunStatus
    reason: str | None = None
    declined: bool = False  # a consumer that reserved nothing

    @property
    def committed(self) -> bool:
        return self.status is RunStatus.COMMITTED


# The appends whose commit waits for the disk (fsync): the one before a
# mutator's external call (after it, a crash must reconcile, never call
# again; it also syncs every append before it), and the session's close
# (what run_session returns must outlive the machine). Any other append of a
# session is covered by the next of these (ADR 0011).
SYNCED_APPENDS = frozenset({"in_flight", "session_close"})

# The appends after which the same run always appends again before anything
# reads pending work (the external call and `next` lie between, which cannot
# peek): pending work folds their events in with that next append, writing
# the run's row once per run instead of once per append (ADR 0012).
HELD_FOLDS = frozenset({"in_flight", "outcome"})

# The appends a session need not hear back from before its next step: a run's
# outcome (the rest of mutate and next follow, which may call no other
# mutator) and its commit (the next run's prepare follows). Sent, their answer
# is read when the session next writes or reads the store, so that work
# overlaps the server's (ADR 0017); a failure then stops the session at its
# next append, raised as itself, with nothing more appended.
ANSWERED_LATER = frozenset({"outcome", "commit"})


@dataclass
class SessionScope:
    """What every run of one session shares."""

    streams: Streams
    workflow: Workflow
    session: Session
    tools: dict[str, Tool]
    clock: Clock
    ids: IdFactory
    limits: Limits
    policy: RetryPolicy
    checkpoint: Checkpoint
    # The workflow's backlog and wake-ups, as pending work stores them (the
    # session loop's hints; `True`: read them from the store; or those given,
    # read in the last append's transaction): ProjectionRunner.
    pending_hints: Callable[[UUID, bool, pending_work.PendingHints | None],
                            pending_work.PendingHints]
    heartbeat: Heartbeat | None = None
    lease: LeaseClock | None = None  # leases are in the store's time (DESIGN §7)
    secrets: SecretResolver = field(default_factory=SecretResolver)  # DESIGN §9
    # Whether a consumer's commit may take its messages for new (publish_guess.py).
    guesses: PublishGuesses = field(default_factory=PublishGuesses)
    owner: str | None = None  # this engine's, recorded with each call it makes
    # Whether another engine, by its owner string, may still be running (False
    # only when proven gone): its call found unfinished may still land.
    maker_running: Callable[[str], bool] | None = None

    def now(self) -> datetime:
        return self.clock.now()

    def lease_now(self) -> datetime:
        return self.lease.now() if self.lease is not None else self.clock.now()

    def in_call(self) -> contextlib.AbstractContextManager[None]:
        """A handler or tool call: the heartbeat renews the lease meanwhile (ADR 0019)."""
        if self.heartbeat is None:
            return contextlib.nullcontext()
        return self.heartbeat.window(self._keep_alive)

    def _renewed_lease_end(self) -> datetime | None:
        """The lease's new end (in the store's time) when less than half of it is
        left, else None: the one rule both renewals follow."""
        lease_now, until = self.lease_now(), self.workflow.lease_until
        if until is None or (until - lease_now).total_seconds() >= self.policy.lease_seconds / 2:
            return None
        return self.policy.lease_until(lease_now)

    def _keep_alive(self) -> None:
        # A server that restarted forgot this engine's liveness lock: held
        # again within a beat, before other processes believe it gone.
        self.streams.log.flow_recorder.keep_announced()
        until = self._renewed_lease_end()
        if until is not None:
            self.streams.renew_lease(self.now(), until, self.session.id)

    def append(self, label: str, read_after: Sequence[ReadAfter] = ()) -> int:
        """A durable point. `checkpoint` lets tests crash a real process around it.
        `read_after`: read in the append's transaction, after its writes."""
        self.checkpoint(f"before_append:{label}")
        with self.streams.lock:  # never at the same time as the heartbeat's renewal
            until = self._renewed_lease_end()
            if until is not None and self.workflow.open_session == self.session.id:
                self.workflow.renew_lease(self.now(), until)
            # With a fault injected (tests), each point is exact: "after" an
            # append means its answer was read.
            later = label in ANSWERED_LATER and self.checkpoint is no_faults
            position = self.streams.append(sync=label in SYNCED_APPENDS,
                                           hold=label in HELD_FOLDS, read_after=read_after,
                                           later=later)
        self.checkpoint(f"after_append:{label}")
        return position


class _MutationCall:
    """What became of the one mutator call of a run."""

    def __init__(self) -> None:
        self.error: BaseException | None = None  # the tool's own exception, if any
        self.failure: CallFailure | None = None  # and how the decider weighs it
        self.result_problem: InternalError | None = None


def _window(topic: str, found: pending_work.ReadAhead) -> PendingWindow:
    return PendingWindow(topic, found, complete=len(found) < RunDriver.READ_AHEAD)


class RunDriver:
    # A peek of at most this many messages reads their streams in the same
    # statement (a reservation of what it found loads them); a longer one does not.
    READ_AHEAD = 16

    def __init__(self, scope: SessionScope) -> None:
        self.s = scope
        # The last read-ahead peek of a run (topic, limit): if the window below
        # will not answer it again, that run's commit reads the window afresh
        # in its own transaction (a round trip less for the next run's peek).
        self._peeked: tuple[str, int] | None = None
        # The oldest pending messages of the topic last read, kept to this
        # session's appends: most peeks are answered from it, with no read.
        self._window: PendingWindow | None = None
        scope.streams.on_messages_changed = self._messages_changed

    # ------------------------------------------------------------ shared

    @property
    def _wf(self) -> str:
        return self.s.workflow.name

    def _new_run(self, kind: RunKind, handler: str, retry_of: HandlerRun | None = None,
                 attempt: int | None = None) -> HandlerRun:
        now = self.s.now()
        self._peeked = None  # this run's own peek, if it makes one
        run = HandlerRun.create(id=self.s.ids(), now=now, workflow_id=self.s.workflow.id,
                                workflow=self._wf, session_id=self.s.session.id, kind=kind,
                                handler=handler, retry_of=retry_of, attempt=attempt)
        self.s.streams.pin(run)
        return run

    def _context(self, run: HandlerRun, step: Step, publishes: tuple[str, ...],
                 subscribe: tuple[str, ...], declared_tools: tuple[str, ...] | None
                 ) -> HandlerContext:
        wf_id = self.s.workflow.id
        log = self.s.streams.log
        seal = Seal(log.column_cipher)

        def peek(topic: str, limit: int | None) -> list[tuple[str, bytes]]:
            with read_for_handler():
                return peek_pending(topic, limit)

        def peek_pending(topic: str, limit: int | None) -> list[tuple[str, bytes]]:
            if limit is None or limit > self.READ_AHEAD:
                with log.reading(snapshot=False) as c:  # one statement
                    return [(m.message_id, m.payload) for m in
                            pending_work.pending_messages(c, wf_id, topic, limit, seal)]
            found = self._window.answer(topic, limit) if self._window is not None else None
            if found is None:
                with log.reading(snapshot=False) as c:  # one statement
                    self._window = _window(topic, pending_work.pending_messages_read_ahead(
                        c, wf_id, topic, self.READ_AHEAD, log.flow_recorder.with_stream_events,
                        seal))
                found = self._window.found[:limit]
            self._peeked = (topic, limit)  # the commit may read the window again
            self.s.streams.read_ahead({stream: events for _, stream, events in found if events})
            return [(m.message_id, m.payload) for m, _, _ in found]

        return HandlerContext(
            workflow=self._wf, handler=run.handler, run_id=run.id, step=step,
            now=self.s.now(), publishes=publishes, subscribe=subscribe, tools=self.s.tools,
            declared_tools=declared_tools, limits=self.s.limits,
            new_message_id=lambda: self.s.ids().hex, peek=peek,
            input_known=lambda i: self._stream(i) is not None,
            secrets=self.s.secrets,
        )

    def _messages_changed(self, changes: list[MessageChange]) -> None:
        if self._window is not None:
            self._window = self._window.after(changes)

    def _commit_asking_next_peek(self, label: str) -> None:
        """The commit's append; if the window will not answer the peek this
        run made, the window read again in the commit's transaction."""
        peeked, self._peeked = self._peeked, None
        window = (self._window.after(self.s.streams.message_changes())
                  if self._window is not None else None)
        if peeked is None or (window is not None and window.answer(*peeked) is not None):
            self.s.append(label)
            return
        topic = peeked[0]
        asked = ReadAfter(*pending_work.read_ahead_query(
            self.s.workflow.id, topic, self.READ_AHEAD,
            self.s.streams.log.flow_recorder.with_stream_events))
        self.s.append(label, read_after=[asked])
        if asked.rows is not None:
            self._window = _window(topic, pending_work.read_ahead_found(
                asked.rows, Seal(self.s.streams.log.column_cipher)))

    def _flush(self, ctx: HandlerContext, run: HandlerRun) -> None:
        """Reads and costs of a step become events of the run, in the order they happened."""
        if not (ctx.reads or ctx.costs):
            return
        now = self.s.now()
        for r in ctx.reads:
            run.record_read(now, r.tool, r.method, r.params, r.result)
        for amount, label in ctx.costs:
            run.add_cost(now, amount, label)
        ctx.reads.clear()
        ctx.costs.clear()

    def _stream(self, stream_id: UUID) -> Any:
        """A stream a handler's step looks up (a store failure: not the handler's)."""
        with read_for_handler():
            return self.s.streams.get(stream_id, short=True)

    def _preload_reserved(self, wanted: Iterable[tuple[str, str]]) -> None:
        with read_for_handler():
            self.s.streams.preload(topic_event_id(self._wf, topic, message_id)
                                   for topic, message_id in wanted)

    def _state(self, handler: str) -> tuple[HandlerState | None, Any]:
        agg = self.s.streams.get(handler_state_id(self._wf, handler))
        return agg, (unpack(agg.state) if agg is not None else None)

    def _reserved_events(self, run: HandlerRun) -> list[TopicEvent]:
        events: list[TopicEvent] = []
        for t, m in run.reserved_message_ids:
            event = self.s.streams.get(topic_event_id(self._wf, t, m), short=True)
            if event is None:  # prepare reserved only messages it found
                raise InternalError(f"run {run.id} reserved {t}/{m}, which has no stream")
            events.append(event)
        return events

    # ------------------------------------------------------------ ending a run

    def _settle(self, run: HandlerRun, settle: Settle, label: str = "failure") -> RunResult:
        """End a run that did not commit: pause or fail it, in one append.

        Reservations go back to pending only when the mutation is known not to
        have happened (or was never attempted); otherwise they stay with the run.
        """
        if not keeps_reservations(run):
            self._release(run)
        spent = run.uncounted_cost
        rules = self._rules()
        ending = settlement(run, settle, rules)
        wf = self.s.workflow
        if ending.workflow == "pause":
            wf.pause(rules.now, ending.reason, run.id, ending.retry_at)
        else:
            wf.error(rules.now, ending.reason, run.id)
        self.s.session.run_ended(rules.now, run.id, run.handler, run.kind,
                                 settle.status.value, spent)
        self.s.append(label)
        self.s.streams.unpin(run)
        return RunResult(run.id, run.handler, run.kind, settle.status, settle.reason)

    def _supersede(self, old: HandlerRun, new: HandlerRun, reason: str) -> None:
        """The new run takes the old one's place; what the old one spent is counted."""
        now = self.s.now()
        spent = old.uncounted_cost
        old.supersede(now, new.id, reason)
        if spent:
            self.s.session.run_ended(now, old.id, old.handler, old.kind,
                                     RunStatus.SUPERSEDED.value, spent)

    def _release(self, run: HandlerRun) -> None:
        now = self.s.now()
        if run.holds_reservations:
            for event in self._reserved_events(run):
                if event.reserved_by == run.id:
                    event.release(now, run.id)
            run.release_reservations(now)

    def _fail(self, run: HandlerRun, error: BaseException) -> RunResult:
        status = status_for(error)
        return self._settle(run, Settle(status, describe(error), traceback=(
            traceback_of(error) if status.is_failed else None)))

    # ------------------------------------------------------------ producers

    def run_producer(self, spec: ProducerSpec, retry_of: HandlerRun | None = None,
                     attempt: int | None = None) -> RunResult:
        run = self._new_run(RunKind.PRODUCER, spec.name, retry_of, attempt)
        if retry_of is not None:
            self._supersede(retry_of, run, "run again by a fresh run")
        run.start_executing(self.s.now())
        state_agg, state = self._state(spec.name)
        ctx = self._context(run, Step.EXECUTE, spec.publishes, (), spec.tools)
        new_state, ended = self._step(run, ctx, lambda: self._pack_state(spec.func(ctx, state),
                                                                         ctx))
        if ended is not None:
            return ended
        return self._commit(run, ctx, new_state, state_agg, caused_by=None, reserved=[],
                            label="producer_commit")

    def _step(self, run: HandlerRun, ctx: HandlerContext,
              work: Callable[[], T]) -> tuple[T | None, RunResult | None]:
        """One handler call: its value, or the run ended as it failed.

        A broken rule fails the run even when the handler swallowed the error,
        and the step's reads and costs become events of the run either way.
        """
        try:
            with self.s.in_call():
                value = work()
            ctx.raise_if_broken()
        except StoreFailedForHandler as failed:
            raise failed.error from None  # the session stops; the run is continued later
        except Exception as e:
            self._flush(ctx, run)
            return None, self._fail(run, ctx.tool_failure or ctx.violation or e)
        finally:
            ctx.close()
        self._flush(ctx, run)
        return value, None

    def _pack_state(self, returned: Any, ctx: HandlerContext) -> bytes | None:
        refuse_awaitable(returned, ctx.where)
        if returned is None:
            return None  # None keeps the state as it was
        return ctx._pack(returned, "returned state", "state")

    # ------------------------------------------------------------ consumers

    def run_consumer(self, spec: ConsumerSpec, retry_of: HandlerRun | None = None,
                     attempt: int | None = None) -> RunResult:
        run = self._new_run(RunKind.CONSUMER, spec.name, retry_of, attempt)
        now = self.s.now()
        if retry_of is not None:
            # Its mutation is known not to have happened (or never started): its
            # reservations go back to pending, and this run prepares afresh.
            held = retry_of.holds_reservations
            self._release(retry_of)
            self._supersede(retry_of, run, "retried by a fresh run")
            if held:
                # Pending again in the log before this run's prepare peeks
                # (peek reads pending work, which folds appends only).
                self.s.append("release")
        run.start_preparing(now)
        ctx = self._context(run, Step.PREPARE, (), spec.subscribe, spec.tools)

        def prepare() -> tuple[Any, CheckedPrepared]:
            handler = spec.cls()
            with read_for_handler():
                _, state = self._state(spec.name)
            return handler, check_prepared(
                handler.prepare(ctx, state), spec, run.chain_id, ctx,
                lambda topic, message_id: self._stream(topic_event_id(self._wf, topic,
                                                                      message_id)),
                self._preload_reserved)

        done, ended = self._step(run, ctx, prepare)
        if ended is not None:
            return ended
        assert done is not None
        handler, checked = done
        effect = self._decide(run, PrepareReturned(checked.reservations, checked.data,
                                                   checked.title, checked.wake_at,
                                                   spec.has_mutate))
        now = self.s.now()
        for event in checked.events:
            event.reserve(now, run.id, run.chain_id)
        prepared = Prepared(checked.reservations, unpack(checked.data), checked.title,
                            checked.wake_at)
        if isinstance(effect, RunMutate):
            effect = self._mutate(run, spec, handler, prepared)
        return self._carry_out(run, spec, handler, prepared, effect)

    def _decide(self, run: HandlerRun, observation: Observation) -> Effect:
        return decide(run, observation, self._rules()).effect

    def _rules(self) -> Rules:
        policy = self.s.policy
        return Rules(self.s.now(), policy.reconcile_at, policy.transient_retry_at)

    def _carry_out(self, run: HandlerRun, spec: ConsumerSpec, handler: Any,
                   prepared: Prepared, effect: Effect) -> RunResult:
        """The decider's last word on a consumer run: next, a retry, or its end."""
        if isinstance(effect, RunNext):
            result = unpack(effect.result) if effect.outcome == "applied" else None
            return self._emit(run, spec, handler, prepared, Outcome(effect.outcome, result),
                              declined=effect.declined)
        if isinstance(effect, RetryFresh):
            # Proven not to have happened: a fresh run may mutate again, at once.
            return self.run_consumer(spec, retry_of=run, attempt=run.attempt)
        if isinstance(effect, Settle):
            return self._settle(run, effect)
        raise InternalError(f"run {run.id}: {type(effect).__name__} cannot end a run")

    # ------------------------------------------------------------ mutation

    def _mutate(self, run: HandlerRun, spec: ConsumerSpec, handler: Any,
                prepared: Prepared) -> Effect:
        """Run mutate, carrying out what the decider says of its one call."""
        call = _MutationCall()
        ctx = self._context(run, Step.MUTATE, (), (), spec.tools)

        def perform(tool: Tool, method: ToolMethod, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
            return self._perform(run, ctx, call, tool, method, args, kwargs)

        ctx._perform = perform
        handler_error: BaseException | None = None
        try:
            with self.s.in_call():
                refuse_awaitable(handler.mutate(ctx, prepared), ctx.where)
        except Exception as e:
            if e is not call.error:
                handler_error = e
        finally:
            ctx.close()
        problem = call.result_problem or ctx.violation or handler_error
        self._flush(ctx, run)
        return self._decide(run, MutateEnded(
            status_for(problem) if problem else None, describe(problem) if problem else None,
            call.failure, describe(call.error) if call.error is not None else None))

    def _perform(self, run: HandlerRun, ctx: HandlerContext, call: _MutationCall, tool: Tool,
                 method: ToolMethod, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = f"{tool.tool_name()}.{method.name}"
        params = ctx._pack({"args": list(args), "kwargs": kwargs}, f"parameters of {name}",
                           "params")
        self._flush(ctx, run)
        self._decide(run, MutatorCalled(tool.tool_name(), method.name, params,
                                        method.reconcile, self.s.owner))
        # Appended before the external call: after a crash from here on,
        # recovery must reconcile, never call the mutator again.
        self.s.append("in_flight")
        self.s.checkpoint("before_call")
        token = set_cost_sink(ctx._tool_cost)
        revealed: dict[str, Secret] = {}
        try:
            # Secrets are resolved here, after in_flight recorded their references.
            real_args, real_kwargs, revealed = self.s.secrets.resolve(args, kwargs)
            value = getattr(tool, method.name)(*real_args, **real_kwargs)
        except Exception as e:
            scrub(e, revealed)
            call.error, call.failure = e, call_failure(e)
            effect = self._decide(run, CallRaised(call.failure, describe(e)))
            if isinstance(effect, Reconcile):
                effect = self._reconcile(run, tool, describe(e), call, live=True)
            if isinstance(effect, ReturnResult):
                call.error = call.failure = None
                self._flush(ctx, run)
                self.s.append("outcome")
                return unpack(effect.result)
            raise
        finally:
            reset_cost_sink(token)
        self.s.checkpoint("after_call")
        self._flush(ctx, run)
        self._decide(run, CallReturned(self._result(run, value, call)))
        self.s.append("outcome")
        return unpack(run.outcome_result)

    def _result(self, run: HandlerRun, value: Any, call: _MutationCall | None,
                reconciled: bool = False) -> bytes:
        """The mutation's result, packed; if it cannot be kept the effect still
        happened: recorded as applied without a result, and the run fails so a
        person looks. `reconciled`: the result came from the reconcile's answer."""
        m = run.mutation
        assert m is not None
        method = m.reconcile if reconciled and m.reconcile else m.method

        def where() -> str:
            said = f"result of {m.tool}.{method}"
            if method != m.method:
                said += f" (the reconcile of {m.tool}.{m.method}), in its Reconciliation"
            return f"workflow {self._wf!r}, run {run.id}, {said}"

        try:
            result = pack(value, where, "the mutation's result")
            self.s.limits.check("result", len(result), where)
        except LogicError as e:
            if call is not None:
                call.result_problem = InternalError(str(e))
            return NONE_PACKED
        return result

    def _reconcile(self, run: HandlerRun, tool: Tool, cause: str, call: _MutationCall | None,
                   live: bool) -> Effect:
        """Ask the tool whether an uncertain mutation happened; the decider says
        what its answer means."""
        m = run.mutation
        assert m is not None and m.reconcile is not None
        params = unpack(m.params)
        revealed: dict[str, Secret] = {}
        try:
            # The log holds the secrets' references: resolved anew for every reconcile.
            args, kwargs, revealed = self.s.secrets.resolve(tuple(params["args"]),
                                                            params["kwargs"])
            with self.s.in_call():
                answer = getattr(tool, m.reconcile)(*args, **kwargs)
        except Exception as e:
            scrub(e, revealed)
            answer = Reconciliation.retry(f"reconcile raised {describe(e)}")
        if not isinstance(answer, Reconciliation):
            answer = Reconciliation.retry(
                f"{m.tool}.{m.reconcile} returned {type(answer).__name__}, not "
                "fl.Reconciliation.applied/failed/retry")
        result = (self._result(run, answer.result, call, reconciled=True)
                  if answer.status == "applied" else None)
        told = recordable(str(answer.reason or ""))  # a tool's text, kept whatever it holds
        return self._decide(run, ReconcileAnswered(answer.status, result, told, cause, live,
                                                   None if live else self._maker_running(run)))

    def _maker_running(self, run: HandlerRun) -> str | None:
        """Why a call found unfinished may still be under way: the engine that
        made it is not this one and is not proven gone (a process stopped past
        its lease, a machine stalled, or one this store cannot tell of), so a
        reconcile that finds no effect proves nothing yet."""
        maker = run.mutation_made_by
        if maker is None or maker == self.s.owner or self.s.maker_running is None:
            return None
        if not self.s.maker_running(maker):
            return None
        return f"the engine that made the call ({maker}) is not proven gone"

    # ------------------------------------------------------------ next + commit

    def _emit(self, run: HandlerRun, spec: ConsumerSpec, handler: Any, prepared: Prepared,
              outcome: Outcome, declined: bool = False) -> RunResult:
        if run.phase is not Phase.EMITTING:
            run.start_emitting(self.s.now())
        reserved = self._reserved_events(run) if run.holds_reservations else []
        caused_by = list(dict.fromkeys(c for e in reserved for c in e.caused_by))
        ctx = self._context(run, Step.NEXT, spec.publishes, (), spec.tools)
        new_state: bytes | None = None
        if spec.has_next:
            new_state, ended = self._step(
                run, ctx, lambda: self._pack_state(handler.next(ctx, prepared, outcome), ctx))
            if ended is not None:
                return ended
        state_agg, _ = self._state(spec.name)
        result = self._commit(run, ctx, new_state, state_agg, caused_by, reserved,
                              label="commit", skipped=outcome.status == "skipped")
        if declined:
            return RunResult(result.run_id, result.handler, result.kind, result.status,
                             declined=True)
        return result

    def _commit(self, run: HandlerRun, ctx: HandlerContext, new_state: bytes | None,
                state_agg: HandlerState | None, caused_by: list[UUID] | None,
                reserved: list[TopicEvent], label: str, skipped: bool = False) -> RunResult:
        """Consumption, publishes, inputs, state, the run and the session: one append."""
        now = self.s.now()
        for event in reserved:
            if skipped:
                event.skip(now, run.id)
            else:
                event.consume(now, run.id)
        self._preload(run, ctx, caused_by)
        self._register_inputs(run, ctx)
        for p in ctx.published.values():
            causes = caused_by if caused_by is not None else [self._input_for(run, ctx, p)]
            self._publish(run, p.topic, p.message_id, p.payload, causes)
        if new_state is not None:
            if state_agg is None:
                self.s.streams.add(HandlerState.initialise(
                    now=now, workflow_id=self.s.workflow.id, workflow=self._wf,
                    handler=run.handler, run_id=run.id, state=new_state))
            else:
                state_agg.commit(now, run.id, new_state)
        spent = run.uncounted_cost
        run.commit(now, state_replaced=new_state is not None)
        self.s.session.run_ended(now, run.id, run.handler, run.kind,
                                 RunStatus.COMMITTED.value, spent)
        self._commit_asking_next_peek(label)
        self.s.streams.unpin(run)
        return RunResult(run.id, run.handler, run.kind, RunStatus.COMMITTED)

    def _preload(self, run: HandlerRun, ctx: HandlerContext,
                 caused_by: list[UUID] | None) -> None:
        """The streams the commit looks for (each publish's, each input's) read
        in one go: a producer publishing many items asks once. A message whose
        id this run made is new, and so is its implicit input: not asked for.
        A consumer's messages published by id are taken for new unless a guess
        was wrong lately (publish_guess.py): the append checks."""
        wf = self._wf
        wanted = [input_id(wf, reg.source, reg.type, reg.external_id)
                  for reg in ctx.inputs.values()]
        fresh: list[UUID] = []
        guessed: list[UUID] = []
        by_id = (guessed if caused_by is not None
                 and any(not p.fresh for p in ctx.published.values())
                 and self.s.guesses.may_guess() else wanted)
        for p in ctx.published.values():
            streams = fresh if p.fresh else by_id
            streams.append(topic_event_id(wf, p.topic, p.message_id))
            implicit = self._implicit_input(run, p) if caused_by is None else None
            if implicit is not None:
                streams.append(input_id(wf, *implicit))
        self.s.streams.absent(fresh)
        self.s.streams.guess_absent(guessed, run.id)
        self.s.streams.preload(wanted)

    def _register_inputs(self, run: HandlerRun, ctx: HandlerContext) -> None:
        for reg in ctx.inputs.values():
            self._ensure_input(run, reg.source, reg.type, reg.external_id, reg.title, False)

    @staticmethod
    def _implicit_input(run: HandlerRun, p: Any) -> tuple[str, str, str] | None:
        """The input (source, type, external id) a publish without one gets."""
        return None if p.input_id is not None else (run.handler, p.topic, p.message_id)

    def _input_for(self, run: HandlerRun, ctx: HandlerContext, p: Any) -> UUID:
        implicit = self._implicit_input(run, p)
        if implicit is None:
            return p.input_id
        # A producer publishing without an input gets an implicit one.
        return self._ensure_input(run, *implicit, None, True)

    def _ensure_input(self, run: HandlerRun, source: str, type_: str, external_id: str,
                      title: str | None, implicit: bool) -> UUID:
        now = self.s.now()
        candidate = Input.register(now=now, workflow_id=self.s.workflow.id, workflow=self._wf,
                                   source=source, type_=type_, external_id=external_id,
                                   title=title, run_id=run.id, implicit=implicit)
        if self.s.streams.get(candidate.id, short=True) is None:
            self.s.streams.add(candidate)
        return candidate.id

    def _publish(self, run: HandlerRun, topic: str, message_id: str, payload: bytes,
                 caused_by: list[UUID]) -> None:
        now = self.s.now()
        existing = self.s.streams.get(topic_event_id(self._wf, topic, message_id), short=True)
        if existing is not None:
            existing.replace_payload(now, payload, caused_by, run.id)
        else:
            self.s.streams.add(TopicEvent.publish(
                now=now, workflow_id=self.s.workflow.id, workflow=self._wf, topic=topic,
                message_id=message_id, payload=payload, caused_by=caused_by, run_id=run.id))


    # ------------------------------------------------------------ continuations

    def continue_run(self, run: HandlerRun, step: Continue, attempt: Attempt,
                     producer: ProducerSpec | None, consumer: ConsumerSpec | None) -> RunResult:
        """Carry an unfinished run on by the phase-reset rules (DESIGN §1.3, §2.3)."""
        self.s.streams.pin(run)
        number = attempt_number(run.attempt, attempt)
        if producer is not None:
            return self.run_producer(producer, retry_of=run, attempt=number)
        assert consumer is not None
        if step is Continue.RETRY_FRESH:
            return self.run_consumer(consumer, retry_of=run, attempt=number)
        if step is Continue.RETRY_NEXT:
            return self._retry_next(consumer, run, number)
        self._take_up(run)
        if step is Continue.RECONCILE:
            return self._reconcile_run(consumer, run)
        return self._continue_next(consumer, run)

    def _take_up(self, run: HandlerRun) -> None:
        """This session now works on a run another session started."""
        now = self.s.now()
        if run.status is not RunStatus.ACTIVE:
            run.reactivate(now, "continued by session " + str(self.s.session.id))

    def _prepared_of(self, run: HandlerRun) -> Prepared:
        return Prepared(run.reservations, unpack(run.data), run.title, run.wake_at)

    def _continue_next(self, spec: ConsumerSpec, run: HandlerRun) -> RunResult:
        if run.phase in (Phase.PREPARED, Phase.MUTATING):
            if run.phase is Phase.PREPARED:
                run.start_mutating(self.s.now())
            run.mutated(self.s.now(), settled_outcome(run))
        return self._emit(run, spec, spec.cls(), self._prepared_of(run), self._outcome(run))

    def _outcome(self, run: HandlerRun) -> Outcome:
        status: OutcomeStatus = run.outcome or "none"
        return Outcome(status, unpack(run.outcome_result) if status == "applied" else None)

    def _retry_next(self, spec: ConsumerSpec, old: HandlerRun, attempt: int) -> RunResult:
        run = self._new_run(RunKind.CONSUMER, spec.name, retry_of=old, attempt=attempt)
        now = self.s.now()
        run.carry_forward(now, old)
        for event in self._reserved_events(old):
            event.move_reservation(now, old.id, run.id)
        old.hand_on_reservations(now, run.id)
        self._supersede(old, run, "next is retried by a run that carries the outcome")
        return self._emit(run, spec, spec.cls(), self._prepared_of(run), self._outcome(run))

    def _reconcile_run(self, spec: ConsumerSpec, run: HandlerRun) -> RunResult:
        m = run.mutation
        assert m is not None
        tool = self.s.tools.get(m.tool)
        if tool is None:
            return self._settle(run, Settle(
                RunStatus.PAUSED_RECONCILIATION, f"cannot reconcile {m.tool}.{m.method}: tool "
                f"{m.tool!r} is not provided; register the workflow with it"))
        cause = m.reason or "outcome unknown"
        if m.reconcile is None:
            effect = self._decide(run, NoReconcileMethod(cause))
        else:
            effect = self._reconcile(run, tool, cause, None, live=False)
        if isinstance(effect, RunNext):
            self.s.append("outcome")
        return self._carry_out(run, spec, spec.cls(), self._prepared_of(run), effect)
