"""The `flowledger` command: run workflows and look at what they did.

Exit codes: 0 when every session completed (or stopped on its budget, with the
work left listed); 1 when a session was suspended, failed, blocked or busy;
2 when the command cannot be carried out as asked (bad store URL, unknown
workflow or run, a decision that does not apply, a file that is not there...):
one line on stderr, never a traceback. Anything else is a bug and raises.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import importlib.util
import itertools
import json
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parseaddr
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any
from uuid import UUID

import typer
from eventsourcing.persistence import InfrastructureFactoryError, PersistenceError
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

import flowledger as fl
from flowledger import demo as demo_module
from flowledger.authoring.definition import Workflow as WorkflowDefinition
from flowledger.domain.session import Trigger
from flowledger.infrastructure.store_url import DEFAULT_STORE, parse_store_url
from flowledger.read_side.log_view import LoggedEvent
from flowledger.read_side.queries import ACTIONS, COSTS_BY, RUN_STATUSES, SESSION_STATUSES

STORE_ENV = "FLOWLEDGER_STORE"
OK_SESSION_STATUSES = ("completed", "budget_exhausted")
EXIT_OK, EXIT_NOT_DONE, EXIT_USAGE = 0, 1, 2

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

app = typer.Typer(
    name="flowledger",
    help="Durable, auditable automations: run workflows, inspect the log, decide what is "
         "blocked.\n\nExit codes: 0 done (or stopped on a budget), 1 a session was "
         "suspended, failed, blocked or busy, 2 the command could not be carried out.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


class CommandError(fl.FlowledgerError):
    """Something the person typing the command can fix (exit code 2)."""


# ------------------------------------------------------------------ options

# Options that take one of a fixed set of values take it as text, checked by
# `choice` against the engine's own list, so that a wrong one is a one-line
# error (exit 2) that lists the right ones, like every other mistake.
TRIGGERS: tuple[str, ...] = tuple(t.value for t in Trigger)


def choices(valid: Sequence[str]) -> str:
    """The metavar that shows an option's values in the help, as click.Choice would."""
    return "[" + "|".join(valid) + "]"


def choice(value: str, valid: Sequence[str], option: str) -> str:
    if value not in valid:
        raise CommandError(f"{option} {value!r} is not one of: {', '.join(valid)}")
    return value


@dataclass
class GlobalOptions:
    store: str
    position: int | None = None  # `flowledger at POSITION ...`


StoreOption = Annotated[
    str | None,
    typer.Option("--store", metavar="URL",
                 help=f"Store URL (overrides the global --store and ${STORE_ENV})."),
]
TargetArgument = Annotated[
    str,
    typer.Argument(metavar="PATH_OR_MODULE", show_default=False,
                   help="A .py file or a dotted module name that defines register(engine), "
                        "or module-level fl.Workflow objects (and TOOLS)."),
]


@app.callback()
def main_options(
    ctx: typer.Context,
    store: Annotated[str, typer.Option(
        "--store", metavar="URL", envvar=STORE_ENV,
        help="Store URL: sqlite:///file.db, sqlite:////abs/file.db or memory://.",
    )] = DEFAULT_STORE,
) -> None:
    ctx.obj = GlobalOptions(store)


def _store(ctx: typer.Context, store: str | None) -> str:
    return store or ctx.ensure_object(GlobalOptions).store


# ------------------------------------------------------------ engine & code


class CommandEngine(fl.Engine):
    """An engine that remembers which workflows this command registered, in order.

    With `record=False`, registering a workflow the store does not hold yet runs
    every pre-flight check but appends nothing: the workflow is kept in
    `unrecorded`, for `record` to append later (`run`, once it knows which
    workflows it runs) or never (`replay` and `recover`, which write no
    registration).
    """

    def __init__(self, store: str, *, record: bool = True) -> None:
        super().__init__(store)
        self.registered_names: list[str] = []
        self.recording = record
        self.unrecorded: dict[str, WorkflowDefinition] = {}

    def register(self, workflow: fl.Workflow, tools: Iterable[fl.Tool] = ()) -> None:
        super().register(workflow, tools)
        if workflow.name not in self.registered_names:
            self.registered_names.append(workflow.name)

    def _record_new_workflow(self, workflow: WorkflowDefinition) -> None:
        if self.recording:
            super()._record_new_workflow(workflow)
        else:
            self.unrecorded[workflow.name] = workflow

    def record(self, names: Iterable[str]) -> None:
        """Append the registration of those of `names` that were kept unrecorded."""
        for name in names:
            workflow = self.unrecorded.pop(name, None)
            if workflow is not None:
                super()._record_new_workflow(workflow)


