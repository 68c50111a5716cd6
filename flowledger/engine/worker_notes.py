"""Workers a store knows (ADR 0019, "Workers a store knows").

A worker notes itself in the store as it starts, with the workflows it serves,
and notes how it stopped; one killed, or whose machine was lost, notes
nothing. Whether a worker still runs is not kept but asked each time, of the
store (PostgreSQL: the lock its engine holds while its process lives) or the
host (SQLite: the process id), as for a session's holder: `status` tells a
worker serving, or waiting for work, from one that is gone. Notes of workers
that ended more than `FORGET_AFTER` before are dropped when a worker starts.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from flowledger.projections.times import text_time, time_text
from flowledger.read_side.queries import WorkerInfo

if TYPE_CHECKING:
    from flowledger.engine.engine import Engine
    from flowledger.infrastructure.store import WorkerNote

FORGET_AFTER = timedelta(days=7)


def note_started(engine: Engine, workflows: list[str]) -> None:
    """This engine serves `workflows` from now on; notes of workers that ended
    long ago are dropped."""
    now = engine.clock.now()
    recorder = engine.log.flow_recorder
    with engine.log.reading() as c:
        notes = recorder.worker_notes(c)
    old = [n[0] for n in notes if n[0] != engine.owner and _ended_before(
        engine, n, now - FORGET_AFTER)]
    with recorder.writing(sync=False) as c:
        recorder.note_worker(c, engine.owner, time_text(now), json.dumps(workflows))
        if old:
            recorder.forget_workers(c, old)


def note_stopped(engine: Engine, how: str) -> None:
    recorder = engine.log.flow_recorder
    with recorder.writing(sync=False) as c:
        recorder.note_worker_stopped(c, engine.owner, time_text(engine.clock.now()), how)


def workers(engine: Engine) -> list[WorkerInfo]:
    """Every worker noted, the latest started first, with what it is now."""
    with engine.log.reading() as c:
        notes = engine.log.flow_recorder.worker_notes(c)
    engine._first_looks(n[0] for n in notes if n[3] is None)
    return [_info(engine, n) for n in notes]


def _info(engine: Engine, note: WorkerNote) -> WorkerInfo:
    owner, started, workflows, stopped, how = note
    state = ("stopped" if stopped is not None else
             "running" if engine._holder_alive(owner, patient=True) else "gone")
    return WorkerInfo(owner, tuple(json.loads(workflows)), text_time(started), state,
                      text_time(stopped) if stopped is not None else None, how)


def _ended_before(engine: Engine, note: WorkerNote, when: datetime) -> bool:
    owner, started, _, stopped, _ = note
    if stopped is not None:
        return text_time(stopped) < when
    return text_time(started) < when and not engine._holder_alive(owner)
