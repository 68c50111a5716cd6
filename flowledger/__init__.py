"""flowledger: an event-sourced engine for durable, auditable automations.

The public API (DESIGN §5). Everything not listed in `__all__` may change.
"""

from flowledger.domain.errors import (
    ActionNotApplicable,
    AuthError,
    ConcurrencyError,
    ConfigurationError,
    DefinitionError,
    FlowledgerError,
    InternalError,
    InvalidArgument,
    LogicError,
    NotFoundError,
    PermissionDenied,
    ToolError,
    TransientError,
    UncertainOutcome,
)
from flowledger.domain.limits import Limits
from flowledger.engine.clock import Clock, ManualClock, SeededIds, SystemClock
from flowledger.engine.definition import Outcome, Prepared, TopicMessage, Workflow
from flowledger.engine.engine import BlockedRun, Engine, EngineStatus
from flowledger.engine.handler_runs import RunResult
from flowledger.engine.policy import RetryPolicy
from flowledger.engine.session_runner import SessionResult
from flowledger.engine.tools import Reconciliation, Tool, mutator, read

__version__ = "0.1.0"

__all__ = [
    "ActionNotApplicable",
    "AuthError",
    "BlockedRun",
    "Clock",
    "ConcurrencyError",
    "ConfigurationError",
    "DefinitionError",
    "Engine",
    "EngineStatus",
    "FlowledgerError",
    "InternalError",
    "InvalidArgument",
    "Limits",
    "LogicError",
    "ManualClock",
    "NotFoundError",
    "Outcome",
    "PermissionDenied",
    "Prepared",
    "Reconciliation",
    "RetryPolicy",
    "RunResult",
    "SeededIds",
    "SessionResult",
    "SystemClock",
    "Tool",
    "ToolError",
    "TopicMessage",
    "TransientError",
    "UncertainOutcome",
    "Workflow",
    "__version__",
    "mutator",
    "read",
]
