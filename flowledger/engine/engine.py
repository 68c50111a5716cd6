"""`fl.Engine`: the one object an embedding application talks to (DESIGN §5)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

from flowledger.authoring.definition import Workflow as WorkflowDefinition
from flowledger.authoring.registration import Registration, checked_tools
from flowledger.authoring.tools import Tool
from flowledger.domain.errors import (
    ActionNotApplicable,
    ConcurrencyError,
    ConfigurationError,
    CorruptEventError,
    DefinitionError,
    EngineClosed,
    EngineForked,
    FlowledgerError,
    InvalidArgument,
    NotFoundError,
    StoreInClear,
)
from flowledger.domain.failures import describe
from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.ids import topic_event_id, workflow_id
from flowledger.domain.limits import Limits
from flowledger.domain.run_decider import (
    ACTIONS,
    PersonDecided,
    Resumed,
    Rules,
    check_decision,
    decide,
)
from flowledger.domain.session import Session, Trigger
from flowledger.domain.text import one_line, shown_time
from flowledger.domain.workflow import Workflow, WorkflowStatus
from flowledger.engine.clock import Clock, IdFactory, LeaseClock, SystemClock, random_ids
from flowledger.engine.closing import (
    Activity,
    Refusing,
    WhileOpen,
    engine_call,
    refuse_everything,
)
from flowledger.engine.faults import (
    SimulatedCrash,
    declare_dead,
    declared_dead,
    from_environment,
)
from flowledger.engine.handler_runs import SessionScope
from flowledger.engine.heartbeat import Heartbeat
from flowledger.engine.policy import RetryPolicy
from flowledger.engine.publish_guess import PublishGuesses
from flowledger.engine.recovery_progress import RecoveryCount
from flowledger.engine.replay import ReplayReport, replay_run
from flowledger.engine.secret_resolution import SecretProvider, SecretResolver
from flowledger.engine.session_runner import SessionRequest, SessionResult, SessionRunner
from flowledger.engine.streams import Streams
from flowledger.engine.verification import Verification, verify_log
from flowledger.infrastructure.encryption import protection
from flowledger.infrastructure.event_log import EventLog
from flowledger.infrastructure.store import LogStore, LogWentBack, stored_after
from flowledger.infrastructure.store_failures import (
    from_the_store,
    opening_failed,
    store_errors_as_ours,
)
from flowledger.infrastructure.store_url import DEFAULT_STORE, cli_command, parse_store_url, shown
from flowledger.projections import pending_work
from flowledger.projections.catalog import store_projections
from flowledger.projections.pending_work import PendingWork
from flowledger.projections.runner import Progress, ProjectionRunner
from flowledger.projections.sealing import Seal
from flowledger.projections.settled import Settled
from flowledger.read_side.log_view import (
    LoggedEvent,
    read_log,
    read_positions,
    read_stream,
    stream_version_at,
)
from flowledger.read_side.queries import (
    BlockedRun,
    CostReport,
    CostsBy,
    EngineStatus,
    EventHistory,
    InputHistory,
    PendingWorkReport,
    ReadSide,
    RunInfo,
    RunTimeline,
    SessionInfo,
    WorkerInfo,
    amount,
    aware,
    whole_count,
)
from flowledger.read_side.time_travel import EngineAt, pending_then

logger = logging.getLogger("flowledger.engine")


def _pid_here(owner: str) -> int | None:
    """The process id of an owner (host:process id:tag) of this host, else None."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    return int(pid_text) if host == socket.gethostname() and pid_text.isdigit() else None


def _host_says(owner: str | None) -> bool | None:
    """What this host knows of a lock holder (host:process id:tag): False when
    provably dead, True when its process runs here, None when it cannot tell
    (another host)."""
    if not owner or declared_dead(owner):
        return False
    pid = _pid_here(owner)
    if pid is None:
        return None
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _exited(pid)


def holder_state(store: LogStore, owner: str | None, patient: bool = False) -> bool | None:
    """What is known of a lock holder (a session's, a worker's) in `store`:
    True while it runs, False when provably gone, None when neither the store
    nor this host can tell. The store may know (ADR 0017); no second look to
    wait for where the host knows it gone."""
    host = _host_says(owner)
    said = store.holder_alive(owner, patient and host is not False)
    return host if said is None else said


# The engines of this process not closed yet, by owner: a call recorded by an
# engine of this process that is not among them cannot be under way.
_ENGINES_HERE: weakref.WeakValueDictionary[str, Engine] = weakref.WeakValueDictionary()


def maker_may_be_calling(store: LogStore, owner: str) -> bool:
    """Whether the engine `owner`, which recorded a call in flight, may still be
    making it (RunDriver._maker_running). Any sign of life wins: a process of
    this host that runs is taken as making it whatever the store's lock says (a
    stopped process cannot take its lock again); one of this process only
    while that engine is open and busy in some thread; another host's, unless
    the store proves it gone."""
    host = _host_says(owner)
    if host is False:
        return False
    if _pid_here(owner) == os.getpid():
        engine = _ENGINES_HERE.get(owner)  # else closed, or collected without a close
        return engine is not None and engine._activity.busy  # idle: no call under way
    return bool(host) or store.holder_alive(owner) is not False


