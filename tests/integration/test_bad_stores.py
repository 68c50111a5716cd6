"""Stores that are not ours, and events that cannot be read back (issue 9, item 7).

Real files throughout: another application's SQLite database, files that are
not databases at all, and a flowledger store one of whose rows was overwritten
with sqlite3 directly. The engine refuses what is not a store without writing
to it, and names an unreadable event by its log position, stream and type —
through the Python API and the CLI (one line, exit 2) alike. A rebuild of the
projections that fails on such an event leaves them exactly as they were.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import msgpack
import pytest

import flowledger as fl
from flowledger.domain.handler_run import HandlerRun
from flowledger.read_side.log_view import read_log
from tests.e2e.test_cli import assert_user_error, flowledger
from tests.e2e.test_cli_read_side import SHOP
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow

# ------------------------------------------------------------------ helpers


def digest(path: Path) -> str:
    """The file's bytes, and whether SQLite left a -wal or -shm file next to it."""
    extra = [s for s in ("-wal", "-shm") if Path(f"{path}{s}").exists()]
    return hashlib.sha256(path.read_bytes()).hexdigest() + ",".join(extra)


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def log_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT rowid, originator_id, originator_version, topic "
                          "FROM stored_events ORDER BY rowid").fetchall()


def projection_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every projection table, and the projections' tracking rows."""
    with sqlite3.connect(path) as db:
        tables = [t for (t,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'fl_%' "
            "ORDER BY name")]
        rows = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in tables}
        rows["tracking"] = db.execute("SELECT * FROM tracking ORDER BY 1").fetchall()
    assert len(tables) >= 5  # the projections' tables are there to compare
    return rows


def overwrite(path: Path, position: int, column: str, value: Any) -> tuple[UUID, str]:
    """Change one column of the event at `position`, as damage or an edit by hand
    would; returns that event's stream and topic."""
    with sqlite3.connect(path) as db:
        stream, topic = db.execute("SELECT originator_id, topic FROM stored_events "
                                   "WHERE rowid=?", (position,)).fetchone()
        db.execute(f"UPDATE stored_events SET {column}=? WHERE rowid=?", (value, position))
    return UUID(stream), topic


def position_of(path: Path, topic_suffix: str) -> int:
    """The log position of the first event whose topic ends so."""
    with sqlite3.connect(path) as db:
        for position, topic in db.execute("SELECT rowid, topic FROM stored_events "
                                          "ORDER BY rowid"):
            if topic.endswith(topic_suffix):
                return int(position)
    raise AssertionError(f"no {topic_suffix} event")


@pytest.fixture
def store_file(tmp_path: Path) -> Path:
    """A flowledger store with one completed session (three committed ledger runs)."""
    path = tmp_path / "flow.db"
    ledger = ExternalLedger(tmp_path / "ledger.db")
    with fl.Engine(url(path)) as engine:
        engine.register(ledger_workflow(), tools=[ScriptedLedgerTool(ledger)])
        assert engine.run_session("wf").status == "completed"
    return path


# ------------------------------------------------ files that are not a store


def other_apps_log(path: Path) -> None:
    """Another application's database with its own table called stored_events."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE stored_events (id INTEGER PRIMARY KEY, kind TEXT, body BLOB)")
        db.execute("INSERT INTO stored_events VALUES (1, 'signup', x'00ff')")


def other_eventsourcing_app(path: Path) -> None:
    """An application on the same library: our table, our columns, its own events."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE stored_events (originator_id TEXT, originator_version "
                   "INTEGER, topic TEXT, state BLOB, PRIMARY KEY (originator_id, "
                   "originator_version))")
        db.execute("INSERT INTO stored_events VALUES (?, 1, 'bank.domain:Account.Opened', "
                   "x'80')", ("a" * 32,))


