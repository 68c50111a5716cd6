"""How an exception becomes a run status (DESIGN §1.3 error classes)."""

from __future__ import annotations

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
