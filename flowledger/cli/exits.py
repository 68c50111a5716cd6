"""Exit codes, and the error the person typing the command can fix.

0 when every session completed (or stopped on its budget, with the work left
listed); 1 when a session was suspended, failed, blocked or busy; 2 when the
command cannot be carried out as asked: a CommandError, or any other
FlowledgerError the engine raises, shown as one line on stderr by `main`.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable

import flowledger as fl
from flowledger.domain.session import SessionOutcome

EXIT_OK, EXIT_NOT_DONE, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports Ctrl-C
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE  # 141: the reader of the output went away

# A session that ends so leaves nothing for a person to do.
DONE_OUTCOMES: tuple[str, ...] = (SessionOutcome.COMPLETED, SessionOutcome.BUDGET_EXHAUSTED)


class CommandError(fl.FlowledgerError):
    """Something the person typing the command can fix (exit code 2)."""


def exit_code_for(results: Iterable[fl.SessionResult]) -> int:
    return EXIT_OK if all(r.status in DONE_OUTCOMES for r in results) else EXIT_NOT_DONE
