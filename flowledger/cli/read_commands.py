"""The commands that read the store: status, the log, what waits for a person,
listings, histories and costs, the store as it was (`at`), replaying a run
with today's code, and the projections (DESIGN §2.4, §2.5).

None of them writes to the log (`projections rebuild` rewrites only the read
models).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import deque
from collections.abc import Iterator
from typing import Annotated, cast

import typer

from flowledger.cli.exits import EXIT_NOT_DONE, EXIT_OK, CommandError
from flowledger.cli.loading import load
from flowledger.cli.options import (
    JsonOption,
    StoreOption,
    TargetArgument,
    at_position,
    choices,
    parse_time,
    store_url,
)
from flowledger.cli.render import err, out, print_json, print_json_line, short
from flowledger.cli.store import open_engine, require_workflow
from flowledger.cli.views import (
    log_line,
    print_costs,
    print_event_history,
    print_input_history,
    print_log,
    print_positions,
    print_rebuilt,
    print_replay,
    print_runs,
    print_session_list,
    print_status,
    print_status_at,
    print_timeline,
    print_waiting,
    rebuild_progress,
    status_json,
)
from flowledger.cli.worker_commands import print_live
from flowledger.read_side.log_view import LoggedEvent, at_or_after
from flowledger.read_side.queries import (
    COSTS_BY,
    RUN_STATUSES,
    SESSION_STATUSES,
    CostsBy,
    check_choice,
)

# ------------------------------------------------------------------ the present


def status(ctx: typer.Context, store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Workflows, open sessions, unfinished and blocked runs."""
    with open_engine(store_url(ctx, store), must_exist=True) as engine:
        st = engine.status()
    if as_json:
        print_json(status_json(st))
        return
    print_status(st, engine.store)


def log(
    ctx: typer.Context,
    store: StoreOption = None,
    workflow: Annotated[str | None, typer.Option(
        metavar="NAME", help="Only this workflow's events.")] = None,
    run_id: Annotated[str | None, typer.Option(
        "--run", metavar="RUN_ID", help="Only this run's events.")] = None,
    limit: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="Only the last N events.")] = None,
    after: Annotated[int, typer.Option(
        min=0, metavar="POSITION", help="Only events after this log position.")] = 0,
    since: Annotated[str | None, typer.Option(
        metavar="TIME", help="Only events at or after this time (UTC if no zone).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print JSON for scripts: one object per line (JSON Lines).")] = False,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Then keep printing new events as any process appends them, "
                               "until Ctrl-C.")] = False,
) -> None:
    """The event log, oldest first: the source of truth everything else is derived from."""
    moment = parse_time(since, "--since")
    with open_engine(store_url(ctx, store), must_exist=True, reads_side=False) as engine:
        require_workflow(engine, workflow)
        run = engine.run(run_id).id if run_id is not None else None
        # --follow goes on from the log's end when reading began, or from the
        # last event shown if the reading went past it.
        last = max(after, engine.last_position()) if follow else after

        def read() -> Iterator[LoggedEvent]:
            nonlocal last
            # Only the last N wanted: read back from the head until they are found.
            for event in engine.events(workflow=workflow, run=run, after=after, last=limit,
                                       since=moment):
                last = max(last, event.position)
                yield event

        def wanted(event: LoggedEvent) -> bool:
            return (run is None or event.stream_id == run) and (
                moment is None or at_or_after(event.timestamp, moment))

        def show(event: LoggedEvent) -> None:
            if wanted(event):
                if as_json:
                    print_json_line(event)
                else:
                    out.print(log_line(event), soft_wrap=True)

        events: Iterator[LoggedEvent] = filter(wanted, read())
        if limit is not None:
            events = iter(deque(events, maxlen=limit))
        if as_json:
            for event in events:
                print_json_line(event)
        else:
            # Printed as read: if an event cannot be read, what comes before it is
            # shown, and the error names it.
            first = next(events, None)
            if first is None and not follow:
                out.print("The log holds no such events.")
                return
            print_log(itertools.chain([first], events) if first is not None else [])
        if follow:
            if err.is_terminal:
                err.print("following the log: new events appear as they are appended; "
                          "Ctrl-C to stop", style="dim", soft_wrap=True)
            print_live(engine, last, workflow, 0.5, show)


def blocked(ctx: typer.Context, store: StoreOption = None, as_json: JsonOption = False
            ) -> None:
    """Runs and workflows waiting for a person, and the decisions that apply to each."""
    with open_engine(store_url(ctx, store), must_exist=True) as engine:
        st = engine.status()
    if as_json:
        print_json(status_json(st)["blocked"])
        return
    print_waiting(st, engine.store)


# ------------------------------------------------------------------ histories


