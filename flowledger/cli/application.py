"""The `flowledger` command: one typer app, every command registered on it in
the order `flowledger --help` lists them, and `main`, which turns a
FlowledgerError into one line on stderr and exit code 2."""

from __future__ import annotations

import sys

import typer

import flowledger as fl
from flowledger.cli import (
    copy_command,
    integrity_commands,
    read_commands,
    run_commands,
    setup_command,
    worker_commands,
)
from flowledger.cli.exits import EXIT_USAGE
from flowledger.cli.options import at_options, global_options
from flowledger.cli.render import print_error
from flowledger.domain.failures import describe
from flowledger.infrastructure.store import LogWentBack
from flowledger.infrastructure.store_failures import advice, from_the_store

app = typer.Typer(
    name="flowledger",
    help="Durable, auditable automations: run workflows, inspect the log, decide what is "
         "blocked.\n\nExit codes: 0 done (or stopped on a budget), 1 a session was "
         "suspended, failed, blocked or busy, 2 the command could not be carried out.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.callback()(global_options)

for command in (
    run_commands.run,
    read_commands.status,
    read_commands.log,
    read_commands.blocked,
    run_commands.recover,
    run_commands.resolve,
    run_commands.resume,
    read_commands.timeline,
    read_commands.events,
    read_commands.cost,
    read_commands.runs,
    read_commands.sessions,
    read_commands.replay,
    worker_commands.worker,
    worker_commands.follow,
    copy_command.copy,
    setup_command.setup,
    integrity_commands.verify,
    integrity_commands.keygen,
    run_commands.demo,
):
    app.command()(command)

# Groups of commands (listed after the commands above).
audit_app = typer.Typer(help="Audit trails: what happened to an input.", no_args_is_help=True,
                        rich_markup_mode=None)
audit_app.command("input")(read_commands.audit_input)
app.add_typer(audit_app, name="audit")

at_app = typer.Typer(help="The store as it was when the log ended at POSITION (read-only).",
                     no_args_is_help=True, rich_markup_mode=None,
                     # so that a negative POSITION reaches the engine's own check
                     context_settings={"ignore_unknown_options": True})
at_app.callback()(at_options)
at_app.command("status")(read_commands.at_status)
app.add_typer(at_app, name="at")

projections_app = typer.Typer(help="The read models derived from the log.",
                              no_args_is_help=True, rich_markup_mode=None)
projections_app.command("rebuild")(read_commands.projections_rebuild)
projections_app.command("status")(read_commands.projections_status)
app.add_typer(projections_app, name="projections")


def main() -> None:
    """Entry point of the `flowledger` script."""
    try:
        app(prog_name="flowledger")
    except fl.FlowledgerError as e:
        print_error(str(e))
        sys.exit(EXIT_USAGE)
    except LogWentBack as e:  # says itself what happened and what to do
        print_error(str(e))
        sys.exit(EXIT_USAGE)
    except Exception as e:
        if not from_the_store(e):
            raise  # a bug of ours: shown whole
        known = advice(e)  # a cause a retry does not mend (a read-only role, say)
        print_error(f"the store failed ({describe(e)}). Nothing more was done, and what the "
                    "log holds stands: " + (known or "run the command again once the store "
                                            "works (`recover` continues a session this one "
                                            "left)"))
        sys.exit(EXIT_USAGE)
