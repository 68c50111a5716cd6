"""The Workflow aggregate: definition fingerprint, status and the session lock.

One open session per workflow (DESIGN §1.5): opening a session is an event on
this stream, appended with optimistic concurrency, so two writers that read
the same version can never both open one. Every later append of the session
is fenced on this stream's version, so a holder that lost its lease (a
takeover is an event here too) fails its next append.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar
from uuid import UUID

from flowledger.domain.aggregate import EventSourcedAggregate
from flowledger.domain.errors import ConcurrencyError, InternalError
from flowledger.domain.ids import workflow_id
from flowledger.domain.text import shown_time


class WorkflowStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    ERROR = "error"


class SessionAlreadyOpen(ConcurrencyError):
    """Another session of this workflow holds the lock."""


class Workflow(EventSourcedAggregate):
    append_order: ClassVar[int] = 3

    added_fields: ClassVar[dict[str, Any]] = {"session_held_since": None}  # 2026-12-07

    def __init__(self) -> None:
        self.name: str = ""
        self.fingerprint: str = ""
        self.topics: list[str] = []
        self.handlers: list[str] = []
        self.status: WorkflowStatus = WorkflowStatus.ACTIVE
        self.reason: str | None = None
        self.blocking_run: UUID | None = None
        self.paused_until: datetime | None = None
        self.open_session: UUID | None = None
        self.session_owner: str | None = None
        # The version of the event that gave the open session its present
        # holder (opened or taken over): one engine's threads share an owner.
        self.session_held_since: int | None = None
        self.lease_until: datetime | None = None

    class Registered(EventSourcedAggregate.Created):
        name: str
        fingerprint: str
        topics: list[str]
        handlers: list[str]

        def apply(self, wf: Workflow) -> None:
            wf.name = self.name
            wf.fingerprint = self.fingerprint
            wf.topics = list(self.topics)
            wf.handlers = list(self.handlers)

    class DefinitionChanged(EventSourcedAggregate.Event):
        fingerprint: str
        topics: list[str]
        handlers: list[str]

        def apply(self, wf: Workflow) -> None:
            wf.fingerprint = self.fingerprint
            wf.topics = list(self.topics)
            wf.handlers = list(self.handlers)

    class SessionOpened(EventSourcedAggregate.Event):
        session_id: UUID
        owner: str
        lease_until: datetime

        def apply(self, wf: Workflow) -> None:
            wf.open_session = self.session_id
            wf.session_owner = self.owner
            wf.session_held_since = self.originator_version
            wf.lease_until = self.lease_until

    class LeaseRenewed(EventSourcedAggregate.Event):
        session_id: UUID
        lease_until: datetime

        def apply(self, wf: Workflow) -> None:
            wf.lease_until = self.lease_until

    class SessionTakenOver(EventSourcedAggregate.Event):
        session_id: UUID
        previous_owner: str | None
        owner: str
        lease_until: datetime

        def apply(self, wf: Workflow) -> None:
            wf.session_owner = self.owner
            wf.session_held_since = self.originator_version
            wf.lease_until = self.lease_until

    class SessionAbandoned(EventSourcedAggregate.Event):
        """The holder stopped working on its session (interrupted) without closing
        it: the lease ends now, so recovery takes the session over at once and
        continues its runs as after a crash. `lease_until`: now in the time
        leases are measured in (the store's, ADR 0017); absent in events
        written before it was recorded, where the event's time stands for it."""

        session_id: UUID
        reason: str
        lease_until: datetime | None = None

        def apply(self, wf: Workflow) -> None:
            wf.lease_until = self.lease_until or self.timestamp

    class SessionClosed(EventSourcedAggregate.Event):
        session_id: UUID
        result: str

        def apply(self, wf: Workflow) -> None:
            wf.open_session = None
            wf.session_owner = None
            wf.session_held_since = None
            wf.lease_until = None

    class Paused(EventSourcedAggregate.Event):
        reason: str
        run_id: UUID | None
        until: datetime | None

        def apply(self, wf: Workflow) -> None:
            wf.status = WorkflowStatus.PAUSED
            wf.reason = self.reason
            wf.blocking_run = self.run_id
            wf.paused_until = self.until

    class Errored(EventSourcedAggregate.Event):
        reason: str
        run_id: UUID | None

        def apply(self, wf: Workflow) -> None:
            wf.status = WorkflowStatus.ERROR
            wf.reason = self.reason
            wf.blocking_run = self.run_id
            wf.paused_until = None

    class Resumed(EventSourcedAggregate.Event):
        reason: str

        def apply(self, wf: Workflow) -> None:
            wf.status = WorkflowStatus.ACTIVE
            wf.reason = None
            wf.blocking_run = None
            wf.paused_until = None

    def restored_from_snapshot(self) -> None:
        self.status = WorkflowStatus(self.status)

    # --------------------------------------------------------------- commands

    @classmethod
    def register(cls, *, now: datetime, name: str, fingerprint: str, topics: list[str],
                 handlers: list[str]) -> Workflow:
        return cls.start(cls.Registered, workflow_id(name), now, name=name,
                         fingerprint=fingerprint, topics=topics, handlers=handlers)

    def change_definition(self, now: datetime, fingerprint: str, topics: list[str],
                          handlers: list[str]) -> None:
        if fingerprint != self.fingerprint:
            self.record(self.DefinitionChanged, now, fingerprint=fingerprint, topics=topics,
                        handlers=handlers)

    def lease_expired(self, now: datetime) -> bool:
        return self.lease_until is not None and self.lease_until <= now

    def open_session_for(self, now: datetime, session_id: UUID, owner: str,
                         lease_until: datetime) -> None:
        if self.open_session is not None:
            raise SessionAlreadyOpen(
                f"workflow {self.name!r} already has session {self.open_session} open "
                f"(held by {self.session_owner}, lease until {shown_time(self.lease_until)})"
            )
        self.record(self.SessionOpened, now, session_id=session_id, owner=owner,
                    lease_until=lease_until)

    def renew_lease(self, now: datetime, lease_until: datetime) -> None:
        if self.open_session is None:
            raise InternalError(f"workflow {self.name!r} has no open session to renew")
        self.record(self.LeaseRenewed, now, session_id=self.open_session,
                    lease_until=lease_until)

    def take_over_session(self, now: datetime, owner: str, lease_until: datetime,
                          holder_dead: bool = False, lease_now: datetime | None = None
                          ) -> UUID:
        """Claim a session whose holder's lease ran out (or who is known to be dead).

        `lease_now`: the time leases are judged in (the store's, DESIGN §7), if
        not `now`.

        The stale holder's next append is fenced on this stream's version: it fails.
        """
        if self.open_session is None:
            raise InternalError(f"workflow {self.name!r} has no open session to take over")
        if not (holder_dead or self.lease_expired(lease_now or now)):
            raise SessionAlreadyOpen(
                f"session {self.open_session} of workflow {self.name!r} is held by "
                f"{self.session_owner} until {shown_time(self.lease_until)}"
            )
        self.record(self.SessionTakenOver, now, session_id=self.open_session,
                    previous_owner=self.session_owner, owner=owner, lease_until=lease_until)
        return self.open_session

    def abandon_session(self, now: datetime, session_id: UUID, owner: str, reason: str,
                        lease_until: datetime | None = None,
                        held_since: int | None = None) -> bool:
        """Give up a session this owner holds; False if it is not (or no longer) theirs.
        `lease_until`: now in the leases' time, where that is not `now`'s.
        `held_since`: the `session_held_since` the giver got the session at; a
        later takeover under the same owner (another thread of its engine) then
        keeps the session."""
        if self.open_session != session_id or self.session_owner != owner:
            return False
        if held_since is not None and self.session_held_since != held_since:
            return False
        self.record(self.SessionAbandoned, now, session_id=session_id, reason=reason,
                    lease_until=lease_until)
        return True

    def close_session(self, now: datetime, session_id: UUID, result: str) -> None:
        if self.open_session != session_id:
            raise InternalError(
                f"workflow {self.name!r}: session {session_id} is not the open session"
            )
        self.record(self.SessionClosed, now, session_id=session_id, result=result)

    def pause(self, now: datetime, reason: str, run_id: UUID | None,
              until: datetime | None) -> None:
        self.record(self.Paused, now, reason=reason, run_id=run_id, until=until)

    def error(self, now: datetime, reason: str, run_id: UUID | None) -> None:
        self.record(self.Errored, now, reason=reason, run_id=run_id)

    def resume(self, now: datetime, reason: str) -> None:
        if self.status != WorkflowStatus.ACTIVE:
            self.record(self.Resumed, now, reason=reason)
