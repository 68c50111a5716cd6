"""The fold's own checks: an event applies only to its stream, at the next version."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import pytest
from eventsourcing.domain import OriginatorIDError, OriginatorVersionError

from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.phases import RunKind

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def new_run(n: int) -> HandlerRun:
    return HandlerRun.create(id=UUID(int=n), now=NOW, workflow_id=UUID(int=99), workflow="wf",
                             session_id=None, kind=RunKind.CONSUMER, handler="h")


def test_replaying_a_run_gives_the_same_state() -> None:
    run = new_run(1)
    run.start_preparing(NOW)
    events = run.collect_events()
    replayed = None
    for e in events:
        replayed = e.mutate(replayed)
    assert replayed is not None and replayed.version == run.version == 2
    assert vars(replayed) == vars(run)


def test_an_event_of_another_stream_or_out_of_order_is_refused() -> None:
    run, other = new_run(1), new_run(2)
    run.start_preparing(NOW)
    created, preparing = run.collect_events()
    with pytest.raises(OriginatorIDError):
        preparing.mutate(other)
    created_again = created.mutate(None)
    created_again._version = 5  # a gap: version 2 cannot follow version 5
    with pytest.raises(OriginatorVersionError):
        preparing.mutate(created_again)
    assert other.version == 1
