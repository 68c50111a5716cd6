"""flowledger: an event-sourced engine for durable, auditable automations.

The public API (DESIGN §5). Everything not listed in `__all__` may change.
"""

from flowledger.authoring.definition import Outcome, Prepared, TopicMessage, Workflow
from flowledger.authoring.tools import Reconciliation, Tool, mutator, read
from flowledger.domain.errors import (
    ActionNotApplicable,
    AuthError,
    ConcurrencyError,
    ConfigurationError,
    CorruptEventError,
    DefinitionError,
    EncryptionKeyError,
    EngineClosed,
    EngineForked,
    FlowledgerError,
    InternalError,
    InvalidArgument,
    LogicError,
    NotFoundError,
    PermissionDenied,
    ProjectionConflictError,
    StoreBusyError,
    StoreError,
    StoreUnreachable,
    ToolError,
    TransientError,
    UncertainOutcome,
)
from flowledger.domain.limits import Limits
from flowledger.domain.secret import Secret
from flowledger.engine.clock import Clock, ManualClock, SeededIds, SystemClock
from flowledger.engine.context import HandlerContext
from flowledger.engine.engine import Engine, copy_store
from flowledger.engine.handler_runs import RunResult
from flowledger.engine.policy import RetryPolicy
from flowledger.engine.replay import (
    Difference,
    PublishedMessage,
    ReplayReport,
    RunBehaviour,
    ToolCall,
    UnrecordedRead,
)
from flowledger.engine.session_runner import SessionResult
from flowledger.engine.verification import Problem, Verification, verify_store
from flowledger.infrastructure.encryption import new_key as new_cipher_key
from flowledger.read_side.log_view import LoggedEvent
from flowledger.read_side.queries import (
    BlockedRun,
    CostLine,
    CostReport,
    EngineStatus,
    EventHistory,
    InputHistory,
    MutationRecord,
    PendingWorkReport,
    Reservation,
    RunInfo,
    RunTimeline,
    SessionInfo,
    TopicWork,
    WorkerInfo,
)
from flowledger.read_side.time_travel import EngineAt

__version__ = "0.1.0"

__all__ = [
    "ActionNotApplicable",
    "AuthError",
    "BlockedRun",
    "Clock",
    "ConcurrencyError",
    "ConfigurationError",
    "CorruptEventError",
    "CostLine",
    "CostReport",
    "DefinitionError",
    "Difference",
    "EncryptionKeyError",
    "Engine",
    "EngineAt",
    "EngineClosed",
    "EngineForked",
    "EngineStatus",
    "EventHistory",
    "FlowledgerError",
    "HandlerContext",
    "InputHistory",
    "InternalError",
    "InvalidArgument",
    "Limits",
    "LoggedEvent",
    "LogicError",
    "ManualClock",
    "MutationRecord",
    "NotFoundError",
    "Outcome",
    "PendingWorkReport",
    "PermissionDenied",
    "Prepared",
    "Problem",
    "ProjectionConflictError",
    "PublishedMessage",
    "Reconciliation",
    "ReplayReport",
    "Reservation",
    "RetryPolicy",
    "RunBehaviour",
    "RunInfo",
    "RunResult",
    "RunTimeline",
    "Secret",
    "SeededIds",
    "SessionInfo",
    "SessionResult",
    "StoreBusyError",
    "StoreError",
    "StoreUnreachable",
    "SystemClock",
    "Tool",
    "ToolCall",
    "ToolError",
    "TopicMessage",
    "TopicWork",
    "TransientError",
    "UncertainOutcome",
    "UnrecordedRead",
    "Verification",
    "WorkerInfo",
    "Workflow",
    "__version__",
    "copy_store",
    "mutator",
    "new_cipher_key",
    "read",
    "verify_store",
]
