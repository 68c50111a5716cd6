"""`flowledger demo`: the bundled inbox-to-ledger example, end to end, in a fresh folder.

Kept apart from the CLI so that it can be called and tested from Python; the
CLI only renders the `DemoReport` this returns.
"""

from __future__ import annotations

import importlib.util
import shutil
import sqlite3
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

from flowledger.domain.errors import FlowledgerError
from flowledger.engine.engine import Engine
from flowledger.engine.session_runner import SessionResult
from flowledger.read_side.log_view import LoggedEvent

EXAMPLE = "inbox_to_ledger"
DEFAULT_DEMO_DIR = Path("flowledger-demo")
# Written into every demo folder: only a folder holding it is ever wiped.
MARKER = ".flowledger-demo"
# Consumer runs per session: small enough that the first session stops on its
# budget with work left, and the next one carries on where it stopped.
RUNS_PER_SESSION = 4
MAX_SESSIONS = 20


class DemoError(FlowledgerError):
    """The demo cannot run: its example is missing, or its folder is not its own."""


@dataclass(frozen=True)
class DemoReport:
    """What the demo did, for people to read."""

    folder: Path
    store_url: str
    emails: list[str]
    sessions: list[SessionResult]
    ledger_rows: list[dict[str, Any]]
    summary: str
    traced_run: UUID | None  # the first run that added a ledger row
    trace: list[LoggedEvent]  # that run's stream, as the log holds it

    @property
    def succeeded(self) -> bool:
        return bool(self.sessions) and self.sessions[-1].status == "completed"


PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_example_dir(package: Path = PACKAGE_DIR) -> Path:
    """The example's folder: shipped inside the wheel, or next to the package in a checkout.

    A wheel carries it as `flowledger/_examples/inbox_to_ledger` (pyproject's
    hatch force-include); a source checkout or editable install has it at
    `<repo>/examples/inbox_to_ledger`.
    """
    candidates = (package / "_examples" / EXAMPLE, package.parent / "examples" / EXAMPLE)
    for folder in candidates:
        if (folder / "workflow.py").is_file() and (folder / "inbox").is_dir():
            return folder
    raise DemoError("the bundled example is missing; looked in "
                    + " and ".join(str(c) for c in candidates)
                    + ". Reinstall flowledger (pip install --force-reinstall flowledger).")


def store_url_for(folder: Path, relative_to: Path | None = None) -> str:
    """The SQLite store URL of a demo folder, relative to `relative_to` when inside it."""
    db = folder.resolve() / "flow.db"
    if relative_to is not None:
        try:
            return f"sqlite:///{db.relative_to(relative_to.resolve())}"
        except ValueError:
            pass
    return f"sqlite:///{db}"  # an absolute path gives sqlite:////...


def prepare_folder(folder: Path, example: Path) -> list[str]:
    """Wipe and recreate `folder` with the sample inbox and the workflow; return the emails."""
    if folder.exists():
        if not folder.is_dir():
            raise DemoError(f"{str(folder)!r} is a file, not a folder; choose another --dir")
        if any(folder.iterdir()) and not (folder / MARKER).exists():
            raise DemoError(f"refusing to wipe {str(folder)!r}: it is not empty and was not "
                            "made by `flowledger demo`; choose another --dir")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("made by `flowledger demo`; wiped by the next one\n")
    shutil.copytree(example / "inbox", folder / "inbox")
    # The workflow goes along, so `flowledger run workflow.py` works in the folder
    # however flowledger was installed.
    shutil.copy2(example / "workflow.py", folder / "workflow.py")
    return sorted(p.name for p in (folder / "inbox").glob("*.eml"))


def load_workflow_file(path: Path) -> ModuleType:
    """Import a workflow file by path, under a module name of its own."""
    name = f"flowledger_demo_{abs(hash(str(path.resolve()))):x}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DemoError(f"cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    spec.loader.exec_module(module)
    return module


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """The rows the example's Ledger tool wrote, straight from its SQLite file."""
    if not path.exists():
        return []
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM ledger_rows ORDER BY row_id")]


def run_demo(folder: Path = DEFAULT_DEMO_DIR) -> DemoReport:
    """Run the example on a fresh store until no work is left (or something stops it)."""
    example = bundled_example_dir()
    emails = prepare_folder(folder, example)
    module = load_workflow_file(folder / "workflow.py")
    store_url = store_url_for(folder)
    sessions: list[SessionResult] = []
    with Engine(store_url) as engine:
        module.register(engine, base_dir=folder)
        for _ in range(MAX_SESSIONS):
            result = engine.run_session(module.WORKFLOW_NAME, max_iterations=RUNS_PER_SESSION)
            sessions.append(result)
            if result.status != "budget_exhausted":
                break
        traced = next((r.run_id for s in sessions for r in s.runs
                       if r.handler == "AddRow" and r.committed and not r.declined), None)
        trace = list(engine.events(run=traced)) if traced is not None else []
    summary_path = folder / "summary.md"
    summary = summary_path.read_text(encoding="utf-8") if summary_path.exists() else ""
    return DemoReport(folder, store_url, emails, sessions, read_ledger(folder / "ledger.db"),
                      summary, traced, trace)

