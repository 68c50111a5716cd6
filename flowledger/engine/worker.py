"""The worker: `engine.serve()` runs each workflow's sessions when they are due
(DESIGN §6).

Every loop reads the log (each scheduled producer's last committed run, the
backlog, wake-ups, retry times, the session lock), asks the pure rules of
domain/due.py which workflows are due, serves them in turn, then sleeps until
the next due time or a new append, checking the log no faster than
`interval`. The only things it keeps in memory are economies (how far into the
log it has read, what its last session of each workflow already saw): a
restarted worker reads the same log and makes the same decisions.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from flowledger.authoring.registration import Registration
from flowledger.domain.due import Decision, Due, Situation, decide_due, serving_order
from flowledger.domain.errors import CorruptEventError, EngineClosed
from flowledger.domain.failures import describe
from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.phases import RunKind
from flowledger.domain.schedule import Schedule
from flowledger.domain.scheduling import ConsumerView, TopicBacklog
from flowledger.domain.session import Trigger
from flowledger.domain.text import one_line, shown_time
from flowledger.domain.workflow import Workflow, WorkflowStatus
from flowledger.engine import worker_notes
from flowledger.engine.graceful_stop import GracefulStop
from flowledger.engine.session_runner import SessionRequest, SessionResult
from flowledger.engine.waiting import LogWaiter, max_position, retry_wait
from flowledger.infrastructure.event_log import Kept
from flowledger.infrastructure.store import LogWentBack
from flowledger.infrastructure.store_failures import advice, from_the_store, is_outage
from flowledger.infrastructure.store_url import cli_command
from flowledger.projections import pending_work
from flowledger.read_side.log_view import read_log

if TYPE_CHECKING:
    from flowledger.engine.engine import Engine

logger = logging.getLogger("flowledger.worker")


@dataclass
class _Served:
    """What this worker's last session of a workflow saw when it began."""

    seen_position: int = 0
    served_at: datetime | None = None
    more_work: bool = False


@dataclass
class _LastRuns:
    """Each scheduled producer's last committed run (its creation time), from the log."""

    read_upto: int = 0
    last: dict[tuple[UUID, str], datetime] = field(default_factory=dict)
    # Producer runs begun (read from their start), dropped when they end.
    started: dict[UUID, tuple[UUID, str, datetime]] = field(default_factory=dict)
    seeded: set[UUID] = field(default_factory=set)  # workflows whose last runs were read


_Facts = tuple[Workflow, dict[str, TopicBacklog], dict[str, datetime], list[datetime]]


