"""The projections' SQL is written once, as SQLite runs it, and translated for
PostgreSQL (ADR 0017, "One copy of each projection"): MIN and MAX of several
values become LEAST and GREATEST, whatever their arguments hold (calls inside
calls, subqueries, literals with commas), and the aggregates stay. Stated as a
property: an expression of either kind gives the same value on both servers."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowledger.infrastructure.postgres_recorder import translate
from tests import postgres

pytestmark = pytest.mark.postgres

VALUES = (3, -7, 12)


def _expressions() -> st.SearchStrategy[str]:
    leaves = st.one_of(
        st.integers(-50, 50).map(str),
        st.sampled_from(["r.a", "r.b", "?", "length('x,(y')",
                         "(SELECT MAX(v) FROM vals)", "(SELECT MIN(v) FROM vals)"]))

    def calls(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.tuples(st.sampled_from(["MIN", "MAX", "min", "max"]),
                      st.lists(inner, min_size=2, max_size=4)).map(
                lambda t: f"{t[0]}({', '.join(t[1])})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]} + {t[1]})"),
            st.tuples(inner, inner).map(lambda t: f"COALESCE({t[0]}, {t[1]})"))

    return st.recursive(leaves, calls, max_leaves=8)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[sqlite3.Connection, Any]]:
    lite = sqlite3.connect(":memory:")
    lite.execute("CREATE TABLE vals (v INTEGER)")
    lite.executemany("INSERT INTO vals VALUES (?)", [(v,) for v in VALUES])
    with postgres.fresh_schema() as url, psycopg.connect(
            postgres.URL, autocommit=True) as pg:
        schema = url.rpartition("schema=")[2]
        pg.execute(f'CREATE SCHEMA "{schema}"')
        pg.execute(f'SET search_path TO "{schema}"')
        pg.execute("CREATE TABLE vals (v BIGINT)")
        pg.execute("INSERT INTO vals VALUES " + ", ".join(f"({v})" for v in VALUES))
        yield lite, pg
    lite.close()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expression=_expressions(), param=st.integers(-50, 50))
def test_an_expression_gives_the_same_value_on_both_servers(
        servers: tuple[sqlite3.Connection, Any], expression: str, param: int) -> None:
    lite, pg = servers
    sql = f"SELECT {expression} FROM (SELECT 5 AS a, -2 AS b) AS r"
    params = [param] * sql.count("?")
    (on_sqlite,), = lite.execute(sql, params).fetchall()
    (on_postgres,), = pg.execute(translate(sql), params).fetchall()
    assert on_postgres == on_sqlite, (sql, translate(sql))


def test_the_aggregates_stay_and_a_literal_is_not_an_argument() -> None:
    assert translate("SELECT MAX(v), MIN(v) FROM t") == "SELECT MAX(v), MIN(v) FROM t"
    assert translate("SELECT MAX('a,b') FROM t") == "SELECT MAX('a,b') FROM t"
    assert (translate("SELECT MIN(MAX(a, (b)), 'it''s, (')")
            == "SELECT LEAST(GREATEST(a, (b)), 'it''s, (')")
