"""`fl.copy_store` / `flowledger copy`: a whole log moved to another store.

From an SQLite file to each kind of store (an SQLite file, and PostgreSQL
where reachable): the same events in the same order, and `status`, an input's
audit trail and a run's timeline answer the same afterwards. A target that
already holds events is refused and left as it was.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from tests import postgres
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow


def filled(path: Path, ledger: ExternalLedger) -> str:
    source = f"sqlite:///{path}"
    tool = ScriptedLedgerTool(ledger)
    tool.script = ["ok", "transient", "ok", "ok"]
    engine = fl.Engine(source, clock=fl.ManualClock(), ids=fl.SeededIds(7))
    engine.register(ledger_workflow(items=["a", "b", "c"]), tools=[tool])
    engine.run_session("wf")  # b pauses on a transient error
    engine.clock.advance(600)  # type: ignore[attr-defined]
    engine.run_session("wf")
    engine.close()
    return source


def answers(engine: fl.Engine) -> dict[str, Any]:
    events = list(engine.events())
    runs = engine.runs(workflow="wf")
    first_input = next(e for e in events if e.name == "Registered" and e.aggregate == "Input")
    return {
        "log": [(e.position, e.stream_id, e.version, e.name, e.fields) for e in events],
        "status": [(w.name, w.status, w.open_session) for w in engine.status().workflows],
        "runs": sorted((r.run_id, r.handler, r.status, r.phase) for r in runs),
        "timeline": [(e.name, e.fields) for e in engine.run_timeline(runs[-1].run_id).entries],
        "audit": [(e.name, e.stream_id) for e in
                  engine.input_history(first_input.stream_id).entries],
        "costs": [(line.key, line.amount) for line in engine.costs(by="handler").lines],
    }


def test_a_copied_log_answers_the_same(tmp_path: Path, ledger: ExternalLedger,
                                       store: str) -> None:
    source = filled(tmp_path / "source.db", ledger)
    seen: list[tuple[int, int]] = []
    copied = fl.copy_store(source, store, lambda done, total: seen.append((done, total)))
    with fl.Engine(source) as before, fl.Engine(store) as after:
        assert copied == len(list(before.events())) > 50
        assert seen[-1] == (copied, copied)
        assert answers(after) == answers(before)
        assert after.projections.lag() == 0


@contextlib.contextmanager
def _source_with_gaps(ledger: ExternalLedger) -> Iterator[str]:
    """A PostgreSQL store whose positions skip numbers, as appends rolled back
    leave them: five after its first session's 40-odd events, five at its end."""
    import psycopg

    with postgres.fresh_schema() as source:
        schema = source.rsplit("schema=", 1)[1]
        for items in (["a", "b"], ["c"]):
            with fl.Engine(source) as engine:  # a new engine appends the ordinary way first
                engine.register(ledger_workflow(items=items, name=f"wf-{items[0]}"),
                                tools=[ScriptedLedgerTool(ledger)])
                engine.run_session(f"wf-{items[0]}")
            with psycopg.connect(source.split("?")[0]) as conn:  # appends rolled back
                conn.execute("SELECT nextval(pg_get_serial_sequence(%s, 'notification_id')) "
                             "FROM generate_series(1, 5)", (f"{schema}.stored_events",))
        yield source


