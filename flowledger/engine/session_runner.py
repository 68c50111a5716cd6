"""One session: open it, carry on unfinished runs, producers, then the consumer loop.

DESIGN §1.5. Opening is an event on the workflow's stream with optimistic
concurrency: of two processes that try at once, one gets `busy`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import UUID

from flowledger.authoring.registration import Registration
from flowledger.domain.continuation import Step as Continue
from flowledger.domain.continuation import continuation
from flowledger.domain.errors import ConcurrencyError
from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.phases import RunKind
from flowledger.domain.scheduling import ConsumerView, Decline, pick_consumer, remaining_work
from flowledger.domain.session import Session, SessionOutcome, Trigger
from flowledger.domain.text import shown_time
from flowledger.domain.workflow import Workflow, WorkflowStatus
from flowledger.engine.handler_runs import RunDriver, RunResult, SessionScope
from flowledger.engine.publish_guess import MessageNotNew
from flowledger.engine.streams import Streams
from flowledger.infrastructure.store import ReadAfter
from flowledger.infrastructure.store_url import cli_command
from flowledger.projections import pending_work


@dataclass(frozen=True)
class SessionResult:
    """What a session did. `status` is one of DESIGN §1.5's session results."""

    status: str
    workflow: str
    session_id: UUID | None = None
    cost: Decimal = Decimal(0)
    remaining: dict[str, dict[str, int]] = field(default_factory=dict)
    error: str | None = None
    budget: str | None = None
    runs: tuple[RunResult, ...] = ()
    # The session a crashed process had left open, which this one recovered
    # (took over and finished) before it opened.
    recovered: SessionResult | None = None

    @property
    def consumer_runs(self) -> int:
        return sum(1 for r in self.runs if r.kind is RunKind.CONSUMER)


@dataclass
class SessionRequest:
    trigger: Trigger
    max_iterations: int
    max_cost: Decimal | None
    producers: frozenset[str] | None = None  # a worker's schedule session: only these
    # A worker asked to stop: the session ends before its next consumer run, with
    # the work left listed (budget "worker_stop"), never in the middle of a run.
    should_stop: Callable[[], bool] | None = None
    # The budget such a stop is recorded as: "stop" for run_session(stop=...) (e.g.
    # `flowledger run` got Ctrl-C, ADR 0020).
    stop_budget: str = "worker_stop"


class OpeningReads:
    """What a session reads first (its workflow's unfinished runs, backlog and
    wake-ups), asked in its opening append's own transaction: on a server, the
    same message, where reading them after it took a round trip each."""

    def __init__(self, workflow_id: UUID) -> None:
        self.unfinished = ReadAfter(*pending_work.unfinished_runs_query(workflow_id))
        self.hints = ReadAfter(*pending_work.backlog_and_wakeups_query(workflow_id))

    @property
    def asked(self) -> tuple[ReadAfter, ReadAfter]:
        return self.unfinished, self.hints


class Opened(NamedTuple):
    """A session just opened, and what its opening append read for it."""

    session: Session
    reads: OpeningReads


def _sentence(text: str | None) -> str:
    """`text` ended as a sentence, once: a reason may end with its own stop."""
    text = (text or "").rstrip()
    return text if text.endswith((".", "!", "?")) else text + "."