def _exited(pid: int) -> bool:
    """A process that has ended and waits for its parent to collect it (a
    zombie: killed under a parent that has not waited for it yet), as Linux's
    /proc tells; it can do nothing more. False where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read()
    except OSError:
        return False
    return fields[fields.rfind(b")") + 2:][:1] == b"Z"  # the state, after the name


class Engine:
    """Runs registered workflows against one store (SQLite file, PostgreSQL, memory)."""

    def __init__(self, store: str = DEFAULT_STORE, *, clock: Clock | None = None,
                 ids: IdFactory | None = None, limits: Limits | None = None,
                 policy: RetryPolicy | None = None,
                 checkpoint: Callable[[str], None] | None = None,
                 cipher_key: str | None = None, compress: bool | None = None,
                 chain_key: str | None = None,
                 secrets: SecretProvider | None = None, create: bool = True) -> None:
        """`create=False`: open only a store that exists (a misspelt URL is refused
        instead of starting an empty store).
        `cipher_key`: the store's AES key, base64 (else FLOWLEDGER_CIPHER_KEY; ""
        for none whatever the environment says); `compress`: zlib bodies for a new
        store (None: as the store was created); `chain_key`: the HMAC key of the
        tamper-evident chain (else FLOWLEDGER_CHAIN_KEY, else derived from the
        cipher key). See ADR 0022 and 0023. `secrets`: what `fl.Secret(name)` resolves
        to, a mapping or a function name -> value (`fl.Secret.from_env(NAME)` reads
        the environment): tools receive values, the log records references."""
        self.store = store
        self._activity = Activity(shown(store))
        self.secrets = SecretResolver(secrets)
        self.clock = clock or SystemClock()
        self.ids = ids or random_ids
        self.limits = limits or Limits()
        self.policy = policy or RetryPolicy()
        self.checkpoint = checkpoint or from_environment()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        _ENGINES_HERE[self.owner] = self
        self.log = EventLog.open(store, protection(cipher_key, compress, chain_key), create)
        try:
            self.log.flow_recorder.announce(self.owner)
            # A session's append waits out a write lock others hold while its
            # lease would hold; past it, another engine may take the session over.
            self.log.flow_recorder.busy_patience_s = self.policy.lease_seconds
            self.lease = LeaseClock(self.clock, self.log.flow_recorder.store_time)
            self.lease.align()
            self.projections = self._projections(store)
            self.log.set_after_insert(self.projections.apply_inline, self.projections.forget,
                                     self.projections.may_hold, self.projections.prefetch)
            # An event that cannot be read stops whatever needs it (a query catches up
            # first, an append folds it in), not the opening: the log stays readable
            # up to it. A store opened read-only is read as its projections stand.
            if not self.log.config.read_only:
                with contextlib.suppress(CorruptEventError):
                    self.projections.catch_up()
        except Exception as e:
            self.log.close()
            if isinstance(e, FlowledgerError) or not from_the_store(e):
                raise  # ours already, or a bug: shown as it is
            refused = opening_failed(self.log.config, e, "caught up its projections")
            if refused is not None:  # every failure to open a store is one of ours
                raise refused from e
            raise ConfigurationError(
                f"cannot open store {shown(store)!r}: {one_line(describe(e))}") from e
        self._registered: dict[str, Registration] = {}
        self._left: set[UUID] = set()  # sessions stopped whose lease could not be ended
        # Per workflow: whether its consumers' commits take their messages for new.
        self._guesses: dict[UUID, PublishGuesses] = {}
        self.heartbeat = Heartbeat(min(1.0, self.policy.lease_seconds / 4))

    def _refuse_acting(self, what: str, align_lease: bool = False) -> None:
        """Writes that act on what the log says are refused on a store opened
        read-only, and on one whose log lost events its projections had folded
        in (a cut made outside flowledger): what those events recorded as done
        would be done again. `align_lease`: the lease clock is aligned on the
        store's time, read in the same statement (a session's opening)."""
        self.log.config.refuse_writes(what)
        # Looked at each time (one read): a log cut under an engine already open
        # is found before it acts, and noted in the store before an append hides it.
        before = self.clock.now()
        cut_back, store_time = self.projections.ahead_of_log(clock=align_lease)
        if align_lease:
            self.lease.align_to(store_time, before, self.clock.now())
        if cut_back is not None:
            furthest, head = cut_back
            raise LogWentBack(
                f"store {self.log.config.shown!r}: its projections have folded the log up to "
                f"position {furthest}, but the log ends at position {head}: the events after "
                "it were removed outside flowledger (rows deleted, or the log's table restored "
                "without the rest of the store). What they recorded as done is no longer in "
                "the log and would be done again. Nothing was written: restore the whole "
                "store from a backup (verify it first), or, to go on from the log as it now "
                "is knowing that, rebuild the projections (`flowledger projections rebuild`)")

    @engine_call
    def verify(self, expect: str | None = None, projections: bool = True) -> Verification:
        """Walk the log and its tamper-evident chain, and compare the projections
        with a fold of it (see `fl.verify_store`)."""
        return verify_log(self.log, expect, projections)

    @engine_call
    def grant(self, role: str, read_only: bool = False) -> list[str]:
        """Let `role`, a PostgreSQL role that may not create, use this store: reads
        and writes on its tables (`read_only`: reads alone, for a role that opens
        it with ?mode=ro, ADR 0025), now and on those this engine's role creates in
        later upgrades (ADR 0013). Run as the role that owns the store's tables;
        returns the statements run."""
        self.log.config.refuse_writes("granting a role changes the store's privileges")
        return self.log.flow_recorder.grant(role, read_only)

    def _projections(self, store: str) -> ProjectionRunner:
        """The projections, their tables made where missing: where they cannot be
        (a store opened read-only that an older release wrote), said so."""
        try:
            return ProjectionRunner(self.log.flow_recorder, self.log.mapper,
                                    store_projections(),
                                    Seal(self.log.column_cipher))
        except Exception as e:
            if not (self.log.config.read_only and from_the_store(e)):
                raise
            raise ConfigurationError(
                f"cannot open store {shown(store)!r} read-only: {describe(e)}. If an older "
                "release wrote it, it lacks tables this release reads: open it once without "
                "?mode=ro, as a process that may write it, to bring its tables up to date. "
                "Nothing was changed") from e

    def close(self) -> None:
        """Close the store's connections once the sessions and serve() loops
        other threads have under way end their step (they are asked to stop
        after it, as on SIGTERM): closing under a tool call let another engine
        take its session over and make the call again. Every later call raises
        EngineClosed (engine/closing.py)."""
        if isinstance(self.log, Refusing):  # closed already, or crashed (testing)
            return
        if self._activity.forked:  # a child's copy: what it would close is the parent's
            refuse_everything(self, EngineForked, self._activity.forked_why())
            return
        self._activity.close()
        self.heartbeat.stop()
        self.log.close()
        # No call of this engine is under way any more: another engine of this
        # process need not wait for one to land (RunDriver._maker_running).
        declare_dead(self.owner)
        refuse_everything(self, EngineClosed, self._activity.why)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------- registration

    @engine_call
    def register(self, workflow: WorkflowDefinition, tools: Iterable[Tool] = ()) -> None:
        """Pre-flight validation (DESIGN §1.6), then record the workflow if it is new."""
        by_name = checked_tools(workflow, tools)
        wf_id = workflow_id(workflow.name)
        self._catch_up_if_behind()  # a run in another process may be between appends
        with self.log.reading() as c:
            unfinished = pending_work.unfinished_runs(c, wf_id)
        known = set(workflow.handler_names)
        orphans: dict[str, list[UUID]] = {}
        for row in unfinished:
            if row.handler not in known:
                orphans.setdefault(row.handler, []).append(row.run_id)
        if orphans:
            lines = [f"handler {h!r} not found; it has {len(ids)} incomplete "
                     f"run{'s' if len(ids) != 1 else ''} ({', '.join(str(i) for i in ids)})"
                     for h, ids in orphans.items()]
            raise DefinitionError(
                f"workflow {workflow.name!r} cannot be registered: " + "; ".join(lines)
                + ". Keep the handler in the code until its runs are finished.")
        if self.log.load(wf_id) is None:
            self._record_new_workflow(workflow)
        self._registered[workflow.name] = Registration(workflow, by_name, wf_id)

    def _record_new_workflow(self, workflow: WorkflowDefinition) -> None:
        """Append Workflow.Registered for a workflow the log does not hold yet (the
        seam a caller that must not write overrides: the CLI's replay and recover)."""
        self._refuse_acting(f"registering workflow {workflow.name!r}, which it "
                            "does not hold yet, appends it to the log")
        wf = Workflow.register(now=self.clock.now(), name=workflow.name,
                               fingerprint=workflow.fingerprint(),
                               topics=list(workflow.topics),
                               handlers=workflow.handler_names)
        with contextlib.suppress(ConcurrencyError):  # registered by another process
            self._append_and_catch_up(wf)

    def _registration(self, name: str) -> Registration:
        if isinstance(name, WorkflowDefinition):
            name = name.name
        reg = self._registered.get(name)
        if reg is None:
            raise NotFoundError(
                f"workflow {name!r} is not registered with this engine; call "
                f"engine.register(workflow, tools=[...]) first (registered: "
                f"{sorted(self._registered) or 'none'})")
        return reg

    # ------------------------------------------------------------- sessions

    def _scope_factory(self, reg: Registration, checkpoint: Callable[[str], None] | None = None
                       ) -> Callable[[Streams, Workflow, Session], SessionScope]:
        guesses = self._guesses.setdefault(reg.workflow_id, PublishGuesses())

        def make(streams: Streams, wf: Workflow, session: Session) -> SessionScope:
            return SessionScope(streams, wf, session, reg.tools, self.clock, self.ids,
                                self.limits, self.policy, checkpoint or self.checkpoint,
                                self.projections.pending_hints, self.heartbeat, self.lease,
                                self.secrets, guesses, self.owner,
                                lambda maker: maker_may_be_calling(self.log.flow_recorder, maker))

        return make

    @engine_call
    def run_session(self, workflow: str, trigger: str = "manual", max_iterations: int = 100,
                    max_cost: Decimal | int | str | None = None, *,
                    stop: threading.Event | None = None) -> SessionResult:
        """Producers (unless trigger="event"), then consumers until no work or a budget ends.

        `stop`, once set (e.g. by a signal handler: `flowledger run` on Ctrl-C), ends
        the session before its next consumer run: the step in progress finishes and
        the session closes `budget_exhausted` (budget "stop") with the work left
        listed (ADR 0020)."""
        reg = self._registration(workflow)
        request = self._request(trigger, max_iterations, max_cost)
        if stop is not None:
            request.should_stop, request.stop_budget = stop.is_set, "stop"
        return self._run_session(reg, request)

    def _run_session(self, reg: Registration, request: SessionRequest) -> SessionResult:
        with self._activity.running():
            asked = request.should_stop
            if asked is None:  # a close() in another thread asks it too
                request.should_stop, request.stop_budget = self._closing, "stop"
            else:
                request.should_stop = lambda: self._closing() or asked()
            return self._session(reg, request)

    def _closing(self) -> bool:
        return self._activity.closing

    def _session(self, reg: Registration, request: SessionRequest) -> SessionResult:
        self._refuse_acting("a session appends to the log", align_lease=True)
        runner = SessionRunner(reg, self._scope_factory(reg), self.store)
        streams = Streams(self.log)
        now = self.clock.now()
        self.checkpoint("before_append:session_open")
        opened = runner.open_new(streams, request, self.owner, now,
                                 self.policy.lease_until(self.lease.now()), self.ids())
        recovered: SessionResult | None = None
        if isinstance(opened, SessionResult) and opened.status == "busy":
            # A session left open by a process that died is recovered first
            # (DESIGN §2.3: on start), then this session opens as asked.
            recovered = self._recover(reg)
            if recovered is not None and recovered.status != "busy":
                streams = Streams(self.log)
                now = self.clock.now()
                opened = runner.open_new(streams, request, self.owner, now,
                                         self.policy.lease_until(self.lease.now()),
                                         self.ids())
        if isinstance(opened, SessionResult):
            return opened
        session = opened.session
        logger.info("session %s of %s (%s) opened", session.id, reg.definition.name,
                    request.trigger.value)
        assert streams.fenced_on is not None
        with self._abandoned_if_interrupted(reg, session.id,
                                            streams.fenced_on.session_held_since):
            self.checkpoint("after_append:session_open")
            result = runner.run(streams, streams.fenced_on, session, request, opened.reads)
        if recovered is not None:
            result = dataclasses.replace(result, recovered=recovered)
        if not self.projections.settled():  # else a look would find nothing to fold
            self._catch_up_read_side()
        logger.info("session %s of %s (%s) closed: %s%s", result.session_id, result.workflow,
                    request.trigger.value, result.status,
                    f" ({result.error})" if result.error else "")
        return result

    @contextlib.contextmanager
    def _abandoned_if_interrupted(self, reg: Registration, session_id: UUID,
                                  held_since: int | None) -> Iterator[None]:
        """A session whose work is cut short by an exception the engine does not
        handle (KeyboardInterrupt, SystemExit, a bug) is left as a crash leaves
        it — its runs unfinished, to be continued by the rules of DESIGN §2.3,
        never failed — but its lease ends at once: this engine (or any other)
        continues it on the next session or recover(), instead of waiting out
        the lease of a holder that is alive but no longer working on it.
        `held_since`: the workflow's `session_held_since` as this session got it
        (opened or taken over); a session another thread of this engine took
        over since is left to it."""
        try:
            yield
        except SimulatedCrash:
            raise  # a test standing for a dead process: write nothing more
        except BaseException as interruption:
            self._abandon(reg, session_id, held_since, interruption)
            raise

    def _abandon(self, reg: Registration, session_id: UUID, held_since: int | None,
                 cause: BaseException) -> None:
        try:
            wf: Workflow | None = self.log.load(reg.workflow_id)
            if wf is not None and wf.abandon_session(
                    self.clock.now(), session_id, self.owner,
                    f"the session stopped: {describe(cause)}", lease_until=self.lease.now(),
                    held_since=held_since):
                self._append_and_catch_up(wf)
        except Exception as e:  # the store itself may be what failed
            # This engine knows it holds the session no more: its own recover()
            # and workers take it over at once; others when the lease runs out.
            self._left.add(session_id)
            logger.warning("could not end the lease of session %s (%s); this engine takes "
                           "it over at its next look, any other once the lease runs out",
                           session_id, describe(e))

    def _append_and_catch_up(self, *aggregates: Any) -> None:
        """An append outside a session: when the call returns, every projection
        includes it, as after a session."""
        self.log.append(*aggregates)
        self._catch_up_read_side()

    def _catch_up_read_side(self) -> None:
        """Fold into the read-side projections (costs, audit) whatever appends
        left to a catch-up (ADR 0010): a session's close folds its own events
        when they follow on from the projections (ADR 0017), so this is most
        often one read. If another process holds the write lock, the next read
        catches up instead."""
        self.projections.catch_up_unless_busy()

    @staticmethod
    def _request(trigger: str, max_iterations: int, max_cost: Any) -> SessionRequest:
        try:
            trig = Trigger(trigger)
        except ValueError:
            raise InvalidArgument(f"trigger {trigger!r} is not one of "
                                  f"{[t.value for t in Trigger]}") from None
        iterations = whole_count(max_iterations, "max_iterations")
        if iterations is None:
            raise InvalidArgument("max_iterations must be a whole number, got None")
        return SessionRequest(trig, iterations, amount(max_cost, "max_cost"))

    # ------------------------------------------------------------- recovery

    @engine_call
    def recover(self, *, progress: Progress | None = None) -> list[SessionResult]:
        """Finish what a crash left, from the log: take over dead sessions and continue them.

        Safe at any time: a session whose holder may still be running is left
        alone (`busy`). Only registered workflows can be recovered — their
        handlers are needed to go on.

        `progress(done, total)`, if given, is called as recovery starts and after
        each run it ends: `done` runs of about `total`, an estimate of the work
        left (unfinished runs, producers still to run, pending messages within
        the session's budget) revised after each run, and exact at the end.
        """
        with self._activity.running():
            self._refuse_acting("recovery continues sessions, which appends to the log")
            regs = list(self._registered.values())
            count = (RecoveryCount(self.log, self.checkpoint, regs, progress) if progress
                     else None)
            self._look_at_holders(regs)
            results = []
            for reg in regs:
                results.append(self._recover(reg, count.checkpoint(reg) if count else None,
                                             should_stop=self._closing))
                if count:
                    count.finished(reg)
            self._catch_up_read_side()
            return [r for r in results if r is not None]

    def _recover(self, reg: Registration, checkpoint: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> SessionResult | None:
        """Take over `reg`'s open session if its holder is gone or its lease ran
        out, and run it to its end (or, `should_stop`, to before its next
        consumer run: a worker asked to stop)."""
        name = reg.definition.name
        wf: Workflow | None = self.log.load(reg.workflow_id)
        if wf is None or wf.open_session is None:
            return None
        expired = wf.lease_expired(self.lease.now())  # leases are judged in the store's time
        # While its lease runs, a holder is taken over only once proven gone,
        # which may need a second look (ADR 0017).
        alive = not self._holder_gone(wf.open_session, wf.session_owner, patient=not expired)
        now, lease_now = self.clock.now(), self.lease.now()
        if alive and not expired:
            return SessionResult("busy", name, wf.open_session, error=(
                f"session {wf.open_session} is held by {wf.session_owner}, which may still be "
                f"running (lease until {shown_time(wf.lease_until)}); nothing was done"))
        self._refuse_acting("taking a session over appends to the log")  # the worker's way in
        session_id = wf.take_over_session(now, self.owner, self.policy.lease_until(lease_now),
                                          holder_dead=not alive, lease_now=lease_now)
        session: Session | None = self.log.load(session_id)
        assert session is not None
        streams = Streams(self.log)
        streams.pin(session)
        streams.fence_on(wf)
        # Running it again: not to be taken over as left by this engine any more.
        left = session_id in self._left
        self._left.discard(session_id)
        try:
            streams.append()
        except ConcurrencyError:
            return SessionResult("busy", name, session_id,
                                 error="another process took the session over first")
        except BaseException:
            if left:
                self._left.add(session_id)  # still left: the takeover was not stored
            raise
        logger.info("took over session %s of %s (%s)", session_id, name,
                    "its holder is gone" if not alive else "its lease ran out")
        request = SessionRequest(Trigger(session.trigger), session.max_iterations,
                                 session.max_cost, should_stop=should_stop)
        with self._abandoned_if_interrupted(reg, session_id, wf.session_held_since):
            return SessionRunner(reg, self._scope_factory(reg, checkpoint), self.store).run(
                streams, wf, session, request)

    # --------------------------------------------------------- the worker (§6)

    @engine_call
    def serve(self, stop: threading.Event | None = None, *, interval: float = 0.5,
              max_iterations: int = 100) -> None:
        """Recover, then run a session for each workflow whenever it is due, until
        `stop` is set or the process gets SIGTERM/SIGINT (flowledger/engine/worker.py)."""
        # Read-only refused here; a log cut back is looked for by each session
        # the worker starts, where a store failing as it starts is waited for.
        self.log.config.refuse_writes("the worker runs sessions, which append to the log")
        from flowledger.engine.worker import Worker

        Worker(self, interval=interval, max_iterations=max_iterations).serve(stop)

    @engine_call
    def workers(self) -> list[WorkerInfo]:
        """Workers (`serve()`, `flowledger worker`) that served this store, the
        latest started first: running, stopped (when, and how), or gone without
        saying so (killed, crashed, its machine lost: as the store or the host
        proves, as for a session's holder). Notes of workers that ended a week
        before are dropped when a worker starts."""
        from flowledger.engine import worker_notes

        return worker_notes.workers(self)

    @engine_call
    def last_position(self) -> int:
        """The log position of the last event appended (0: an empty log): what
        `follow(after=...)` takes to show only what comes next."""
        from flowledger.engine.waiting import max_position

        return max_position(self.log)

    @engine_call
    def follow(self, after: int | None = 0, *, workflow: str | None = None,
               interval: float = 0.5,
               stop: threading.Event | None = None) -> Iterator[LoggedEvent]:
        """Each event after log position `after` (None: the end of the log now) as
        any process appends it, until `stop` is set or the engine is closed
        (which sets `stop`), or for ever."""
        from flowledger.engine.waiting import follow_log

        stop = stop or threading.Event()
        return self._activity.ending_on_close(
            follow_log(self.log, whole_count(after, "after"), workflow=workflow,
                       interval=interval, stop=stop), stop)

    @property
    def workflows(self) -> list[str]:
        """Names of the workflows registered with this engine."""
        return list(self._registered)

    # ------------------------------------------------------------ decisions

    @engine_call
    def resolve(self, run_id: UUID | str, action: str) -> None:
        """A person's decision on a mutation whose outcome is unknown (DESIGN §1.4)."""
        if action not in ACTIONS:
            raise InvalidArgument(f"action {action!r} is not one of {list(ACTIONS)}")
        self._refuse_acting("a decision is recorded in the log")
        run = self._load_run(run_id)
        check_decision(run, action)
        wf: Workflow | None = self.log.load(run.workflow_id)
        assert wf is not None
        if wf.open_session is not None:
            raise ActionNotApplicable(
                f"workflow {wf.name!r} has session {wf.open_session} open; decide once it has "
                "closed. Nothing was changed.")
        now = self.clock.now()
        changed: list[Any] = [run, wf]
        release = [self.log.load(topic_event_id(run.workflow, t, mid), short=True)
                   for t, mid in run.reserved_message_ids]
        effect = decide(run, PersonDecided(action), Rules(
            now, self.policy.reconcile_at, self.policy.transient_retry_at)).effect
        if isinstance(effect, Resumed) and effect.release:
            for event in release:
                if event is not None and event.reserved_by == run.id:
                    event.release(now, run.id)
                    changed.append(event)
        wf.resume(now, f"a person decided {action} for run {run.id}")
        self._append_and_catch_up(*changed)

    @engine_call
    def resume(self, workflow: str) -> bool:
        """Lift a workflow's `paused`/`error` status once a person has dealt with the cause."""
        reg_name = workflow.name if isinstance(workflow, WorkflowDefinition) else workflow
        self._refuse_acting("resuming a workflow is recorded in the log")
        wf: Workflow | None = self.log.load(workflow_id(reg_name))
        if wf is None:
            raise NotFoundError(f"no workflow named {reg_name!r} in store {shown(self.store)}")
        if wf.status == WorkflowStatus.ACTIVE:
            return False
        for blocked in self.blocked():
            if blocked.workflow == wf.name and "did_not_happen" in blocked.actions:
                raise ActionNotApplicable(
                    f"run {blocked.run_id} of {wf.name!r} has a mutation whose outcome is "
                    "unknown; decide first, with " + " or ".join(
                        f"`{cli_command(self.store, 'resolve', str(blocked.run_id), action)}`"
                        for action in blocked.actions) + ". Nothing was changed.")
        wf.resume(self.clock.now(), "resumed by a person")
        self._append_and_catch_up(wf)
        return True

    @engine_call
    def resolve_id(self, kind: str, value: UUID | str) -> UUID:
        """The id of a "run", "session" or "input" that `value` names: the UUID, any
        unique prefix of its hex (dashes optional) or its short id as the CLI prints
        it. Ambiguous: an InvalidArgument listing the candidates."""
        return self._caught_up().resolve_id(kind, value)

    def _load_run(self, run_id: UUID | str) -> HandlerRun:
        return self._caught_up().run(run_id)

    # ------------------------------------------------------------- queries

    @engine_call
    def run(self, run_id: UUID | str) -> HandlerRun:
        """A run as its stream tells it now."""
        return self._load_run(run_id)

    @engine_call
    def workflow(self, name: str) -> Workflow:
        """A workflow as its stream tells it now: status, reason, session lock."""
        return self._reads().workflow(name)

    @engine_call
    def blocked(self) -> list[BlockedRun]:
        """Everything waiting for a person (DESIGN §1.4): mutations whose outcome is
        unknown, runs paused for approval, and workflows in error."""
        return self._caught_up().blocked()

    @engine_call
    def events(self, workflow: str | None = None, run: UUID | str | None = None,
               after: int = 0, upto: int | None = None, last: int | None = None,
               since: datetime | None = None) -> Iterator[LoggedEvent]:
        """The log, decoded, in append order; optionally one workflow's or one run's,
        or those at or after time `since` (timezone-aware). `last`: only the last
        N of them (read back from the log's end, unless `upto` or `run` is given)."""
        since = aware(since, "since")
        after = whole_count(after, "after") or 0
        upto, last = whole_count(upto, "upto"), whole_count(last, "last")
        run_id = self._load_run(run).id if run is not None else None
        return self._activity.refusing_after_close(
            read_log(self.log, workflow, run_id, after, upto, last=last, since=since))

    @engine_call
    def status(self) -> EngineStatus:
        """Workflows, open sessions, unfinished and blocked runs; and the workflows
        whose session holder is provably gone (`holders_gone`: recover() continues them)."""
        from flowledger.engine import worker_notes

        st = self._caught_up().status()
        held = [w for w in st.workflows if w.open_session is not None]
        # The first looks at holders and workers together: a store that needs
        # a second look waits once for all of them.
        found = worker_notes.workers(self, looked_at=[w.owner for w in held])
        gone = tuple(w.name for w in held
                     if self._holder_gone(w.open_session, w.owner, patient=True))
        now = self.lease.now()  # leases are judged in the store's time
        ended = tuple(w.name for w in held if w.name not in gone
                      and w.lease_until is not None and w.lease_until <= now)
        behind = self.read_side_behind() if self.log.config.read_only else 0
        live = tuple(w for w in found if worker_notes.shown_in_status(w, self.clock.now()))
        return dataclasses.replace(st, holders_gone=gone, leases_ended=ended, workers=live,
                                   read_side_behind=behind)

    def _look_at_holders(self, regs: Iterable[Registration]) -> None:
        """A first look at the holders of these workflows' open sessions, all
        together: the patient looks that follow wait once for all (ADR 0017)."""
        owners = []
        for reg in regs:
            with contextlib.suppress(CorruptEventError):  # said where it is served
                wf: Workflow | None = self.log.load(reg.workflow_id)
                if wf is not None and wf.open_session is not None:
                    owners.append(wf.session_owner)
        self._first_looks(owners)

    def _first_looks(self, owners: Iterable[str | None]) -> None:
        for owner in set(owners):
            self.log.flow_recorder.holder_alive(owner)

    def _holder_state(self, owner: str | None, patient: bool = False) -> bool | None:
        """What is known of a lock holder (a session's, a worker's): `holder_state`."""
        return holder_state(self.log.flow_recorder, owner, patient)

    def _holder_alive(self, owner: str | None, patient: bool = False) -> bool:
        """Whether a session's holder may still be running (False only when provably dead)."""
        return self._holder_state(owner, patient) is not False

    def _holder_gone(self, session_id: UUID | None, owner: str | None,
                     patient: bool = False) -> bool:
        """Whether open session `session_id`'s holder provably runs it no more:
        this engine, which stopped it and could not end its lease (the store
        was failing), or a holder the store or the host proves gone. `patient`:
        wait for a second look where the store needs one (ADR 0017); a worker's
        pass does not, and finds it proven at a later pass."""
        if owner == self.owner and session_id in self._left:
            return True
        return not self._holder_alive(owner, patient)

    # ---------------------------------------------------- read side (§2.4, §2.5)

    def _reads(self) -> ReadSide:
        """The present: the live projections and the whole log."""
        return ReadSide(self.log, self.log.reading, self.log.load, self._registered,
                        self.clock.now,
                        unfolded=self._unfolded if self.log.config.read_only else None)

    def _unfolded(self) -> list[tuple[Any, int]]:
        """The log's events after the slowest projection's position, decoded
        (on a store opened read-only: what its queries look in beside the
        projections, which it cannot fold them into)."""
        after = min(self.projections.positions().values(), default=0)
        with self.log.reading() as c:
            return [(self.log.mapper.to_domain_event(s), p)
                    for rows in stored_after(self.log.flow_recorder, c, after) for p, s in rows]

    def _caught_up(self) -> ReadSide:
        """The present, after folding in what the projections have not yet:
        another process's run between its held appends (ADR 0012), a session's
        events for costs and audit, or appends by older code."""
        self._catch_up_if_behind()
        return self._reads()

    def _catch_up_if_behind(self) -> None:
        if not self.log.config.read_only and self.projections.lag():
            self.projections.catch_up()

    @engine_call
    def read_side_behind(self) -> int:
        """How many of the log's last events the read side (pending work, costs,
        audit) has not folded in. Queries fold them in first, so it is 0 after
        one, but on a store opened read-only (?mode=ro), which cannot write:
        there a session under way elsewhere, or a process that stopped before
        folding them in, leaves them out of what queries answer until an engine
        that writes folds them in. The log itself (`events`) holds them."""
        return self.projections.lag()

    @engine_call
    def pending_work(self, workflow: str) -> PendingWorkReport:
        """Backlog per topic, consumers with work, wake-ups, unfinished and blocked runs."""
        return self._caught_up().pending_work(workflow)

    @engine_call
    def costs(self, workflow: str | None = None, session: UUID | str | None = None,
              by: CostsBy = "session") -> CostReport:
        """Exact cost sums by "run", "session", "handler", "day" (UTC) or "workflow"."""
        return self._caught_up().costs(workflow=workflow, session=session, by=by)

    @engine_call
    def input_history(self, input_id: UUID | str) -> InputHistory:
        """Every message an input caused, every run that reserved them, each mutation
        (title, parameters, outcome), and the whole story in log order."""
        return self._caught_up().input_history(input_id)

    @engine_call
    def run_timeline(self, run_id: UUID | str) -> RunTimeline:
        """Every event of a run, and of other streams naming it, with log position and time."""
        return self._caught_up().run_timeline(run_id)

    @engine_call
    def event_history(self, workflow: str, topic: str, message_id: str) -> EventHistory:
        """Everything that happened to one message: every run that reserved it, and how
        each ended."""
        return self._caught_up().event_history(workflow, topic, message_id)

    @engine_call
    def runs(self, workflow: str | None = None, status: str | None = None,
             since: datetime | None = None, until: datetime | None = None,
             handler: str | None = None, session: UUID | str | None = None,
             limit: int | None = 100) -> list[RunInfo]:
        """Runs, newest first, filtered by workflow, status (exact, or "failed" /
        "paused" for the family), creation time window, handler and session."""
        return self._caught_up().runs(workflow, status, since, until, handler, session, limit)

    @engine_call
    def sessions(self, workflow: str | None = None, status: str | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 limit: int | None = 100) -> list[SessionInfo]:
        """Sessions, newest first, filtered by workflow, status ("open" or an outcome)
        and opening time window."""
        return self._caught_up().sessions(workflow, status, since, until, limit)

    @engine_call
    def at(self, position: int) -> EngineAt:
        """The store as it was when the log ended at `position` (0 = empty): runs,
        sessions, workflows, pending work, costs, audit — read-only. Close it when done."""
        log = cast(EventLog, WhileOpen(self.log, self._activity.refuse_if_closed))
        return EngineAt(log, position, [type(p) for p in self.projections.projections],
                        self._registered)

    @engine_call
    def replay(self, run_id: UUID | str) -> ReplayReport:
        """Re-execute a recorded run with the code registered now, against its recorded
        reads and the state and messages it began with; writes nothing, calls no tool.
        Reports what differs (DESIGN §2.5)."""
        reads = self._caught_up()  # one view: the run's id and what names it
        run = reads.run(run_id)
        reg = self._registered.get(run.workflow)
        if reg is None:
            raise NotFoundError(
                f"run {run.id} belongs to workflow {run.workflow!r}, which is not registered "
                "with this engine: register its current code first (replay runs that code)")
        stream = read_stream(self.log, run.id)
        mentions = read_positions(self.log, reads.mentions_of(run.id))
        as_of = stream[0].position - 1
        past: list[EngineAt] = []
        folded = self.projections.positions()
        settled_then = min(folded[PendingWork.name], folded[Settled.name]) >= as_of

        def load_then(aggregate_id: UUID, short: bool = False) -> Any:
            version = stream_version_at(self.log, aggregate_id, as_of)
            return None if version is None else self.log.load(aggregate_id, version=version,
                                                               short=short)

        def peek_then(topic: str, limit: int | None) -> list[tuple[str, bytes]]:
            if settled_then:
                return pending_then(self.log, self.log.reading, run.workflow_id, topic,
                                    as_of, limit)
            # Not folded that far (a store opened read-only, behind): pending
            # work folded up to then in memory, once, and only if the handler peeks.
            if not past:
                past.append(EngineAt(self.log, as_of, [PendingWork], self._registered))
            with past[0].tables() as c:
                return [(m.message_id, m.payload) for m in pending_work.pending_messages(
                    c, run.workflow_id, topic, limit)]

        try:
            return replay_run(run, stream, mentions, reg, self.limits, load_then,
                              self.log.load, peek_then)
        finally:
            for view in past:
                view.close()

    @engine_call
    def rebuild_projections(self, names: list[str] | None = None,
                            progress: Callable[[int, int], None] | None = None) -> int:
        """Empty the projections (all, or the named ones) and fold the log in from
        position 0; `progress(done, total)` is called after each batch. Returns the
        number of events read."""
        self.log.config.refuse_writes("a rebuild rewrites the projections")
        known = [p.name for p in self.projections.projections]
        unknown = [n for n in names or [] if n not in known]
        if unknown:
            raise InvalidArgument(f"no projection named {', '.join(map(repr, unknown))}; "
                                  f"the projections are {', '.join(known)}")
        return self.projections.rebuild(names, progress=progress)


@store_errors_as_ours
def copy_store(source: str, target: str,
               progress: Callable[[int, int], None] | None = None, *,
               source_key: str | None = None, target_key: str | None = None,
               chain_key: str | None = None) -> int:
    """Carry a whole log from store URL `source` to the empty store `target`, in
    position order, and rebuild the projections there (DESIGN §7): moving from
    SQLite to PostgreSQL without losing history. Returns the events copied;
    `copy_store_report` says more (see it for the keys)."""
    return copy_store_report(source, target, progress, source_key=source_key,
                             target_key=target_key, chain_key=chain_key).events


@dataclasses.dataclass(frozen=True)
class CopyReport:
    """What a copy made: its events, whether they are encrypted, and the
    workflows whose sessions were open in the source (open in the copy too)."""

    events: int
    encrypted: bool
    open_sessions: tuple[str, ...]
    written: int = 0  # of `events`, by this call (0: the same copy, run again, found whole)
    # Of `open_sessions`, those whose holder still runs: the two logs go apart.
    still_held: tuple[str, ...] = ()


@store_errors_as_ours
def copy_store_report(source: str, target: str,
                      progress: Callable[[int, int], None] | None = None, *,
                      source_key: str | None = None, target_key: str | None = None,
                      chain_key: str | None = None) -> CopyReport:
    """`copy_store`, saying what it made (`CopyReport`).

    `source_key`/`target_key`: each store's cipher key (None: FLOWLEDGER_CIPHER_KEY
    for the source, the source's key for the target; "" for none). Giving the
    target another key rotates it; "" writes the copy in clear (ADR 0022). A
    source in clear copied with FLOWLEDGER_CIPHER_KEY set (`source_key` None)
    is read in clear and copied encrypted with that key."""
    from flowledger.infrastructure.copying import copy_log

    if source == target:
        raise InvalidArgument(f"copy needs two different stores, got {shown(source)!r} "
                              "twice")
    parse_store_url(target).refuse_writes("a copy writes into it")
    asked = protection(source_key, None, chain_key)
    try:
        src = EventLog.open(source, asked, create=False)  # only read: never made here
    except StoreInClear:
        if source_key is not None:
            raise  # a key named for this source: a mistake to say
        # The environment's key, and the source in clear: read so, copied encrypted.
        src = EventLog.open(source, protection("", None, chain_key), create=False)
    to = protection((asked.cipher_key or "") if target_key is None else target_key, None,
                    chain_key)
    try:
        dst = EventLog.open(target, to, copying=True)
        try:
            copied, written = copy_log(src, dst, progress)
        finally:
            dst.close()
        # Opening it folds every projection in from position 0.
        with Engine(target, cipher_key=to.cipher_key or "", chain_key=chain_key) as made:
            held = sorted({s.workflow for s in made.sessions(status="open", limit=None)})
            owners = {name: made.workflow(name).session_owner for name in held}
        # Known to run, as an engine judges a holder: its later work goes to
        # the source alone.
        running = tuple(name for name, owner in owners.items()
                        if holder_state(src.flow_recorder, owner) is True)
    finally:
        src.close()
    return CopyReport(copied, to.cipher_key is not None, tuple(held), written, running)
