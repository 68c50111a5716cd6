"""Workers a store knows (ADR 0019, "Workers a store knows").

A worker notes itself in the store as it starts, with the workflows it serves,
and notes how it stopped; one killed, or whose machine was lost, notes
nothing. Whether a worker still runs is not kept but asked, of the store
(PostgreSQL: the lock its engine holds while its process lives) or the host
(SQLite: the process id), as for a session's holder: `status` tells a worker
serving, or waiting for work, from one that is gone. A worker found gone by an
engine that may write is noted so (`how` = GONE), so that the look, which may
wait a few seconds on PostgreSQL, is made once. Notes of workers that ended
more than `FORGET_AFTER` before are dropped when a worker starts.

Several threads serving with one engine are one worker: noted as started by
the first, as stopped by the last.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from flowledger.domain.text import one_line
from flowledger.projections.times import text_time, time_text
from flowledger.read_side.queries import WorkerInfo

if TYPE_CHECKING:
    from flowledger.engine.engine import Engine
    from flowledger.infrastructure.store import WorkerNote

logger = logging.getLogger("flowledger.worker")

FORGET_AFTER = timedelta(days=7)
SHOWN_GONE_FOR = timedelta(days=1)  # `status` lists a worker found gone this long
GONE = "gone: it ended without saying so"

_loops_lock = threading.Lock()
_loops: dict[str, int] = {}  # per engine owner: its serve() loops under way


def note_started(engine: Engine, workflows: list[str]) -> None:
    """A serve() loop of this engine starts: the first notes the worker (and
    drops notes of workers that ended long ago)."""
    with _loops_lock:
        _loops[engine.owner] = _loops.get(engine.owner, 0) + 1
        if _loops[engine.owner] > 1:
            return
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
    """A serve() loop of this engine ends: the last notes how the worker stopped."""
    with _loops_lock:
        left = _loops.get(engine.owner, 1) - 1
        if left > 0:
            _loops[engine.owner] = left
            return
        _loops.pop(engine.owner, None)
    recorder = engine.log.flow_recorder
    with recorder.writing(sync=False) as c:
        recorder.note_worker_stopped(c, engine.owner, time_text(engine.clock.now()), how)


def workers(engine: Engine, looked_at: Iterable[str | None] = ()) -> list[WorkerInfo]:
    """Every worker noted, the latest started first, with what it is now.
    `looked_at`: owners whose first look the caller wants made together with
    these (the store waits once for all of them). A store whose notes cannot
    be read (a table dropped by hand) lists none, and says so in the log."""
    try:
        with engine.log.reading() as c:
            notes = engine.log.flow_recorder.worker_notes(c)
    except Exception as e:
        logger.warning("could not read the workers' notes (%s: %s)", type(e).__name__,
                       one_line(e))
        notes = []
    engine._first_looks([*looked_at, *(n[0] for n in notes if n[3] is None)])
    infos = [_info(engine, n) for n in notes]
    _note_found_gone(engine, [i for i in infos if i.state == "gone" and i.how is None])
    return infos


def _info(engine: Engine, note: WorkerNote) -> WorkerInfo:
    owner, started, workflows, stopped, how = note
    if stopped is not None:
        state = "gone" if how == GONE else "stopped"
    else:
        state = {True: "running", False: "gone", None: "unknown"}[
            engine._holder_state(owner, patient=True)]
    return WorkerInfo(owner, tuple(json.loads(workflows)), text_time(started), state,
                      text_time(stopped) if stopped is not None else None, how)


def _note_found_gone(engine: Engine, gone: list[WorkerInfo]) -> None:
    """Say in their notes that these workers were found gone (not on a store
    opened read-only): later looks need not wait to prove it again."""
    if not gone or engine.log.config.read_only:
        return
    recorder = engine.log.flow_recorder
    try:
        with recorder.writing(sync=False) as c:
            for w in gone:
                recorder.note_worker_stopped(c, w.owner, time_text(engine.clock.now()), GONE)
    except Exception as e:  # a note: never the end of a status
        logger.warning("could not note that workers were found gone (%s: %s)",
                       type(e).__name__, one_line(e))


def shown_in_status(w: WorkerInfo, now: datetime) -> bool:
    """Running ones, those the store cannot tell of, and those found gone lately."""
    if w.state == "stopped":
        return False
    return w.state != "gone" or w.stopped_at is None or now - w.stopped_at < SHOWN_GONE_FOR


def _ended_before(engine: Engine, note: WorkerNote, when: datetime) -> bool:
    """Stopped (or found gone) before `when`; or started before it and not
    known to run (no wait for a second look: a week-old note whose lock is
    free is not worth one)."""
    owner, started, _, stopped, _ = note
    if stopped is not None:
        return text_time(stopped) < when
    return text_time(started) < when and engine._holder_state(owner) is not True