class SessionRunner:
    def __init__(self, reg: Registration, scope_factory: Callable[[Streams, Workflow, Session],
                                                                  SessionScope],
                 store: str) -> None:
        self.reg = reg
        self.make_scope = scope_factory
        self.store = store  # the commands its messages suggest act on it

    # -------------------------------------------------------------- opening

    def open_new(self, streams: Streams, request: SessionRequest, owner: str,
                 now: datetime, lease_until: datetime, new_id: UUID) -> SessionResult | Opened:
        """Open a session, or say why not (`busy` / `blocked`) without writing anything."""
        wf: Workflow | None = streams.log.load(self.reg.workflow_id)
        name = self.reg.definition.name
        assert wf is not None, "registered workflows exist in the log"
        if wf.open_session is not None:
            return self._held(wf)
        blocked = self._blocked_reason(wf, now)
        if blocked is not None:
            return SessionResult("blocked", name, error=blocked)
        session = Session.open(id=new_id, now=now, workflow_id=wf.id, workflow=name,
                               trigger=request.trigger, max_iterations=request.max_iterations,
                               max_cost=request.max_cost, owner=owner)
        wf.change_definition(now, self.reg.definition.fingerprint(), list(self.reg.topics),
                             self.reg.definition.handler_names)
        wf.open_session_for(now, session.id, owner, lease_until)
        streams.pin(session)
        streams.fence_on(wf)
        opening = OpeningReads(wf.id)
        try:
            streams.append(read_after=opening.asked)
        except ConcurrencyError:
            # Another process wrote the workflow since it was read: say whose
            # session it holds now, as the log has it.
            now_held = streams.log.load(self.reg.workflow_id)
            if now_held is not None and now_held.open_session is not None:
                return self._held(now_held)
            return SessionResult(
                "busy", name, error=(f"another process opened a session of {name!r} at the "
                                     "same moment; nothing was done"))
        return Opened(session, opening)

    def _held(self, wf: Workflow) -> SessionResult:
        return SessionResult(
            "busy", wf.name, error=(
                f"workflow {wf.name!r} has session {wf.open_session} open, held by "
                f"{wf.session_owner} (lease until {shown_time(wf.lease_until)}), "
                "which is still running as far as the store can tell. Nothing was done: "
                "run again once it has closed that session. Should it end without closing "
                "it, the next run (or `"
                f"{cli_command(self.store, 'recover', 'PATH_OR_MODULE')}`, engine.recover()) "
                "takes the session over: at once where the store can tell the process "
                "ended (PostgreSQL; SQLite on the same machine), else once its lease "
                "runs out."))

    def _blocked_reason(self, wf: Workflow, now: datetime) -> str | None:
        name = wf.name
        if wf.status == WorkflowStatus.ERROR:
            return (f"workflow {name!r} is in error: {_sentence(wf.reason)} Nothing was done. "
                    f"Fix the cause, then `{cli_command(self.store, 'resume', name)}` "
                    f"(engine.resume({name!r})).")
        if wf.status == WorkflowStatus.PAUSED:
            if wf.paused_until is not None and wf.paused_until <= now:
                return None  # a retry or reconciliation is due
            if wf.paused_until is not None:
                return (f"workflow {name!r} is paused until {shown_time(wf.paused_until)}"
                        f": {_sentence(wf.reason)} Nothing was done; run a session after "
                        "that time.")
            return (f"workflow {name!r} is paused and waits for a person: "
                    f"{_sentence(wf.reason)} Nothing was done. See "
                    f"`{cli_command(self.store, 'blocked', writes=False)}`; then "
                    f"`{cli_command(self.store, 'resolve', 'RUN', 'ACTION')}` or "
                    f"`{cli_command(self.store, 'resume', name)}`.")
        return None

    # ------------------------------------------------------------------ run

    def run(self, streams: Streams, wf: Workflow, session: Session,
            request: SessionRequest, opening: OpeningReads | None = None) -> SessionResult:
        """Work the session to its end and close it (one append). `opening`: what
        the append that opened it read (None: a session taken over reads afresh)."""
        runs: list[RunResult] = []
        # Kept across a read-back, as `runs`: the log they were judged by stands.
        declines: dict[str, Decline] = {}
        guessed_wrong: set[UUID] = set()
        while True:
            try:
                return self._run(streams, wf, session, request, opening, runs, declines)
            except MessageNotNew as wrong:
                run_id = wrong.guess.run_id
                if run_id in guessed_wrong:  # its commit looked its messages up
                    raise wrong.error from None
                guessed_wrong.add(run_id)
                # Nothing of that run's commit was stored, nor anything after it:
                # the session goes on as the log has it, that run's `next` first
                # (or, if it declined, its consumer is asked again).
                for r in runs:
                    if r.run_id == run_id and r.declined:
                        declines.pop(r.handler, None)
                runs[:] = [r for r in runs if r.run_id != run_id]
                streams, wf, session, opening = self._read_back(streams, wf, session, wrong)

    def _read_back(self, old: Streams, wf: Workflow, session: Session, wrong: MessageNotNew
                   ) -> tuple[Streams, Workflow, Session, OpeningReads]:
        """The session as the log has it, after a commit that took a message for
        new which was not (publish_guess.py), its lease renewed in an append that
        reads what the session reads first. If anyone else wrote its workflow
        since its last append (a takeover, even by another thread of this
        engine), or none of the messages guessed is in the log, or another
        stream the commit began is (the clash was not only the guess's: ids
        that repeat), the append's refusal is raised, as before."""
        guess, log = wrong.guess, old.log
        now_wf: Workflow | None = log.load(wf.id)
        now_session: Session | None = log.load(session.id)
        found = log.load_short([*guess.streams, *guess.begun])
        if (now_wf is None or now_session is None or now_wf.open_session != session.id
                or now_wf.version != guess.workflow_version
                or not any(s in found for s in guess.streams)
                or any(s in found for s in guess.begun)):
            raise wrong.error
        streams = Streams(log)
        streams.pin(now_session)
        streams.fence_on(now_wf)
        scope = self.make_scope(streams, now_wf, now_session)
        scope.guesses.missed()
        now_wf.renew_lease(scope.now(), scope.policy.lease_until(scope.lease_now()))
        opening = OpeningReads(now_wf.id)
        streams.append(read_after=opening.asked)
        return streams, now_wf, now_session, opening

    def _run(self, streams: Streams, wf: Workflow, session: Session, request: SessionRequest,
             opening: OpeningReads | None, runs: list[RunResult],
             declines: dict[str, Decline]) -> SessionResult:
        scope = self.make_scope(streams, wf, session)
        driver = RunDriver(scope)
        if opening is not None:
            assert opening.hints.rows is not None  # read: the opening append committed
            # Kept from now on, and kept up to date by this session's own folds.
            scope.pending_hints(self.reg.workflow_id, False,
                                pending_work.backlog_and_wakeups_found(opening.hints.rows))
        cleared = wf.status == WorkflowStatus.ACTIVE
        blocked = self._blocked_reason(wf, scope.now())
        if blocked is not None:
            # Only a session taken over after a crash gets here: the run that
            # paused or failed it was recorded, the close was not.
            outcome = (SessionOutcome.FAILED if wf.status == WorkflowStatus.ERROR
                       else SessionOutcome.SUSPENDED)
            remaining = self._left(scope, declines)
            reason, budget = wf.reason, None
        else:
            if wf.status == WorkflowStatus.PAUSED:
                wf.resume(scope.now(), "a retry or reconciliation fell due")
            outcome, reason, budget, remaining = self._work(scope, driver, request, runs,
                                                            declines, cleared, opening)
        now = scope.now()
        session.close(now, outcome, reason, budget, remaining)
        wf.close_session(now, session.id, outcome.value)
        scope.append("session_close")
        return SessionResult(outcome.value, wf.name, session.id, session.cost, remaining,
                             reason, budget, tuple(runs))

    def _work(self, scope: SessionScope, driver: RunDriver, request: SessionRequest,
              runs: list[RunResult], declines: dict[str, Decline], cleared: bool,
              opening: OpeningReads | None
              ) -> tuple[SessionOutcome, str | None, str | None, dict[str, dict[str, int]]]:
        """`opening`: the unfinished runs and the hints, as the session's opening
        append read them (None: read here)."""
        stopped = self._continue_unfinished(
            scope, driver, runs, cleared, opening.unfinished.rows if opening else None)
        if stopped is not None:
            return (stopped, runs[-1].reason if runs else None, None,
                    self._left(scope, declines))
        if request.trigger != Trigger.EVENT:
            for spec in self.reg.definition.producers:
                if spec.name in scope.session.committed_handlers:
                    continue  # a session taken over after a crash: it already ran
                if request.producers is not None and spec.name not in request.producers:
                    continue  # the worker runs the producers whose tick came
                result = driver.run_producer(spec)
                scope.streams.trim()
                runs.append(result)
                if not result.committed:
                    return self._stop(result), result.reason, None, self._left(scope, declines)
        consumers = self._consumers()
        by_name = {c.name: c for c in self.reg.definition.consumers}
        session = scope.session
        fresh = opening is None  # the first look reads the store, unless the opening did
        while True:
            now = scope.now()
            # The two hints for choosing a consumer (read once a session, then kept).
            backlog, wakeups = scope.pending_hints(self.reg.workflow_id, fresh, None)
            fresh = False
            chosen = pick_consumer(consumers, backlog, declines, wakeups, now)
            if chosen is None:
                return SessionOutcome.COMPLETED, None, None, {}
            budget = None
            if session.consumer_runs >= request.max_iterations:
                budget = "max_iterations"
            elif request.max_cost is not None and session.cost >= request.max_cost:
                budget = "max_cost"
            elif request.should_stop is not None and request.should_stop():
                budget = request.stop_budget
            if budget is not None:
                left = remaining_work(consumers, backlog, declines, wakeups, now)
                spent = (f"{session.consumer_runs} consumer runs" if budget == "max_iterations"
                         else f"cost {session.cost} of {request.max_cost}"
                         if budget == "max_cost"
                         else "the worker is stopping" if budget == "worker_stop"
                         else "a stop was requested")
                return (SessionOutcome.BUDGET_EXHAUSTED,
                        f"{budget} reached ({spent}) with work remaining", budget, left)
            result = driver.run_consumer(by_name[chosen])
            scope.streams.trim()
            runs.append(result)
            if not result.committed:
                return self._stop(result), result.reason, None, self._left(scope, declines)
            if result.declined:
                declines[chosen] = Decline(scope.streams.position, now)

    def _consumers(self) -> list[ConsumerView]:
        return [ConsumerView(c.name, c.subscribe) for c in self.reg.definition.consumers]

    def _left(self, scope: SessionScope, declines: dict[str, Decline]
              ) -> dict[str, dict[str, int]]:
        """The work a session that stopped short (suspended, failed) leaves, as
        its budget's end lists it: what waits for the workflow to go on."""
        backlog, wakeups = scope.pending_hints(self.reg.workflow_id, False, None)
        return remaining_work(self._consumers(), backlog, declines, wakeups, scope.now())

    @staticmethod
    def _stop(result: RunResult) -> SessionOutcome:
        return SessionOutcome.SUSPENDED if result.status.is_paused else SessionOutcome.FAILED

    def _continue_unfinished(self, scope: SessionScope, driver: RunDriver,
                             runs: list[RunResult], cleared: bool,
                             found: list[Any] | None) -> SessionOutcome | None:
        """Runs that earlier sessions left unfinished go first, by the reset rules
        (`found`: their rows, read in the session's opening append)."""
        if found is not None:
            rows = pending_work.unfinished_runs_found(found)
        else:
            with scope.streams.log.reading(snapshot=False) as c:  # one statement
                rows = pending_work.unfinished_runs(c, self.reg.workflow_id)
        now = scope.now()
        for row in rows:
            run: HandlerRun | None = scope.streams.get(row.run_id, short=True)
            if run is None or run.is_finished:
                continue
            step, attempt = continuation(run, cleared, now)
            if step is Continue.WAIT:
                continue
            if step is Continue.BLOCKED:
                scope.workflow.pause(now, f"run {run.id} ({run.handler}) waits for a person: "
                                     f"{run.reason or run.status.value}", run.id, None)
                return SessionOutcome.SUSPENDED
            producer = self.reg.producer(run.handler) if run.kind is RunKind.PRODUCER else None
            consumer = self.reg.consumer(run.handler) if run.kind is RunKind.CONSUMER else None
            result = driver.continue_run(run, step, attempt, producer, consumer)
            runs.append(result)
            if not result.committed:
                return self._stop(result)
        return None

