"""The `flowledger` command: run workflows and look at what they did.

Exit codes: 0 when every session completed (or stopped on its budget, with the
work left listed); 1 when a session was suspended, failed, blocked or busy;
2 when the command cannot be carried out as asked (bad store URL, unknown
workflow or run, a decision that does not apply, a file that is not there...):
one line on stderr, never a traceback. Anything else is a bug and raises.

The modules, one idea each:
  application.py    the typer app: every command registered, and `main`
  run_commands.py   commands that run code or record a decision (run, recover,
                    resolve, resume, demo)
  read_commands.py  commands that read the store (status, log, runs, ..., at,
                    replay, projections)
  options.py        the options the commands share, and checks of what was typed
  loading.py        importing PATH_OR_MODULE and registering its workflows
  store.py          opening the store: the engine a command drives
  views.py          how each answer looks (tables, the log, reports)
  tables.py         tables fitted to the width: key columns whole, the rest cut
                    with an ellipsis or left out; plain when not a terminal
  render.py         how one value looks (ids, times, JSON, an error on one line)
  exits.py          exit codes, and CommandError (exit 2)
"""

from flowledger.cli.application import app, main

__all__ = ["app", "main"]
