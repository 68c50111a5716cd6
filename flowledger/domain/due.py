"""Which workflows are due, and when the next one falls due (DESIGN §6).

Pure: the worker hands in what it read from the log (each producer's last
committed run, the backlog, wake-ups, retry times, the session lock) and the
time; this decides. Nothing is remembered here: a restarted worker asks the
same questions of the same log and gets the same answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from flowledger.domain.schedule import Schedule
from flowledger.domain.scheduling import ConsumerView, TopicBacklog


@dataclass(frozen=True)
class Situation:
    """One workflow as the log tells it, plus what this worker already served.

    `seen_position`: pending events at or below this log position were in the
    log when an earlier session of this worker began (its consumers saw them
    and took them or declined them). `served_at`: wake-ups and retry times at
    or before this time were due when that session began. Both are only an
    economy: with 0 and None (a worker just started) a workflow is served at
    most once more than needed, never less.
    """

    name: str
    status: str = "active"  # active | paused | error
    paused_until: datetime | None = None
    session_open: bool = False
    lease_until: datetime | None = None
    holder_dead: bool = False
    schedules: Mapping[str, Schedule] = field(default_factory=dict)
    last_runs: Mapping[str, datetime | None] = field(default_factory=dict)
    consumers: Sequence[ConsumerView] = ()
    backlog: Mapping[str, TopicBacklog] = field(default_factory=dict)
    seen_position: int = 0
    wakeups: Mapping[str, datetime] = field(default_factory=dict)
    retry_times: Sequence[datetime] = ()
    served_at: datetime | None = None
    more_work: bool = False  # the last session ended on a budget with work left


@dataclass(frozen=True)
class Due:
    workflow: str
    trigger: str  # "schedule" | "event" | "recover"
    producers: tuple[str, ...] = ()  # the scheduled producers whose tick came
    reason: str = ""


@dataclass(frozen=True)
class Decision:
    due: Due | None
    next_due: datetime | None  # the earliest time after now something falls due


def next_tick(schedule: Schedule, last_run: datetime | None, now: datetime) -> datetime:
    """When a producer is due: at once if it never ran; else its first tick after its
    last run. Ticks missed meanwhile are one tick: the run then serves them all."""
    return now if last_run is None else schedule.next_after(last_run)


def _not_served(when: datetime, served_at: datetime | None) -> bool:
    return served_at is None or when > served_at


def decide_due(s: Situation, now: datetime) -> Decision:
    if s.session_open:
        if s.holder_dead:
            return Decision(Due(s.name, "recover", reason="a session whose holder is gone"),
                            None)
        if s.lease_until is not None and s.lease_until <= now:
            return Decision(Due(s.name, "recover",
                                reason="a session whose holder's lease ran out"), None)
        return Decision(None, s.lease_until)  # another worker has it
    if s.status == "error":
        return Decision(None, None)  # waits for a person
    if s.status == "paused":
        if s.paused_until is None:
            return Decision(None, None)
        if s.paused_until <= now:
            return Decision(Due(s.name, "event", reason="a retry or reconciliation fell due"),
                            None)
        return Decision(None, s.paused_until)
    later: list[datetime] = []
    ticked: list[str] = []
    for producer, schedule in s.schedules.items():
        at = next_tick(schedule, s.last_runs.get(producer), now)
        if at <= now:
            ticked.append(producer)
        else:
            later.append(at)
    reasons: list[str] = []
    if ticked:
        reasons.append("schedule of " + ", ".join(ticked))
    new_events = [t for c in s.consumers for t in c.subscribe
                  if (b := s.backlog.get(t)) is not None and b.pending > 0
                  and b.newest > s.seen_position]
    if new_events:
        reasons.append("pending events in " + ", ".join(sorted(set(new_events))))
    if s.more_work:
        reasons.append("work left by a session's budget")
    for name, when in (*s.wakeups.items(), *(("retry", r) for r in s.retry_times)):
        if not _not_served(when, s.served_at):
            continue
        if when <= now:
            reasons.append(f"wake-up of {name}" if name != "retry" else "a retry fell due")
        else:
            later.append(when)
    next_due = min(later, default=None)
    if not reasons:
        return Decision(None, next_due)
    trigger = "schedule" if ticked else "event"
    return Decision(Due(s.name, trigger, tuple(ticked), "; ".join(reasons)), next_due)


def serving_order(due: Sequence[Due], turn: int) -> list[Due]:
    """Due workflows in turn: the list rotated by `turn`, so that no workflow's
    backlog keeps the others waiting (each session is bounded by its budgets)."""
    if not due:
        return []
    k = turn % len(due)
    return [*due[k:], *due[:k]]
