"""Processes opening a new store at the same instant all succeed (DESIGN §7).

Each round starts several processes released together on a store that does
not exist yet; every one must open it (tables created once, the SQLite file
switched to WAL once) and see the same empty log.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests import postgres
from tests.helpers import release_together

OPENER = textwrap.dedent("""
    import sys
    import flowledger as fl
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sys.stdin.readline()
    with fl.Engine(sys.argv[1]) as engine:
        print(len(list(engine.events())), flush=True)
""")


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql",
                                                         marks=pytest.mark.postgres)])
def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path, kind: str) -> None:
    script = tmp_path / "opener.py"
    script.write_text(OPENER)
    for round_ in range(3):
        if kind == "sqlite":
            store = f"sqlite:///{tmp_path / f'new-{round_}.db'}"
        else:
            if postgres.unreachable():
                pytest.skip(postgres.unreachable() or "")
            base = postgres.URL
            store = f"{base}?schema=start_{uuid.uuid4().hex[:10]}"
        procs = [subprocess.Popen([sys.executable, str(script), store], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
        release_together(procs)
        results = [p.communicate(timeout=120) for p in procs]
        failures = [err for (out, err), p in zip(results, procs, strict=True) if p.returncode]
        assert not failures, failures[0]
        assert [out.strip() for out, _ in results] == ["0"] * 6


def test_a_new_sqlite_store_opens_while_another_process_holds_its_write_lock(
        tmp_path: Path) -> None:
    """The race the concurrent openers above rarely hit, made certain: switching a
    new file to WAL while another connection holds its write lock fails at once
    (SQLite calls no busy handler there), so the opening must try again until
    the lock is released, not fail."""
    import sqlite3
    import threading

    import flowledger as fl

    path = tmp_path / "new.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("PRAGMA user_version=1")  # a database file, still without tables
    other.execute("BEGIN IMMEDIATE")  # another process's write lock on it
    release = threading.Timer(0.5, lambda: other.execute("ROLLBACK"))
    release.start()
    try:
        with fl.Engine(f"sqlite:///{path}") as engine:
            assert list(engine.events()) == []
        journal = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
        assert journal == "wal"
    finally:
        release.join()
        other.close()
