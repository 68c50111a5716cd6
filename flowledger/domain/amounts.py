"""Cost amounts: exact decimals, and their exact sums (DESIGN §1.5).

Python's default decimal context keeps 28 digits, so a sum of a large and a
small amount was rounded (10**21 + 0.0000001), and two amounts near the
exponent's limit overflowed in the middle of a fold. Amounts a handler hands
in are bounded (below 10**18, at most 18 decimal places: 36 digits), and
every sum of amounts goes through `SUMS`, whose precision holds the exact sum
of 10**20 such amounts and whose exponent does not overflow, so amounts an
earlier release let in still fold.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, InvalidOperation

# The largest amount and the most decimal places a cost may have.
AMOUNT_BELOW = Decimal(10) ** 18
DECIMAL_PLACES = 18

SUMS = Context(prec=76, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[InvalidOperation])
FINEST = Decimal(1).scaleb(-DECIMAL_PLACES)  # 1E-18


def amount_problem(value: Decimal) -> str | None:
    """Why `value` cannot be a cost, or None when it can."""
    if not value.is_finite() or value < 0:
        return "must be a finite amount >= 0"
    if value >= AMOUNT_BELOW:
        return f"is too large: a cost is below {AMOUNT_BELOW:,}"
    # Below 10**18, to 18 places is at most 36 digits: `SUMS` quantizes it exactly,
    # and a value with a nonzero digit past the 18th place comes back changed.
    if value.quantize(FINEST, context=SUMS) != value:
        return f"has more than {DECIMAL_PLACES} decimal places"
    return None


def plus(a: Decimal, b: Decimal) -> Decimal:
    """a + b, exactly."""
    return SUMS.add(a, b)


def minus(a: Decimal, b: Decimal) -> Decimal:
    """a - b, exactly."""
    return SUMS.subtract(a, b)


def total(amounts: Iterable[Decimal]) -> Decimal:
    """The exact sum of `amounts` (0 for none)."""
    result = Decimal(0)
    for value in amounts:
        result = SUMS.add(result, value)
    return result
