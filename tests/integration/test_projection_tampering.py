"""`verify` compares the projections with a fold of the log (ADR 0033): a row
edited, removed or added by hand is named, although the log is untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

import flowledger as fl
from tests.e2e.test_cli import flowledger
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow
from tests.store_contents import run_sql


@pytest.fixture(params=["keyed", "unkeyed"])
def key(request: pytest.FixtureRequest) -> str:
    """An encrypted store (payloads in projections sealed) and one in clear."""
    return fl.new_cipher_key() if request.param == "keyed" else ""


def half_done(store: str, key: str, ledger: Path) -> fl.Engine:
    """A session that booked item "a" and stopped at its budget: "b" and "c" wait."""
    engine = fl.Engine(store, cipher_key=key)
    engine.register(ledger_workflow(items=["a", "b", "c"]),
                    tools=[ScriptedLedgerTool(ExternalLedger(ledger))])
    engine.run_session("wf", max_iterations=2)
    report = engine.verify()
    assert report.ok and report.problems == []
    assert report.projection_rows is not None and report.projection_rows > 0
    return engine


def payload_of(store: str, item: str) -> bytes:
    (payload,) = run_sql(store, "SELECT payload FROM fl_messages WHERE topic='in' AND "
                                "message_id=?", (item,))[0]
    return bytes(payload)


def test_a_payload_swapped_by_hand_is_named_and_a_rebuild_mends_it(
        store: str, key: str, tmp_path: Path) -> None:
    """The reviewer's case: the engine gives a run the payload pending work holds,
    so one message's payload copied onto another (sealed or not) would have the
    next run book "b" twice. `verify` names the row and column; the log itself
    is as written; a rebuild makes the row again from the log."""
    engine = half_done(store, key, tmp_path / "l.db")
    try:
        (pending,) = run_sql(store, "SELECT status FROM fl_messages WHERE message_id='c' "
                                    "AND topic='in'")[0]
        assert pending == "pending"
        (event_id,) = run_sql(store, "SELECT event_id FROM fl_messages WHERE "
                                     "message_id='c' AND topic='in'")[0]
        run_sql(store, "UPDATE fl_messages SET payload=? WHERE message_id='c' AND topic='in'",
                (payload_of(store, "b"),))

        report = fl.verify_store(store, cipher_key=key)
        assert not report.ok
        assert [p.kind for p in report.problems] == ["projection"]
        detail = report.problems[0].detail
        assert "table fl_messages of projection pending_work" in detail
        assert f"the row whose event_id is {event_id!r} has payload other than" in detail
        assert "1 row(s) the log does not make, 1 it makes" in detail
        assert fl.verify_store(store, cipher_key=key, projections=False).ok  # the log is fine

        engine.rebuild_projections()
        assert payload_of(store, "c") != payload_of(store, "b")
        assert fl.verify_store(store, cipher_key=key).ok
    finally:
        engine.close()


def test_rows_removed_or_added_in_the_read_side_are_named(store: str, tmp_path: Path) -> None:
    engine = half_done(store, "", tmp_path / "l.db")
    try:
        engine.costs()  # the read side folded up to the head
        (run_id,) = run_sql(store, "SELECT run_id FROM fl_cost_runs LIMIT 1")[0]
        run_sql(store, "DELETE FROM fl_cost_runs WHERE run_id=?", (run_id,))
        run_sql(store, "INSERT INTO fl_audit_causes VALUES (?,?,?)", ("ab" * 16, "cd" * 16, 1))

        details = [p.detail for p in engine.verify().problems]
        assert len(details) == 2, details
        assert ("table fl_cost_runs of projection costs" in details[0]
                and f"no row whose run_id is {run_id!r}, which the log makes" in details[0])
        assert ("table fl_audit_causes of projection audit" in details[1]
                and f"a row whose input_id is {'ab' * 16!r}, which the log does not make"
                in details[1])
    finally:
        engine.close()


def test_a_projection_past_the_log_is_named(store: str, tmp_path: Path) -> None:
    """Its tracking row says it folded more than the log holds (the log restored
    without the rest of the store)."""
    engine = half_done(store, "", tmp_path / "l.db")
    engine.close()
    run_sql(store, "UPDATE tracking SET notification_id=notification_id+1000 "
                   "WHERE application_name='settled'")
    (problem,) = fl.verify_store(store).problems
    assert problem.kind == "projection" and "past its head" in problem.detail


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_the_cli_says_the_log_is_sound_and_what_to_do(store: str, tmp_path: Path) -> None:
    half_done(store, "", tmp_path / "l.db").close()
    ok = flowledger("--store", store, "verify", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "projection rows compared with a fold of the log" in ok.stdout
    assert "OK: the log is as it was written, and its projections are what it makes" \
        in ok.stdout

    run_sql(store, "UPDATE fl_messages SET payload=x'00' WHERE message_id='c' AND topic='in'")
    bad = flowledger("--store", store, "verify", cwd=tmp_path)
    assert bad.returncode == 1
    assert "projection: table fl_messages of projection pending_work" in bad.stdout
    assert ("NOT OK: the log is as it was written, but 1 projection table(s) are not what "
            "it makes") in bad.stdout
    assert "flowledger projections rebuild" in bad.stdout
    log_only = flowledger("--store", store, "verify", "--log-only", cwd=tmp_path)
    assert log_only.returncode == 0 and "projection rows" not in log_only.stdout


def test_a_table_dropped_is_named_but_one_not_made_yet_is_not(store: str,
                                                               tmp_path: Path) -> None:
    """A projection with a tracking position but no table was dropped outside
    flowledger; one with neither is a store an earlier release wrote, which the
    next engine to open it completes."""
    half_done(store, "", tmp_path / "l.db").close()
    run_sql(store, "DROP TABLE fl_settled")
    (problem,) = fl.verify_store(store).problems
    assert "projection settled has folded the log up to position" in problem.detail
    assert "lacks its table(s) fl_settled" in problem.detail
    run_sql(store, "DELETE FROM tracking WHERE application_name='settled'")
    assert fl.verify_store(store).ok



def test_a_sound_store_whose_clock_is_not_in_utc_verifies(store: str, tmp_path: Path) -> None:
    """fl_runs.updated_at was written from the event in memory, in the clock's
    zone, where a fold of the log writes it in UTC: verify called such a store
    edited (the row also sorted by the wrong instant)."""
    from datetime import datetime, timedelta, timezone

    clock = fl.ManualClock(datetime(2026, 3, 1, 12, 0,
                                    tzinfo=timezone(timedelta(hours=5, minutes=30))))
    with fl.Engine(store, clock=clock) as engine:
        engine.register(ledger_workflow(items=["a", "b"]),
                        tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))])
        engine.run_session("wf")
        report = engine.verify()
    assert report.ok, report.problems
    assert {at for (at,) in run_sql(store, "SELECT updated_at FROM fl_runs")} == {
        "2026-03-01T06:30:00+00:00"}
    # As an earlier release wrote them: the same instants in the clock's zone.
    run_sql(store, "UPDATE fl_runs SET updated_at='2026-03-01T12:00:00+05:30'")
    assert fl.verify_store(store).ok
    run_sql(store, "UPDATE fl_runs SET updated_at='2026-03-01T12:00:01+05:30'")
    (problem,) = fl.verify_store(store).problems
    assert "has updated_at other than the log makes" in problem.detail


def test_a_row_of_a_table_keyed_by_two_columns_is_named_by_both(store: str,
                                                                 tmp_path: Path) -> None:
    """fl_audit_mentions is keyed by (run_id, position): the changed row is paired
    with the one the log makes for that run, not with another of the run's."""
    engine = half_done(store, "", tmp_path / "l.db")
    try:
        engine.costs()  # the read side folded up to the head
        (run_id,) = run_sql(store, "SELECT run_id FROM fl_audit_mentions GROUP BY run_id "
                                   "HAVING count(*) > 1 ORDER BY run_id LIMIT 1")[0]
        for moved, (position,) in enumerate(run_sql(
                store, "SELECT position FROM fl_audit_mentions WHERE run_id=? ORDER BY "
                       "position LIMIT 2", (run_id,))):
            run_sql(store, "UPDATE fl_audit_mentions SET position=? WHERE run_id=? AND "
                           "position=?", (10**9 + moved, run_id, position))
        (problem,) = engine.verify().problems
        assert "2 row(s) the log does not make, 2 it makes that are not there" in problem.detail
        assert problem.detail.count(
            f"the row whose run_id is {run_id!r} has position other than the log makes") == 2
    finally:
        engine.close()

