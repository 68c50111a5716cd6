"""The tamper-evident log (DESIGN §9, ADR 0023): rows edited, removed, swapped or
inserted directly in the store are each found by `verify` and named by position."""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from flowledger.infrastructure.hash_chain import Chain
from tests.e2e.test_cli import flowledger
from tests.helpers import ExternalLedger, MemoryLedger, ScriptedLedgerTool, ledger_workflow
from tests.store_contents import position_column, run_sql


@pytest.fixture(params=["keyed", "unkeyed"])
def key(request: pytest.FixtureRequest) -> str:
    """An encrypted store (its chain is an HMAC keyed by the cipher key), and one in
    clear (an unkeyed SHA-256 chain)."""
    return fl.new_cipher_key() if request.param == "keyed" else ""


def filled(store: str, key: str, tmp_path: Path) -> list[int]:
    with fl.Engine(store, cipher_key=key) as engine:
        engine.register(ledger_workflow(items=["a", "b", "c"]),
                        tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))])
        assert engine.run_session("wf").status == "completed"
        report = engine.verify()
        assert report.ok and report.problems == [] and report.uncovered == 0
        assert report.keyed == bool(key)
        positions = [e.position for e in engine.events()]
    assert report.events == len(positions) and report.head_position == positions[-1]
    return positions


def found(store: str, key: str) -> list[tuple[int, str]]:
    report = fl.verify_store(store, cipher_key=key)
    assert not report.ok
    return [(p.position, p.kind) for p in report.problems]