def timeline(
    ctx: typer.Context,
    run: Annotated[str, typer.Argument(metavar="RUN", show_default=False,
                                       help="The run's id, a unique prefix of it, or its "
                                            "short id (as printed).")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every event of a run, and of other streams that name it, with log position and time."""
    with open_engine(store_url(ctx, store), must_exist=True) as engine:
        found = engine.run_timeline(run)
    if as_json:
        print_json(found)
        return
    print_timeline(found)


def events(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(metavar="WORKFLOW", show_default=False)],
    topic: Annotated[str, typer.Argument(metavar="TOPIC", show_default=False)],
    message_id: Annotated[str, typer.Argument(metavar="MESSAGE_ID", show_default=False)],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """The history of one message: every run that reserved it, and how each ended."""
    with open_engine(store_url(ctx, store), must_exist=True) as engine:
        require_workflow(engine, workflow)
        found = engine.event_history(workflow, topic, message_id)
    if as_json:
        print_json(found)
        return
    print_event_history(found)


def audit_input(
    ctx: typer.Context,
    input_id: Annotated[str, typer.Argument(
        metavar="ID", show_default=False,
        help="The input's id (see `events`: caused by), a unique prefix or its short id.")],
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every message an input caused, every run that reserved them, each mutation, in order."""
    with open_engine(store_url(ctx, store), must_exist=True) as engine:
        found = engine.input_history(input_id)
    if as_json:
        print_json(found)
        return
    print_input_history(found)


# ------------------------------------------------------------------ listings


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
    check_choice(by, COSTS_BY, "--by")
    with open_engine(store_url(ctx, store), must_exist=True) as engine:
        report = engine.costs(workflow=workflow, session=session, by=cast(CostsBy, by))
    if as_json:
        print_json(report)
        return
    print_costs(report)


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
    check_choice(status, RUN_STATUSES, "--status")
    with open_engine(store_url(ctx, store), must_exist=True) as engine:
        found = engine.runs(workflow, status, parse_time(since, "--since"),
                            parse_time(until, "--until"), limit=limit)
    if as_json:
        print_json(found)
        return
    print_runs(found)


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
    check_choice(status, SESSION_STATUSES, "--status")
    with open_engine(store_url(ctx, store), must_exist=True) as engine:
        found = engine.sessions(workflow, status, parse_time(since, "--since"),
                                parse_time(until, "--until"), limit=limit)
    if as_json:
        print_json(found)
        return
    print_session_list(found)


# ------------------------------------------------------------------ the past (§2.5)


def at_status(ctx: typer.Context, store: StoreOption = None,
              as_json: JsonOption = False) -> None:
    """Workflows, open sessions, unfinished and blocked runs, as they were then."""
    at = at_position(ctx)
    with open_engine(store_url(ctx, store), must_exist=True, reads_side=False) as engine, \
            engine.at(at) as past:
        st = past.status()
        moment = past.time
    if as_json:
        print_json({"position": at, "time": moment, "status": status_json(st, now=False)})
        return
    print_status_at(at, moment, st, engine.store)


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
    with open_engine(store_url(ctx, store), must_exist=True, record=False) as engine:
        names = load(engine, path_or_module)
        recorded = engine.run(run)
        if recorded.workflow not in names:
            raise CommandError(
                f"{path_or_module!r} defines no workflow {recorded.workflow!r}, the workflow "
                f"of run {short(recorded.id)} (it defines: {', '.join(names)}); give the "
                "code of that workflow. Nothing was replayed")
        report = engine.replay(run)
    if as_json:
        print_json({**dataclasses.asdict(report), "same": report.same})
    else:
        print_replay(report, path_or_module)
    raise typer.Exit(EXIT_OK if report.same else EXIT_NOT_DONE)


# ------------------------------------------------------------------ projections (§2.4)


def projections_rebuild(
    ctx: typer.Context,
    only: Annotated[list[str] | None, typer.Option(
        "--only", metavar="NAME", help="Rebuild only this projection (repeatable): "
                                       "pending_work, costs, audit, log_times, "
                                       "settled.")] = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Empty the projections and fold the whole log in again, from position 0."""
    with open_engine(store_url(ctx, store), must_exist=True,
                     writes="rewrites the projections") as engine:
        known = [p.name for p in engine.projections.projections]
        unknown = [name for name in only or [] if name not in known]
        if unknown:
            raise CommandError(f"no projection named {', '.join(map(repr, unknown))}; the "
                               f"projections are {', '.join(known)}")
        started = time.perf_counter()
        if as_json:
            read = engine.rebuild_projections(only)
        else:
            with rebuild_progress(", ".join(only or known)) as progress:
                read = engine.rebuild_projections(only, progress=progress)
        seconds = time.perf_counter() - started
        positions = engine.projections.positions()
    if as_json:
        print_json({"events": read, "seconds": round(seconds, 3), "positions": positions})
        return
    print_rebuilt(read, seconds, positions)


def projections_status(ctx: typer.Context, store: StoreOption = None,
                       as_json: JsonOption = False) -> None:
    """How far into the log each projection has read."""
    with open_engine(store_url(ctx, store), must_exist=True, reads_side=False) as engine:
        positions = engine.projections.positions()
        head = engine.log.flow_recorder.max_notification_id() or 0
    if as_json:
        print_json({"head": head, "positions": positions})
        return
    print_positions(positions, head)
