"""The commands that keep running: `flowledger worker` (DESIGN §6) and
`flowledger follow` (the log, live)."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Annotated

import typer
from rich.text import Text

import flowledger as fl
from flowledger.cli.exits import EXIT_OK
from flowledger.cli.loading import load_definitions, register_definitions
from flowledger.cli.options import StoreOption, TargetArgument, store_url
from flowledger.cli.render import out, print_json_line
from flowledger.cli.store import open_engine, refuse_writes, require_workflow
from flowledger.cli.views import log_line
from flowledger.domain.errors import StoreUnreachable
from flowledger.domain.text import one_line
from flowledger.engine.graceful_stop import GracefulStop
from flowledger.engine.waiting import retry_wait
from flowledger.read_side.log_view import LoggedEvent

logger = logging.getLogger("flowledger.worker")


def _logging(quiet: bool, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("flowledger")
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def worker(
    ctx: typer.Context,
    path_or_module: TargetArgument,
    store: StoreOption = None,
    interval: Annotated[float, typer.Option(
        min=0.01, help="Check the log for new work at most this often (seconds).")] = 0.5,
    max_iterations: Annotated[int, typer.Option(
        min=1, help="Consumer runs one session may start before the others get a turn.")] = 100,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")
                     ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Every decision, too.")
                       ] = False,
) -> None:
    """Run the workflows of PATH_OR_MODULE continuously: each session when it is due.

    Schedules (every=/cron=), new events from any process, wake-ups, retries and
    reconciliation backoff start sessions by themselves. SIGTERM or Ctrl-C stops
    after the current step (the session is closed, exit 0): within the handler or
    tool call in progress plus one interval. A second one stops at once, and the
    next worker's recovery finishes the rest.
    """
    _logging(quiet, verbose)
    url = store_url(ctx, store)
    refuse_writes(url, "runs sessions")
    definitions = load_definitions(path_or_module)  # checked before a store is opened
    failures = 0
    stop = threading.Event()
    # From the start: a worker still waiting for its server stops as a serving one does.
    with GracefulStop(stop, log=logger):
        while not stop.is_set():
            try:
                with open_engine(url, writes="runs sessions", say_new=True) as engine:
                    register_definitions(engine, definitions)
                    engine.serve(stop, interval=interval, max_iterations=max_iterations)
                raise typer.Exit(EXIT_OK)
            except StoreUnreachable as e:
                # Started before its server (at boot, or while it restarts): it
                # waits, as a running worker does for a store that fails.
                failures += 1
                delay = retry_wait(interval, failures)
                logger.warning("%s; trying again in %.1fs", one_line(e), delay)
                stop.wait(delay)
        logger.info("worker stopped before its store could be opened")
    raise typer.Exit(EXIT_OK)


_BLOCKING = {("Workflow", "Paused"), ("Workflow", "Errored"), ("HandlerRun", "Paused"),
             ("HandlerRun", "Failed"), ("HandlerRun", "MutationIndeterminate")}


# The budgets a stop someone asked for is recorded as (a worker stopped for a
# deploy, `run` stopped by Ctrl-C): work left by intent, not for attention.
_ASKED_STOPS = {"worker_stop", "stop"}


def _notable(event: LoggedEvent) -> bool:
    if (event.aggregate, event.name) in _BLOCKING:
        return True
    outcome = str(event.fields.get("outcome", ""))
    if event.fields.get("budget") in _ASKED_STOPS:
        return False
    return event.aggregate == "Session" and event.name == "Closed" and outcome in (
        "budget_exhausted", "suspended", "failed", "SessionOutcome.BUDGET_EXHAUSTED",
        "SessionOutcome.SUSPENDED", "SessionOutcome.FAILED")


def print_live(engine: fl.Engine, after: int | None, workflow: str | None, interval: float,
               show: Callable[[LoggedEvent], None]) -> None:
    """`show` each event after log position `after` (None: the end of the log now) as
    any process appends it, until Ctrl-C: `follow`, and `log --follow` once it has
    printed the log so far.

    Ctrl-C (or SIGTERM) only asks the loop to stop, within `interval`: a
    KeyboardInterrupt raised inside a thread wait can leave its lock broken
    ("release unlocked lock") and end in a traceback. A second one stops at once.
    """
    with GracefulStop(log=None) as stop:
        try:
            for event in engine.follow(after=after, workflow=workflow, interval=interval,
                                       stop=stop.event):
                show(event)
                sys.stdout.flush()  # a pipe sees each event as it comes
        except KeyboardInterrupt:
            pass


def follow(
    ctx: typer.Context,
    store: StoreOption = None,
    workflow: Annotated[str | None, typer.Option(metavar="NAME",
                                                 help="Only this workflow's events.")] = None,
    blocked: Annotated[bool, typer.Option(
        "--blocked",
        help="Only pauses, failures, escalations and budget ends (not asked stops).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    after: Annotated[int | None, typer.Option(
        metavar="POSITION", help="Start after this log position (default: the end now).")
    ] = None,
    interval: Annotated[float, typer.Option(min=0.01, help="Check for new events this often.")
                        ] = 0.5,
) -> None:
    """Print the log's events as any process appends them, until Ctrl-C.

    Each line is the line `flowledger log` prints, marked `!!` when it needs attention.
    """

    def show(event: LoggedEvent) -> None:
        notable = _notable(event)
        if blocked and not notable:
            return
        if as_json:
            print_json_line(event, notable=notable)  # what `log --json` prints, and more
        else:
            mark = Text("!! ", style="bold red") if notable else Text("   ")
            out.print(mark + log_line(event, margin=len(mark)), soft_wrap=True)

    with open_engine(store_url(ctx, store), must_exist=True, reads_side=False) as engine:
        require_workflow(engine, workflow)
        print_live(engine, after, workflow, interval, show)
    raise typer.Exit(EXIT_OK)