def test_a_changed_event_is_named_by_position(store: str, key: str, tmp_path: Path) -> None:
    positions = filled(store, key, tmp_path)
    target = positions[len(positions) // 2]
    pos = position_column(store)
    (state,) = run_sql(store, f"SELECT state FROM stored_events WHERE {pos}=?", (target,))[0]
    changed = bytes(state)[:-1] + bytes([bytes(state)[-1] ^ 1])  # one bit
    run_sql(store, f"UPDATE stored_events SET state=? WHERE {pos}=?", (changed, target))
    assert found(store, key) == [(target, "changed")]


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_body_rewritten_as_text_is_named_not_a_crash(store: str, key: str,
                                                       tmp_path: Path) -> None:
    """SQLite lets an edit turn a body into TEXT that is not UTF-8 (x'00' || state):
    reading it must still give bytes, so the change is named by position."""
    positions = filled(store, key, tmp_path)
    target = positions[1]
    run_sql(store, "UPDATE stored_events SET state = x'ff' || state WHERE rowid=?", (target,))
    assert found(store, key) == [(target, "changed")]


def test_a_removed_event_is_named_by_position(store: str, key: str, tmp_path: Path) -> None:
    positions = filled(store, key, tmp_path)
    target = positions[5]
    run_sql(store, f"DELETE FROM stored_events WHERE {position_column(store)}=?", (target,))
    assert found(store, key) == [(target, "removed")]


def test_an_event_removed_with_its_link_is_named_by_position(store: str, key: str,
                                                             tmp_path: Path) -> None:
    positions = filled(store, key, tmp_path)
    target = positions[5]
    run_sql(store, f"DELETE FROM stored_events WHERE {position_column(store)}=?", (target,))
    run_sql(store, "DELETE FROM fl_chain WHERE position=?", (target,))
    assert found(store, key) == [(target, "removed")]


def test_two_swapped_events_are_both_named(store: str, key: str, tmp_path: Path) -> None:
    positions = filled(store, key, tmp_path)
    a, b = positions[3], positions[4]
    pos = position_column(store)
    rows = {p: run_sql(store, f"SELECT originator_id, originator_version, topic, state FROM "
                              f"stored_events WHERE {pos}=?", (p,))[0] for p in (a, b)}
    run_sql(store, f"DELETE FROM stored_events WHERE {pos} IN (?, ?)", (a, b))
    for here, there in ((a, b), (b, a)):
        oid, version, topic, state = rows[there]
        run_sql(store, f"INSERT INTO stored_events ({pos}, originator_id, originator_version, "
                       "topic, state) VALUES (?, ?, ?, ?, ?)",
                (here, oid, version, topic, state))
    assert found(store, key) == [(a, "changed"), (b, "changed")]


def test_an_inserted_event_is_named_by_position(store: str, key: str, tmp_path: Path) -> None:
    positions = filled(store, key, tmp_path)
    pos = position_column(store)
    oid, version, topic, state = run_sql(
        store, f"SELECT originator_id, originator_version, topic, state FROM stored_events "
               f"WHERE {pos}=?", (positions[-1],))[0]
    run_sql(store, "INSERT INTO stored_events (originator_id, originator_version, topic, "
                   "state) VALUES (?, ?, ?, ?)", (oid, version + 1, topic, state))
    (inserted,) = run_sql(store, f"SELECT MAX({pos}) FROM stored_events")[0]
    assert found(store, key) == [(inserted, "inserted")]


def test_a_keyed_chain_cannot_be_recomputed_without_the_key(store: str, tmp_path: Path) -> None:
    """Whoever edits an event and writes the link again (with any key but the store's)
    is still found."""
    key = fl.new_cipher_key()
    positions = filled(store, key, tmp_path)
    target, pos = positions[2], position_column(store)
    run_sql(store, f"UPDATE stored_events SET topic=? WHERE {pos}=?",
            ("flowledger.domain.workflow:Workflow.Paused", target))
    oid, version, topic, state = run_sql(store, "SELECT originator_id, originator_version, "
                                                f"topic, state FROM stored_events WHERE {pos}=?",
                                         (target,))[0]
    (_previous, prev_digest), = run_sql(
        store, "SELECT previous, digest FROM fl_chain WHERE position=?", (positions[1],))
    (store_id,), = run_sql(store, "SELECT value FROM fl_store_format WHERE name='store_id'")
    forged = Chain(None, store_id, 1).digest(bytes(prev_digest), target, positions[1],
                                             (str(oid).replace("-", ""), version, topic,
                                              bytes(state)))
    run_sql(store, "UPDATE fl_chain SET digest=? WHERE position=?", (forged, target))
    assert found(store, key)[0] == (target, "changed")


def test_an_unkeyed_chain_recomputed_whole_is_caught_by_the_anchor(store: str,
                                                                   tmp_path: Path) -> None:
    """Without a key, an editor can recompute every link: the head digest kept outside
    the store (`verify --expect`) is what catches it."""
    positions = filled(store, "", tmp_path)
    anchor = fl.verify_store(store, cipher_key="").head_digest
    assert fl.verify_store(store, cipher_key="", expect=anchor).ok
    pos = position_column(store)
    run_sql(store, f"DELETE FROM stored_events WHERE {pos}=?", (positions[4],))
    (store_id,), = run_sql(store, "SELECT value FROM fl_store_format WHERE name='store_id'")
    chain = Chain(None, store_id, 1)
    rows = run_sql(store, f"SELECT {pos}, originator_id, originator_version, topic, state "
                          f"FROM stored_events ORDER BY {pos}")
    links = chain.links(None, [r[0] for r in rows],
                        [(str(r[1]).replace("-", ""), r[2], r[3], bytes(r[4])) for r in rows])
    run_sql(store, "DELETE FROM fl_chain")
    for link in links:
        run_sql(store, "INSERT INTO fl_chain VALUES (?, ?, ?)", link)
    assert fl.verify_store(store, cipher_key="").ok  # recomputed: the chain alone agrees
    report = fl.verify_store(store, cipher_key="", expect=anchor)
    assert not report.ok and report.expected_found is False


def test_a_wrong_chain_key_is_a_clear_error_not_a_list_of_problems(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    chain_key = fl.new_cipher_key()
    with fl.Engine(url, chain_key=chain_key) as engine:
        engine.register(ledger_workflow(items=["a"]), tools=[])
    assert fl.verify_store(url, chain_key=chain_key).keyed
    with pytest.raises(fl.EncryptionKeyError, match="not the one its chain was written with"):
        fl.verify_store(url, chain_key=fl.new_cipher_key())
    with pytest.raises(fl.EncryptionKeyError, match=r"keyed chain .*FLOWLEDGER_CHAIN_KEY"):
        fl.Engine(url)


def test_a_store_from_before_the_chain_is_covered_from_its_next_append(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    tools = [ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))]
    with fl.Engine(url) as engine:
        engine.register(ledger_workflow(items=["a"]), tools=tools)
        engine.run_session("wf")
        head = max(e.position for e in engine.events())
    run_sql(url, "DROP TABLE fl_chain")  # as a store written before this release
    run_sql(url, "DROP TABLE fl_store_format")
    with fl.Engine(url) as engine:
        engine.register(ledger_workflow(items=["a", "b"]), tools=tools)
        engine.run_session("wf")
        report = engine.verify()
    assert report.ok and report.covered_from == head + 1 and report.uncovered == head
    # The same as a chain stripped with its format record: said, not passed over.
    said = flowledger("--store", url, "verify", cwd=tmp_path)
    assert said.returncode == 0, said.stderr
    assert (f"positions before {head + 1} ({head:,} events) are not covered by the chain: "
            "written before it existed, or the chain and the store's format record were "
            "removed since") in " ".join(said.stdout.split())
    assert f"OK: the log is as it was written from position {head + 1} on" in said.stdout


@pytest.mark.postgres
def test_gaps_in_postgresql_positions_do_not_break_the_chain(tmp_path: Path) -> None:
    from tests import postgres

    with postgres.fresh_schema() as store:
        filled(store, "", tmp_path)
        # A rolled-back append leaves its sequence numbers unused.
        run_sql(store, "SELECT setval(pg_get_serial_sequence('stored_events', "
                       "'notification_id'), (SELECT MAX(notification_id) + 7 FROM "
                       "stored_events))")
        with fl.Engine(store, cipher_key="") as engine:
            engine.register(ledger_workflow(items=["a", "b", "c", "d"]),
                            tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))])
            engine.run_session("wf")
            report = engine.verify()
            positions = [e.position for e in engine.events()]
        assert report.ok, report.problems
        assert any(b - a > 1 for a, b in itertools.pairwise(positions))


