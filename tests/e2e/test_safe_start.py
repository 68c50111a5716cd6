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
