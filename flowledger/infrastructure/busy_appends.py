"""A session's append waits out another process's long hold of the write lock.

An append that waited the lock timeout (30 s by default) for the log's write
lock stored nothing, and failing it stopped the session: a mutation whose
call had returned then lost the outcome the engine held, and a mutator
without a reconcile waited for a person (a `projections rebuild` on a big
log, or any long transaction, holds that lock). A session's append (one with
a fence) is tried again instead, for up to the recorder's `busy_patience_s`:
the session's lease (the engine sets it; the lease cannot be renewed while the
lock is held, and past it another engine may take the session over, whose
fence then refuses this append, as for any takeover). A worker asked to stop
waits that long at most. Other appends (a person's decision, registering)
fail at once, as the caller can try again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from flowledger.domain.text import one_line

logger = logging.getLogger("flowledger.store")

T = TypeVar("T")

# How long a session's append waits, in all, for a write lock others hold,
# where no engine set it (the engine sets its policy's lease).
BUSY_PATIENCE_S = 60.0


def waiting_out_busy(append: Callable[[], T], busy: Callable[[BaseException], bool],
                     patience_s: float = BUSY_PATIENCE_S) -> T:
    """`append`, tried again while it fails because the write lock stayed held
    past the lock timeout (`busy`: nothing of it was stored), for up to
    `patience_s` in all."""
    deadline = time.monotonic() + patience_s
    tries = 0
    while True:
        tries += 1
        try:
            return append()
        except Exception as e:
            if not busy(e) or time.monotonic() >= deadline:
                raise
            logger.log(logging.WARNING if tries == 1 else logging.DEBUG,
                       "another process holds the store's write lock (%s); this session's "
                       "append waits for it%s", one_line(e),
                       f", for up to {patience_s:.0f}s in all" if tries == 1 else "")
            time.sleep(0.1)
