"""PostgreSQL write transactions sent as queued statements (ADR 0017, PgBatch):
values bound on the client come back exactly as written, whatever they hold;
a statement that fails anywhere in the queue leaves nothing of its
transaction; statements prepared on a writer connection survive a failed
transaction without breaking the next one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowledger.infrastructure import postgres_batch
from flowledger.infrastructure.event_log import EventLog
from tests import postgres

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def recorder() -> Iterator[Any]:
    with postgres.fresh_schema() as url:
        log = EventLog.open(url)
        rec = log.flow_recorder
        with rec.writing() as c:
            assert isinstance(c, postgres_batch.PgBatch)
            c.execute("CREATE TABLE odd (k INTEGER PRIMARY KEY, t TEXT, b BLOB, n INTEGER)")
        try:
            yield rec
        finally:
            log.close()


def _clear(rec: Any) -> None:
    rec._writer(True).execute("SET standard_conforming_strings = on")  # as it opens
    with rec.writing() as c:
        c.execute("DELETE FROM odd")


# Text the log accepts (ADR 0014: no NUL, no lone surrogates), including what
# would break a statement if it were pasted in unquoted.
texts = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
    st.sampled_from(["'", "''", "\\", "\\'", "%s", "%%", "$1", "?", ";", "'); DROP TABLE odd; --",
                     "E'\\x00'", "$$", "$tag$", "\u2028", "é", "😀"]),
)
integers = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@pytest.mark.parametrize("conforming", ["on", "off"], ids=["conforming", "escapes"])
@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "literal"])
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.one_of(st.none(), texts), st.one_of(st.none(), st.binary()),
                               st.one_of(st.none(), integers)), min_size=1, max_size=6))
def test_values_come_back_exactly_as_written(recorder: Any, prepared: bool, conforming: str,
                                             monkeypatch: pytest.MonkeyPatch,
                                             rows: list[tuple[Any, ...]]) -> None:
    """Whether statements are prepared or not, and whatever the server does with
    backslashes in quoted strings (standard_conforming_strings, which a server
    or a pooler may turn off)."""
    monkeypatch.setattr(postgres_batch, "MAX_PREPARED", 200 if prepared else 0)
    _clear(recorder)
    recorder._writer(True).execute(f"SET standard_conforming_strings = {conforming}")
    with recorder.writing() as c:
        c.executemany("INSERT INTO odd VALUES (?, ?, ?, ?)",
                      [(k, *row) for k, row in enumerate(rows)])
        # Read back inside the same transaction (sends the queue) and after it.
        inside = c.execute("SELECT t, b, n FROM odd ORDER BY k").fetchall()
    after = recorder.read_all("SELECT t, b, n FROM odd ORDER BY k", ())
    for got in (inside, after):
        assert [(t, bytes(b) if b is not None else None, n) for t, b, n in got] == rows
    assert recorder.read_all("SELECT COUNT(*) FROM odd", ())[0][0] == len(rows)


def test_a_failing_statement_anywhere_in_the_queue_stores_nothing(recorder: Any) -> None:
    _clear(recorder)
    with pytest.raises(Exception, match="duplicate key"), recorder.writing() as c:
        c.execute("INSERT INTO odd VALUES (?, ?, ?, ?)", (1, "a", None, 1))
        c.execute("UPDATE odd SET n=? WHERE k=?", (2, 1))
        c.execute("INSERT INTO odd VALUES (?, ?, ?, ?)", (1, "again", None, 3))
        c.execute("INSERT INTO odd VALUES (?, ?, ?, ?)", (2, "after", None, 4))
    assert recorder.read_all("SELECT COUNT(*) FROM odd", ()) == [(0,)]
    # The writer connection is usable at once, with the same statements.
    with recorder.writing() as c:
        c.execute("INSERT INTO odd VALUES (?, ?, ?, ?)", (1, "a", None, 1))
    assert recorder.read_all("SELECT t FROM odd", ()) == [("a",)]


def test_a_statement_after_the_commit_that_fails_says_the_commit_went_through(
        recorder: Any) -> None:
    """`commit(then=)` (a synced append's wait for the disk, ADR 0017): its
    failure leaves the transaction committed, and says so; a failure before
    the COMMIT leaves nothing, and does not."""
    _clear(recorder)
    conn = recorder._writer(True)

    def transaction(insert: str, then: str) -> postgres_batch.PgBatch:
        batch = postgres_batch.PgBatch(conn, str, recorder._prepared[True])
        batch.add("BEGIN")
        batch.add(insert)
        with pytest.raises(psycopg.Error):
            batch.commit(then=then)
        batch.rollback()
        return batch

    after = transaction("INSERT INTO odd VALUES (1, 'a', NULL, 1)", "SELECT 1/0")
    assert after.failed_after_commit
    assert recorder.read_all("SELECT t FROM odd", ()) == [("a",)]
    before = transaction("INSERT INTO odd VALUES (1, 'again', NULL, 2)", "SELECT 1")
    assert not before.failed_after_commit
    assert recorder.read_all("SELECT t FROM odd", ()) == [("a",)]
    # A deferred constraint fails the COMMIT itself: nothing was committed.
    with recorder.writing() as c:
        c.execute("CREATE TABLE IF NOT EXISTS deferred (k INTEGER UNIQUE DEFERRABLE "
                  "INITIALLY DEFERRED)")
    at_commit = transaction("INSERT INTO deferred VALUES (1), (1)", "SELECT 1")
    assert not at_commit.failed_after_commit
    assert recorder.read_all("SELECT COUNT(*) FROM deferred", ()) == [(0,)]


def test_statements_prepared_in_a_failed_transaction_do_not_break_the_next(
        recorder: Any) -> None:
    """Statements prepared in a transaction that then fails stay prepared
    (PREPARE is not undone by a rollback) and are used as such; one whose
    PREPARE was never sent is prepared later (not 'does not exist', not
    'already exists')."""
    _clear(recorder)
    novel = "INSERT INTO odd (k, t) VALUES (?, ?) ON CONFLICT (k) DO NOTHING"
    with pytest.raises(Exception, match="duplicate key"), recorder.writing() as c:
        c.execute(novel, (7, "x"))  # prepared now, in this transaction's message
        c.execute("INSERT INTO odd (k, t, n) VALUES (?, ?, ?)", (8, "y", 1))
        c.execute("INSERT INTO odd (k, t, n) VALUES (?, ?, ?)", (8, "z", 2))
    for k in (9, 10):  # the first prepares again, the second uses it prepared
        with recorder.writing() as c:
            c.execute(novel, (k, "x"))
            c.execute("INSERT INTO odd (k, t, n) VALUES (?, ?, ?)", (k + 10, "y", 1))
    assert recorder.read_all("SELECT k FROM odd ORDER BY k", ()) == [(9,), (10,), (19,), (20,)]


def test_a_statement_prepared_in_a_large_transaction_keeps_only_its_own_text(
        recorder: Any) -> None:
    """The server keeps the whole text of the message a statement was PREPAREd
    in, and copies it at every EXECUTE of that statement: had a first use come
    with a producer's thousands of events, every later statement would copy
    them. Each PREPARE goes in a message of its own, whatever comes around it."""
    _clear(recorder)
    big = "x" * 200_000
    with recorder.writing() as c:
        c.execute("INSERT INTO odd VALUES (?, ?, ?, ?) -- first", (1, big, None, 1))
        c.execute("INSERT INTO odd VALUES (?, ?, ?, ?) -- second", (2, big, None, 2))
        assert c.execute("SELECT COUNT(*) FROM odd -- a read between").fetchall() == [(2,)]
        c.execute("UPDATE odd SET n=? WHERE k=? -- after the read", (5, 2))
    texts = [text for (text,) in recorder._writer(True).execute(
        "SELECT statement FROM pg_prepared_statements WHERE name LIKE 'fl_%'")]
    assert len([t for t in texts if "-- first" in t or "-- second" in t or "-- after" in t]) == 3
    for text in texts:
        assert text.startswith("PREPARE fl_") and len(text) < 1_000, text[:200]
    assert recorder.read_all("SELECT k, length(t), n FROM odd ORDER BY k", ()) == [
        (1, len(big), 1), (2, len(big), 5)]


def test_an_interrupt_once_a_prepare_ran_leaves_no_name_to_clash_with(
        recorder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during a PREPARE's round trip, after the server ran it: the
    statement exists on the connection but was never recorded as prepared.
    Names are never issued twice, so later statements, new or the same, are
    prepared and run (not 'prepared statement "fl_N" already exists')."""
    _clear(recorder)
    real_send = postgres_batch.PgBatch._send

    def interrupted(batch: Any, queue: list[str], start: int, stop: int, wanted: Any) -> None:
        real_send(batch, queue, start, stop, wanted)
        if queue[start].startswith("PREPARE") and "-- interrupted" in queue[start]:
            raise KeyboardInterrupt  # as a signal's handler would, as the answer came

    monkeypatch.setattr(postgres_batch.PgBatch, "_send", interrupted)
    with pytest.raises(KeyboardInterrupt), recorder.writing() as c:
        c.execute("INSERT INTO odd (k, t) VALUES (?, ?) -- interrupted", (1, "x"))
    monkeypatch.setattr(postgres_batch.PgBatch, "_send", real_send)
    with recorder.writing() as c:
        c.execute("INSERT INTO odd (k, t) VALUES (?, ?) -- interrupted", (2, "y"))
        c.execute("UPDATE odd SET n=? WHERE k=? -- new after the interrupt", (7, 2))
    assert recorder.read_all("SELECT k, t, n FROM odd", ()) == [(2, "y", 7)]


def test_an_empty_statement_is_refused_before_anything_is_sent(recorder: Any) -> None:
    """It would answer nothing, and the answers after it would be taken for
    the wrong statements'; a statement's last semicolon is not one more."""
    _clear(recorder)
    for empty in ("", "  ;  ", "-- nothing", "/* nothing */ ;"):
        with pytest.raises(psycopg.ProgrammingError, match="empty statement"), \
                recorder.writing() as c:
            c.execute("INSERT INTO odd (k, t) VALUES (?, ?)", (1, "x"))
            c.execute(empty)
        assert recorder.read_all("SELECT COUNT(*) FROM odd", ()) == [(0,)]
    with recorder.writing() as c:
        c.execute("INSERT INTO odd (k, t) VALUES (?, ?);", (1, "x"))
        c.execute("UPDATE odd SET n = 5;")
        assert c.execute("SELECT k, n FROM odd").fetchall() == [(1, 5)]


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "literal"])
def test_a_percent_in_the_sql_is_not_a_placeholder(recorder: Any, prepared: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_batch, "MAX_PREPARED", 200 if prepared else 0)
    _clear(recorder)
    with recorder.writing() as c:
        c.executemany("INSERT INTO odd (k, t) VALUES (?, ?)",
                      [(1, "%session"), (2, "%s"), (3, "plain")])
        assert c.execute("SELECT k FROM odd WHERE t LIKE '%s%' AND k > ? ORDER BY k",
                         (0,)).fetchall() == [(1,), (2,)]
        assert c.execute("SELECT k FROM odd WHERE t = '%' || ? ORDER BY k",
                         ("s",)).fetchall() == [(2,)]


