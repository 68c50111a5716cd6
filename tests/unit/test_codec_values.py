"""Handler values in the log: what is accepted comes back equal, the rest is refused.

Pure codec properties (no database). An engine run with a value that used to
poison a topic, a dict keyed by tuples: tests/integration/test_codec_payloads.py.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections import OrderedDict
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flowledger as fl
from flowledger.infrastructure.codec import pack, unpack

LONE_SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\udc80"])
ANY_TEXT = st.text(st.one_of(st.characters(), LONE_SURROGATES), max_size=12)

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=12), st.binary(max_size=12),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.uuids(),
    st.datetimes(),
    st.datetimes(timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5))])),
)
keys = st.one_of(st.text(max_size=8), st.integers(-(2**63), 2**64 - 1), st.binary(max_size=4),
                 st.tuples(st.integers(0, 9), st.text(max_size=3)), st.uuids(), st.none())
supported = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(keys, inner, max_size=4)),
    max_leaves=20,
)


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


class Kind(enum.StrEnum):
    MAIL = "mail"


# Values a careless user hands in: every one is either refused or stored faithfully.
hostile_scalars = st.one_of(
    scalars, ANY_TEXT, st.integers(), st.floats(),
    st.sampled_from([Colour.RED, Level.HIGH, Kind.MAIL, object(), {1, 2}, frozenset({3}),
                     dt.date(2026, 1, 1), msgpack.ExtType(1, b"x"), msgpack.ExtType(9, b"?"),
                     bytearray(b"ab"), OrderedDict(a=1), complex(1, 2), math.inf]),
)
hostile_keys = st.one_of(keys, ANY_TEXT, st.integers(), st.sampled_from([Colour.RED, Kind.MAIL]),
                         st.frozensets(st.integers(0, 3), max_size=2))
hostile = st.recursive(
    hostile_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner),
                            st.dictionaries(hostile_keys, inner, max_size=3)),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    """Equality, with NaN equal to itself (it is stored faithfully, but NaN != NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, Decimal) and isinstance(b, Decimal) and a.is_nan():
        return b.is_nan() and str(a) == str(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return (type(a) is tuple) == (type(b) is tuple) and len(a) == len(b) and all(
            same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=400)
@given(supported)
def test_every_supported_value_comes_back_equal(value: Any) -> None:
    back = unpack(pack(value, "here", "payload"))
    assert same(value, back)
    assert same(back, unpack(pack(back, "here", "payload")))  # and stays so


@settings(max_examples=600)
@given(hostile)
def test_any_value_is_stored_faithfully_or_refused_by_name(value: Any) -> None:
    try:
        data = pack(value, "workflow 'w', execute of 'p'", "payload of t/m")
    except fl.LogicError as e:
        text = str(e)
        assert text.startswith("workflow 'w', execute of 'p': payload of t/m cannot be stored")
        text.encode("utf-8")  # the error itself can always be recorded
        return
    assert same(value, unpack(data))


def test_tuples_stay_tuples_and_tuple_keys_stay_readable() -> None:
    value = {(1, 2): "a", "t": (1, (2, [3])), "u": (UUID(int=7),)}
    assert unpack(pack(value, "w", "payload")) == value
    assert type(unpack(pack(value, "w", "payload"))["t"][1]) is tuple


def test_a_value_written_before_tuples_were_kept_still_reads_back() -> None:
    # Old logs hold tuples as plain arrays: a dict keyed by tuples came back
    # keyed by lists (unhashable), which poisoned every run that peeked it.
    old = msgpack.packb({(1, 2): "a", "n": {("x",): 1}}, use_bin_type=True)
    assert unpack(old) == {(1, 2): "a", "n": {("x",): 1}}


@pytest.mark.parametrize(("value", "words"), [
    (2**64, "is the int 18446744073709551616, beyond the 64 bits the log stores"),
    (-(2**63) - 1, "beyond the 64 bits the log stores (-2**63 to 2**64-1); store it as a str"),
    ({"a": [1, 2**70]}, "['a'][1] is the int"),
    ({"a": "ok\ud800"}, "['a'] is a string that holds '\\ud800' at position 2, a lone surrogate"),
    ({"\udfff": 1}, "key '\\udfff' is a string that holds"),
    ({"s": {1}}, "['s'] is a set, which has no order; use a sorted list"),
    ([dt.date(2026, 1, 1)], "[0] is of type date, which the log cannot store; use only dict"),
    (msgpack.ExtType(1, b"x"), "is a msgpack.ExtType, reserved for the log's own types"),
])
def test_a_refused_value_is_named_with_where_it_sits(value: Any, words: str) -> None:
    with pytest.raises(fl.LogicError) as e:
        pack(value, "workflow 'w', next of 'C'", "returned state")
    assert "workflow 'w', next of 'C': returned state cannot be stored in the log: " in str(e.value)
    assert words in str(e.value)
    # An int out of range is not "of an unsupported type".
    if isinstance(value, int):
        assert "use only" not in str(e.value)
