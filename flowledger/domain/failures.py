"""How an exception becomes a run status (DESIGN §1.3 error classes)."""

from __future__ import annotations

from flowledger.domain.errors import (
    AuthError,
    InternalError,
    PermissionDenied,
    TransientError,
    UncertainOutcome,
)
from flowledger.domain.phases import RunStatus


def status_for(error: BaseException) -> RunStatus:
    if isinstance(error, TransientError | UncertainOutcome):
        return RunStatus.PAUSED_TRANSIENT
    if isinstance(error, AuthError | PermissionDenied):
        return RunStatus.PAUSED_APPROVAL
    if isinstance(error, InternalError):
        return RunStatus.FAILED_INTERNAL
    return RunStatus.FAILED_LOGIC


def describe(error: BaseException) -> str:
    text = str(error).strip()
    name = type(error).__name__
    return f"{name}: {text}" if text else name