def test_text_with_nul_is_refused_and_nothing_is_stored(recorder: Any) -> None:
    """A NUL would end the query text where it stands: refused before sending."""
    _clear(recorder)
    with pytest.raises(Exception, match="NUL"), recorder.writing() as c:
        c.execute("INSERT INTO odd VALUES (?, ?, ?, ?)", (1, "fine", None, 1))
        c.execute("INSERT INTO odd VALUES (?, ?, ?, ?)", (2, "a\x00b", None, 2))
    assert recorder.read_all("SELECT COUNT(*) FROM odd", ()) == [(0,)]


def test_many_failed_transactions_in_a_row_leave_the_writer_usable(recorder: Any) -> None:
    """Each failing transaction prepares a new statement (whose SQL ends in a
    -- comment: the separator must not be swallowed by it); the writer stays
    usable all along."""
    _clear(recorder)

    def read_then_commit() -> None:
        with recorder.writing() as c:
            c.execute("SELECT COUNT(*) FROM odd")  # sends all so far
            c.execute("SELECT COUNT(*) FROM odd")  # alone in its message

    for n in range(8):
        read_then_commit()
        with pytest.raises(Exception, match="duplicate key"), recorder.writing() as c:
            c.execute(f"INSERT INTO odd (k, t) VALUES (?, ?) ON CONFLICT DO NOTHING -- {n}",
                      (100 + n, "new"))
            c.execute("INSERT INTO odd (k, t) VALUES (?, ?)", (1, "x"))
            c.execute("INSERT INTO odd (k, t) VALUES (?, ?)", (1, "y"))
    read_then_commit()
    with recorder.writing() as c:
        c.execute("INSERT INTO odd (k, t) VALUES (?, ?)", (1, "x"))
    assert recorder.read_all("SELECT k, t FROM odd", ()) == [(1, "x")]