class Worker:
    def __init__(self, engine: Engine, *, interval: float = 0.5,
                 max_iterations: int = 100) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.engine = engine
        self.interval = interval
        self.max_iterations = max_iterations
        self.stop = threading.Event()
        self._served: dict[str, _Served] = {}
        self._runs = _LastRuns()
        self._turn = 0
        # What the log said of every workflow served, at `_facts_at` (the head
        # then); the workflows as last read (refreshed, not loaded again); and
        # those whose stream could not be read, read afresh at each look.
        self._facts_at: int | None = None
        self._facts_now: dict[UUID, _Facts | None] = {}
        self._workflows: dict[UUID, Kept] = {}
        self._damaged: set[UUID] = set()
        self.sessions = 0  # sessions this worker ran (for tests and figures)
        self._undecided: set[str] = set()  # workflows whose last decision failed
        self._unreadable: set[str] = set()  # workflows last stopped by a damaged stream
        self._failed_sessions = 0  # sessions in a row that stopped on an error
        self._in_use = threading.Lock()  # what it keeps is one thread's (`_alone`)

    @contextlib.contextmanager
    def _alone(self, what: str) -> Iterator[None]:
        """A Worker keeps what it read between passes: two threads' passes would
        mix it up. Refused, not waited for (a wait inside its own session's
        handler would never end)."""
        if not self._in_use.acquire(blocking=False):
            raise RuntimeError(
                f"Worker.{what}: this Worker is already at work (in another thread, or a "
                "handler of its own session called it); a Worker does one thing at a time. "
                "Give each thread its own Worker: engine.serve() in each thread does, and "
                "they share the workflows safely")
        try:
            yield
        finally:
            self._in_use.release()

    # -------------------------------------------------------------- serving

    def serve(self, stop: threading.Event | None = None) -> None:
        with self._alone("serve"):  # first: a Worker at work keeps its own stop
            if stop is not None:
                self.stop = stop
            with self.engine._activity.running(self.stop):  # the engine's close() stops it
                self._serve_until_stopped()

    def _serve_until_stopped(self) -> None:
        # SIGTERM/SIGINT: stop after the step in progress (the session closes with
        # what is left listed); a second signal stops at once (KeyboardInterrupt:
        # the session is left as a crash leaves it, and recovery finishes it).
        signals = GracefulStop(self.stop, log=logger)
        signals.install()
        waiter = LogWaiter(self.engine.log, self.interval, self.stop)
        logger.info("worker %s serving %s (%s)", self.engine.owner,
                    ", ".join(self.engine.workflows) or "no workflow",
                    "woken by the store's notifications" if waiter.wakeups is not None
                    else f"checking the log every {self.interval}s")
        self._say_unscheduled()
        how = "stopped"  # what the worker's note says (worker_notes.py)
        started = False
        try:
            failures = 0
            while not self.stop.is_set():
                try:
                    if not started:  # retried like a pass: the store may be down now
                        self._start(waiter)
                        started = True
                    self._pass(waiter)
                    failures = 0
                except LogWentBack as e:
                    logger.error("worker %s stops: %s", self.engine.owner,
                                 one_line(e))
                    raise
                except EngineClosed:
                    break  # closed meanwhile, which set its stop as well
                except Exception as e:
                    # The store could not be read or waited on (a server
                    # restarting, a network down): what stands in the log is
                    # unchanged, so the worker waits and looks again. Never the
                    # end of the worker.
                    failures += 1
                    delay = retry_wait(self.interval, failures)
                    logger.error("could not read the store (%s: %s%s); trying again in %.1fs",
                                 type(e).__name__, one_line(e), _advice(e), delay,
                                 exc_info=failures == 1 and not is_outage(e))
                    self.stop.wait(delay)
        except BaseException as e:
            how = ("stopped at once" if isinstance(e, KeyboardInterrupt) else
                   f"the log went back: {one_line(e)}" if isinstance(e, LogWentBack) else
                   f"{type(e).__name__}: {one_line(e)}")
            raise
        finally:
            waiter.close()
            signals.restore()
            if started:
                self._note("stopped", lambda: worker_notes.note_stopped(self.engine, how))
            logger.info("worker %s stopped", self.engine.owner)

    def _start(self, waiter: LogWaiter) -> None:
        """Finish what crashed processes left, and learn each scheduled
        producer's last run, before the first pass. A workflow whose stream
        cannot be read is said and left waiting, as a pass leaves it; a store
        that fails is retried by the caller."""
        engine = self.engine
        regs = list(engine._registered.values())
        engine._look_at_holders(regs)
        for reg in regs:
            if self.stop.is_set():  # asked to stop: the others are left to the next worker
                break
            try:
                result = engine._recover(reg, should_stop=self.stop.is_set)
            except CorruptEventError as e:
                self._cannot_read(reg.definition.name, e)
                continue
            if result is not None and result.status != "busy":
                logger.info("recovered session %s of %s: %s", result.session_id,
                            result.workflow, result.status)
            self._say_if_waiting(reg)
        engine._catch_up_read_side()
        self._seed_last_runs(waiter.head())
        self._note("started", lambda: worker_notes.note_started(engine, list(engine.workflows)))

    def _note(self, what: str, write: Callable[[], None]) -> None:
        """A note of this worker (`status` lists it): never the end of the worker."""
        try:
            write()
        except Exception as e:
            logger.warning("could not note in the store that worker %s %s (%s: %s%s)",
                           self.engine.owner, what, type(e).__name__, one_line(e), _advice(e))

    def _cannot_read(self, workflow: str, error: CorruptEventError) -> None:
        """Said once until the workflow is served again: each pass tries it."""
        if workflow not in self._unreadable:
            self._unreadable.add(workflow)
            logger.error("cannot serve %s, which waits until its stream is mended (the "
                         "others are served): %s", workflow, error)

    def _pass(self, waiter: LogWaiter) -> None:
        """Serve every workflow due now, or else wait for an append or the
        next due time."""
        # The head, and a log cut back under this engine looked for.
        head = self.engine.log.flow_recorder.check_head(waiter.head)
        self._seed_last_runs()  # of a workflow registered since
        self._read_new_runs(head)
        now = self.engine.clock.now()
        decisions = self._decisions(now)
        due = [d.due for d in decisions if d.due is not None]
        if not due:
            waiter.wait_for_append(head, self._sleep_for(decisions, now))
            return
        did_nothing = True  # every workflow due was held elsewhere, or had nothing to take over
        for item in serving_order(due, self._turn):
            if self.stop.is_set():
                break
            try:
                result = self._serve(item, head)
            except CorruptEventError as e:
                self._cannot_read(item.workflow, e)  # its own: the others go on at once
            except LogWentBack:
                raise  # this engine may append no more: the end of the worker
            except Exception as e:
                # The session lost its lock, or the store failed: what was
                # appended stands, and the log says what is left. Never the
                # end of the worker but for a log gone back; a store that keeps
                # failing (say, read-only after a failover) is waited for
                # longer each time, and its story told once.
                self._failed_sessions += 1
                did_nothing = False  # waited below
                delay = retry_wait(self.interval, self._failed_sessions)
                logger.error("session of %s stopped (%s%s); trying again in %.1fs",
                             item.workflow, one_line(describe(e)), _advice(e), delay,
                             exc_info=self._failed_sessions == 1 and not is_outage(e))
                self.stop.wait(delay)
            else:
                self._failed_sessions = 0
                self._unreadable.discard(item.workflow)
                did_nothing = did_nothing and (result is None or result.status == "busy")
        self._turn += 1
        if did_nothing and not self.stop.is_set():
            # Looked again at once, a session held by another engine would be
            # asked for again and again until its holder ends it.
            waiter.wait_for_append(head, self.interval)

    def run_once(self) -> list[SessionResult]:
        """One pass: serve every workflow due now (for tests and embedding loops)."""
        with self._alone("run_once"):
            return self._run_once()

    def _run_once(self) -> list[SessionResult]:
        head = max_position(self.engine.log)
        self._seed_last_runs(head if not self._runs.read_upto else None)
        self._read_new_runs(head)
        now = self.engine.clock.now()
        due = [d.due for d in self._decisions(now) if d.due]
        results = [self._serve(item, head) for item in serving_order(due, self._turn)]
        self._turn += 1
        return [r for r in results if r is not None]

    def next_due(self) -> datetime | None:
        """When the next workflow falls due, as the log says now."""
        with self._alone("next_due"):
            return self._next_due()

    def _next_due(self) -> datetime | None:
        self._read_new_runs(max_position(self.engine.log))
        now = self.engine.clock.now()
        return min((d.next_due for d in self._decisions(now) if d.next_due is not None),
                   default=None)

    def _sleep_for(self, decisions: list[Decision], now: datetime) -> float:
        # Never longer than the interval: the clock may be a manual one, and the
        # store may change without a new append being seen in between.
        soonest = min((d.next_due for d in decisions if d.next_due is not None), default=None)
        if soonest is None:
            return self.interval
        return max(0.0, min(self.interval, (soonest - now).total_seconds()))

    def _say_unscheduled(self) -> None:
        """A producer without every= or cron= is never due (DESIGN §6): said at
        the start, since a worker that never runs it looks idle for no reason."""
        for reg in self._regs():
            idle = [p.name for p in reg.definition.producers if p.schedule is None]
            if idle:
                logger.warning(
                    "workflow %s: producer%s %s %s no every= or cron=, so this worker never "
                    "runs %s (a session of `flowledger run` or engine.run_session does); its "
                    "consumers serve what is published", reg.definition.name,
                    "s" if len(idle) > 1 else "", ", ".join(idle),
                    "have" if len(idle) > 1 else "has", "them" if len(idle) > 1 else "it")

    def _say_if_waiting(self, reg: Registration) -> None:
        """A workflow in error, or paused until a person decides, is served by no
        session until then: said at the start, as a worker that only says it
        serves it looks idle for no reason."""
        wf: Workflow | None = self.engine.log.load(reg.workflow_id)
        if wf is None or wf.status == WorkflowStatus.ACTIVE:
            return
        if wf.paused_until is not None:
            logger.warning("workflow %s is paused until %s (%s): this worker serves it again "
                           "then", wf.name, shown_time(wf.paused_until),
                           one_line(wf.reason or "no reason given"))
            return
        logger.warning("workflow %s is %s (%s): this worker serves it again once a person "
                       "acts: `%s` lists what waits and the command for each", wf.name,
                       wf.status.value, one_line(wf.reason or "no reason given"),
                       cli_command(self.engine.store, "blocked"))

    def _regs(self) -> list[Registration]:
        return list(self.engine._registered.values())

    def _serve(self, due: Due, head: int) -> SessionResult | None:
        engine = self.engine
        reg = engine._registered[due.workflow]
        served = self._served.setdefault(due.workflow, _Served())
        started = time.monotonic()
        if due.trigger == "recover":
            # Not a session of this worker's: what is pending stays to be served
            # (the holder may have closed its session since the look, with new
            # events in it, and recovery may find nothing to take over).
            result = engine._recover(reg, should_stop=self.stop.is_set)
            engine._catch_up_read_side()
            if result is not None and result.status == "busy":  # another engine was first
                logger.info("session %s of %s is held by another engine: left to it",
                            result.session_id, due.workflow)
                return None
            if result is not None:
                logger.info("took over session %s of %s (%s): %s", result.session_id,
                            due.workflow, due.reason, result.status)
        else:
            request = SessionRequest(Trigger(due.trigger), self.max_iterations, None,
                                     producers=frozenset(due.producers),
                                     should_stop=self.stop.is_set)
            before = served.seen_position, served.served_at
            served.seen_position = head
            served.served_at = engine.clock.now()
            try:
                result = engine._run_session(reg, request)
            except BaseException as e:
                # Not served: what it was to see is still to be served, at a later pass.
                served.seen_position, served.served_at = before
                if isinstance(e, CorruptEventError):  # its stream is looked at afresh
                    self._forget(reg.workflow_id)
                raise
            if due.producers and result.status != "busy":
                # Said by the worker whose session ran the tick: with several
                # workers on a store, one line a tick, not one from each.
                logger.info("tick of %s: %s", due.workflow, ", ".join(due.producers))
        if result is None:
            return None
        if result.status == "busy":
            # Workers sharing a workflow meet so at each tick: a decision (-v),
            # without the advice meant for a person at a command line.
            logger.debug("%s has a session open elsewhere (%s): left to it", due.workflow,
                         (result.error or "").partition(". Nothing was done")[0])
            return result
        self.sessions += 1
        served.more_work = result.status == "budget_exhausted"
        for run in result.runs:
            logger.debug("run %s of %s/%s ended %s%s", run.run_id, due.workflow, run.handler,
                         run.status.value, f": {run.reason}" if run.reason else "")
        log = logger.warning if result.status in ("failed", "suspended") else logger.info
        left = "; ".join(f"{handler}: " + (", ".join(f"{n} in {topic}" for topic, n in
                                                     topics.items()) or "a wake-up")
                         for handler, topics in result.remaining.items())
        log("session %s of %s (%s: %s) %s: %d runs, cost %s%s%s in %.3fs", result.session_id,
            due.workflow, due.trigger, due.reason, result.status, len(result.runs),
            result.cost, f", {result.error}" if result.error else "",
            f"; work left: {left}" if left else "", time.monotonic() - started)
        return result

    # ------------------------------------------------------- what the log says

    def _decisions(self, now: datetime) -> list[Decision]:
        """Each workflow's, by the due rules. One whose stream cannot be decoded
        (damaged outside flowledger) is left out of this pass, said once until
        it can be read again, and the others are served. Any other failure is
        the store's, and every workflow's: it ends the pass (`serve` backs off)."""
        decisions = []
        for reg in self._regs():
            name = reg.definition.name
            try:
                decisions.append(self._decide(reg, now))
            except CorruptEventError:  # its own; the store's failures end the pass
                if name not in self._undecided:
                    logger.exception("could not tell whether %s is due: its sessions wait, "
                                     "the other workflows are served", name)
                    self._undecided.add(name)
                continue
            self._undecided.discard(name)
        return decisions

    def _decide(self, reg: Registration, now: datetime) -> Decision:
        return decide_due(self._situation(reg, now), now)

    def _situation(self, reg: Registration, now: datetime) -> Situation:
        name = reg.definition.name
        served = self._served.get(name, _Served())
        facts = self._facts(reg)
        if facts is None:
            return Situation(name, status="error")
        wf, backlog, wakeups, retries = facts
        schedules: dict[str, Schedule] = {p.name: p.schedule for p in reg.definition.producers
                                          if p.schedule is not None}
        return Situation(
            name, status=wf.status.value, paused_until=wf.paused_until,
            session_open=wf.open_session is not None,
            lease_until=self.engine.lease.to_engine(wf.lease_until),  # in the store's time
            # Not patient: a lock found free is proven at a later pass (passes
            # are at most an interval apart), and the others are served meanwhile.
            holder_dead=(wf.open_session is not None
                         and self.engine._holder_gone(wf.open_session, wf.session_owner)),
            schedules=schedules,
            last_runs={p: self._runs.last.get((reg.workflow_id, p)) for p in schedules},
            consumers=[ConsumerView(c.name, c.subscribe) for c in reg.definition.consumers],
            backlog=backlog, seen_position=served.seen_position, wakeups=wakeups,
            retry_times=retries, served_at=served.served_at, more_work=served.more_work)

    def _facts(self, reg: Registration) -> _Facts | None:
        """What the log says of a workflow (None: it is not in the log), read
        again only when the log has moved (an idle worker's loop then costs one
        look at the log's head), and then for every workflow served at once."""
        workflow_id = reg.workflow_id
        if workflow_id not in self._damaged and (
                self._facts_at != self._runs.read_upto or workflow_id not in self._facts_now):
            self._read_facts()
        if workflow_id in self._damaged:  # it may have been mended: read at each look
            return self._read_facts_of(reg)
        return self._facts_now[workflow_id]

    def _read_facts(self) -> None:
        """Every served workflow's facts in a few statements, however many there
        are: the workflows this worker read before are brought up to date by
        one read of what was appended to their streams since, and the pending
        work of all is read together (a statement or more for each, a round
        trip each on a server, made a pass cost a millisecond per workflow).
        A workflow whose stream cannot be read is left to `_read_facts_of`."""
        engine = self.engine
        regs = [r for r in self._regs() if r.workflow_id not in self._damaged]
        head = self._runs.read_upto
        current = engine.log.refreshed(
            [self._workflows[r.workflow_id] for r in regs if r.workflow_id in self._workflows])
        facts: dict[UUID, _Facts | None] = {}
        for reg in regs:
            kept = current.get(reg.workflow_id)
            if kept is None:
                try:
                    kept = engine.log.kept(reg.workflow_id)
                except CorruptEventError:
                    self._forget(reg.workflow_id)
                    continue
            if kept is None:
                facts[reg.workflow_id] = None
            else:
                current[reg.workflow_id] = kept
        self._workflows = current  # every served workflow the log holds and that reads
        engine._catch_up_if_behind()
        facts.update(self._pending_facts(list(self._workflows)))
        self._facts_now, self._facts_at = facts, head

    def _forget(self, workflow_id: UUID) -> None:
        """A workflow whose stream could not be read: looked at afresh each time."""
        self._workflows.pop(workflow_id, None)
        self._facts_now.pop(workflow_id, None)
        self._damaged.add(workflow_id)

    def _read_facts_of(self, reg: Registration) -> _Facts | None:
        """One workflow's facts, its stream loaded afresh: raises CorruptEventError
        while it cannot be read (each time a new one, said by `_decisions`)."""
        kept = self.engine.log.kept(reg.workflow_id)
        self._damaged.discard(reg.workflow_id)
        if kept is None:
            self._facts_now[reg.workflow_id] = None
            return None
        self._workflows[reg.workflow_id] = kept
        self.engine._catch_up_if_behind()
        found = self._pending_facts([reg.workflow_id])[reg.workflow_id]
        self._facts_now[reg.workflow_id] = found
        return found

    def _pending_facts(self, workflow_ids: list[UUID]) -> dict[UUID, _Facts]:
        with self.engine.log.reading(snapshot=False) as c:  # one statement
            found = pending_work.hints_and_retries_of(c, workflow_ids)
        return {w: (self._workflows[w].aggregate, *found[w][0], found[w][1])
                for w in workflow_ids}

    def _seed_last_runs(self, head: int | None = None) -> None:
        """The last committed run of each scheduled producer, read from the read
        side for each workflow not read yet (at start, and one registered
        since); later ones are read from the log's new events (`_read_new_runs`,
        from `head` on when given)."""
        runs = self._runs
        new = [r for r in self._regs() if r.workflow_id not in runs.seeded]
        if any(p.schedule is not None for r in new for p in r.definition.producers):
            self.engine._catch_up_if_behind()
            with self.engine.log.reading() as c:
                for reg in new:
                    for p in reg.definition.producers:
                        if p.schedule is None:
                            continue
                        last = list(pending_work.run_rows(c, reg.workflow_id,
                                                          handler=p.name,
                                                          status="committed", limit=1))
                        if last and last[0].created_at is not None:
                            key = (reg.workflow_id, p.name)
                            if key not in runs.last or runs.last[key] < last[0].created_at:
                                runs.last[key] = last[0].created_at
        runs.seeded.update(r.workflow_id for r in new)
        if head is not None:
            runs.read_upto = head

    def _read_new_runs(self, head: int) -> None:
        runs = self._runs
        if head <= runs.read_upto:
            return
        if not any(p.schedule is not None for r in self._regs() for p in r.definition.producers):
            runs.read_upto = head  # nothing scheduled: no need to read the new events
            return
        # A run's own events name its workflow; only its start and end are read.
        for event in read_log(self.engine.log, None, None, runs.read_upto, head,
                              workflows=False, only=(HandlerRun.Created, HandlerRun.Committed,
                                                     HandlerRun.Failed, HandlerRun.Superseded)):
            fields: dict[str, Any] = event.fields
            if event.name == "Created" and fields.get("kind") in (RunKind.PRODUCER, "producer"):
                runs.started[event.stream_id] = (fields["workflow_id"], fields["handler"],
                                                 event.timestamp)
            elif event.name in ("Failed", "Superseded"):
                runs.started.pop(event.stream_id, None)  # ended without a commit
            elif event.name == "Committed" and event.stream_id in runs.started:
                wf_id, handler, created = runs.started.pop(event.stream_id)
                key = (wf_id, handler)
                if key not in runs.last or runs.last[key] < created:
                    runs.last[key] = created
        runs.read_upto = head


def _advice(e: BaseException) -> str:
    """What to do about a store's failure, where it is known, as the end of a
    log line's parenthesis ("": not known, or not the store's)."""
    said = advice(e) if from_the_store(e) else None
    return f": {said}" if said else ""
