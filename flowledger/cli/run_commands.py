"""The commands that run workflow code or record a decision: run, recover,
resolve, resume, and the bundled demo."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer

import flowledger as fl
from flowledger import demo as demo_module
from flowledger.cli.exits import (
    EXIT_INTERRUPTED,
    EXIT_NOT_DONE,
    EXIT_OK,
    CommandError,
    exit_code_for,
)
from flowledger.cli.loading import load, load_definitions, register_definitions
from flowledger.cli.options import (
    TRIGGERS,
    JsonOption,
    StoreOption,
    TargetArgument,
    check_amount,
    choices,
    store_url,
)
from flowledger.cli.render import call_text, err, note, out, print_json, short, working
from flowledger.cli.store import open_engine, refuse_writes, require_workflow
from flowledger.cli.views import (
    Settled,
    print_demo,
    print_recovered,
    print_sessions,
    print_settled,
    recovery_progress,
    session_json,
)
from flowledger.domain.session import Trigger
from flowledger.engine.graceful_stop import GracefulStop
from flowledger.infrastructure.store_url import cli_command, shown
from flowledger.read_side.queries import ACTIONS, check_choice


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
    as_json: JsonOption = False,
) -> None:
    """Register the workflows of PATH_OR_MODULE and run one session of each.

    Exit code 0 when every session completed or stopped on its budget, 1 when one
    was suspended, failed, blocked or busy. Ctrl-C (or SIGTERM) finishes the step in
    progress, closes the session with the work left listed and exits 130 (143); a
    second one stops at once (130), and the next run or recover continues.
    """
    check_choice(trigger, TRIGGERS, "--trigger")
    check_amount(max_cost, "--max-cost")
    url, writes = store_url(ctx, store), "runs sessions, which append to the log"
    refuse_writes(url, writes)
    # The code is loaded and checked before the store is opened (a mistake in
    # it leaves no store behind), then registered without writing: a workflow
    # is recorded in the store only once it is known to run (not for
    # `--workflow nope`, nor for the others).
    definitions = load_definitions(path_or_module)
    names = definitions.names
    if workflow is not None:
        if workflow not in names:
            raise CommandError(f"{path_or_module!r} defines no workflow {workflow!r} "
                               f"(it defines: {', '.join(names)}); nothing was run or "
                               "written")
        names = [workflow]
    with open_engine(url, record=False, writes=writes, say_new=True) as engine:
        register_definitions(engine, definitions)
        engine.record(names)
        results: list[fl.SessionResult] = []
        # Ctrl-C or SIGTERM: the step in progress finishes, the session closes with
        # the work left listed, no other workflow starts; a second one stops at once
        # (ADR 0020).
        stopping = GracefulStop(log=None, on_signal=_tell_stopping)
        try:
            with stopping, working("running " + ", ".join(names), quiet=as_json):
                for name in names:
                    if stopping.is_set():
                        break
                    results.append(engine.run_session(
                        name, trigger=trigger, max_iterations=max_iterations,
                        max_cost=max_cost, stop=stopping.event))
        except KeyboardInterrupt:
            err.print(f"Stopped at once: a session in progress is left as a crash leaves it, "
                      f"its lease ended. `{cli_command(url, 'run', path_or_module)}` (or "
                      "`recover`) "
                      "continues it: a call that was under way is reconciled, never repeated "
                      "blindly.", soft_wrap=True, markup=False, highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        settled = settled_mutations(engine, [r.recovered for r in results if r.recovered])
    if as_json:
        print_json([session_json(r) for r in results])
    else:
        print_sessions(results)
        print_settled(settled, engine.store)
    if stopping.signal is None:
        raise typer.Exit(exit_code_for(results))
    left = names[len(results):]
    if not as_json:
        note(f"stopped by {signal.Signals(stopping.signal).name}",
             "the step in progress finished and the session closed with the work left "
             "listed" + (f"; not run: {', '.join(left)}" if left else "")
             + f". `{cli_command(url, 'run', path_or_module)}` continues.", "yellow")
    raise typer.Exit(128 + stopping.signal)


def _tell_stopping(signum: int, at_once: bool) -> None:
    """Said from the signal handler, at once (os.write: safe in a handler)."""
    if not at_once:
        os.write(2, (f"\n{signal.Signals(signum).name}: finishing the step in progress, then "
                     "closing the session; Ctrl-C again stops at once\n").encode())


def recover(ctx: typer.Context, path_or_module: TargetArgument,
            store: StoreOption = None, as_json: JsonOption = False) -> None:
    """Take over sessions a crashed process left open, and finish their work.

    Needs the workflow code (PATH_OR_MODULE): recovery continues runs with it.
    """
    # A workflow the store does not hold has nothing to recover: it is not recorded.
    with open_engine(store_url(ctx, store), must_exist=True, record=False,
                     writes="continues sessions, which appends to the log") as engine:
        names = load(engine, path_or_module)
        if all(name in engine.unrecorded for name in names):
            held = sorted(w.name for w in engine.status().workflows)
            raise CommandError(
                f"store {shown(engine.store)} holds none of the workflows {path_or_module!r} "
                f"defines ({', '.join(names)}); it holds: {', '.join(held) or 'no workflows'}. "
                "Nothing was recovered or written: point --store at the store those "
                "workflows ran on")
        with recovery_progress(quiet=as_json) as progress:
            results = engine.recover(progress=progress)
        settled = settled_mutations(engine, results)
    if as_json:
        print_json([session_json(r) for r in results])
        raise typer.Exit(exit_code_for(results))
    if not results:
        out.print("Nothing to recover: no workflow of this code has a session open.")
        return
    print_recovered(results, "Recovered sessions" if any(r.status != "busy" for r in results)
                    else "Sessions still held (nothing recovered)")
    print_settled(settled, engine.store)
    raise typer.Exit(exit_code_for(results))


def settled_mutations(engine: fl.Engine, results: list[fl.SessionResult]
                      ) -> list[Settled]:
    """The mutations of recovered sessions that had to be reconciled (their call was in
    flight when the process died, or its outcome unknown), and what that found."""
    found = []
    for result in results:
        for r in result.runs:
            chain = _retried_here(engine, r.run_id, result.session_id)
            for run_id, next_run in zip(chain, [*chain[1:], None], strict=True):
                entries = [e for e in engine.run_timeline(run_id).entries
                           if e.stream_id == run_id]
                started = next((e for e in entries if e.name == "MutationInFlight"), None)
                ends = [e for e in entries if e.fields.get("via") == "reconcile"
                        or e.name in ("MutationNeedsReconcile", "MutationIndeterminate")]
                if started is None or not ends:
                    continue
                f = started.fields
                found.append(Settled(run_id, r.handler, call_text(f["tool"], f["method"],
                                                                 f["params"]),
                                     f.get("reconcile"), ends[-1].name, ends[-1].fields,
                                     next_run))
    return found


def _retried_here(engine: fl.Engine, run_id: UUID, session_id: UUID | None) -> list[UUID]:
    """The run, after the runs it retried in the same session, oldest first. A
    mutation that reconcile finds had not happened is made again by a fresh
    run (`retry_of` the old one), and only the fresh run is in the session's
    result: the old one holds what reconcile found."""
    chain = [run_id]
    run = engine.run(run_id)
    while run.retry_of is not None and run.session_id == session_id:
        chain.append(run.retry_of)
        run = engine.run(run.retry_of)
    return chain[::-1]


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
    check_choice(action, ACTIONS, "ACTION")
    with open_engine(store_url(ctx, store), must_exist=True,
                     writes="records a decision in the log") as engine:
        engine.resolve(run, action)
        found = engine.run(run)
    workflow = found.workflow
    out.print(f"Recorded {action} for run {short(found.id)} of {workflow!r}. The next session "
              f"carries it on: {cli_command(engine.store, 'run', 'PATH_OR_MODULE')}",
              soft_wrap=True, markup=False)


def resume(
    ctx: typer.Context,
    workflow: Annotated[str, typer.Argument(metavar="WORKFLOW", show_default=False)],
    store: StoreOption = None,
) -> None:
    """Lift a workflow's paused or error status once the cause is dealt with."""
    with open_engine(store_url(ctx, store), must_exist=True,
                     writes="records the resumption in the log") as engine:
        require_workflow(engine, workflow)
        changed = engine.resume(workflow)
    if changed:
        out.print(f"Workflow {workflow!r} is active again; the next session will run it.")
    else:
        out.print(f"Workflow {workflow!r} is already active; nothing was changed.")


def demo(
    folder: Annotated[Path, typer.Option(
        "--dir", metavar="PATH", help="Working folder; wiped and recreated.",
    )] = demo_module.DEFAULT_DEMO_DIR,
) -> None:
    """Run the bundled inbox-to-ledger example end to end on a fresh store."""
    report = demo_module.run_demo(folder)
    print_demo(report, folder, demo_module.store_url_for(folder, relative_to=Path.cwd()))
    raise typer.Exit(EXIT_OK if report.succeeded else EXIT_NOT_DONE)