def test_a_failure_after_a_read_in_the_same_message_stores_nothing(recorder: Any) -> None:
    """Only the results asked for are read from a message; an error of any
    statement after them still surfaces, and aborts the whole transaction."""
    _clear(recorder)
    with pytest.raises(Exception, match="duplicate key"), recorder.writing() as c:
        c.execute("INSERT INTO odd VALUES (?, ?, ?, ?)", (1, "a", None, 1))
        counted = c.prefetch("SELECT COUNT(*) FROM odd")
        c.execute("INSERT INTO odd VALUES (?, ?, ?, ?)", (1, "again", None, 2))
        c.execute("INSERT INTO odd VALUES (?, ?, ?, ?)", (2, "after", None, 3))
        counted.fetchall()  # sends the queue
    assert recorder.read_all("SELECT COUNT(*) FROM odd", ()) == [(0,)]


def test_a_snapshot_read_sees_one_state_of_the_store(recorder: Any) -> None:
    """`reading()` is one REPEATABLE READ, read-only transaction: a write
    committed between two of its statements is not seen by the second."""
    _clear(recorder)
    for round_ in range(2):  # the reader's connection is used again
        with recorder.reading() as c:
            assert c.execute("SELECT current_setting('transaction_isolation'), "
                             "current_setting('transaction_read_only')").fetchone() == (
                "repeatable read", "on")
            before = c.execute("SELECT COUNT(*) FROM odd").fetchone()[0]
            with recorder.writing() as w:
                w.execute("INSERT INTO odd (k, t) VALUES (?, ?)", (round_, "new"))
            assert c.execute("SELECT COUNT(*) FROM odd").fetchone()[0] == before
        assert recorder.read_all("SELECT COUNT(*) FROM odd", ()) == [(before + 1,)]