@pytest.mark.postgres
def test_a_copy_keeps_each_event_at_its_source_s_position(
        tmp_path: Path, ledger: ExternalLedger, store: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """PostgreSQL's positions skip the numbers of appends rolled back (and a
    copy's own batch stopped midway skipped a thousand): the copy numbered
    its events afresh, so `timeline`, `audit`, `at P` and `log --after` named
    other events on the two stores. Each event now keeps its position, and
    the copy's sequence stands past the last (an engine found it behind)."""
    with _source_with_gaps(ledger) as source:
        with fl.Engine(source) as before:
            logged = [(e.position, e.stream_id, e.version, e.name) for e in before.events()]
        assert [p for p, *_ in logged] != list(range(1, len(logged) + 1))  # it skips some
        fl.copy_store(source, store)
    with fl.Engine(store) as after:
        assert [(e.position, e.stream_id, e.version, e.name) for e in after.events()] == logged
        assert after.verify().ok
        last = logged[-1][0]
        after.register(ledger_workflow(items=["d"], name="wf-d"),
                       tools=[ScriptedLedgerTool(ledger)])
        after.run_session("wf-d")  # appends go on past the copied positions
        assert min(e.position for e in after.events(after=last)) == last + 1
    assert "was behind the log's head" not in caplog.text


@pytest.mark.postgres
def test_a_copy_an_earlier_release_began_is_not_gone_on_with_at_other_positions(
        tmp_path: Path, ledger: ExternalLedger, store: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy begun, and stopped, by a release that numbered events afresh
    holds them at other positions than its source's: going on would put the
    rest above them (or into them: a unique key refused every try). It is
    refused, saying so and what to do."""
    import flowledger.infrastructure.copying as copying

    with _source_with_gaps(ledger) as source:
        monkeypatch.setattr(copying, "BATCH", 60)  # the first batch holds the first gap

        class EarlierRelease(KeyboardInterrupt):
            pass

        def stop(done: int, total: int) -> None:
            if done:
                raise EarlierRelease

        from flowledger.infrastructure.postgres_recorder import FlowPostgresRecorder
        from flowledger.infrastructure.sqlite_recorder import FlowSQLiteRecorder

        recorder = FlowSQLiteRecorder if store.startswith("sqlite") else FlowPostgresRecorder
        with monkeypatch.context() as earlier:  # placed as an earlier release did
            earlier.setattr(recorder, "place_rows", lambda self, placed: self.append_rows(
                [row for _, row in placed], [], sync=False), raising=True)
            with pytest.raises(EarlierRelease):
                fl.copy_store(source, store, stop)
        with pytest.raises(fl.ConfigurationError, match=(
                r"it was begun by an earlier flowledger release, which numbered its events "
                r"afresh \(its last is at position 60, where .* has it at 65\)\. Nothing more "
                r"was copied; delete it and copy into a new, empty store")):
            fl.copy_store(source, store)


def test_a_store_named_two_ways_is_not_copied_into_itself(tmp_path: Path,
                                                          ledger: ExternalLedger) -> None:
    source = filled(tmp_path / "source.db", ledger)
    same = f"sqlite:///{tmp_path}/./source.db"
    with pytest.raises(fl.ConfigurationError, match="they are the same store, named two ways"):
        fl.copy_store(source, same)


def test_copying_into_a_store_that_holds_events_is_refused(tmp_path: Path,
                                                           ledger: ExternalLedger,
                                                           store: str) -> None:
    """Another log's events, or events appended to the copy since it was made:
    the store is one of its own, left as it was (and still opened by engines)."""
    source = filled(tmp_path / "source.db", ledger)
    other = filled(tmp_path / "other.db", ExternalLedger(tmp_path / "other-ledger.db"))
    fl.copy_store(source, store)
    with pytest.raises(fl.ConfigurationError, match=r"already holds .* events\. Copy into a new"):
        fl.copy_store(other, store)
    with fl.Engine(store) as target:
        target.register(ledger_workflow(items=["d"]), tools=[ScriptedLedgerTool(ledger)])
        target.run_session("wf")  # the copy lives on: its log is its own now
        count = len(list(target.events()))
    with pytest.raises(fl.ConfigurationError, match=r"already holds .* events.*\. Copy into a new"):
        fl.copy_store(source, store)
    with fl.Engine(store) as target:
        assert len(list(target.events())) == count


def test_the_same_copy_run_again_finds_it_whole_and_writes_nothing(
        tmp_path: Path, ledger: ExternalLedger, store: str) -> None:
    """Interrupted once its events were all in (while the projections were
    rebuilt), the copy told the user to start again elsewhere, although the
    target was whole: run again, it finds it so. A source that appended more
    since is refused, as any store in use is (engines may be writing it), and
    the copy is left as it was."""
    source = filled(tmp_path / "source.db", ledger)
    first = fl.copy_store(source, store)
    assert fl.copy_store(source, store) == first
    with fl.Engine(source) as before, fl.Engine(store) as after:
        assert answers(after) == answers(before)
        kept = answers(after)
    with fl.Engine(source) as more:
        more.register(ledger_workflow(items=["d"]), tools=[ScriptedLedgerTool(ledger)])
        more.run_session("wf")
    with pytest.raises(fl.ConfigurationError, match=(
            rf"already holds {first:,} events \(the first of .*, copied before; it has "
            r"appended more since, and this copy may be in use\)\. Copy into a new, empty "
            r"store")):
        fl.copy_store(source, store)
    with fl.Engine(store) as after:
        assert answers(after) == kept
        assert after.verify().ok


def test_a_copy_killed_after_its_last_batch_is_finished_by_the_same_command(
        tmp_path: Path, ledger: ExternalLedger, store: str) -> None:
    """Killed with every event in but the mark not yet lifted: the same copy
    run again lifts it (a review found it refused for ever: found whole, it
    returned before lifting the mark, and engines refused the marked store)."""
    source = filled(tmp_path / "source.db", ledger)
    with fl.Engine(source) as before:
        logged = answers(before)
    _copy_killed_after("sqlite:///source.db", store, len(logged["log"]), tmp_path)
    with pytest.raises(fl.ConfigurationError, match="has not finished"):
        fl.Engine(store)
    from flowledger.engine.engine import copy_store_report

    assert copy_store_report(source, store).written == 0
    with fl.Engine(store) as after:
        assert answers(after) == logged


def test_a_copy_both_logs_went_on_from_is_refused_though_they_hold_as_many_events(
        tmp_path: Path, ledger: ExternalLedger, store: str) -> None:
    """The source and the copy each ran a session since: as many events, the
    same last stream and version (a workflow's SessionClosed), and the copy
    was taken for whole (a review). The copy records how many events it
    wrote: any more are its own."""
    source = filled(tmp_path / "source.db", ledger)
    first = fl.copy_store(source, store)
    for url, item in ((source, "d"), (store, "e")):
        with fl.Engine(url) as engine:
            engine.register(ledger_workflow(items=[item]), tools=[ScriptedLedgerTool(ledger)])
            engine.run_session("wf")
    with fl.Engine(source) as a, fl.Engine(store) as b:
        assert len(list(a.events())) == len(list(b.events())) > first
        kept = answers(b)
    with pytest.raises(fl.ConfigurationError, match=(
            r"already holds .* events \(\d+ of them appended since it was copied from ")):
        fl.copy_store(source, store)
    with fl.Engine(store) as after:
        assert answers(after) == kept


def test_the_same_copy_run_twice_at_once_keeps_the_record_of_the_one_that_ended_first(
        tmp_path: Path, ledger: ExternalLedger, store: str) -> None:
    """Run again between the first's last batch and its end, the second ended
    it; the first then lifted a mark no longer there and deleted the second's
    record, and every later run was refused (a review)."""
    from flowledger.engine.engine import copy_store_report

    source = filled(tmp_path / "source.db", ledger)
    second: list[Any] = []

    def progress(done: int, total: int) -> None:
        if done == total and not second:
            second.append(copy_store_report(source, store))

    first = copy_store_report(source, store, progress)
    assert (first.written, second[0].written) == (first.events, 0)
    again = copy_store_report(source, store)
    assert (again.events, again.written) == (first.events, 0)
    with fl.Engine(source) as before, fl.Engine(store) as after:
        assert answers(after) == answers(before)


def test_a_log_with_nul_in_its_names_is_refused_where_text_cannot_keep_it(
        tmp_path: Path, ledger: ExternalLedger, store: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A log written before NUL was refused in names and ids (ADR 0014): an
    SQLite target keeps it whole; PostgreSQL, whose text cannot hold NUL,
    refuses it naming the first such event, before anything is copied (it
    used to copy every event and leave a store that could not be opened)."""
    import flowledger.engine.context as context

    with monkeypatch.context() as older:
        older.setattr(context, "unstorable", lambda text: None)  # as it was
        source = f"sqlite:///{tmp_path / 'old.db'}"
        with fl.Engine(source, clock=fl.ManualClock(), ids=fl.SeededIds(7)) as old:
            old.register(ledger_workflow(items=["a", "b\x00c", "d"]),
                         tools=[ScriptedLedgerTool(ledger)])
            assert old.run_session("wf").status == "completed"
    with fl.Engine(source) as before:
        logged = answers(before)
    if store.startswith("sqlite"):
        assert fl.copy_store(source, store) == len(logged["log"])
        with fl.Engine(store) as after:
            assert answers(after) == logged
        return
    with pytest.raises(fl.ConfigurationError) as refused:
        fl.copy_store(source, store)
    said = str(refused.value)
    assert "4 event(s) hold a name or id with a NUL character" in said
    assert "the first is Input.Registered at position 9 (stream " in said
    assert "field 'external_id'" in said and "Nothing was copied" in said
    with fl.Engine(store) as target:
        assert list(target.events()) == []
    with fl.Engine(source) as still:
        assert answers(still) == logged
    # A store filled by a copy that did not look (before this refusal) says why
    # it cannot be opened, and what to do.
    from flowledger.infrastructure.postgres_recorder import FlowPostgresRecorder

    monkeypatch.setattr(FlowPostgresRecorder, "HOLDS_NUL_IN_TEXT", True)
    with pytest.raises(fl.ConfigurationError, match=(
            r"cannot open store .*: DataError: PostgreSQL text cannot hold a NUL character "
            r".* Keep the log on SQLite; `flowledger copy` from there names the events")):
        fl.copy_store(source, store)


def _copy_killed_after(source: str, target: str, events: int, cwd: Path) -> None:
    """`fl.copy_store` in a process of its own, in batches of 20 events, killed
    (SIGKILL) once `events` are in the target."""
    import os
    import subprocess
    import sys

    script = (
        "import os, signal, sys\n"
        "import flowledger as fl\n"
        "import flowledger.infrastructure.copying as copying\n"
        "copying.BATCH = 20\n"
        "def progress(done, total):\n"
        f"    if done >= {events}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "fl.copy_store(sys.argv[1], sys.argv[2], progress)\n")
    env = {k: v for k, v in os.environ.items() if k != "FLOWLEDGER_STORE"}
    done = subprocess.run([sys.executable, "-c", script, source, target], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr


def test_a_copy_killed_midway_is_refused_until_run_again_which_finishes_it(
        tmp_path: Path, ledger: ExternalLedger, store: str) -> None:
    """A copy commits its events in batches: killed between two, the target
    holds part of the log, which an engine would take for the whole (and make
    again what the missing part records as done). It is marked unfinished:
    refused by engines, by `verify` and by a copy of another log; the same copy
    run again (the source named another way) goes on where it stopped and
    answers as the source does."""
    from tests.e2e.test_cli import assert_user_error, flowledger

    source = filled(tmp_path / "source.db", ledger)
    with fl.Engine(source) as before:
        logged = answers(before)
    _copy_killed_after("sqlite:///source.db", store, 40, tmp_path)  # named as in its folder
    unfinished = "into it has not finished (it is under way, or it stopped)"
    with pytest.raises(fl.ConfigurationError, match=re.escape(unfinished)):
        fl.Engine(store)
    with pytest.raises(fl.ConfigurationError, match=re.escape(unfinished)):
        fl.verify_store(store)
    assert_user_error(flowledger("--store", store, "status", cwd=tmp_path), unfinished,
                      "run the same `flowledger copy` again")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    fl.Engine(other).close()
    with pytest.raises(fl.ConfigurationError, match=r"a copy of another log, .* into it has "
                                                    r"not finished"):
        fl.copy_store(other, store)
    seen: list[tuple[int, int]] = []
    copied = fl.copy_store(source, store, lambda done, total: seen.append((done, total)))
    assert copied == len(logged["log"]) and seen == [(40, copied), (copied, copied)]
    with fl.Engine(store) as after:
        assert answers(after) == logged
        assert after.verify().ok


def test_of_two_copies_at_once_into_one_store_one_is_refused(
        tmp_path: Path, ledger: ExternalLedger, store: str) -> None:
    """The first marks the target under its write lock; the second, of another
    log, finds it marked (both used to succeed, interleaving two logs)."""
    source = filled(tmp_path / "source.db", ledger)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    fl.Engine(other).close()
    refused: list[str] = []

    def meanwhile(done: int, total: int) -> None:
        if not refused:
            with pytest.raises(fl.ConfigurationError) as caught:
                fl.copy_store(other, store)
            refused.append(str(caught.value))

    fl.copy_store(source, store, meanwhile)
    assert "a copy of" in refused[0] and "into it has not finished" in refused[0]
    with fl.Engine(source) as before, fl.Engine(store) as after:
        assert answers(after) == answers(before)


def test_a_copy_stopped_midway_is_not_gone_on_with_another_log_of_the_same_name(
        tmp_path: Path, ledger: ExternalLedger, store: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two logs, each `sqlite:///flow.db` in a folder of its own: a copy of the
    first stopped midway is not finished with the second (a review had the
    target end with one log's first events and the other's rest). The mark
    names the source's store id, not its URL."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    filled(first / "flow.db", ledger)
    filled(second / "flow.db", ExternalLedger(tmp_path / "other-ledger.db"))
    _copy_killed_after("sqlite:///flow.db", store, 40, first)
    monkeypatch.chdir(second)
    with pytest.raises(fl.ConfigurationError, match=re.escape("a copy of another log, 'sqlite:///flow.db'")):
        fl.copy_store("sqlite:///flow.db", store)
    monkeypatch.chdir(first)
    fl.copy_store("sqlite:///flow.db", store)
    with fl.Engine(f"sqlite:///{first / 'flow.db'}") as before, fl.Engine(store) as after:
        assert answers(after) == answers(before)
