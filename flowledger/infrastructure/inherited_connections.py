"""PostgreSQL connections a forked child inherits are its parent's sockets.

An engine is refused in a process forked from the one that opened it (ADR
0028), but its connections are still there: closed by the child (a
generator's cleanup, the interpreter's exit, the collector), libpq would send
the server a Terminate on the parent's socket, ending the parent's session
there, its liveness lock's too. So in every child each connection this
process opened is pointed at /dev/null: closing it there sends nothing to the
server, and any use of it there fails instead of reading the parent's answers.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any

_OPENED: weakref.WeakSet[Any] = weakref.WeakSet()


def opened_here(conn: Any) -> Any:
    """Note a psycopg connection this process opened; returns it."""
    _OPENED.add(conn)
    return conn


def _cut_off_in_child() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for conn in list(_OPENED):
            with contextlib.suppress(Exception):  # closed, or never connected
                if not conn.closed:
                    os.dup2(devnull, conn.pgconn.socket)
        _OPENED.clear()
    finally:
        os.close(devnull)


os.register_at_fork(after_in_child=_cut_off_in_child)
