"""Cost amounts: the bounds a cost is held to, and sums that are exact."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from flowledger.domain.amounts import AMOUNT_BELOW, DECIMAL_PLACES, amount_problem
from flowledger.domain.handler_run import HandlerRun
from flowledger.domain.phases import RunKind
from flowledger.domain.session import Session, Trigger

NOW = datetime(2026, 1, 1, tzinfo=UTC)

# Any cost a handler may add: below 10**18, at most 18 decimal places.
costs = st.builds(lambda units, places: Decimal(units).scaleb(-places),
                  st.integers(0, 10**18 - 1), st.integers(0, DECIMAL_PLACES)).filter(
    lambda d: d < AMOUNT_BELOW)


def _session() -> Session:
    return Session.open(id=UUID(int=1), now=NOW, workflow_id=UUID(int=2), workflow="wf",
                        trigger=Trigger.MANUAL, max_iterations=100, max_cost=None, owner="o")


@given(st.lists(st.lists(costs, max_size=4), max_size=12))
def test_a_session_s_cost_is_the_exact_sum_of_its_runs_costs(runs: list[list[Decimal]]) -> None:
    """Whatever costs within the bounds its runs add, a run's cost and the
    session's are their exact sums (computed here as fractions), also after a
    replay of the session's events."""
    session = _session()
    for n, amounts in enumerate(runs):
        assert all(amount_problem(a) is None for a in amounts)
        run = HandlerRun.create(id=UUID(int=100 + n), now=NOW, workflow_id=UUID(int=2),
                                workflow="wf", session_id=session.id, kind=RunKind.CONSUMER,
                                handler="h")
        for a in amounts:
            run.add_cost(NOW, a, "")
        assert Fraction(run.cost) == sum(map(Fraction, amounts), Fraction(0))
        session.run_ended(NOW, run.id, "h", RunKind.CONSUMER, "committed", run.uncounted_cost)
    expected = sum((Fraction(a) for amounts in runs for a in amounts), Fraction(0))
    assert Fraction(session.cost) == expected
    replayed = None
    for event in session.collect_events():
        replayed = event.mutate(replayed)
    assert replayed is not None and replayed.cost == session.cost


def test_an_earlier_release_s_huge_costs_still_fold() -> None:
    """Costs an earlier release let in (beyond the bounds) overflowed the
    session's sum as it folded; they fold now, so its log can be read."""
    session = _session()
    for n in range(2):
        session.run_ended(NOW, UUID(int=10 + n), "h", RunKind.CONSUMER, "committed",
                          Decimal("9e999999"))
    assert session.cost == Decimal("1.8e1000000")


@given(costs)
def test_every_cost_within_the_bounds_is_accepted(amount: Decimal) -> None:
    assert amount_problem(amount) is None


def test_costs_beyond_the_bounds_are_refused_saying_why() -> None:
    assert amount_problem(Decimal(10) ** 18) == (
        "is too large: a cost is below 1,000,000,000,000,000,000")
    assert amount_problem(Decimal("1e-19")) == "has more than 18 decimal places"
    assert amount_problem(Decimal("1.0000000000000000000000")) is None  # zeros past the 18th
    assert amount_problem(Decimal("100E-20")) is None  # 18 places once its zeros go
    assert amount_problem(Decimal("1." + "0" * 80 + "1")) == "has more than 18 decimal places"
    assert amount_problem(Decimal("0")) is None and amount_problem(Decimal("0E-40")) is None
    assert amount_problem(Decimal("-0.01")) == "must be a finite amount >= 0"
    assert amount_problem(Decimal("sNaN")) == "must be a finite amount >= 0"
    assert amount_problem(Decimal("Infinity")) == "must be a finite amount >= 0"
