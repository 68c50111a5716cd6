"""How an exception becomes a run status (DESIGN §1.3 error classes)."""

from __future__ import annotations

import traceback
from typing import Literal

from flowledger.domain.errors import (
    AuthError,
    InternalError,
    PermissionDenied,
    TransientError,
    UncertainOutcome,
)
from flowledger.domain.phases import RunStatus
from flowledger.domain.text import recordable

# A failure's traceback as the log keeps it: its innermost frames (the
# handler's code, where the bug is), a few KiB at most.
TRACEBACK_FRAMES = 8
MAX_TRACEBACK_TEXT = 3000

# A connector's definite failure (nothing happened: transient, or approval
# needed), its own word that the outcome is unknown, or anything else it
# raised (a tool bug, whose outcome is unknown too).
CallFailure = Literal["transient", "approval", "uncertain", "unexpected"]


def status_for(error: BaseException) -> RunStatus:
    if isinstance(error, TransientError | UncertainOutcome):
        return RunStatus.PAUSED_TRANSIENT
    if isinstance(error, AuthError | PermissionDenied):
        return RunStatus.PAUSED_APPROVAL
    if isinstance(error, InternalError):
        return RunStatus.FAILED_INTERNAL
    return RunStatus.FAILED_LOGIC


def call_failure(error: BaseException) -> CallFailure:
    """How a mutator's call failed, as the run decider weighs it."""
    if isinstance(error, TransientError):
        return "transient"
    if isinstance(error, AuthError | PermissionDenied):
        return "approval"
    if isinstance(error, UncertainOutcome):
        return "uncertain"
    return "unexpected"


def describe(error: BaseException) -> str:
    """`Type: message`, always recordable: whatever a handler or tool raised (a
    message with lone surrogates, megabytes of text, a `__str__` that itself
    raises), the run's failure can be written to the log."""
    name = recordable(type(error).__name__)
    try:
        text = str(error).strip()
    except Exception as e:  # a broken __str__ must not hide the failure
        text = f"(its message cannot be shown: str() raised {type(e).__name__})"
    text = recordable(text)
    return f"{name}: {text}" if text else name


def traceback_of(error: BaseException, frames: int = TRACEBACK_FRAMES,
                 limit: int = MAX_TRACEBACK_TEXT) -> str | None:
    """The last `frames` frames of `error`'s traceback and its `Type: message`
    line, bounded to about `limit` characters (the end is kept: that is where
    the bug is) and always recordable; None if it has no traceback."""
    tb = error.__traceback__
    if tb is None:
        return None
    try:
        stack = traceback.extract_tb(tb)[-frames:]
        lines = traceback.format_list(stack)
    except Exception:  # a frame whose source cannot be read must not hide the failure
        return None
    last = recordable(describe(error), limit // 3)  # the message, cut to a third
    frames_text = "".join(lines).rstrip("\n")
    room = max(limit - len(last), 0)
    if len(frames_text) > room:  # the innermost frames are kept
        frames_text = "... " + frames_text[len(frames_text) - room:]
    return recordable(frames_text + "\n" + last, limit + 100)
