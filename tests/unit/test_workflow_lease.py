"""Who may give a session up: its holder as it got the session, not a thread of
the same engine that had it before another took it over (one owner for both)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowledger.domain.workflow import SessionAlreadyOpen, Workflow

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SESSION = UUID(int=7)
OWNER = "host:1:engine"


def opened() -> Workflow:
    wf = Workflow.register(now=NOW, name="wf", fingerprint="f", topics=[], handlers=[])
    wf.open_session_for(NOW, SESSION, OWNER, NOW + timedelta(minutes=1))
    return wf


def test_a_session_taken_over_by_its_own_owner_is_not_given_up_by_the_earlier_holder() -> None:
    wf = opened()
    first = wf.session_held_since
    wf.take_over_session(NOW, OWNER, NOW + timedelta(minutes=2), holder_dead=True)
    assert wf.session_held_since not in (None, first)
    version = wf.version

    assert not wf.abandon_session(NOW, SESSION, OWNER, "stopped", held_since=first)
    assert wf.version == version  # nothing recorded
    assert wf.abandon_session(NOW, SESSION, OWNER, "stopped", held_since=wf.session_held_since)


def test_without_held_since_the_owner_gives_it_up_as_before() -> None:
    wf = opened()
    wf.take_over_session(NOW, OWNER, NOW + timedelta(minutes=2), holder_dead=True)
    assert wf.abandon_session(NOW, SESSION, OWNER, "stopped")


@given(st.lists(st.sampled_from(["renew", "take over"]), max_size=6), st.data())
def test_only_the_latest_holder_gives_it_up(steps: list[str], data: st.DataObject) -> None:
    """Renewals keep the holder; each takeover makes a new one. Whichever holder
    tries, only the latest succeeds, and a replay of the events agrees."""
    wf = opened()
    holders = [wf.session_held_since]
    for step in steps:
        if step == "renew":
            wf.renew_lease(NOW, NOW + timedelta(minutes=3))
        else:
            wf.take_over_session(NOW, OWNER, NOW + timedelta(minutes=3), holder_dead=True)
            holders.append(wf.session_held_since)
    assert len(set(holders)) == len(holders)
    tries = data.draw(st.sampled_from(holders))
    assert wf.abandon_session(NOW, SESSION, OWNER, "stopped", held_since=tries) == (
        tries == holders[-1])

    replayed = None
    for event in wf.collect_events():
        replayed = event.mutate(replayed)
    assert replayed is not None and vars(replayed) == vars(wf)


def test_a_lease_s_end_is_said_as_every_time_is_shown() -> None:
    """UTC to the second, as the README shows times (it was said with
    microseconds and +00:00 here, and with neither elsewhere)."""
    wf = opened()
    with pytest.raises(SessionAlreadyOpen, match=r"lease until 2026-01-01 00:01:00Z\)$"):
        wf.open_session_for(NOW, UUID(int=8), OWNER, NOW + timedelta(minutes=5))
    with pytest.raises(SessionAlreadyOpen, match=r"until 2026-01-01 00:01:00Z$"):
        wf.take_over_session(NOW, "other", NOW + timedelta(minutes=5))