def app_database(path: Path) -> None:
    """Another application's database, with no table of ours at all."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO customers VALUES (1, 'Ada')")


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def text_file(path: Path) -> None:
    path.write_text("name,amount\nAda,12.50\n")


NOT_STORES = {
    "another app's stored_events table": (other_apps_log, "its table 'stored_events' has the "
                                          "columns (id, kind, body)"),
    "another eventsourcing app's log": (other_eventsourcing_app, "holds the events of another "
                                        "application (the first is "
                                        "'bank.domain:Account.Opened')"),
    "an app database without a log": (app_database, "(its tables: customers) and holds no "
                                      "flowledger log"),
    "random bytes": (random_bytes, "it is not an SQLite database"),
    "a text file": (text_file, "it is not an SQLite database"),
}


@pytest.mark.parametrize("case", list(NOT_STORES))
def test_a_file_that_is_not_a_store_is_refused_and_left_untouched(tmp_path: Path,
                                                                   case: str) -> None:
    make, reason = NOT_STORES[case]
    path = tmp_path / "theirs.db"
    make(path)
    before = digest(path)

    with pytest.raises(fl.ConfigurationError) as raised:
        fl.Engine(url(path))

    message = str(raised.value)
    assert str(path) in message  # names the file
    assert "is not a flowledger store" in message
    assert reason in message  # says why
    assert "Point the store URL at a flowledger store" in message  # and what to do
    assert digest(path) == before  # no table created, journal mode not changed


@pytest.mark.parametrize("case", ["another app's stored_events table", "random bytes"])
def test_the_cli_refuses_a_file_that_is_not_a_store_on_one_line(tmp_path: Path,
                                                                 case: str) -> None:
    make, reason = NOT_STORES[case]
    make(tmp_path / "theirs.db")
    (tmp_path / "shop.py").write_text(SHOP)
    before = digest(tmp_path / "theirs.db")

    for command in (["status"], ["log"], ["run", "shop.py"]):
        result = flowledger("--store", "sqlite:///theirs.db", *command, cwd=tmp_path)
        assert_user_error(result, "theirs.db", "is not a flowledger store", reason)

    assert digest(tmp_path / "theirs.db") == before


def test_a_folder_is_refused_with_what_to_name_instead(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(fl.ConfigurationError, match="is a folder, not a store file; name a "
                                                    "file in it"):
        fl.Engine(url(tmp_path / "data"))


def test_an_empty_file_and_a_store_of_ours_open(tmp_path: Path, store_file: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()  # e.g. made by a tempfile API: an empty database, a new store
    with fl.Engine(url(empty)) as engine:
        assert engine.status().workflows == []
    with fl.Engine(url(empty)) as engine:  # and it is one of ours from then on
        assert engine.status().workflows == []
    with fl.Engine(url(store_file)) as engine:
        assert [w.name for w in engine.status().workflows] == ["wf"]


# -------------------------------------------------- events that cannot be read


GARBAGE = b"\xde\xad\xbe\xef\xca\xfe\xba\xbe\x01\x02"


def test_a_corrupt_event_is_named_by_position_stream_and_type(store_file: Path) -> None:
    position = position_of(store_file, "TopicEvent.Published")
    stream, topic = overwrite(store_file, position, "state", GARBAGE)

    with fl.Engine(url(store_file)) as engine, pytest.raises(fl.CorruptEventError) as raised:
        list(engine.events())

    error = raised.value
    assert isinstance(error, fl.FlowledgerError)
    assert (error.position, error.stream_id, error.version, error.topic) == (
        position, stream, 1, topic)
    message = str(error)
    assert f"the event at log position {position}" in message
    assert str(stream) in message and "TopicEvent.Published" in message
    assert "changed or damaged outside flowledger" in message
    assert "Restore the store from a backup" in message
    assert "\n" not in message


@pytest.mark.parametrize("damage", [
    "a body that is not msgpack",
    "a body that no longer fits its class",
    "a body that is not a mapping",
    "a type that does not exist",
])
def test_every_kind_of_unreadable_event_is_a_corrupt_event_error(store_file: Path,
                                                                  damage: str) -> None:
    position = position_of(store_file, "HandlerRun.Prepared")
    column, value = {
        "a body that is not msgpack": ("state", GARBAGE),
        "a body that no longer fits its class": ("state", msgpack.packb({"colour": "red"})),
        "a body that is not a mapping": ("state", msgpack.packb(42)),
        "a type that does not exist": ("topic", "flowledger.domain.handler_run:HandlerRun.Gone"),
    }[damage]
    stream, _ = overwrite(store_file, position, column, value)

    with fl.Engine(url(store_file)) as engine:
        with pytest.raises(fl.CorruptEventError) as from_log:
            list(engine.events())
        with pytest.raises(fl.CorruptEventError) as from_load:
            engine.run(stream)  # loading its stream meets it too
        raised_too = [from_log, from_load]
        if column == "topic":  # reading only some classes meets a type naming none
            with pytest.raises(fl.CorruptEventError) as from_some:
                list(read_log(engine.log, upto=position + 10, workflows=False,
                              only=(HandlerRun.Created,)))
            raised_too.append(from_some)

    for raised in raised_too:
        assert raised.value.position == position
        assert raised.value.stream_id == stream


def test_one_workflows_log_meets_its_own_damage_not_another_workflows(tmp_path: Path) -> None:
    """Reading one workflow's events decodes its own events and every stream's
    first (which says whose the stream is) from its registration on: damage
    there stops the reading and is named; a later event of another
    workflow's stream is not read, so its damage is left to the whole log's
    reading and to `verify` (ADR 0009)."""
    path = tmp_path / "flow.db"
    ledger = ExternalLedger(tmp_path / "ledger.db")
    with fl.Engine(url(path)) as engine:
        for name in ("other", "wf"):  # both registered before either runs
            engine.register(ledger_workflow(name), tools=[ScriptedLedgerTool(ledger)])
        for name in ("other", "wf"):
            engine.run_session(name)
        mine = list(engine.events(workflow="wf"))
        others = list(engine.events(workflow="other"))
    own = next(e.position for e in mine if e.name == "Prepared")
    prepared = next(e for e in others if e.name == "Prepared")
    theirs = prepared.position
    # The other workflow's run stream begins there, after wf's registration.
    first = next(e.position for e in others
                 if e.stream_id == prepared.stream_id and e.version == 1)
    assert mine[0].position < first < theirs < own

    overwrite(path, theirs, "state", GARBAGE)
    with fl.Engine(url(path)) as engine:
        assert list(engine.events(workflow="wf")) == mine
        assert list(engine.events(workflow="wf", last=3)) == mine[-3:]
        for args in ({}, {"workflow": "other"}, {"last": 10_000}):
            with pytest.raises(fl.CorruptEventError, match=f"log position {theirs} "):
                list(engine.events(**args))
    overwrite(path, own, "state", GARBAGE)
    with fl.Engine(url(path)) as engine, pytest.raises(
            fl.CorruptEventError, match=f"log position {own} "):
        list(engine.events(workflow="wf"))
    overwrite(path, first, "state", GARBAGE)  # whose is that stream? Unknown: it stops there
    with fl.Engine(url(path)) as engine, pytest.raises(
            fl.CorruptEventError, match=f"log position {first} "):
        list(engine.events(workflow="wf"))


def test_a_failed_rebuild_leaves_the_projections_exactly_as_they_were(store_file: Path
                                                                       ) -> None:
    before = projection_rows(store_file)
    events_before = log_rows(store_file)
    position = position_of(store_file, "HandlerRun.Committed")
    overwrite(store_file, position, "state", GARBAGE)

    with fl.Engine(url(store_file)) as engine:
        with pytest.raises(fl.CorruptEventError, match=f"log position {position} "):
            engine.rebuild_projections()
        with pytest.raises(fl.CorruptEventError):
            engine.rebuild_projections(["costs"])  # one of them alone, too
        # The engine that failed goes on answering from the projections as they were.
        assert [w.name for w in engine.status().workflows] == ["wf"]
        assert engine.pending_work("wf").topics[0].pending == 0

    assert projection_rows(store_file) == before
    assert log_rows(store_file) == events_before  # nothing lost, nothing added
    with fl.Engine(url(store_file)) as engine:  # a new engine finds nothing to catch up
        assert engine.projections.lag() == 0


def test_a_rebuild_still_replaces_the_projections_when_it_succeeds(store_file: Path) -> None:
    before = projection_rows(store_file)
    with sqlite3.connect(store_file) as db:  # a projection damaged by hand
        db.execute("DELETE FROM fl_runs")

    with fl.Engine(url(store_file)) as engine:
        seen: list[tuple[int, int]] = []
        read = engine.rebuild_projections(progress=lambda done, total: seen.append(
            (done, total)))

    assert read == len(log_rows(store_file)) and seen[-1] == (read, read)
    assert projection_rows(store_file) == before


def test_an_unreadable_snapshot_is_a_cache_miss_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "flow.db"
    wf = fl.Workflow("counter", topics=["t"])

    @wf.producer(publishes=["t"])
    def count(ctx: Any, state: Any) -> Any:
        return {"n": (state or {}).get("n", 0) + 1}

    with fl.Engine(url(path)) as engine:
        engine.register(wf)
        for _ in range(25):  # a handler's state is snapshotted every 20 versions
            assert engine.run_session("counter").status == "completed"
    with sqlite3.connect(path) as db:
        assert db.execute("UPDATE stored_snapshots SET state=?", (GARBAGE,)).rowcount >= 1

    with fl.Engine(url(path)) as engine:
        engine.register(wf)
        assert engine.run_session("counter").status == "completed"
        assert engine.runs("counter", limit=1)[0].status == "committed"
    with fl.Engine(url(path)) as engine:
        engine.register(wf)
        assert engine.run_session("counter").status == "completed"


# ------------------------------------------------------------ from the CLI


@pytest.fixture
def damaged_shop(tmp_path: Path) -> Iterator[tuple[Path, int, UUID]]:
    """A folder whose store holds a shop session, one published message of which
    was overwritten with garbage."""
    (tmp_path / "shop.py").write_text(SHOP)
    result = flowledger("run", "shop.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    store = tmp_path / "flowledger.db"
    position = position_of(store, "TopicEvent.Published")
    stream, _ = overwrite(store, position, "state", GARBAGE)
    yield tmp_path, position, stream


def test_the_cli_names_a_corrupt_event_on_one_line(damaged_shop: tuple[Path, int, UUID]
                                                   ) -> None:
    folder, position, stream = damaged_shop
    store = folder / "flowledger.db"
    projections_before = projection_rows(store)
    events_before = log_rows(store)

    shown = flowledger("log", cwd=folder)
    assert_user_error(shown, f"the event at log position {position}", str(stream),
                      "TopicEvent.Published")
    # The events before it are shown; the one it could not read is not made up.
    printed = [line.split()[0] for line in shown.stdout.splitlines()[1:]]
    assert printed == [str(p) for p in range(1, position)]

    rebuilt = flowledger("projections", "rebuild", cwd=folder)
    assert_user_error(rebuilt, f"the event at log position {position}", str(stream))
    assert projection_rows(store) == projections_before

    status = flowledger("status", cwd=folder)  # the projections are as they were
    assert status.returncode == 0, status.stderr
    assert "shop" in status.stdout and "Traceback" not in status.stderr
    assert log_rows(store) == events_before


def test_a_store_locked_while_it_is_set_up_says_so_not_that_the_url_is_wrong(tmp_path: Path
                                                                            ) -> None:
    from flowledger.infrastructure.event_log import EventLog
    from flowledger.infrastructure.store_url import parse_store_url

    path = tmp_path / "flow.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process is creating it, or holds it
    try:
        config = parse_store_url(url(path))
        config.env["SQLITE_LOCK_TIMEOUT"] = "1"  # the real lock, a shorter wait
        with pytest.raises(fl.StoreBusyError) as e:
            EventLog(config)
        assert "is locked: another process held its write lock" in str(e.value)
        assert "URL" not in str(e.value)
    finally:
        other.rollback()
        other.close()
    EventLog(parse_store_url(url(path))).close()  # once free, it opens


def test_create_false_refuses_what_is_not_a_store_yet_and_makes_nothing(tmp_path: Path
                                                                       ) -> None:
    """`fl.Engine(url, create=False)`, `verify` and a copy's source: a file that is
    missing, empty or an SQLite database without a log is not made a store."""
    empty, bare = tmp_path / "empty.db", tmp_path / "bare.db"
    empty.touch()
    sqlite3.connect(bare).close()
    for path in (tmp_path / "missing.db", empty, bare):
        before = digest(path) if path.exists() else None
        with pytest.raises(fl.ConfigurationError, match="is not a flowledger store yet, and this "
                                                        "does not create one"):
            fl.Engine(url(path), create=False)
        with pytest.raises(fl.ConfigurationError, match="not a flowledger store yet"):
            fl.verify_store(url(path))
        with pytest.raises(fl.ConfigurationError, match="not a flowledger store yet"):
            fl.copy_store(url(path), url(tmp_path / "target.db"))
        assert (digest(path) if path.exists() else None) == before
    fl.Engine(url(empty)).close()  # made a store by an engine that may create
    fl.Engine(url(empty), create=False).close()


def test_a_log_cut_back_under_its_projections_is_refused_before_anything_is_done_again(
        store: str, tmp_path: Path) -> None:
    """The log's last events deleted by hand (or its table restored alone from an
    older backup): its projections had folded them in. A new engine went on
    from the log as it stood and called again what the removed events recorded
    as done, then failed on a projection row, advised to rebuild."""
    from eventsourcing.persistence import OperationalError

    from flowledger.domain.workflow import Workflow
    from flowledger.infrastructure.store_failures import from_the_store
    from tests.store_contents import position_column, run_sql

    ledger = ExternalLedger(tmp_path / "ledger.db")
    tool = ScriptedLedgerTool(ledger)
    with fl.Engine(store) as engine:
        engine.register(ledger_workflow(items=["a"]), tools=[tool])
        assert engine.run_session("wf").status == "completed"
        kept = max(e.position for e in engine.events(last=1))
        engine.register(ledger_workflow(items=["a", "b"]), tools=[tool])
        assert engine.run_session("wf").status == "completed"
    assert [key for key, _ in tool.calls] == ["a", "b"]
    early = fl.Engine(store)  # opened before the cut, as a worker running then
    try:
        pos = position_column(store)
        run_sql(store, f"DELETE FROM stored_events WHERE {pos} > ?", (kept,))
        run_sql(store, "DELETE FROM fl_chain WHERE position > ?", (kept,))
        refused_by = f"its projections have folded the log up to position [0-9]+, but the log " \
                     f"ends at position {kept}"
        with pytest.raises(fl.StoreError, match=refused_by) as refused:  # looked at first
            early.register(ledger_workflow(name="other"))
        assert isinstance(refused.value.error, OperationalError)  # the store's own, kept
        # An append that does not look (an older release's) hides what the log
        # and projections say: on PostgreSQL it moves the head past them.
        early.log.append(Workflow.register(now=early.clock.now(), name="older", fingerprint="x",
                                           topics=["t"], handlers=[]))
    finally:
        early.close()
    with fl.Engine(store) as engine:  # noted in the store when found: still refused
        engine.register(ledger_workflow(items=["a", "b"]), tools=[tool])
        for act in (lambda: engine.run_session("wf"), engine.recover,
                    lambda: engine.register(ledger_workflow(name="another"))):
            with pytest.raises(fl.StoreError, match=(
                    r"its projections have folded the log up to position [0-9]+, but the log "
                    r"ends at position [0-9]+")) as refused:
                act()
            assert from_the_store(refused.value)  # the CLI says it on one line, exit 2
    assert [key for key, _ in tool.calls] == ["a", "b"]  # nothing called again
    with fl.Engine(store) as engine:  # told, the operator goes on from the log as it is
        engine.rebuild_projections()
        engine.register(ledger_workflow(items=["a", "b"]), tools=[tool])
        assert engine.run_session("wf").status == "completed"