@contextmanager
def open_engine(store: str, *, must_exist: bool = False, record: bool = True
                ) -> Iterator[CommandEngine]:
    """An engine on `store`, closed when the command ends, whatever happens.

    `record=False`: see CommandEngine."""
    config = parse_store_url(store)
    if must_exist and config.path is not None and not config.path.exists():
        raise CommandError(f"no store at {str(config.path)!r} (from {store}); run a workflow "
                           "first, or point --store at an existing store")
    try:
        engine = CommandEngine(store, record=record)
    except (InfrastructureFactoryError, PersistenceError, sqlite3.DatabaseError) as e:
        # The engine lets these through unwrapped when the URL points at
        # something that is not a store: a folder or a file that is not a
        # SQLite database (PersistenceError, sqlite3.DatabaseError), or
        # postgresql:// without the psycopg_pool module (InfrastructureFactoryError,
        # whose cause says what is missing).
        cause = f" ({e.__cause__})" if e.__cause__ and str(e.__cause__) != str(e) else ""
        raise CommandError(f"cannot open store {store!r}: {e}{cause}") from e
    try:
        yield engine
    finally:
        engine.close()


def import_workflow_module(target: str) -> ModuleType:
    """Import the user's workflow code from a .py path or a dotted module name."""
    path = Path(target)
    if target.endswith(".py") or "/" in target or "\\" in target or path.exists():
        if path.is_dir():
            raise CommandError(f"{target!r} is a folder; give the .py file that defines the "
                               "workflow")
        if not path.is_file():
            raise CommandError(f"no such file: {target!r}")
        # Let the file import the modules next to it, as `python file.py` would.
        sys.path.insert(0, str(path.resolve().parent))
        name = f"flowledger_workflow_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise CommandError(f"cannot load {target!r} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` would
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        # Only the module asked for is the user's mistake; a missing import
        # inside it is a bug in that code and keeps its traceback.
        if e.name is not None and (target == e.name or target.startswith(e.name + ".")):
            raise CommandError(f"no module named {target!r}; give a .py file or an importable "
                               "module name") from e
        raise


def register_module(engine: CommandEngine, module: ModuleType, target: str) -> list[str]:
    """Call the module's register(engine), or register its workflows with its TOOLS."""
    register = getattr(module, "register", None)
    if callable(register):
        register(engine)
    else:
        workflows = list({id(v): v for v in vars(module).values()
                          if isinstance(v, fl.Workflow)}.values())
        for workflow in workflows:
            engine.register(workflow, tools=getattr(module, "TOOLS", []))
    if not engine.registered_names:
        raise CommandError(f"{target!r} registers no workflow: define module-level "
                           "fl.Workflow objects (with TOOLS = [...]) or register(engine)")
    return list(engine.registered_names)


# ---------------------------------------------------------------- rendering


def short(value: UUID | None) -> str:
    """The last 8 hex digits: run and session ids are time-ordered, so their
    first digits are the same for everything created in the same hour."""
    return value.hex[-8:] if value is not None else "-"


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _plain(value: Any, limit: int = 80) -> str:
    if isinstance(value, UUID):
        text = short(value)
    elif isinstance(value, enum.Enum):
        text = str(value.value)
    elif isinstance(value, datetime):
        text = when(value)
    elif isinstance(value, Decimal):
        text = str(value)
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_plain(v, limit) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {_plain(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


# Fields every event of a workflow repeats (the stream says them already); empty
# fields (None) are left out too.
_NOT_KEY = {"workflow_id", "workflow"}


def key_fields(event: LoggedEvent) -> str:
    return ", ".join(f"{k}={_plain(v)}" for k, v in event.fields.items()
                     if k not in _NOT_KEY and v is not None)


_EVENT_WIDTH = 34  # the longest aggregate.event name, HandlerRun.MutationNeedsReconcile


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment


def log_line(event: LoggedEvent) -> Text:
    """One event on one line, so that the log can be read, piped and grepped."""
    line = Text()
    line.append(f"{event.position:>6}  ", style="dim")
    line.append(_utc(event.timestamp).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "  ")
    line.append(f"{event.aggregate}.", style="cyan")
    line.append(event.name.ljust(_EVENT_WIDTH - len(event.aggregate) - 1), style="bold cyan")
    line.append(f"  {short(event.stream_id)}", style="magenta")
    fields = key_fields(event)
    if fields:
        line.append("  " + fields)
    return line


def print_log(events: Iterable[LoggedEvent]) -> None:
    header = (f"{'pos':>6}  {'time (UTC)':<23}  {'aggregate.event':<{_EVENT_WIDTH}}  "
              "stream    fields")
    out.print(Text(header, style="bold"), soft_wrap=True)
    for event in events:
        out.print(log_line(event), soft_wrap=True)


def _remaining(result: fl.SessionResult) -> str:
    return "; ".join(f"{consumer}: " + ", ".join(f"{t}={n}" for t, n in topics.items())
                     for consumer, topics in result.remaining.items()) or "-"


def _status_style(status: str) -> str:
    if status in ("completed", "active", "committed"):
        return "green"
    return "yellow" if status in ("budget_exhausted", "paused") else "red"


def note(label: str, text: str, style: str = "") -> None:
    """A long explanation under a table: one soft-wrapped line, never squeezed into a cell."""
    line = Text("  ")
    line.append(f"{label}: ", style=style or "bold")
    line.append(text)
    out.print(line, soft_wrap=True)


def print_sessions(results: list[fl.SessionResult], title: str = "Sessions") -> None:
    table = Table(title=title, title_justify="left")
    for name in ("workflow", "session", "status", "runs", "cost", "remaining work"):
        table.add_column(name, overflow="fold")
    for r in results:
        table.add_row(r.workflow, short(r.session_id), Text(r.status, style=_status_style(
            r.status)), f"{len(r.runs)} ({r.consumer_runs} consumer)", str(r.cost),
            _remaining(r))
    out.print(table)
    for r in results:
        if r.error:
            note(f"{r.workflow} {short(r.session_id)} {r.status}", r.error,
                 _status_style(r.status))


def print_waiting(st: fl.EngineStatus) -> None:
    """Everything waiting for a person (engine.blocked())."""
    if not st.blocked:
        out.print("Nothing is blocked.")
        return
    print_blocked(st.blocked)


def print_blocked(blocked: list[fl.BlockedRun]) -> None:
    """One block per run: what it attempted, why it waits, the commands that decide."""
    out.print(Text("Blocked runs (waiting for a person)", style="bold"))
    for b in blocked:
        out.print(Text(f"  run {b.run_id}  {b.workflow} / {b.handler}  {b.status}",
                       style="red"), soft_wrap=True)
        if b.tool:
            out.print(f"    mutation: {b.tool}.{b.method}({_plain(b.params)}) is "
                      f"{b.mutation_state}", soft_wrap=True, markup=False)
        if b.reason:
            out.print(f"    reason:   {b.reason}", soft_wrap=True, markup=False)
        if "resume" in b.actions:
            decide = f"flowledger resume {b.workflow}"
        else:
            decide = f"flowledger resolve {b.run_id} {'|'.join(b.actions)}"
        out.print(f"    decide:   {decide}", soft_wrap=True, markup=False)


def exit_code_for(results: Iterable[fl.SessionResult]) -> int:
    return EXIT_OK if all(r.status in OK_SESSION_STATUSES for r in results) else EXIT_NOT_DONE


# ----------------------------------------------------------------- commands


@app.command()
def run(
    ctx: typer.Context,
    path_or_module: TargetArgument,
    store: StoreOption = None,
    max_iterations: Annotated[int, typer.Option(
        min=0, help="Consumer runs a session may start.")] = 100,
    max_cost: Annotated[str | None, typer.Option(
        metavar="AMOUNT", help="Stop starting consumer runs once the session cost this "
                               "much (a decimal).")] = None,
    trigger: Annotated[str, typer.Option(
        metavar=choices(TRIGGERS),
        help="manual and schedule run the producers first; event runs consumers only.",
    )] = Trigger.MANUAL.value,
    workflow: Annotated[str | None, typer.Option(
        metavar="NAME", help="Run only this workflow of the module.")] = None,
) -> None:
    """Register the workflows of PATH_OR_MODULE and run one session of each.

    Exit code 0 when every session completed or stopped on its budget, 1 when one
    was suspended, failed, blocked or busy.
    """
    choice(trigger, TRIGGERS, "--trigger")
    # Registered without writing first: a workflow is recorded in the store only
    # once it is known to run (not for `--workflow nope`, nor for the others).
    with open_engine(_store(ctx, store), record=False) as engine:
        names = register_module(engine, import_workflow_module(path_or_module),
                                path_or_module)
        if workflow is not None:
            if workflow not in names:
                raise CommandError(f"{path_or_module!r} defines no workflow {workflow!r} "
                                   f"(it defines: {', '.join(names)}); nothing was run or "
                                   "written")
            names = [workflow]
        engine.record(names)
        results = [engine.run_session(name, trigger=trigger,
                                      max_iterations=max_iterations, max_cost=max_cost)
                   for name in names]
    print_sessions(results)
    raise typer.Exit(exit_code_for(results))


@app.command()
def status(ctx: typer.Context, store: StoreOption = None) -> None:
    """Workflows, open sessions, unfinished and blocked runs."""
    with open_engine(_store(ctx, store), must_exist=True) as engine:
        st = engine.status()
    print_status(st)


def print_status(st: fl.EngineStatus) -> None:
    if not st.workflows:
        out.print("No workflows in this store yet.")
        return
    names = {w.workflow_id: w.name for w in st.workflows}
    table = Table(title="Workflows", title_justify="left")
    for name in ("workflow", "status", "open session", "lease holder", "lease until (UTC)"):
        table.add_column(name, overflow="fold")
    for w in st.workflows:
        table.add_row(w.name, Text(w.status, style=_status_style(w.status)),
                      short(w.open_session), w.owner or "-", when(w.lease_until))
    out.print(table)
    for w in st.workflows:
        if w.reason:
            note(f"{w.name} is {w.status}", w.reason, _status_style(w.status))

    if st.open_sessions:
        table = Table(title="Open sessions", title_justify="left")
        for name in ("session", "workflow", "trigger", "opened (UTC)"):
            table.add_column(name)
        for session_id, workflow_id, trigger, opened in st.open_sessions:
            table.add_row(short(session_id), names.get(workflow_id, short(workflow_id)),
                          trigger, when(opened))
        out.print(table)
    else:
        out.print("No open sessions.")

    if st.unfinished_runs:
        out.print(Text("Unfinished runs", style="bold"))
        for r in st.unfinished_runs:
            line = Text(f"  run {r.run_id}  ")
            line.append(f"{names.get(r.workflow_id, short(r.workflow_id))} / {r.handler}  ")
            line.append(f"phase={r.phase} ")
            line.append(f"status={r.status}", style=_status_style(r.status))
            if r.mutation_state:
                line.append(f" mutation={r.mutation_state}")
            if r.retry_at:
                line.append(f" retry at {when(r.retry_at)} UTC")
            out.print(line, soft_wrap=True)
    else:
        out.print("No unfinished runs.")

    print_waiting(st)


@app.command()
def log(
    ctx: typer.Context,
    store: StoreOption = None,
    workflow: Annotated[str | None, typer.Option(
        metavar="NAME", help="Only this workflow's events.")] = None,
    run_id: Annotated[str | None, typer.Option(
        "--run", metavar="RUN_ID", help="Only this run's events.")] = None,
    limit: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="Only the last N events.")] = None,
) -> None:
    """The event log, oldest first: the source of truth everything else is derived from."""
    with open_engine(_store(ctx, store), must_exist=True) as engine:
        if workflow is not None:
            held = sorted(w.name for w in engine.status().workflows)
            if workflow not in held:
                raise CommandError(f"no workflow named {workflow!r} in store {engine.store} "
                                   f"(it holds: {', '.join(held) or 'none'})")
        events: Iterator[LoggedEvent] = engine.events(workflow=workflow, run=run_id)
        if limit is not None:
            events = iter(deque(events, maxlen=limit))
        # Printed as read: if an event cannot be read, what comes before it is
        # shown, and the error names it.
        first = next(events, None)
        if first is None:
            out.print("The log holds no such events.")
            return
        print_log(itertools.chain([first], events))


@app.command()
def blocked(ctx: typer.Context, store: StoreOption = None) -> None:
    """Runs and workflows waiting for a person, and the decisions that apply to each."""
    with open_engine(_store(ctx, store), must_exist=True) as engine:
        st = engine.status()
    print_waiting(st)


@app.command()
def recover(ctx: typer.Context, path_or_module: TargetArgument,
            store: StoreOption = None) -> None:
    """Take over sessions a crashed process left open, and finish their work.

    Needs the workflow code (PATH_OR_MODULE): recovery continues runs with it.
    """
    # A workflow the store does not hold has nothing to recover: it is not recorded.
    with open_engine(_store(ctx, store), must_exist=True, record=False) as engine:
        names = register_module(engine, import_workflow_module(path_or_module),
                                path_or_module)
        if all(name in engine.unrecorded for name in names):
            held = sorted(w.name for w in engine.status().workflows)
            raise CommandError(
                f"store {engine.store} holds none of the workflows {path_or_module!r} "
                f"defines ({', '.join(names)}); it holds: {', '.join(held) or 'no workflows'}. "
                "Nothing was recovered or written: point --store at the store those "
                "workflows ran on")
        results = engine.recover()
    if not results:
        out.print("Nothing to recover: no workflow of this code has a session open.")
        return
    print_sessions(results, title="Recovered sessions")
    raise typer.Exit(exit_code_for(results))


@app.command()
def resolve(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(
        metavar="RUN", help="The blocked run's id.", show_default=False)],
    action: Annotated[str, typer.Argument(
        metavar="ACTION", show_default=False,
        help="retry_reconcile: ask the tool again; did_not_happen: a fresh run may mutate "
             "again; skip: go on without the mutation.")],
    store: StoreOption = None,
) -> None:
    """Decide on a mutation whose outcome is unknown (see `flowledger blocked`)."""
    choice(action, ACTIONS, "ACTION")
    with open_engine(_store(ctx, store), must_exist=True) as engine:
        engine.resolve(run, action)
        workflow = engine.run(run).workflow
    out.print(f"Recorded {action} for run {run} of {workflow!r}. The next session "
              "carries it on: flowledger run PATH_OR_MODULE", soft_wrap=True, markup=False)


@app.command()
def resume(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(metavar="WORKFLOW", show_default=False)],
    store: StoreOption = None,
) -> None:
    """Lift a workflow's paused or error status once the cause is dealt with."""
    with open_engine(_store(ctx, store), must_exist=True) as engine:
        changed = engine.resume(workflow)
    if changed:
        out.print(f"Workflow {workflow!r} is active again; the next session will run it.")
    else:
        out.print(f"Workflow {workflow!r} is already active; nothing was changed.")


# ------------------------------------------------------- the read side (§2.4, §2.5)


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead "
                                                          "of tables.")]


def _json_default(value: Any) -> Any:
    if isinstance(value, UUID | Decimal):
        return str(value)  # a decimal as text: exact
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return value.hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot show a {type(value).__name__} as JSON")


def print_json(value: Any) -> None:
    """Plain JSON on stdout (no colours, no wrapping): decimals and ids as strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    sys.stdout.write(json.dumps(value, default=_json_default, indent=2, ensure_ascii=False)
                     + "\n")


def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO date or date-time; without a zone it is UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option} {value!r} is not a date or time; use e.g. 2026-03-01 or "
                           "2026-03-01T09:30") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def call_text(tool: str, method: str, params: Any) -> str:
    args = [_plain(a) for a in (params or {}).get("args", [])]
    args += [f"{k}={_plain(v)}" for k, v in (params or {}).get("kwargs", {}).items()]
    return f"{tool}.{method}({', '.join(args)})"


def run_line(run: fl.RunInfo) -> Text:
    line = Text(f"run {run.run_id}  ", style="bold")
    line.append(f"{run.workflow} / {run.handler} ({run.kind})  phase={run.phase} ")
    line.append(f"status={run.status}", style=_status_style(run.status))
    if run.mutation_state:
        line.append(f" mutation={run.mutation_state}")
    if run.retry_of:
        line.append(f" retry of {run.retry_of}")
    return line


@app.command()
def timeline(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(metavar="RUN", show_default=False,
                                       help="The run's id.")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every event of a run, and of other streams that name it, with log position and time."""
    with open_engine(_store(ctx, store), must_exist=True) as engine:
        found = engine.run_timeline(run)
    if as_json:
        print_json(found)
        return
    out.print(run_line(found.run), soft_wrap=True)
    if found.run.reason:
        note("reason", found.run.reason)
    print_log(found.entries)


@app.command()
def events(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(metavar="WORKFLOW", show_default=False)],
    topic: Annotated[str, typer.Argument(metavar="TOPIC", show_default=False)],
    message_id: Annotated[str, typer.Argument(metavar="MESSAGE_ID", show_default=False)],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """The history of one message: every run that reserved it, and how each ended."""
    with open_engine(_store(ctx, store), must_exist=True) as engine:
        found = engine.event_history(workflow, topic, message_id)
    if as_json:
        print_json(found)
        return
    out.print(Text(f"{found.workflow} / {found.topic} / {found.message_id}: {found.status}",
                   style="bold"), soft_wrap=True)
    note("payload", _plain(found.payload, 200))
    note("caused by input(s)", ", ".join(str(i) for i in found.caused_by) or "-")
    note("published by run", str(found.published_by) if found.published_by else "-")
    print_reservations(found.reservations)
    print_log(found.entries)


def print_reservations(reservations: Iterable[fl.Reservation], title: str = "Reserved by"
                       ) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("run", no_wrap=True, min_width=36)
    for name in ("handler", "reserved (pos, UTC)", "ended", "at pos", "run status",
                 "mutation"):
        table.add_column(name, overflow="fold")
    rows = list(reservations)
    for r in rows:
        ended = r.ended + (f" to {r.moved_to}" if r.moved_to else "")
        table.add_row(str(r.run_id), r.handler, f"{r.reserved_at}  {when(r.reserved_time)}",
                      ended, str(r.ended_at or "-"),
                      Text(r.run_status, style=_status_style(r.run_status)),
                      r.mutation_state or "-")
    if rows:
        out.print(table)
    else:
        out.print("No run reserved it.")


audit_app = typer.Typer(help="Audit trails: what happened to an input.", no_args_is_help=True,
                        rich_markup_mode=None)
app.add_typer(audit_app, name="audit")


@audit_app.command("input")
def audit_input(
    ctx: typer.Context,
    input_id: Annotated[str, typer.Argument(metavar="ID", show_default=False,
                                            help="The input's id (see `events`: caused by).")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every message an input caused, every run that reserved them, each mutation, in order."""
    with open_engine(_store(ctx, store), must_exist=True) as engine:
        found = engine.input_history(input_id)
    if as_json:
        print_json(found)
        return
    out.print(Text(f"input {found.input_id}  {found.workflow}: {found.source} / {found.type} "
                   f"/ {found.external_id}", style="bold"), soft_wrap=True)
    if found.title:
        note("title", found.title)
    note("registered by run", str(found.registered_by) if found.registered_by else "-")

    caused = Table(title="Messages it caused", title_justify="left")
    for name in ("topic", "message", "status", "reserved by"):
        caused.add_column(name, overflow="fold")
    for h in found.events:
        held = "; ".join(f"{r.handler} {r.run_id} ({r.ended})" for r in h.reservations)
        caused.add_row(h.topic, h.message_id, h.status, held or "-")
    out.print(caused)

    if found.mutations:
        table = Table(title="Mutations", title_justify="left")
        for name in ("pos", "time (UTC)", "run", "title", "call", "outcome"):
            table.add_column(name, overflow="fold")
        for m in found.mutations:
            outcome = m.state + (f": {_plain(m.result)}" if m.state == "applied" else
                                 f": {m.reason}" if m.reason else "")
            table.add_row(str(m.position), when(m.time), str(m.run_id), m.title or "-",
                          call_text(m.tool, m.method, m.params),
                          Text(outcome, style=_status_style(
                              "completed" if m.state == "applied" else m.state)))
        out.print(table)
    else:
        out.print("No mutations.")
    out.print(Rule("The whole story, in log order", align="left"))
    print_log(found.entries)


@app.command()
def cost(
    ctx: typer.Context,
    by: Annotated[str, typer.Option(
        metavar=choices(COSTS_BY),
        help="Group by run, session, handler, day (UTC) or workflow.")] = "session",
    workflow: Annotated[str | None, typer.Option(metavar="NAME",
                                                 help="Only this workflow.")] = None,
    session: Annotated[str | None, typer.Option(metavar="SESSION_ID",
                                                help="Only this session.")] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """What runs reported with add_cost: exact sums per run, session, handler, day or workflow."""
    choice(by, COSTS_BY, "--by")
    with open_engine(_store(ctx, store), must_exist=True) as engine:
        report = engine.costs(workflow=workflow, session=session, by=by)  # type: ignore[arg-type]
    if as_json:
        print_json(report)
        return
    if not report.lines:
        out.print("No costs recorded.")
        return
    table = Table(title=f"Costs by {report.by}", title_justify="left")
    for name in ("workflow", report.by, "amount", "not yet counted", "entries", "runs"):
        table.add_column(name, overflow="fold",
                         justify="right" if name in ("amount", "not yet counted", "entries",
                                                     "runs") else "left")
    for line in report.lines:
        table.add_row(line.workflow, line.key, str(line.amount),
                      str(line.not_counted) if line.not_counted else "-", str(line.entries),
                      str(line.runs))
    table.add_section()
    table.add_row("total", "", str(report.total), "", "", "")
    out.print(table)
    if any(line.not_counted for line in report.lines):
        note("not yet counted", "spent by runs still going (or cut short by a crash); the "
             "session that finishes them counts it")


@app.command()
def runs(
    ctx: typer.Context,
    workflow: Annotated[str | None, typer.Option(metavar="NAME")] = None,
    status: Annotated[str | None, typer.Option(
        metavar="STATUS", help=f"One of {', '.join(RUN_STATUSES)} (failed and paused match "
                               "every failed:... and paused:... status).")] = None,
    since: Annotated[str | None, typer.Option(metavar="TIME",
                                              help="Created at or after (UTC if no zone).")
                     ] = None,
    until: Annotated[str | None, typer.Option(metavar="TIME", help="Created before.")] = None,
    limit: Annotated[int, typer.Option(min=1, metavar="N")] = 50,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Runs, newest first."""
    if status is not None:
        choice(status, RUN_STATUSES, "--status")
    with open_engine(_store(ctx, store), must_exist=True) as engine:
        found = engine.runs(workflow, status, parse_time(since, "--since"),
                            parse_time(until, "--until"), limit=limit)
    if as_json:
        print_json(found)
        return
    if not found:
        out.print("No such runs.")
        return
    table = Table(title="Runs (newest first)", title_justify="left")
    table.add_column("run", no_wrap=True, min_width=36)
    for name in ("created (UTC)", "workflow", "handler", "phase", "status", "mutation"):
        table.add_column(name, overflow="fold")
    for r in found:
        table.add_row(str(r.run_id), when(r.created_at), r.workflow, r.handler, r.phase,
                      Text(r.status, style=_status_style(r.status)), r.mutation_state or "-")
    out.print(table)


@app.command()
def sessions(
    ctx: typer.Context,
    workflow: Annotated[str | None, typer.Option(metavar="NAME")] = None,
    status: Annotated[str | None, typer.Option(
        metavar="STATUS", help=f"One of {', '.join(SESSION_STATUSES)}.")] = None,
    since: Annotated[str | None, typer.Option(metavar="TIME",
                                              help="Opened at or after (UTC if no zone).")
                     ] = None,
    until: Annotated[str | None, typer.Option(metavar="TIME", help="Opened before.")] = None,
    limit: Annotated[int, typer.Option(min=1, metavar="N")] = 50,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Sessions, newest first, with what each cost."""
    if status is not None:
        choice(status, SESSION_STATUSES, "--status")
    with open_engine(_store(ctx, store), must_exist=True) as engine:
        found = engine.sessions(workflow, status, parse_time(since, "--since"),
                                parse_time(until, "--until"), limit=limit)
    if as_json:
        print_json(found)
        return
    if not found:
        out.print("No such sessions.")
        return
    table = Table(title="Sessions (newest first)", title_justify="left")
    table.add_column("session", no_wrap=True, min_width=36)
    for name in ("opened (UTC)", "closed (UTC)", "workflow", "trigger", "status",
                 "consumer runs", "cost"):
        table.add_column(name, overflow="fold")
    for s in found:
        table.add_row(str(s.session_id), when(s.opened_at), when(s.closed_at), s.workflow,
                      s.trigger, Text(s.status, style=_status_style(s.status)),
                      str(s.consumer_runs), str(s.cost))
    out.print(table)


at_app = typer.Typer(help="The store as it was when the log ended at POSITION (read-only).",
                     no_args_is_help=True, rich_markup_mode=None,
                     # so that a negative POSITION reaches the engine's own check
                     context_settings={"ignore_unknown_options": True})
app.add_typer(at_app, name="at")


@at_app.callback()
def at_position(
    ctx: typer.Context,
    position: Annotated[int, typer.Argument(
        metavar="POSITION", show_default=False,
        help="A log position (see `flowledger log`); 0 is the empty log.")],
) -> None:
    ctx.ensure_object(GlobalOptions).position = position


@at_app.command("status")
def at_status(ctx: typer.Context, store: StoreOption = None,
              as_json: JsonOption = False) -> None:
    """Workflows, open sessions, unfinished and blocked runs, as they were then."""
    position = ctx.ensure_object(GlobalOptions).position
    assert position is not None
    with open_engine(_store(ctx, store), must_exist=True) as engine, \
            engine.at(position) as past:
        st = past.status()
        moment = past.time
    if as_json:
        print_json({"position": position, "time": moment, "status": st})
        return
    out.print(Text(f"As of log position {position}"
                   + (f" ({when(moment)} UTC)" if moment else " (the empty log)"),
                   style="bold"))
    print_status(st)


@app.command()
def replay(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(metavar="RUN", show_default=False,
                                       help="The recorded run's id.")],
    path_or_module: TargetArgument,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-run a recorded run with the code of PATH_OR_MODULE, against its recorded reads:
    writes nothing, calls no tool, and shows what differs.

    Exit code 0 when the current code does what the run did, 1 when something differs.
    """
    # Registered with every pre-flight check, and without appending anything.
    with open_engine(_store(ctx, store), must_exist=True, record=False) as engine:
        register_module(engine, import_workflow_module(path_or_module), path_or_module)
        report = engine.replay(run)
    if as_json:
        print_json({**dataclasses.asdict(report), "same": report.same})
        raise typer.Exit(EXIT_OK if report.same else EXIT_NOT_DONE)
    out.print(Text(f"Replay of run {report.run_id}  {report.workflow} / {report.handler} "
                   f"({report.kind})", style="bold"), soft_wrap=True)
    note("code", f"{path_or_module}, as it is now; state and pending messages as of log "
         f"position {report.as_of}; reads from the log; nothing written, no tool called")
    note("steps", f"recorded {' > '.join(report.recorded.steps) or '-'}; replayed "
         f"{' > '.join(report.replayed.steps) or '-'}")
    if report.differences:
        table = Table(title="Differences", title_justify="left")
        for name in ("what", "recorded", "replayed"):
            table.add_column(name, overflow="fold")
        for d in report.differences:
            table.add_row(d.what, _shown(d.recorded), _shown(d.replayed))
        out.print(table)
    for call in report.unrecorded_reads:
        note("not recorded, not performed", str(call), "yellow")
    for call in report.unused_reads:
        note("recorded, not asked for", str(call))
    for text in report.notes:
        note("note", text)
    if report.same:
        out.print(Text("Same: the current code does what the recorded run did.",
                       style="green"))
    else:
        count = len(report.differences) + len(report.unrecorded_reads)
        out.print(Text(f"{count} difference{'s' if count != 1 else ''}.", style="yellow"))
    raise typer.Exit(EXIT_OK if report.same else EXIT_NOT_DONE)


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, str | fl.ToolCall) else _plain(value, 200)


projections_app = typer.Typer(help="The read models derived from the log.",
                              no_args_is_help=True, rich_markup_mode=None)
app.add_typer(projections_app, name="projections")


@projections_app.command("rebuild")
def projections_rebuild(
    ctx: typer.Context,
    only: Annotated[list[str] | None, typer.Option(
        "--only", metavar="NAME", help="Rebuild only this projection (repeatable): "
                                       "pending_work, costs, audit.")] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Empty the projections and fold the whole log in again, from position 0."""
    with open_engine(_store(ctx, store), must_exist=True) as engine:
        known = [p.name for p in engine.projections.projections]
        unknown = [name for name in only or [] if name not in known]
        if unknown:
            raise CommandError(f"no projection named {', '.join(map(repr, unknown))}; the "
                               f"projections are {', '.join(known)}")
        started = time.perf_counter()
        if as_json:
            read = engine.rebuild_projections(only)
        else:
            with Progress(TextColumn("rebuilding {task.description}"), BarColumn(),
                          MofNCompleteColumn(), TextColumn("events"), TimeElapsedColumn(),
                          console=out, transient=False) as bar:
                task = bar.add_task(", ".join(only or known), total=None)

                def progress(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                read = engine.rebuild_projections(only, progress=progress)
        seconds = time.perf_counter() - started
        positions = engine.projections.positions()
    if as_json:
        print_json({"events": read, "seconds": round(seconds, 3), "positions": positions})
        return
    rate = f" ({read / seconds:,.0f} events/s)" if seconds > 0 and read else ""
    out.print(f"Rebuilt from position 0: {read:,} events in {seconds:.2f} s{rate}.")
    print_positions(positions)


@projections_app.command("status")
def projections_status(ctx: typer.Context, store: StoreOption = None,
                       as_json: JsonOption = False) -> None:
    """How far into the log each projection has read."""
    with open_engine(_store(ctx, store), must_exist=True) as engine:
        positions = engine.projections.positions()
        head = engine.log.flow_recorder.max_notification_id() or 0
    if as_json:
        print_json({"head": head, "positions": positions})
        return
    print_positions(positions, head)


def print_positions(positions: dict[str, int], head: int | None = None) -> None:
    table = Table(title="Projections", title_justify="left")
    for name in ("projection", "position", *(("behind",) if head is not None else ())):
        table.add_column(name, justify="left" if name == "projection" else "right")
    for name, position in positions.items():
        table.add_row(name, f"{position:,}",
                      *((f"{head - position:,}",) if head is not None else ()))
    out.print(table)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option(
        "--dir", metavar="PATH", help="Working folder; wiped and recreated.",
    )] = demo_module.DEFAULT_DEMO_DIR,
) -> None:
    """Run the bundled inbox-to-ledger example end to end on a fresh store."""
    report = demo_module.run_demo(folder)
    url = demo_module.store_url_for(folder, relative_to=Path.cwd())
    out.print(Panel.fit(
        f"flowledger demo: inbox to ledger, in {folder}/\n"
        f"{len(report.emails)} sample emails in {folder / 'inbox'}/ -> ledger.db -> "
        "summary.md\n"
        f"Each session may start {demo_module.RUNS_PER_SESSION} consumer runs; "
        "sessions run until no work is left."))
    print_sessions(report.sessions)

    rows = Table(title=f"Ledger rows ({folder / 'ledger.db'})", title_justify="left")
    for name in ("row", "date", "from", "subject", "amount"):
        rows.add_column(name, overflow="fold", justify="right" if name == "amount" else "left")
    for row in report.ledger_rows:
        amount = f"{row['amount']} {row['currency']}" if row["amount"] else "-"
        name, address = parseaddr(row["sender"])
        rows.add_row(str(row["row_id"]), (row["date"] or "")[:10], name or address,
                     row["subject"], amount)
    out.print(rows)
    out.print(Rule(f"{folder / 'summary.md'}, as the Summarize consumer wrote it", align="left"))
    out.print(report.summary.rstrip() or "(not written)", soft_wrap=True, markup=False)
    if report.traced_run is not None:
        out.print(Rule(f"From the log: the run that added row 1 ({report.traced_run})",
                       align="left"))
        print_log(report.trace)
    next_steps = [f"flowledger --store {url} log", f"flowledger --store {url} status"]
    if report.traced_run is not None:
        next_steps.append(f"flowledger --store {url} log --run {report.traced_run}")
    next_steps += [f"# drop another .eml into {folder / 'inbox'}/, then:",
                   f"(cd {folder} && flowledger --store sqlite:///flow.db run workflow.py)"]
    out.print("\nNext, try:")
    for step in next_steps:
        out.print(f"  {step}", soft_wrap=True, markup=False)
    raise typer.Exit(EXIT_OK if report.succeeded else EXIT_NOT_DONE)


# --------------------------------------------------------------------- main


def one_line(message: str) -> str:
    """A multi-line message (e.g. a DefinitionError's list of problems) on one line."""
    lines = [line.strip().removeprefix("- ") for line in message.splitlines() if line.strip()]
    return " ".join([*lines[:1], "; ".join(lines[1:])]).strip() if lines else message


def main() -> None:
    """Entry point of the `flowledger` script."""
    try:
        app(prog_name="flowledger")
    except fl.FlowledgerError as e:
        err.print(Text(f"error: {one_line(str(e))}", style="red"), soft_wrap=True)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
