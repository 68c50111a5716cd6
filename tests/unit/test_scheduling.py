"""Which consumer runs next, and what is left when a budget ends (DESIGN §1.5).

A consumer has work when a topic it subscribes to holds pending events it has
not declined in this session, or when its `wake_at` is due. A consumer that
declined (prepared and reserved nothing) at log position P, at time T, has
work again only when an event becomes pending after P in one of its topics, or
when a `wake_at` later than T falls due — so a session never loops on it.
`pick_consumer` takes the first consumer with work, in declaration order;
`remaining_work` lists exactly the consumers with work and their pending
counts, so a session never reports `budget_exhausted` with nothing left, nor
`completed` with work left.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from flowledger.domain.scheduling import (
    ConsumerView,
    Decline,
    TopicBacklog,
    pick_consumer,
    remaining_work,
)

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
TOPICS = ["a", "b", "c", "d"]

Situation = tuple[list[ConsumerView], dict[str, TopicBacklog], dict[str, Decline],
                  dict[str, datetime]]

moments = st.integers(-600, 600).map(lambda s: NOW + timedelta(seconds=s))


@st.composite
def situations(draw: st.DrawFn) -> Situation:
    """Consumers in declaration order, the topics' backlog, this session's
    declines and the consumers' wake-ups."""
    names = draw(st.lists(st.sampled_from(["C1", "C2", "C3", "C4", "C5"]), min_size=1,
                          max_size=5, unique=True))
    consumers = [ConsumerView(n, tuple(draw(st.lists(st.sampled_from(TOPICS), min_size=1,
                                                     max_size=3, unique=True))))
                 for n in names]
    backlog = draw(st.dictionaries(st.sampled_from(TOPICS), st.builds(
        TopicBacklog, pending=st.integers(0, 3), newest=st.integers(0, 30))))
    declines = draw(st.dictionaries(st.sampled_from(names), st.builds(
        Decline, position=st.integers(0, 30), at=moments)))
    wakeups = draw(st.dictionaries(st.sampled_from(names), moments))
    return consumers, backlog, declines, wakeups


def has_work_by_the_design(c: ConsumerView, backlog: dict[str, TopicBacklog],
                           decline: Decline | None, wake_at: datetime | None) -> bool:
    """DESIGN §1.5, read literally."""
    undeclined_pending = any(
        t in backlog and backlog[t].pending > 0
        and (decline is None or backlog[t].newest > decline.position)  # new since declined
        for t in c.subscribe)
    wake_due = wake_at is not None and wake_at <= NOW and (decline is None
                                                           or wake_at > decline.at)
    return undeclined_pending or wake_due


@given(situations())
def test_remaining_work_lists_exactly_the_consumers_with_work(situation: Situation) -> None:
    consumers, backlog, declines, wakeups = situation
    remaining = remaining_work(consumers, backlog, declines, wakeups, NOW)

    expected = [c.name for c in consumers
                if has_work_by_the_design(c, backlog, declines.get(c.name), wakeups.get(c.name))]
    assert list(remaining) == expected  # and in declaration order
    for c in consumers:
        if c.name in remaining:
            assert remaining[c.name] == {t: backlog[t].pending for t in c.subscribe
                                         if t in backlog and backlog[t].pending > 0}


@given(situations())
def test_the_pick_is_the_first_consumer_with_work_and_none_only_when_none_has_any(
        situation: Situation) -> None:
    consumers, backlog, declines, wakeups = situation
    picked = pick_consumer(consumers, backlog, declines, wakeups, NOW)
    remaining = remaining_work(consumers, backlog, declines, wakeups, NOW)
    assert picked == next(iter(remaining), None)


@given(situations())
def test_a_session_declined_by_everyone_ends_without_a_busy_loop(situation: Situation) -> None:
    """Each pick declines (reserves nothing) at the log's head and now: no
    consumer is picked twice, and the session ends with no work left."""
    consumers, backlog, declines, wakeups = situation
    head = max([b.newest for b in backlog.values()] + [d.position for d in declines.values()]
               + [0])
    declines = dict(declines)
    picked: list[str] = []
    while (name := pick_consumer(consumers, backlog, declines, wakeups, NOW)) is not None:
        assert name not in picked, (name, picked)
        picked.append(name)
        declines[name] = Decline(head, NOW)
    assert len(picked) <= len(consumers)
    assert remaining_work(consumers, backlog, declines, wakeups, NOW) == {}


@given(situations(), st.sampled_from(TOPICS))
def test_a_declined_consumer_has_work_again_when_an_event_arrives_for_it(
        situation: Situation, topic: str) -> None:
    consumers, backlog, _, _ = situation
    head = max([b.newest for b in backlog.values()] + [0])
    declines = {c.name: Decline(head, NOW) for c in consumers}  # everyone declined
    assert pick_consumer(consumers, backlog, declines, {}, NOW) is None

    arrived = dict(backlog)
    arrived[topic] = TopicBacklog(pending=backlog[topic].pending + 1 if topic in backlog else 1,
                                  newest=head + 1)
    remaining = remaining_work(consumers, arrived, declines, {}, NOW)
    assert list(remaining) == [c.name for c in consumers if topic in c.subscribe]
    assert pick_consumer(consumers, arrived, declines, {}, NOW) == next(iter(remaining), None)


@given(situations(), st.integers(1, 600), st.integers(1, 600))
def test_a_declined_consumer_has_work_again_when_a_later_wake_at_falls_due(
        situation: Situation, after: int, waited: int) -> None:
    consumers, _, _, _ = situation
    declined_at = NOW - timedelta(seconds=after + waited)
    declines = {c.name: Decline(0, declined_at) for c in consumers}
    first = consumers[0].name

    # A wake_at at or before the decline was already seen by that prepare.
    assert pick_consumer(consumers, {}, declines, {first: declined_at}, NOW) is None
    # One after it, not yet due: nothing; once due: the consumer runs again.
    wake_at = declined_at + timedelta(seconds=after)  # due: NOW is `waited` s later
    not_yet = NOW + timedelta(seconds=1)
    assert pick_consumer(consumers, {}, declines, {first: not_yet}, NOW) is None
    assert pick_consumer(consumers, {}, declines, {first: wake_at}, NOW) == first
    assert remaining_work(consumers, {}, declines, {first: wake_at}, NOW) == {first: {}}


def test_a_topic_with_nothing_pending_is_no_work_however_new() -> None:
    c = ConsumerView("C", ("a",))
    assert pick_consumer([c], {"a": TopicBacklog(pending=0, newest=99)}, {}, {}, NOW) is None
    assert pick_consumer([c], {"b": TopicBacklog(pending=5, newest=99)}, {}, {}, NOW) is None
    assert pick_consumer([c], {"a": TopicBacklog(pending=1, newest=0)}, {}, {}, NOW) == "C"