def test_verify_on_the_command_line_names_the_position_and_prints_the_head(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    key = fl.new_cipher_key()
    positions = filled(url, key, tmp_path)
    env = {"FLOWLEDGER_CIPHER_KEY": key}
    good = flowledger("--store", url, "verify", cwd=tmp_path, env=env)
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout and "HMAC-SHA256" in good.stdout
    digest = good.stdout.split("digest ")[1].split()[0]
    # Piped at 80 columns, the digest stays on its label's line (it was wrapped there).
    narrow = flowledger("--store", url, "verify", cwd=tmp_path, env={**env, "COLUMNS": "80"})
    assert f"digest {digest}\n" in narrow.stdout and len(digest) == 64
    assert flowledger("--store", url, "verify", "--expect", digest, cwd=tmp_path,
                      env=env).returncode == 0
    # A digest cut short, or mistyped, is said as such: it accused the store.
    for wrong in (digest[:8], "zzz", f"{digest[:8]}…{digest[-2:]}"):
        told = flowledger("--store", url, "verify", "--expect", wrong, cwd=tmp_path, env=env)
        assert told.returncode == 2 and "is not a head digest" in told.stderr, told.stderr
        assert "changed outside" not in told.stdout + told.stderr
    other = flowledger("--store", url, "verify", "--expect", "0" * 64, cwd=tmp_path, env=env)
    assert other.returncode == 1 and "0 problem" not in other.stdout
    assert "NOT OK: the digest kept elsewhere is not in the chain" in other.stdout
    run_sql(url, "DELETE FROM stored_events WHERE rowid=?", (positions[3],))
    bad = flowledger("--store", url, "verify", cwd=tmp_path, env=env)
    assert bad.returncode == 1
    assert f"position {positions[3]}: removed" in bad.stdout and "NOT OK" in bad.stdout
    no_key = flowledger("--store", url, "verify", cwd=tmp_path)
    assert no_key.returncode == 2 and "FLOWLEDGER_CIPHER_KEY" in no_key.stderr
    assert "Traceback" not in no_key.stderr


@pytest.mark.parametrize("how", ["DELETE FROM fl_store_format", "DROP TABLE fl_store_format"])
def test_a_format_record_removed_is_refused_and_nothing_recorded_over_it(
        store: str, key: str, tmp_path: Path, how: str) -> None:
    """An event edited, then the format record removed: it was taken for a store
    from before the chain and recorded anew (in clear, its chain from the head),
    so `verify`, run without a key as the message then advised, said the log
    was as written (`verify` itself had written the new record), and a copy
    carried the edit into a store whose fresh chain verified."""
    positions = filled(store, key, tmp_path)
    target = positions[3]
    pos = position_column(store)
    (state,) = run_sql(store, f"SELECT state FROM stored_events WHERE {pos}=?", (target,))[0]
    run_sql(store, f"UPDATE stored_events SET state=? WHERE {pos}=?",
            (bytes(state)[:-1] + bytes([bytes(state)[-1] ^ 1]), target))
    run_sql(store, how)
    for cipher_key in {key, ""}:
        with pytest.raises(fl.EncryptionKeyError, match=r"its format record \(fl_store_format\) "
                           "is gone: it was removed outside flowledger"):
            fl.verify_store(store, cipher_key=cipher_key)
        for url in (store, store + ("&" if "?" in store else "?") + "mode=ro"):
            with pytest.raises(fl.EncryptionKeyError, match="is gone"):
                fl.Engine(url, cipher_key=cipher_key)
        with pytest.raises(fl.EncryptionKeyError, match="is gone"):
            fl.copy_store(store, f"sqlite:///{tmp_path / 'copy.db'}", source_key=cipher_key,
                          target_key=cipher_key)
    assert not (tmp_path / "copy.db").exists() or not run_sql(
        f"sqlite:///{tmp_path / 'copy.db'}", "SELECT 1 FROM stored_events LIMIT 1")
    if how.startswith("DELETE"):  # nothing recorded anew
        assert run_sql(store, "SELECT COUNT(*) FROM fl_store_format")[0][0] == 0


@pytest.mark.parametrize("key", ["keyed"], indirect=True)
def test_an_encrypted_store_whose_key_check_was_removed_says_so(
        store: str, key: str, tmp_path: Path) -> None:
    """It said the store was encrypted with another key than the right one given."""
    filled(store, key, tmp_path)
    run_sql(store, "DELETE FROM fl_store_format WHERE name = 'key_check'")
    with pytest.raises(fl.EncryptionKeyError, match="lacks the check of its key") as refused:
        fl.Engine(store, cipher_key=key)
    assert "another key" not in str(refused.value)


def test_a_snapshot_moved_to_another_version_is_found(store: str, key: str) -> None:
    """The chain covers events, not snapshots, and the engine loads a long
    stream from its latest snapshot: one relabelled to a later version had the
    engine act on a state the log never had, while verify said OK."""
    with fl.Engine(store, cipher_key=key) as engine:
        engine.register(ledger_workflow(items=[]))
        for _ in range(60):  # the workflow's stream passes 100 events: it is snapshotted
            engine.run_session("wf")
        report = engine.verify()
    assert report.ok, report.problems  # every snapshot is the fold of its events
    (_stream, version), *_ = run_sql(
        store, "SELECT originator_id, originator_version FROM stored_snapshots")
    run_sql(store, "UPDATE stored_snapshots SET originator_version = originator_version + 8")
    problems = fl.verify_store(store, cipher_key=key).problems
    assert [(p.kind, f"at version {version + 8} is not what" in p.detail)
            for p in problems] == [("snapshot", True)], problems


def test_snapshots_are_read_a_page_at_a_time_all_of_them_in_order(store: str,
                                                                   tmp_path: Path) -> None:
    """`verify` read every snapshot into memory at once (a large store's are
    hundreds of megabytes); now a page at a time, by stream and version,
    every one of them whatever the page's size."""
    ledger = ExternalLedger(tmp_path / "ledger.db")
    with fl.Engine(store) as engine:
        engine.register(ledger_workflow(items=[str(i) for i in range(45)]),
                        tools=[ScriptedLedgerTool(ledger)])
        engine.run_session("wf")  # the consumer's state, snapshotted every 20 commits
        for _ in range(60):  # the workflow's stream passes 100 events
            engine.run_session("wf")
        recorder = engine.log.flow_recorder
        whole = [(s.originator_id, s.originator_version, s.state)
                 for s in recorder.select_snapshots(page=1000)]
        assert len(whole) >= 3 and len({stream for stream, _, _ in whole}) >= 2
        assert whole == sorted(whole, key=lambda s: (recorder.stream_key(s[0]), s[1]))
        for page in (1, 2, 3):
            assert [(s.originator_id, s.originator_version, s.state)
                    for s in recorder.select_snapshots(page=page)] == whole
        assert engine.verify().ok


@pytest.mark.parametrize("how", ["DELETE FROM fl_chain", "DROP TABLE fl_chain"])
def test_a_chain_table_dropped_or_emptied_is_said_as_such(store: str, key: str,
                                                          tmp_path: Path, how: str) -> None:
    """It read as an outage: "the store failed ... run the command again once
    the store works"."""
    filled(store, key, tmp_path)
    run_sql(store, how)
    urls = [store]
    if store.startswith("sqlite") or how.startswith("DELETE"):
        # (A PostgreSQL store missing a table is refused read-only as one whose
        # tables an owner must make: made again, its chain is found empty.)
        urls.append(store + ("&" if "?" in store else "?") + "mode=ro")
    for url in urls:
        with pytest.raises(fl.EncryptionKeyError, match=r"its chain table \(fl_chain\) is "
                           "gone or empty: it was removed outside flowledger"):
            fl.Engine(url, cipher_key=key)
    with pytest.raises(fl.EncryptionKeyError, match="is gone or empty"):
        fl.Engine(store, cipher_key=key)  # and again: a table made again is empty


def _session_snapshots(engine: fl.Engine, session_id: Any) -> list[Any]:
    return [s for s in engine.log.flow_recorder.select_snapshots()
            if s.originator_id == session_id]


def test_a_sessions_snapshots_do_not_grow_with_its_runs(store: str) -> None:
    """A session kept every ended run's cost by run id, read by nothing: each
    of its snapshots (one every 200 events) was larger than the one before,
    and a session of 20,000 runs kept 100 of them, 25 MB."""
    with fl.Engine(store) as engine:
        engine.register(ledger_workflow(items=[str(i) for i in range(420)]),
                        tools=[ScriptedLedgerTool(MemoryLedger())])
        session = engine.run_session("wf", max_iterations=420)
        sizes = [len(s.state) for s in _session_snapshots(engine, session.session_id)]
        assert engine.verify().ok
    assert len(sizes) == 2 and sizes[1] <= sizes[0] + 8, sizes


@pytest.mark.parametrize("field", ["ended_runs", "sneaked_in"])
def test_a_snapshot_holding_a_field_an_earlier_release_kept_verifies(store: str,
                                                                     field: str) -> None:
    """Snapshots an earlier release took hold `Session.ended_runs`, since
    dropped: they verify, and the session restored from one leaves it out. A
    field no release kept is still a snapshot changed outside flowledger."""
    with fl.Engine(store) as engine:
        engine.register(ledger_workflow(items=[str(i) for i in range(210)]),
                        tools=[ScriptedLedgerTool(MemoryLedger())])
        session = engine.run_session("wf", max_iterations=210)
        (stored,) = _session_snapshots(engine, session.session_id)
        snapshot = engine.log.flow_mapper.to_domain_event(stored)
        snapshot.state[field] = {r.run_id: Decimal("0.25") for r in session.runs}
        older = engine.log.flow_mapper.to_stored_event(snapshot).state
        assert run_sql(store, "UPDATE stored_snapshots SET state = ? WHERE state = ? "
                              "RETURNING originator_version", (older, stored.state)) == [
            (stored.originator_version,)]
        problems = engine.verify().problems
        restored = engine.log.load(session.session_id)
    if field == "ended_runs":
        assert problems == []
        assert field not in vars(restored) and restored.consumer_runs == 210
    else:
        assert [p.kind for p in problems] == ["snapshot"], problems


@pytest.mark.parametrize("change", ["lacks_it", "changed"])
def test_a_workflow_snapshot_without_a_field_this_release_added_verifies(
        store: str, change: str) -> None:
    """`Workflow.session_held_since` came after snapshots were taken: a
    snapshot lacking it (an earlier release's) verifies, and the workflow
    restored from it has it unset; one holding another value than the events
    make is still a snapshot changed outside flowledger."""
    with fl.Engine(store) as engine:
        engine.register(ledger_workflow(items=[]))
        for _ in range(60):  # a session opens and closes: a snapshot at version 100
            engine.run_session("wf")
        wf_id = engine.workflow("wf").id
        (stored,) = [s for s in engine.log.flow_recorder.select_snapshots()
                     if s.originator_id == wf_id]
        snapshot = engine.log.flow_mapper.to_domain_event(stored)
        if change == "lacks_it":
            del snapshot.state["session_held_since"]
        else:
            snapshot.state["session_held_since"] = 7
        older = engine.log.flow_mapper.to_stored_event(snapshot).state
        assert run_sql(store, "UPDATE stored_snapshots SET state = ? WHERE state = ? "
                              "RETURNING originator_version", (older, stored.state)) == [
            (stored.originator_version,)]
        problems = engine.verify().problems
        restored = engine.log.load(wf_id)
        assert engine.run_session("wf").status == "completed"  # it opens and closes
    if change == "lacks_it":
        assert problems == []
        assert restored.session_held_since is None and restored.version >= 100
    else:
        assert [p.kind for p in problems] == ["snapshot"], problems
