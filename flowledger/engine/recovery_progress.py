"""recover()'s progress: how many runs have ended, of about how many its
sessions still take, told as each run ends."""

from __future__ import annotations

from collections.abc import Callable

from flowledger.authoring.registration import Registration
from flowledger.domain.session import Session, Trigger
from flowledger.domain.workflow import Workflow
from flowledger.infrastructure.event_log import EventLog
from flowledger.projections import pending_work
from flowledger.projections.runner import Progress

# The durable points at which a run has ended (flowledger/engine/faults.py).
_RUN_ENDED = frozenset({"after_append:commit", "after_append:producer_commit",
                        "after_append:failure"})


class RecoveryCount:
    """recover()'s `progress(done, total)`: the runs ended so far, of about how many."""

    def __init__(self, log: EventLog, checkpoint: Callable[[str], None],
                 regs: list[Registration], progress: Progress) -> None:
        self.log, self.passed_on, self.progress, self.done = log, checkpoint, progress, 0
        self.left = {reg.workflow_id: self.runs_left(reg) for reg in regs}
        self.report()

    def report(self) -> None:
        self.progress(self.done, self.done + sum(self.left.values()))

    def checkpoint(self, reg: Registration) -> Callable[[str], None]:
        """The engine's checkpoint, counting the runs of `reg`'s session as they end."""
        def counted(point: str) -> None:
            self.passed_on(point)
            if point in _RUN_ENDED:
                self.done += 1
                self.left[reg.workflow_id] = self.runs_left(reg)
                self.report()

        return counted

    def finished(self, reg: Registration) -> None:
        self.left[reg.workflow_id] = 0
        self.report()

    def runs_left(self, reg: Registration) -> int:
        """About how many runs finishing `reg`'s open session takes (0: none is open)."""
        wf: Workflow | None = self.log.load(reg.workflow_id)
        session: Session | None = (self.log.load(wf.open_session)
                                   if wf is not None and wf.open_session else None)
        if session is None:
            return 0
        with self.log.reading() as c:
            unfinished = len(pending_work.unfinished_runs(c, reg.workflow_id))
            backlog = pending_work.backlog(c, reg.workflow_id)
        topics = {t for spec in reg.definition.consumers for t in spec.subscribe}
        pending = sum(b.pending for t, b in backlog.items() if t in topics)
        producers = 0 if Trigger(session.trigger) is Trigger.EVENT else sum(
            1 for p in reg.definition.producers if p.name not in session.committed_handlers)
        return unfinished + producers + min(
            pending, max(0, session.max_iterations - session.consumer_runs))
